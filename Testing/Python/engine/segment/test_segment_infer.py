"""Inference pipeline, post-processing and outputs with real (small) model packages and real files."""

import numpy as np
import pytest

from conftest import make_package
from mskai import MskaiError
from mskai.models.package import load_package
from mskai.segment.infer import Cancelled, SegmentOptions, segment_volume
from mskai.segment.postprocess import Cleanup, PostprocessOptions, clean_labels
import torch
import torch.nn.functional as F

from mskai.grid import argmax_on_grid, canonical_grid, model_image, normalise
from mskai.synth.phantom import phantom
from mskai.volume import Volume


@pytest.fixture
def femur_everywhere(tmp_path):
    """A package whose network says 'femur' (2) for every voxel."""
    return load_package(make_package(tmp_path / "const", constant_class=2))


@pytest.mark.parametrize("plane,tilt", [("sagittal", 0), ("coronal", 20), ("axial", 0)])
def test_canonical_round_trip(plane, tilt):
    v = phantom(plane=plane, tilt_deg=tilt)
    grid = canonical_grid(v, [1.0, 1.0, 1.0])
    canonical = grid.to_canonical(v.array)
    assert canonical.shape == grid.canonical_shape
    np.testing.assert_array_equal(grid.from_canonical(canonical), v.array)
    # canonical axes point (approximately) to R, A, S
    directions = grid.canonical_affine_ras[:3, :3] / grid.canonical_spacing
    assert np.all(np.diag(directions) > 0.7)


@pytest.mark.parametrize("shape", [(17, 23, 9), (50, 41, 70)])
def test_slab_by_slab_resampling_equals_one_trilinear_interpolation(shape):
    """The memory-bounded paths give the values of one whole-volume interpolation (down- and up-sampling)."""
    rng = np.random.default_rng(0)
    source = rng.integers(-100, 2000, (33, 29, 31)).astype(np.int16)
    view = source[::-1, :, ::-1].transpose(1, 0, 2)  # a strided, flipped view, as canonical order gives
    intensity = {"method": "percentile", "lower": 0.5, "upper": 99.5}
    whole = F.interpolate(torch.from_numpy(normalise(view, intensity))[None, None], size=shape, mode="trilinear",
                          align_corners=False)[0, 0]
    np.testing.assert_allclose(model_image(view, shape, intensity, slab_voxels=600), whole, atol=1e-5)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(4, 12, 10, 14)).astype(np.float32)), 0)
    expected = F.interpolate(probabilities[None], size=shape, mode="trilinear", align_corners=False)[0].argmax(0)
    out = np.full(shape[::-1], 9, np.uint8).T  # a non-contiguous (Fortran-order) target to fill
    argmax_on_grid(probabilities, shape, slab_voxels=600, out=out)
    assert (out == expected.numpy()).mean() > 0.999  # float ties aside


def test_output_is_on_the_input_grid(femur_everywhere):
    v = phantom(shape=(40, 36, 10), spacing=(0.7, 0.6, 3.0), plane="sagittal", tilt_deg=10)
    v.meta["modality"] = "MR"
    stages = []
    result = segment_volume(v, femur_everywhere, SegmentOptions(postprocess=PostprocessOptions(enabled=False)),
                            progress=lambda stage, f: stages.append((stage, f)))
    assert result.labels.shape == v.shape
    np.testing.assert_allclose(result.labels.affine_lps, v.affine_lps)
    assert np.all(result.labels.array == 2)
    assert {s for s, _ in stages} == {"preprocess", "infer", "postprocess"}
    assert max(f for s, f in stages if s == "infer") == 1.0
    assert set(result.timings) == {"preprocess", "infer", "postprocess"}


def test_cancel_stops_between_windows(femur_everywhere):
    v = phantom(shape=(64, 64, 20), spacing=(2, 2, 6))  # several 32^3 windows on the 2 mm model grid
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        segment_volume(v, femur_everywhere, SegmentOptions(batch_size=1), cancel=cancel)
    assert len(calls) == 2


@pytest.mark.parametrize("slab,expect_rows", [((10.0, 50.0, "mm"), None), ((5, 15, "slices"), (5, 15))])
def test_slab_limits_the_segmented_range(femur_everywhere, slab, expect_rows):
    v = phantom(shape=(30, 30, 24), spacing=(2.0, 2.0, 2.5), plane="axial", origin=(0, 0, 0))
    opts = SegmentOptions(slab=slab, postprocess=PostprocessOptions(enabled=False))
    labels = segment_volume(v, femur_everywhere, opts).labels.array
    s_of_k = v.ijk_to_lps(np.c_[np.zeros(24), np.zeros(24), np.arange(24)])[:, 2]
    has = labels.reshape(-1, 24).any(0)
    if expect_rows:
        assert np.array_equal(np.nonzero(has)[0], np.arange(*expect_rows))
    else:
        assert np.array_equal(has, (s_of_k >= 10) & (s_of_k <= 50))


