"""`mskai segment` end to end with the bundled demo model package, on the real knee series and synthetic data."""

import json

import pydicom

from conftest import run_mskai
from mskai.dicom import index_folder
from mskai.volume_files import read_volume_file
from mskai.models.registry import find_model


def test_the_bundled_demo_model_is_listed_and_says_demo():
    package = find_model("mskai-bones-demo")
    assert package.metadata["demo"] is True and "synthetic" in package.metadata["training_data"].lower()
    assert package.source.parent.name == "Models" and package.source.parent.parent.name == "Resources"
    assert (package.source / "model.safetensors").stat().st_size < 10 * 2**20
    assert "mskai-bones-demo@" in run_mskai("models", "list").stdout


def test_segment_the_real_knee_series_from_a_slicer_database(knee_dicom, tmp_path):
    index_folder(knee_dicom, tmp_path / "db")
    result = run_mskai("segment", tmp_path / "db", "--series", "1", "-o", tmp_path / "out", "--progress", "json",
                 "--threads", "2", "--dicom-seg")
    assert "not for clinical use" in result.stderr
    progress = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {p["stage"] for p in progress} == {"preprocess", "infer", "postprocess"}
    out = tmp_path / "out"
    for name in ("labels.nii.gz", "labels.nrrd", "segmentation.seg.nrrd", "report.json", "report.csv",
                 "segmentation.dcm"):
        assert (out / name).is_file(), name
    labels = read_volume_file(out / "labels.nrrd")
    assert labels.shape == (256, 256, 24)  # the first echo's grid, not the model's
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["id"] == "mskai-bones-demo" and report["model"]["demo"] is True
    assert set(report["timings_s"]) >= {"load", "preprocess", "infer", "postprocess", "meshes"}
    seg = pydicom.dcmread(out / "segmentation.dcm")
    source = pydicom.dcmread(next(knee_dicom.iterdir()), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert not list(out.glob(".mskai-staging-*"))


def test_segment_a_volume_file_and_evaluate_against_the_truth(tmp_path):
    run_mskai("synth", "knee", tmp_path / "dicom", "--truth", tmp_path / "truth.nii.gz", "--seed", "7")
    run_mskai("dicom", "convert", tmp_path / "dicom", tmp_path / "knee.nrrd")
    run_mskai("segment", tmp_path / "knee.nrrd", "-o", tmp_path / "out", "--formats", "nrrd,seg.nrrd,report",
        "--progress", "none")
    result = run_mskai("evaluate", tmp_path / "out" / "segmentation.seg.nrrd", tmp_path / "truth.nii.gz",
                 "--json", tmp_path / "scores.json")
    rows = {r["name"]: r for r in json.loads((tmp_path / "scores.json").read_text())}
    assert "femur" in result.stdout and set(rows) == {"tibia", "femur", "fibula", "pelvis", "patella", "sacrum"}
    assert rows["femur"]["reference_volume_ml"] > 50
    assert rows["femur"]["dice"] > MIN_DEMO_DICE and rows["tibia"]["dice"] > MIN_DEMO_DICE


def test_failed_run_leaves_no_output_files(tmp_path):
    run_mskai("synth", "series", tmp_path / "dicom", "--shape", "64", "64", "20")
    run_mskai("dicom", "convert", tmp_path / "dicom", tmp_path / "v.nii.gz")
    result = run_mskai("segment", tmp_path / "v.nii.gz", "-o", tmp_path / "out", "--dicom-seg", "--progress", "none",
                 ok=False)
    assert result.returncode == 1 and "DICOM SEG needs a DICOM input series" in result.stderr
    assert list((tmp_path / "out").rglob("*")) == []


def test_bad_model_and_bad_input_messages(tmp_path):
    result = run_mskai("segment", tmp_path / "nothing.nrrd", "-o", tmp_path / "out", ok=False)
    assert result.returncode == 1 and "error" in result.stderr and "Traceback" not in result.stderr
    result = run_mskai("segment", tmp_path, "-o", tmp_path / "out", "--model", "no-such-model", ok=False)
    assert "No model 'no-such-model'" in result.stderr


MIN_DEMO_DICE = 0.85  # held-out knee cases score 0.95-0.97 for femur and tibia (README, scripts/evaluate_demo_model.py)
