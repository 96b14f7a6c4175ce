"""Synthetic sagittal knee MR with graded ACLs (mskai.synth.acl_knee), on the real OAI knee shapes of ../shared/data."""

import json
import time

import numpy as np
import pytest
from conftest import SHARED_DATA, run_mskai
from scipy import ndimage

from mskai.dicom.plane import detect_plane

OAI = SHARED_DATA / "oai_knee_bone_masks"
pytestmark = pytest.mark.skipif(not OAI.is_dir(), reason=f"the shared OAI knee masks are missing: {OAI}")
SEED = 11


@pytest.fixture(scope="module")
def synth():
    from mskai.synth.acl_knee import acquisition as synth  # the module whose ``anatomy`` draw_case calls

    return synth


@pytest.fixture(scope="module")
def few_subjects(synth):
    """Two training subjects: enough to test, few anatomies to build."""
    return synth.acl_shape_subjects("train", OAI)[:2]


@pytest.fixture(scope="module")
def grades(synth, few_subjects):
    """The four grades of one knee (the same generator state), with masks."""
    return [synth.synthetic_acl_knee(g, np.random.default_rng(SEED), few_subjects, OAI, with_masks=True)
            for g in range(4)]


def _orientation(volume):
    d = volume.directions_lps
    return [*d[:, 0], *d[:, 1]]


def test_labels_and_subject_split(synth):
    from mskai.synth.real_shapes import oai_subjects, split_subjects

    assert synth.GRADES == ("healthy", "minor strain", "partial rupture", "complete rupture")
    assert [synth.to_binary(g) for g in range(4)] == [0, 0, 1, 1]
    with pytest.raises(ValueError):
        synth.synthetic_acl_knee(4, np.random.default_rng(0))
    split = split_subjects(oai_subjects(OAI))
    for name in ("train", "val", "test"):
        assert synth.acl_shape_subjects(name, OAI) == split[name]  # the bone model's split, test kept out
    assert not set(synth.acl_shape_subjects("train", OAI)) & set(synth.acl_shape_subjects("test", OAI))


def test_sagittal_volume_is_a_plausible_knee_acquisition(grades):
    volume, masks = grades[0]
    ni, nj, nk = volume.shape
    assert ni == nj and ni in (256, 320) and 20 <= nk <= 40
    assert volume.array.dtype == np.int16
    spacing = volume.spacing
    assert spacing[0] == pytest.approx(spacing[1]) and 0.4 <= spacing[0] <= 0.7 and 3.0 <= spacing[2] <= 5.1
    plane = detect_plane(_orientation(volume))
    assert plane.name == "sagittal" and plane.obliquity_deg <= 25
    assert volume.meta["modality"] == "MR" and volume.meta["plane"] == "sagittal"
    assert "SYNTHETIC" in volume.meta["series_description"]
    # slices run left-right: the slice step is mostly along L
    assert abs(volume.directions_lps[0, 2]) > 0.85
    for name in ("acl", "pcl", "femur", "tibia", "fluid"):
        assert masks[name].shape == volume.shape and masks[name].dtype == bool
    # femur above tibia (patient S = LPS z)
    z = lambda m: volume.ijk_to_lps(np.argwhere(m))[:, 2].mean()  # noqa: E731
    assert z(masks["femur"]) > z(masks["tibia"]) + 20
    # the image is not flat: bone marrow, fat, fluid and dark ligaments differ
    assert volume.array.std() > 50


def test_same_state_gives_the_same_volume(synth, grades, few_subjects):
    again = synth.synthetic_acl_knee(0, np.random.default_rng(SEED), few_subjects, OAI)
    assert np.array_equal(again.array, grades[0][0].array)
    assert np.array_equal(again.affine_lps, grades[0][0].affine_lps)
    other = synth.synthetic_acl_knee(0, np.random.default_rng(SEED + 1), few_subjects, OAI)
    assert other.shape != again.shape or not np.array_equal(other.array, again.array)


def _acl_extent_mm(volume, mask):
    points = volume.ijk_to_lps(np.argwhere(mask))
    centred = points - points.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = centred @ axis
    return float(along.max() - along.min())