def test_bad_inputs_are_refused_clearly(femur_everywhere):
    v = phantom()
    v.array = v.array.astype(np.float32)
    v.array[3, 3, 3] = np.nan
    with pytest.raises(MskaiError, match="1 NaN"):
        segment_volume(v, femur_everywhere)
    with pytest.raises(MskaiError, match="too small"):
        segment_volume(Volume(np.zeros((5, 40, 40)), np.eye(4)), femur_everywhere)
    ct = phantom()
    ct.meta["modality"] = "CT"
    with pytest.raises(MskaiError, match="segments MR images; this series is CT"):
        segment_volume(ct, femur_everywhere)
    assert segment_volume(ct, femur_everywhere, SegmentOptions(check_compatibility=False)).labels.shape == ct.shape
    flat = Volume(np.full((20, 20, 20), 7.0), np.eye(4))
    with pytest.raises(MskaiError, match="constant intensity"):
        segment_volume(flat, femur_everywhere)


def test_memory_estimate_falls_back_then_refuses(femur_everywhere, monkeypatch):
    import mskai.segment.infer as infer

    v = phantom(shape=(60, 60, 20), spacing=(1, 1, 3))
    needed = infer.estimate_memory_bytes((60, 60, 30), 6, (32, 32, 32), 1)
    monkeypatch.setattr(infer, "_available_bytes", lambda: int(needed * 1.2 / 0.6))
    result = segment_volume(v, femur_everywhere)
    assert result.settings["batch_size"] == 1 and result.settings["fallbacks"]
    monkeypatch.setattr(infer, "_available_bytes", lambda: 1000)
    with pytest.raises(MskaiError, match="Not enough memory"):
        segment_volume(v, femur_everywhere)


def _ball(shape, centre, radius):
    g = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(g - np.asarray(centre), axis=-1) <= radius


def test_postprocess_islands_components_and_3d_holes():
    labels = np.zeros((60, 60, 60), np.uint8)
    labels[_ball(labels.shape, (20, 20, 20), 10)] = 1
    labels[_ball(labels.shape, (20, 20, 20), 4)] = 0  # a closed cavity: only 3D filling sees it is enclosed
    labels[_ball(labels.shape, (45, 45, 45), 9)] = 1  # second large piece (other leg)
    labels[_ball(labels.shape, (45, 10, 10), 8)] = 1  # third large piece: dropped by max_components=2
    labels[50, 50, 5] = 1  # island below 1 %
    labels[5:15, 40:50, 40:50] = 3
    labels[10, 45, 40:50] = 0  # a tunnel through the fibula box: open, so not a hole
    out = clean_labels(labels, [1, 2, 3])
    assert out[20, 20, 20] == 1  # cavity filled
    assert out[45, 45, 45] == 1 and out[45, 10, 10] == 0 and out[50, 50, 5] == 0
    assert np.all(out[10, 45, 40:50] == 0)
    one = clean_labels(labels, [1], PostprocessOptions(per_label={1: Cleanup(max_components=1)}))
    assert one[45, 45, 45] == 0 and one[20, 20, 20] == 1
    assert np.array_equal(clean_labels(labels, [1], PostprocessOptions(enabled=False)), labels)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_postprocess_in_chunks_matches_whole_volume_labelling(chunk):
    """Pieces found chunk by chunk (bounded memory) are the pieces of one 26-connected labelling."""
    from scipy import ndimage

    from mskai.segment import postprocess

    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.normal(size=(30, 28, 26)), 1.5) > 0.12  # many touching, branching pieces
    mask[0, :, 4:9] = mask[-1, :, 4:9] = True  # pieces on opposite faces must stay apart
    region = mask.astype(np.uint8)
    piece, sizes, boxes, _ = postprocess.chunked_pieces(region, 1, chunk)
    whole, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert len(sizes) == n and sorted(sizes) == sorted(np.bincount(whole.ravel())[1:])
    expected = sorted((tuple(s.start for s in b), tuple(s.stop for s in b)) for b in ndimage.find_objects(whole))
    assert sorted((tuple(lo), tuple(hi)) for lo, hi in boxes) == expected
    rule = Cleanup(max_components=3, min_island_fraction=0.0, min_extra_fraction=0.0, fill_holes=False)
    cleaned = region.copy()
    postprocess._clean_one(cleaned, 1, rule, 0.0, chunk=chunk)
    largest = np.argsort(np.bincount(whole.ravel())[1:])[::-1][:3] + 1
    np.testing.assert_array_equal(cleaned == 1, np.isin(whole, largest))


def test_postprocess_drops_stray_pieces_and_stray_bones():
    labels = np.zeros((60, 60, 60), np.uint8)
    labels[_ball(labels.shape, (20, 20, 20), 12)] = 2  # femur, 7.2 mL at 1 mm
    labels[_ball(labels.shape, (45, 45, 45), 6)] = 2  # a blob an eighth of it: not the other leg's femur
    labels[_ball(labels.shape, (45, 12, 12), 4)] = 4  # a lone 0.27 mL "pelvis" in a knee
    out = clean_labels(labels, [2, 4], voxel_ml=0.001)
    assert out[20, 20, 20] == 2 and out[45, 45, 45] == 0 and out[45, 12, 12] == 0
    kept = clean_labels(labels, [2, 4], PostprocessOptions.from_settings(min_extra_fraction=0.1, min_volume_ml=0.1),
                        voxel_ml=0.001)
    assert kept[45, 45, 45] == 2 and kept[45, 12, 12] == 4
    assert clean_labels(labels, [4])[45, 12, 12] == 4  # no voxel size given: no volume rule
