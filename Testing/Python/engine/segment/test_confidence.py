"""The per-voxel confidence map (1 - normalised entropy), its per-bone numbers, and segment_to_folder."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from conftest import make_package
from mskai import MskaiError
from mskai.outputs import OUTPUT_MARKER
from mskai.volume_files import read_volume_file, write_volume
from mskai.models.package import load_package
from mskai import grid
from mskai.segment.infer import SegmentOptions, segment_volume
from mskai.segment.labels import BONES
from mskai.segment.outputs import bone_statistics, write_outputs
from mskai.segment.postprocess import PostprocessOptions
from mskai.grid import argmax_on_grid, confidence_from_probabilities, confidence_percent
from mskai.segment.run import segment_to_folder
from mskai.synth.phantom import phantom
from mskai.volume import Volume

N_CLASSES = len(BONES) + 1  # background + the bones of the test packages (the whole label table)


def _constant_confidence(n_classes=N_CLASSES, bias=5.0):
    """Confidence of the constant-class test package: softmax of one logit 5, the others 0."""
    p = np.full(n_classes, 1.0)
    p[0] = math.exp(bias)
    p /= p.sum()
    return 1 + float(np.sum(p * np.log(p))) / math.log(n_classes)


@pytest.fixture(scope="module")
def femur_everywhere(tmp_path_factory):
    return load_package(make_package(tmp_path_factory.mktemp("pkg") / "const", constant_class=2))


# --- the formula --------------------------------------------------------------------------------------------


def test_known_probabilities_uniform_one_hot_and_two_way():
    uniform = torch.full((N_CLASSES, 3, 4, 5), 1 / N_CLASSES)
    assert torch.allclose(confidence_from_probabilities(uniform), torch.zeros(3, 4, 5), atol=1e-6)
    one_hot = F.one_hot(torch.randint(0, N_CLASSES, (3, 4, 5)), N_CLASSES).permute(3, 0, 1, 2).float()
    assert torch.equal(confidence_from_probabilities(one_hot), torch.ones(3, 4, 5))
    two_way = torch.zeros(N_CLASSES, 2, 2, 2)
    two_way[1:3] = 0.5
    expected = 1 - math.log(2) / math.log(N_CLASSES)
    assert torch.allclose(confidence_from_probabilities(two_way), torch.full((2, 2, 2), expected), atol=1e-6)
    before = two_way.clone()
    confidence_percent(two_way)
    assert torch.equal(two_way, before), "not in place unless asked"
    assert confidence_percent(uniform).dtype == np.uint8
    assert set(np.unique(confidence_percent(uniform))) == {0}
    assert set(np.unique(confidence_percent(one_hot))) == {100}
    assert set(np.unique(confidence_percent(two_way))) == {round(100 * expected)}


def test_the_pipeline_function_gives_the_known_values_on_the_same_grid():
    """argmax_on_grid's confidence_out, with no resampling (same shape), holds exactly the formula's values."""
    rng = np.random.default_rng(1)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(scale=3, size=(4, 9, 8, 7)).astype(np.float32)), 0)
    probabilities[:, 0] = 0.25  # a uniform plane
    probabilities[:, 1] = 0.0
    probabilities[2, 1] = 1.0  # a certain plane
    labels, confidence = np.zeros((9, 8, 7), np.uint8), np.full((9, 8, 7), 255, np.uint8)
    argmax_on_grid(probabilities, (9, 8, 7), out=labels, confidence_out=confidence)
    entropy = -(probabilities * probabilities.log()).nan_to_num(0.0).sum(0)
    expected = np.rint(100 * (1 - entropy.numpy() / math.log(4)))
    assert np.abs(confidence.astype(int) - expected).max() <= 1  # rounding at x.5 aside
    assert np.all(confidence[0] == 0) and np.all(confidence[1] == 100) and np.all(labels[1] == 2)
    assert confidence.max() <= 100


@pytest.mark.parametrize("shape", [(17, 23, 9), (30, 25, 41)])
def test_slab_by_slab_confidence_equals_one_slab_and_one_interpolation(shape, monkeypatch):
    """Bounded memory: small slabs give the very values of a single slab; no slab holds all output classes."""
    rng = np.random.default_rng(0)
    probabilities = torch.softmax(torch.from_numpy(rng.normal(size=(4, 12, 10, 14)).astype(np.float32)), 0)
    single_l, single_c = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    argmax_on_grid(probabilities, shape, slab_voxels=10**9, out=single_l, confidence_out=single_c)

    sizes, real = [], grid._resampled_slabs

    def recording(*args):
        for start, stop, slab in real(*args):
            sizes.append(slab.numel())
            yield start, stop, slab

    monkeypatch.setattr(grid, "_resampled_slabs", recording)
    out_l = np.full(shape[::-1], 9, np.uint8).T  # non-contiguous targets, as the input-ordered views are
    out_c = np.full(shape[::-1], 255, np.uint8).T
    argmax_on_grid(probabilities, shape, slab_voxels=600, out=out_l, confidence_out=out_c)
    assert len(sizes) > 2 and max(sizes) < 4 * math.prod(shape) / 2  # many slabs, each far below C x full size
    np.testing.assert_array_equal(out_c, single_c)
    np.testing.assert_array_equal(out_l, single_l)
    whole = F.interpolate(probabilities[None], size=shape, mode="trilinear", align_corners=False)[0]
    reference = np.rint(100 * confidence_from_probabilities(whole).numpy())
    assert np.abs(out_c.astype(int) - reference).max() <= 1


# --- segment_volume ------------------------------------------------------------------------------------------


def test_confidence_is_on_the_input_grid_with_the_known_value(femur_everywhere):
    v = phantom(shape=(40, 36, 10), spacing=(0.7, 0.6, 3.0), plane="sagittal", tilt_deg=10)
    v.meta["modality"] = "MR"
    off = segment_volume(v, femur_everywhere, SegmentOptions(postprocess=PostprocessOptions(enabled=False)))
    assert off.confidence is None
    result = segment_volume(v, femur_everywhere, SegmentOptions(confidence=True,
                                                                postprocess=PostprocessOptions(enabled=False)))
    conf = result.confidence
    assert conf.shape == result.labels.shape == v.shape and conf.array.dtype == np.uint8
    np.testing.assert_array_equal(conf.affine_lps, result.labels.affine_lps)
    np.testing.assert_array_equal(result.labels.array, off.labels.array)  # asking for it changes no label
    assert set(np.unique(conf.array)) == {round(100 * _constant_confidence())}


@pytest.mark.parametrize("slab,rows", [((5, 15, "slices"), (5, 15)), ((10.0, 50.0, "mm"), None)])
def test_outside_the_slab_the_confidence_is_zero(femur_everywhere, slab, rows):
    v = phantom(shape=(30, 30, 24), spacing=(2.0, 2.0, 2.5), plane="axial", origin=(0, 0, 0))
    result = segment_volume(v, femur_everywhere, SegmentOptions(slab=slab, confidence=True,
                                                                postprocess=PostprocessOptions(enabled=False)))
    segmented = result.labels.array.reshape(-1, 24).any(0)
    if rows:
        assert np.array_equal(np.nonzero(segmented)[0], np.arange(*rows))
    per_slice = result.confidence.array.reshape(-1, 24)
    assert np.all(per_slice[:, ~segmented] == 0)
    assert np.all(per_slice[:, segmented] == round(100 * _constant_confidence()))


# --- per-bone numbers and files -----------------------------------------------------------------------------


def test_bone_numbers_on_a_hand_made_map():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8, 2:8, 2:8] = 2  # femur: 216 voxels
    labels[10:12, 10:12, 10:15] = 5  # patella: 20 voxels
    rng = np.random.default_rng(3)
    conf = rng.integers(0, 101, labels.shape).astype(np.uint8)
    rows = {r["name"]: r for r in bone_statistics(Volume(labels, np.eye(4)), confidence=Volume(conf, np.eye(4)))}
    for name, value in (("femur", 2), ("patella", 5)):
        values = conf[labels == value] / 100
        assert rows[name]["mean_confidence"] == pytest.approx(values.mean(), abs=1e-4)
        assert rows[name]["p05_confidence"] == pytest.approx(np.percentile(values, 5, method="inverted_cdf"))
        assert rows[name]["uncertain_fraction"] == pytest.approx((values < 0.5).mean(), abs=1e-4)
    assert rows["tibia"]["mean_confidence"] is None and rows["tibia"]["uncertain_fraction"] is None
    as_float = bone_statistics(Volume(labels, np.eye(4)), confidence=Volume(conf / 100.0, np.eye(4)))
    assert as_float == list(rows.values())  # a float map in [0, 1] gives the same numbers
    plain = bone_statistics(Volume(labels, np.eye(4)))
    assert all(r["mean_confidence"] is None and r["p05_confidence"] is None for r in plain)
    with pytest.raises(MskaiError, match="not on the label map's grid"):
        bone_statistics(Volume(labels, np.eye(4)), confidence=Volume(conf[:, :, :10], np.eye(4)))


def test_write_outputs_writes_the_map_only_when_given(tmp_path):
    labels = Volume(np.zeros((20, 20, 20), np.uint8), np.eye(4))
    labels.array[4:12, 4:12, 4:12] = 2

    class Model:
        id, version, metadata = "test-bones", "1.0.0", {"demo": True}

    out = write_outputs(labels, tmp_path / "a", model=Model(), timings={}, settings={}, formats=("nrrd", "report"))
    assert not (tmp_path / "a" / "confidence.nrrd").exists() and "confidence_nrrd" not in out["files"]
    assert out["report"]["confidence"] is None
    with open(tmp_path / "a" / "report.csv") as f:
        femur = next(r for r in csv.DictReader(f) if r["name"] == "femur")
    assert femur["mean_confidence"] == "" and femur["uncertain_fraction"] == ""
    conf = Volume(np.full((20, 20, 20), 80, np.uint8), np.eye(4))
    out = write_outputs(labels, tmp_path / "b", model=Model(), timings={}, settings={}, formats=("report",),
                        confidence=conf)
    assert (tmp_path / "b" / "confidence.nrrd").is_file() and out["report"]["confidence"]["outside_slab"] == 0
    femur = next(b for b in out["report"]["bones"] if b["name"] == "femur")
    assert femur["mean_confidence"] == 0.8 and femur["uncertain_fraction"] == 0.0
    with pytest.raises(MskaiError, match="not on the label map's grid"):
        write_outputs(labels, tmp_path / "c", model=Model(), timings={}, settings={}, formats=("nrrd",),
                      confidence=Volume(conf.array, np.diag([2.0, 1, 1, 1])))
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A synthetic knee segmented by the bundled demo model, confidence on, through segment_to_folder."""
    from mskai.models.registry import find_model
    from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, KneeLabelSource, synthetic_case

    source = KneeLabelSource(BUNDLED_KNEE_LABELS)
    image, _ = synthetic_case(source, np.random.default_rng(3), (1.0, 1.0, 2.0), extent_mm=(150, 150, 120),
                              plane="sagittal", centre=source.centre_mm)
    folder = tmp_path_factory.mktemp("demo") / "out"
    calls = []
    out = segment_to_folder(lambda: calls.append(1) or image, find_model("mskai-bones-demo"), folder,
                            options=SegmentOptions(confidence=True, threads=2), formats="nrrd,report")
    assert calls == [1]
    return image, folder, out