def test_grades_order_the_acl_mask(grades):
    volume = grades[0][0]
    voxel = float(np.prod(volume.spacing))
    size = [m["acl"].sum() * voxel for _, m in grades]
    assert size[0] > 300  # mm3: a real band
    assert size[1] > size[0] * 1.1  # strain: thickened
    assert size[2] < size[0] * 0.95  # partial: thinned, part of it torn
    assert size[3] < size[0] * 0.9
    extent = [_acl_extent_mm(volume, m["acl"]) for _, m in grades]
    assert 15 <= extent[0] <= 45
    pieces = ndimage.label(grades[3][1]["acl"], structure=np.ones((3, 3, 3)))[1]
    assert pieces >= 2 or extent[3] < 0.8 * extent[0]  # complete: a gap, or only a short stump left
    assert grades[3][1]["fluid"].sum() > grades[0][1]["fluid"].sum()  # notch fluid (and effusion)


def test_acl_lies_in_the_notch_between_femur_and_tibia(grades):
    volume, masks = grades[0]
    spacing = volume.spacing
    lps = lambda m: volume.ijk_to_lps(np.argwhere(m))  # noqa: E731
    acl, femur, tibia = lps(masks["acl"]), lps(masks["femur"]), lps(masks["tibia"])
    centre = acl.mean(0)
    assert np.percentile(tibia[:, 2], 95) - 5 < centre[2] < np.percentile(femur[:, 2], 50)
    # within the knee's left-right extent, away from its edges
    lo, hi = np.percentile(femur[:, 0], [15, 85])
    assert lo < centre[0] < hi
    # it reaches both bones: within 3 mm of each
    near = lambda m: ndimage.distance_transform_edt(~m, sampling=spacing)  # noqa: E731
    assert near(masks["femur"])[masks["acl"]].min() <= 3.0
    assert near(masks["tibia"])[masks["acl"]].min() <= 3.0
    # and runs anterior-inferior from the femur: its inferior end is more anterior (LPS y smaller)
    top, bottom = acl[acl[:, 2] > np.percentile(acl[:, 2], 80)], acl[acl[:, 2] < np.percentile(acl[:, 2], 20)]
    assert bottom[:, 1].mean() < top[:, 1].mean()
    # the PCL is posterior to the ACL
    assert lps(masks["pcl"])[:, 1].mean() > centre[1]


def test_grades_differ_only_at_the_ligament_and_the_fluid(grades):
    volume, masks = grades[0]
    spacing = volume.spacing
    for g in (1, 2, 3):
        other, other_masks = grades[g]
        assert other.shape == volume.shape and np.array_equal(other.affine_lps, volume.affine_lps)
        assert other.meta["protocol"] == volume.meta["protocol"] and other.meta["subject"] == volume.meta["subject"]
        difference = np.abs(other.array.astype(np.int32) - volume.array)
        assert difference.max() > 100
        where = masks["acl"] | other_masks["acl"] | masks["fluid"] | other_masks["fluid"]
        distance = ndimage.distance_transform_edt(~where, sampling=spacing)
        # anywhere else the volumes are the same (but for rounding of faint halos): same anatomy, noise,
        # contrast, field of view and slices
        assert distance[difference > 3].max() <= spacing[2] + 3.0, f"grade {g}"
        assert distance[difference > 0].max() <= spacing[2] + 6.0, f"grade {g}"


def test_training_subjects_only(synth, monkeypatch):
    train = synth.acl_shape_subjects("train", OAI)
    held_out = set(synth.acl_shape_subjects("test", OAI)) | set(synth.acl_shape_subjects("val", OAI))
    asked = []
    real = synth.anatomy

    def spy(subject, folder=None):
        asked.append(subject)
        return real(subject, folder)

    monkeypatch.setattr(synth, "anatomy", spy)
    rng = np.random.default_rng(3)
    subjects = train[:2]
    for _ in range(3):
        volume = synth.synthetic_acl_knee(int(rng.integers(4)), rng, subjects, OAI)
        assert volume.meta["subject"] in subjects
    assert asked and set(asked) <= set(subjects) and not set(asked) & held_out
    # the default is the training split too
    case = synth.draw_case(0, np.random.default_rng(0), None, OAI)
    assert case.anatomy.subject in train


def test_render_time_per_case(synth, grades, few_subjects):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for g in range(2):
            synth.synthetic_acl_knee(g, np.random.default_rng(SEED), few_subjects, OAI)
        per_case = (time.perf_counter() - start) / 2
    finally:
        torch.set_num_threads(threads)
    print(f"render time per case (anatomy cached, 1 thread): {per_case:.2f} s")
    assert per_case < 2.0  # generous: about 0.5 s here on one shared core


