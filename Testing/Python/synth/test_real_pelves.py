"""Real pelvis shapes (manual pelvic CT labels) as synthseg sources, the hip-to-ankle composite, hip scans."""

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from mskai.synth.phantom import ORIENTATIONS
from mskai.synth.real_pelves import (PELVIS_SUBJECTS, RAS_TO_LPS, RealHipLimb, RealPelvisSource, hip_cases,
                                     hip_joint_centres_mm, pelvis_path)
from mskai.synth.synthseg import CORTEX, OTHER_MARROW, SACRUM_MARROW, bone_labels_of, make_sample, synthetic_case

FOLDER = SHARED_DATA / "pelvis_thigh_labels"
TIBIA, FEMUR, FIBULA, PELVIS, PATELLA, SACRUM = 1, 2, 3, 4, 5, 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one torch thread is faster, much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sources():
    if not FOLDER.is_dir():
        pytest.skip(f"the pelvis labels are missing: {FOLDER} (set MSKAI_SHARED_DATA)")
    return {s: RealPelvisSource(s, np.random.default_rng(i), FOLDER) for i, s in enumerate(PELVIS_SUBJECTS)}


def _labels_at(source, points_mm):
    tissue, owner = source.sample(torch.as_tensor(np.asarray(points_mm), dtype=torch.float32))
    return bone_labels_of(tissue, owner).numpy(), tissue.numpy()


def _original(subject):
    """The label map and its voxel -> LPS affine, as stored."""
    import nibabel as nib

    image = nib.load(str(pelvis_path(subject, FOLDER)))
    return np.asarray(image.dataobj), RAS_TO_LPS @ image.affine