def test_bone_means_equal_the_written_map_over_the_written_labels(demo_run):
    image, folder, out = demo_run
    labels = read_volume_file(folder / "labels.nrrd")
    conf = read_volume_file(folder / "confidence.nrrd")
    assert conf.shape == labels.shape == image.shape and conf.array.dtype == np.uint8
    np.testing.assert_allclose(conf.affine_lps, labels.affine_lps)
    np.testing.assert_allclose(conf.affine_lps, image.affine_lps, atol=1e-5)
    assert 0 <= conf.array.min() and conf.array.max() <= 100
    report = json.loads((folder / "report.json").read_text())
    assert report == json.loads(json.dumps(out["report"]))
    with open(folder / "report.csv") as f:
        csv_rows = {r["name"]: r for r in csv.DictReader(f)}
    present = 0
    for bone in report["bones"]:
        values = conf.array[labels.array == bone["value"]] / 100.0
        if values.size == 0:
            assert bone["mean_confidence"] is None and csv_rows[bone["name"]]["mean_confidence"] == ""
            continue
        present += 1
        assert bone["mean_confidence"] == pytest.approx(values.mean(), abs=1e-4)
        assert bone["p05_confidence"] == pytest.approx(np.percentile(values, 5, method="inverted_cdf"))
        assert bone["uncertain_fraction"] == pytest.approx((values < 0.5).mean(), abs=1e-4)
        assert float(csv_rows[bone["name"]]["mean_confidence"]) == bone["mean_confidence"]
        assert 0.5 < bone["mean_confidence"] < 1 and bone["p05_confidence"] < bone["mean_confidence"]
    assert present >= 3  # femur, tibia, patella at least


