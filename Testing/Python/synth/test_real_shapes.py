"""Real OAI bone shapes: femur/tibia split, subject split, and rendering through the SynthSeg generator."""

import numpy as np
import pytest

from conftest import SHARED_DATA
from mskai.synth.real_shapes import (RealKneeSource, load_oai_mask, oai_subjects, spacing_of, split_femur_tibia,
                                     split_quality, split_subjects)
from mskai.synth.synthseg import AIR, FAT, MUSCLE, make_sample, synthetic_case

OAI = SHARED_DATA / "oai_knee_bone_masks"
# a typical knee, and one whose femur and tibia touch in the mask
SUBJECTS = ("9002116", "9393987")


@pytest.fixture(scope="module")
def oai_splits():
    if not OAI.is_dir():
        pytest.skip(f"the OAI masks are missing: {OAI} (set MSKAI_SHARED_DATA)")
    out = {}
    for subject in SUBJECTS:
        mask, affine = load_oai_mask(OAI / f"{subject}.nii.gz")
        out[subject] = mask, affine, split_femur_tibia(mask, spacing_of(affine))
    return out


def test_real_knees_split_into_femur_above_tibia_each_one_piece(oai_splits):
    for subject, (mask, affine, labels) in oai_splits.items():
        assert labels.dtype == np.uint8 and labels.shape == mask.shape
        assert set(np.unique(labels)) == {0, 1, 2}
        assert not (labels[mask == 0] > 0).sum() > 0.01 * mask.sum()  # the split stays (almost) on the mask
        assert (labels > 0).sum() >= 0.9 * mask.sum()
        q = split_quality(labels)
        assert q["ok"], (subject, q)
        assert q["femur_z"] > q["tibia_z"] + 20 / affine[2, 2]  # centroids well apart along superior
        assert q["femur_main"] == q["tibia_main"] == 1.0


def test_touching_bones_are_cut_at_the_bridge():
    mask = np.zeros((30, 30, 60), dtype=np.uint8)
    mask[3:27, 3:27, 5:28] = 1  # tibia
    mask[3:27, 3:27, 31:55] = 1  # femur
    mask[14:16, 14:16, 28:31] = 1  # a thin bridge across the joint space
    labels = split_femur_tibia(mask, (1.0, 1.0, 1.0))
    assert (labels[:, :, :28][mask[:, :, :28] > 0] == 1).all()
    assert (labels[:, :, 31:][mask[:, :, 31:] > 0] == 2).all()


def test_subject_split_is_disjoint_deterministic_and_order_free():
    ids = [f"9{n:06d}" for n in range(196)]
    split = split_subjects(ids)
    assert [len(split[k]) for k in ("train", "val", "test")] == [156, 10, 30]
    assert set().union(*split.values()) == set(ids)
    assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
    assert not set(split["train"]) & set(split["val"])
    shuffled = list(np.random.default_rng(3).permutation(ids))
    assert split_subjects(shuffled) == split == split_subjects(ids)
    assert split_subjects(ids, seed=1) != split
    # one more subject moves at most one case out of the test set
    assert len(set(split["test"]) - set(split_subjects(ids + ["9999999"])["test"])) <= 1
    with pytest.raises(ValueError):
        split_subjects(ids[:20])


def test_shared_oai_folder_lists_its_subjects():
    if not OAI.is_dir():
        pytest.skip("the OAI masks are missing")
    ids = oai_subjects(OAI)
    assert len(ids) == 196 and ids == sorted(ids) and ids[0] == "9002116"


def test_real_knee_source_renders_femur_and_tibia_in_a_body(oai_splits):
    mask, affine, labels = oai_splits["9002116"]
    source = RealKneeSource(labels, spacing_of(affine), affine, rng=np.random.default_rng(0))
    assert source.labelled == {1, 2}
    tissue = set(np.unique(source.tissue.numpy()))
    assert {AIR, MUSCLE, FAT} <= tissue  # a body envelope, not bones in air
    rng = np.random.default_rng(1)
    image, bones = synthetic_case(source, rng, (2.0, 2.0, 2.0), extent_mm=(140, 140, 140), plane="sagittal",
                                  centre=np.mean(source.bone_box_mm, axis=0))
    assert image.array.shape == bones.array.shape == (70, 70, 70)
    assert set(np.unique(bones.array)) == {0, 1, 2}
    assert image.array.std() > 0
    # femur above tibia in the rendered case too (LPS: +z is superior)
    ijk = {v: np.argwhere(bones.array == v).mean(0) for v in (1, 2)}
    z = {v: (bones.affine_lps[:3, :3] @ c + bones.affine_lps[:3, 3])[2] for v, c in ijk.items()}
    assert z[2] > z[1]
    patch, patch_labels = make_sample(source, rng, (32, 32, 32), (2.0, 2.0, 2.0))
    assert patch.shape == (1, 32, 32, 32) and set(np.unique(patch_labels.numpy())) <= {0, 1, 2}


def test_real_knee_source_refuses_unknown_labels_and_other_axis_orders():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[3:6, 3:6, 3:6] = 9
    with pytest.raises(ValueError, match="unknown bone labels"):
        RealKneeSource(labels, (1.0, 1.0, 1.0))
    sagittal_lps_like = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    with pytest.raises(ValueError, match="axes"):
        RealKneeSource(labels // 9, (1.0, 1.0, 1.0), sagittal_lps_like)


def test_pd_knee_is_turned_to_lr_ap_is_with_its_anatomy_in_place():
    from mskai.synth.real_shapes import load_pd_knee

    path = SHARED_DATA / "knee_pd_sagittal_label" / "knee_pd_sagittal_label.nrrd"
    labels, affine = load_pd_knee(path)
    assert np.array_equal(np.abs(affine[:3, :3]).argmax(0), [0, 1, 2]) and (np.diag(affine[:3, :3]) > 0).all()
    assert abs(spacing_of(affine)[0] - 4 * 22 / (labels.shape[0] - 1)) < 1e-6  # 23 slices of 4 mm, interpolated
    ras = {v: (affine[:3, :3] @ np.argwhere(labels == v).mean(0) + affine[:3, 3]) for v in (1, 2, 5)}
    assert ras[2][2] > ras[1][2] + 30  # femur above tibia (RAS: +S)
    assert ras[5][1] > ras[2][1] + 20  # patella anterior of the femur (RAS: +A)
    assert RealKneeSource(labels, spacing_of(affine), affine).labelled == {1, 2, 5}


def test_synthetic_case_can_return_its_tissue_map_on_the_same_grid():
    from mskai.synth.synthseg import MARROW, LowerLimbPhantom

    rng = np.random.default_rng(4)
    phantom = LowerLimbPhantom(rng)
    image, labels, tissue = synthetic_case(phantom, rng, (3.0, 3.0, 3.0), extent_mm=(90, 90, 90), plane="coronal",
                                           centre=phantom.knee, with_tissue=True)
    assert tissue.shape == labels.shape == image.shape and np.array_equal(tissue.affine_lps, labels.affine_lps)
    marrow = np.isin(tissue.array, list(MARROW.values()))
    assert marrow.any() and (labels.array[marrow] > 0).all() and (labels.array[tissue.array == AIR] == 0).all()