def _unposed_case(source, rng, centre, extent_mm, spacing_mm):
    """An axial case without random pose or deformation: (labels, LPS points of its voxels)."""
    shape = tuple(int(e // spacing_mm) for e in extent_mm)
    _, labels = make_sample(source, rng, shape, (spacing_mm,) * 3, directions=ORIENTATIONS["axial"], centre=centre,
                            max_rotation=0.0, scale=0.0, elastic_mm=0.0)
    axes = [(np.arange(n) - (n - 1) / 2) * spacing_mm for n in shape]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1) + centre
    return labels.numpy(), points


def test_each_subject_loads_two_hips_in_lps_and_stays_small(sources):
    for subject, source in sources.items():
        assert source.labelled == {1, 2, 3, 4, 5, 6}  # nothing outside the table is left out of the loss
        assert source.tissue.dtype == source.owner.dtype == torch.uint8
        assert source.tissue.numel() * 2 < 80e6, subject  # cropped to the body
        heads = hip_joint_centres_mm(source)
        assert heads["left"][0] > source.midline_x > heads["right"][0]  # "left" is +x, as in LPS
        axial = np.argwhere(np.isin(source.tissue.numpy(), (OTHER_MARROW, SACRUM_MARROW)))[::50]  # sacrum, spine
        behind = axial @ source.affine[:3, :3].T + source.affine[:3, 3]
        assert behind[:, 1].mean() > max(h[1] for h in heads.values()) + 20  # posterior: +y in LPS
        assert behind[:, 2].mean() > max(h[2] for h in heads.values()) + 40  # superior: +z
        assert 150 < np.linalg.norm(heads["left"] - heads["right"]) < 220, subject
        assert abs(heads["left"][2] - heads["right"][2]) < 20
        labels, _ = _labels_at(source, list(heads.values()))
        assert (labels == FEMUR).all(), subject  # the centres lie in the femoral heads


def test_bones_map_onto_the_stored_labels_sacrum_its_own_spine_background(sources):
    for subject in ("001", "005"):
        original, affine = _original(subject)
        bones = np.argwhere((original > 0) & (original < 5))[::97]
        for value, expected in ((1, PELVIS), (2, FEMUR), (3, SACRUM), (4, 0)):
            ijk = bones[original[tuple(bones.T)] == value]
            labels, tissue = _labels_at(sources[subject], ijk @ affine[:3, :3].T + affine[:3, 3])
            assert (labels == expected).mean() > (0.99 if expected else 1.0 - 1e-9), (subject, value)
            if not expected:  # bone-like: cortex and marrow of bones outside the table
                assert np.isin(tissue, (CORTEX, OTHER_MARROW)).all()


def test_hip_case_labels_sacrum_apart_from_the_hip_bone_and_never_the_spine(sources):
    rng = np.random.default_rng(0)
    source = sources["002"]
    centre = np.mean(list(source.hip_centres_mm.values()), axis=0) + [0, 0, 30]
    labels, points = _unposed_case(source, rng, centre, (360, 270, 270), 3.0)
    assert set(np.unique(labels)) == {0, FEMUR, PELVIS, SACRUM}
    original, affine = _original("002")
    ijk = np.rint((points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    inside = np.all((ijk >= 0) & (ijk < original.shape), axis=-1)
    truth = np.zeros(labels.shape, dtype=np.uint8)
    truth[inside] = original[tuple(ijk[inside].T)]
    assert (truth == 3).sum() > 500 and (truth == 4).sum() > 500
    assert (labels[truth == 4] == 0).all() and (labels[truth == 3] == SACRUM).mean() > 0.97
    assert (labels[truth == 1] == PELVIS).mean() > 0.97
    assert (labels[truth == 2] == FEMUR).mean() > 0.97
    image, volume = synthetic_case(source, rng, (4.0, 4.0, 4.0), extent_mm=(360, 240, 280), plane="coronal",
                                   centre=centre)
    assert image.shape == volume.shape and set(np.unique(volume.array)) == {0, FEMUR, PELVIS, SACRUM}


def test_hip_bone_is_beside_and_above_the_femoral_heads(sources):
    for subject, source in sources.items():
        lo, hi = (np.minimum(*source.hip_box_mm), np.maximum(*source.hip_box_mm))
        for side, head in source.hip_centres_mm.items():
            assert head[2] - 90 < lo[2] < head[2] - 30  # ischium below the head, above mid-thigh
            assert hi[2] > head[2] + 100  # iliac crest
            medial = np.sign(source.midline_x - head[0])
            line = head + np.outer(np.arange(0, 50, 1.0), [medial, 0, 0])
            labels, _ = _labels_at(source, line)
            assert (labels[:10] == FEMUR).all(), (subject, side)  # the head, then the acetabulum beside it
            assert (labels[20:50] == PELVIS).sum() >= 3, (subject, side)
            z, _, _ = source.femur_sections[side]
            assert z.min() < head[2] - 120  # the shaft goes on to mid-thigh


@pytest.fixture(scope="module")
def limb(sources):
    return RealHipLimb(sources["004"], np.random.default_rng(3))


def test_limb_femur_crosses_the_seam_without_a_step(limb):
    for side, head in limb.pelvis.hip_centres_mm.items():
        z, centroid, _ = limb.pelvis.femur_sections[side]
        c = centroid[np.argmin(np.abs(z - limb.seam_z))]
        grid = np.stack(np.meshgrid(*[np.arange(-35, 35, 1.0)] * 2, indexing="ij"), axis=-1).reshape(-1, 2)
        sections = []
        for dz in (2.0, -2.0):  # map frame, just above and below the seam
            points = np.c_[grid + c[:2], np.full(len(grid), limb.seam_z + dz)]
            labels, _ = _labels_at(limb, limb._from_map(points))
            femur = points[labels == FEMUR]
            sections.append((len(femur), femur[:, :2].mean(0)))
        (area_above, centre_above), (area_below, centre_below) = sections
        assert 0.85 < area_below / area_above < 1.18, side
        assert np.linalg.norm(centre_below - centre_above) < 4.0, side  # the shaft's own slope gives ~2 mm
        assert limb.shaft_angle_deg[side] < 12


def test_limb_has_every_bone_in_place(limb):
    rng = np.random.default_rng(1)
    heads = limb.hip_centres_mm
    lo, hi = limb.bone_box_mm
    centre = (lo + hi) / 2
    extent = hi - lo + [60, 60, 40]
    labels, points = _unposed_case(limb, rng, centre, extent, 8.0)
    assert set(np.unique(labels)) == {0, TIBIA, FEMUR, FIBULA, PELVIS, PATELLA, SACRUM}
    z = points[..., 2]
    seam = limb._from_map([0, 0, limb.seam_z])[2]  # the seam plane is tilted by tilt_deg: +- 40 mm
    head_z = min(h[2] for h in heads.values())
    assert z[labels == PELVIS].min() > head_z - 100 and z[labels == PELVIS].max() > head_z + 100
    assert (labels[z > seam + 60] == FEMUR).any() and (labels[z < seam - 60] == FEMUR).any()
    for side in heads:
        knee = limb.to_world(side, limb.phantom.knee)
        shank = limb.to_world(side, limb.phantom.knee + limb.phantom.flex @ [0.0, 0.0, -150.0])
        assert _labels_at(limb, [shank])[0][0] == TIBIA
        assert z[labels == TIBIA].max() < knee[2] + 10
        assert z[labels == PATELLA].min() > knee[2] - 50
    for side in heads:  # hip to ankle: 700-1000 mm
        assert 650 < heads[side][2] - limb.to_world(side, [0, 0, -limb.phantom.length])[2] < 1000
    for _ in range(20):  # patch centres stay on the skeleton
        assert np.all((limb.random_centre(rng) > lo - 120) & (limb.random_centre(rng) < hi + 120))


def test_hip_cases_have_whole_scan_fields_of_view(sources):
    (name, image, labels), = list(hip_cases(1, seed=4, subjects=("004",), max_voxels=1e6, sources=sources))
    assert name.startswith("pelvis004_00_") and image.meta["plane"] in ("axial", "coronal")
    assert image.shape == labels.shape
    spacing = image.spacing
    assert 0.7 <= spacing[0] <= 1.2 and spacing[1] == pytest.approx(spacing[0])
    extent = np.array(image.shape) * spacing
    assert 300 <= extent[0] <= 400 and extent[1] >= 150 and extent[2] >= 150
    assert {FEMUR, PELVIS} <= set(np.unique(labels.array)) <= {0, FEMUR, PELVIS, SACRUM}