def test_the_map_is_lowest_at_bone_borders(demo_run):
    """Where the network hesitates: the outer rim of each bone, not its inside or the far background."""
    _, folder, _ = demo_run
    labels = read_volume_file(folder / "labels.nrrd").array
    conf = read_volume_file(folder / "confidence.nrrd").array.astype(float)
    bone = labels > 0
    inner = ndimage.binary_erosion(bone, iterations=3)
    rim = bone & ~ndimage.binary_erosion(bone)
    far = ~ndimage.binary_dilation(bone, iterations=6)
    assert conf[rim].mean() + 10 < conf[inner].mean()
    assert conf[rim].mean() + 10 < conf[far].mean()
    assert (conf[rim] < 50).mean() > 5 * max((conf[inner] < 50).mean(), 1e-4)


def test_segment_to_folder_returns_final_paths_and_marks_the_folder(demo_run):
    _, folder, out = demo_run
    assert out["files"]["confidence_nrrd"] == str(folder.resolve() / "confidence.nrrd")
    for value in out["files"].values():
        for path in value if isinstance(value, list) else [value]:
            assert (folder / path).is_file(), path
    assert (folder / OUTPUT_MARKER).is_file()
    assert set(out["report"]["timings_s"]) >= {"load", "preprocess", "infer", "postprocess"}