def test_cli_writes_a_readable_sagittal_and_coronal_study(tmp_path):
    out = tmp_path / "study"
    result = run_mskai("synth", "acl", out, "--grade", "2", "--seed", "4", "--planes", "sagittal,coronal")
    assert "sagittal" in result.stdout and "coronal" in result.stdout
    listing = json.loads(run_mskai("dicom", "ls", "--json", out).stdout)
    assert not listing["problems"]
    planes = sorted(v["plane"] for s in listing["series"] for v in s["volumes"])
    assert planes == ["coronal", "sagittal"]
    assert len({(s["patient"], s["study"]) for s in listing["series"]}) == 1  # one study
    for series in listing["series"]:
        (volume,) = series["volumes"]
        assert volume["problem"] is None and 20 <= volume["size"][2] <= 40
    bad = run_mskai("synth", "acl", tmp_path / "x", "--grade", "1", "--planes", "oblique", ok=False)
    assert bad.returncode != 0 and bad.stderr.startswith("mskai: error:") and "Traceback" not in bad.stderr


def test_tissue_texture_marks_marrow_muscle_and_fat_and_leaves_fluid_flat(synth):
    import torch

    from mskai.synth.acl_knee.tissues import CORTEX_F, FAT, FLUID, MARROW_F, MUSCLE, N_TISSUES, TENDON

    tissue = torch.full((60, 60, 80), FLUID, dtype=torch.uint8)  # axes LR, AP, IS; 0.5 mm voxels
    tissue[:30, :30], tissue[30:, :30], tissue[:30, 30:] = MARROW_F, MUSCLE, FAT
    means = torch.full((N_TISSUES,), 0.5)
    means[[MARROW_F, MUSCLE, FAT, FLUID, CORTEX_F, TENDON]] = torch.tensor([0.8, 0.3, 0.9, 0.7, 0.05, 0.05])
    image = synth._textured(means, tissue, (0.5, 0.5, 0.5), seed=1)
    assert torch.equal(image, synth._textured(means, tissue, (0.5, 0.5, 0.5), seed=1))
    assert not torch.equal(image, synth._textured(means, tissue, (0.5, 0.5, 0.5), seed=2))
    assert torch.all(image[tissue == FLUID] == means[FLUID])
    for kind, septa in ((MARROW_F, "darker"), (MUSCLE, "brighter"), (FAT, "darker")):
        values = image[tissue == kind]
        assert values.std() > 0.01 * means[kind] and values.min() > 0, kind
        # a network of trabeculae / septa: towards cortex in marrow, towards fat in muscle, towards tendon in fat
        network = values < 0.85 * means[kind] if septa == "darker" else values > 1.15 * means[kind]
        assert 0.02 < network.float().mean() < 0.4, kind
    # muscle striae run along the limb (IS): neighbours 5 mm apart are more alike along IS than along AP
    muscle = image[30:, :30].numpy()
    along = np.corrcoef(muscle[:, :, :-10].ravel(), muscle[:, :, 10:].ravel())[0, 1]
    across = np.corrcoef(muscle[:, :-10].ravel(), muscle[:, 10:].ravel())[0, 1]
    assert along > across


def test_real_ligament_profiles_come_from_the_visible_human_person_of_the_knees_split(synth, few_subjects,
                                                                                     monkeypatch):
    from mskai.synth.acl_knee import ligaments
    from mskai.synth.visible_human import VH_TEST, VH_TRAIN

    for kind in ("ACL", "PCL"):
        profiles = ligaments.real_profiles(kind, VH_TRAIN)
        assert len(profiles) == 2  # left and right knee
        for half_n, half_b in profiles:
            assert half_n.shape == half_b.shape == (ligaments.PROFILE_POINTS,)
            assert 1.5 < half_n.mean() < 8 and 1.5 < half_b.mean() < 8, kind  # mm: a cruciate's size
    asked = []
    monkeypatch.setattr(ligaments, "REAL_SHARE", 1.0)
    monkeypatch.setattr(ligaments, "real_profiles", lambda kind, people: asked.append(people) or ((
        np.full(ligaments.PROFILE_POINTS, 3.0), np.full(ligaments.PROFILE_POINTS, 4.0)),))
    splits = synth.acl_shape_subjects
    for split, people in (("test", VH_TEST), ("train", VH_TRAIN)):
        # one knee (its model already built) counted in the test split, then in the training split
        monkeypatch.setattr(synth, "acl_shape_subjects", lambda name, folder=None, split=split:
                            few_subjects[:1] if name == split else splits(name, folder))
        asked.clear()
        case = synth.draw_case(0, np.random.default_rng(1), few_subjects[:1], OAI)
        assert asked == [people, people]  # PCL and ACL
        acl = next(p for p in case.pieces if p.kind == "acl")
        assert np.allclose(acl.band.half_n / 3.0, acl.band.half_n[0] / 3.0)  # the real profile, stretched