def test_segment_to_folder_checks_cheap_things_first_and_leaves_outputs_untouched(tmp_path, femur_everywhere):
    v = phantom(shape=(32, 32, 16), spacing=(2.0, 2.0, 2.0))
    calls = []

    def loader():
        calls.append(1)
        return v

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(MskaiError, match="not an earlier mskai output"):
        segment_to_folder(loader, femur_everywhere, mine, options=SegmentOptions())
    with pytest.raises(MskaiError, match="Unknown output format"):
        segment_to_folder(loader, femur_everywhere, tmp_path / "x", formats="nrrd,png")
    with pytest.raises(MskaiError, match="No model 'no-such-model'"):
        segment_to_folder(loader, "no-such-model", tmp_path / "x")
    assert calls == [] and not (tmp_path / "x").exists()

    out = tmp_path / "out"
    first = segment_to_folder(v, femur_everywhere.source, out, formats=("nrrd",),  # a Path is a package path
                              options=SegmentOptions(postprocess=PostprocessOptions(enabled=False)))
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, "labels.nrrd"])
    assert "confidence_nrrd" not in first["files"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken():
        raise MskaiError("cannot read that series")

    with pytest.raises(MskaiError, match="cannot read that series"):
        segment_to_folder(broken, femur_everywhere, out, options=SegmentOptions(confidence=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]  # no staging folder left

    only = segment_to_folder(v, femur_everywhere, tmp_path / "only", formats=(), options=SegmentOptions(confidence=True))
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == sorted([OUTPUT_MARKER, "confidence.nrrd"])
    assert only["report"]["bones"][1]["mean_confidence"] is not None


def test_cli_confidence_prints_a_column_and_writes_the_map(tmp_path, capsys, femur_everywhere):
    from mskai.cli import main

    write_volume(phantom(shape=(40, 40, 24), spacing=(1.5, 1.5, 1.5), plane="axial"), tmp_path / "v.nrrd")
    common = [str(tmp_path / "v.nrrd"), "--model", str(femur_everywhere.source), "--progress", "none",
              "--formats", "nrrd,report", "--min-volume-ml", "0", "--threads", "2"]
    assert main(["segment", *common, "-o", str(tmp_path / "plain")]) == 0
    plain = capsys.readouterr().out
    assert plain.splitlines()[0].split()[-1] == "cm2" and not (tmp_path / "plain" / "confidence.nrrd").exists()
    assert main(["segment", *common, "-o", str(tmp_path / "conf"), "--confidence"]) == 0
    printed = capsys.readouterr().out
    header, femur = printed.splitlines()[0], next(line for line in printed.splitlines() if line.startswith("femur"))
    assert header.split()[-1] == "confidence"
    assert femur.split()[-1] == f"{round(100 * _constant_confidence()) / 100:.2f}"
    assert next(line for line in printed.splitlines() if line.startswith("tibia")).split()[-1] == "-"
    conf = read_volume_file(tmp_path / "conf" / "confidence.nrrd")
    labels = read_volume_file(tmp_path / "conf" / "labels.nrrd")
    assert conf.shape == labels.shape and np.allclose(conf.affine_lps, labels.affine_lps)
    report = json.loads((tmp_path / "conf" / "report.json").read_text())
    assert report["confidence"]["file"] == "confidence.nrrd" and report["files"]["confidence_nrrd"] == "confidence.nrrd"
