"""`mskai batch segment`: one folder per series, a failing series reported, resume, no identifiers written."""

import json

import pytest

from conftest import make_package, run_mskai
from mskai.dicom import index_folder
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom

PATIENT = ("DOE^JANE", "PID-998877")


@pytest.fixture
def tree(tmp_path):
    """Three small series of one patient on disk (one with a slice missing) and a real model package."""
    for n, plane in enumerate(("sagittal", "coronal", "axial")):
        write_series(phantom(shape=(40, 40, 12), plane=plane), tmp_path / "in" / plane, series_number=n + 1,
                     patient=PATIENT, description=f"KNEE {plane}")
    files = sorted((tmp_path / "in" / "axial").iterdir())
    files[len(files) // 2].unlink()
    return tmp_path / "in", make_package(tmp_path / "model", constant_class=2)


def test_batch_over_a_folder_tree_then_resume(tree, tmp_path):
    source, package = tree
    out = tmp_path / "out"
    first = run_mskai("batch", "segment", source, "-o", out, "--model", package, "--device", "cpu",
                      "--formats", "seg.nrrd,report", ok=False)
    assert first.returncode == 1, first.stderr  # a failure is reported in the exit code, the batch still finished
    assert "2 done, 0 skipped (already done), 1 failed" in first.stdout and "Traceback" not in first.stderr
    report = json.loads((out / "batch.json").read_text())
    assert len(report["done"]) == 2 and len(report["failed"]) == 1 and "slice" in report["failed"][0]["error"]
    for key in report["done"]:
        assert sorted(p.name for p in (out / key).iterdir()) == [".mskai-output.json", "report.csv", "report.json",
                                                                 "segmentation.seg.nrrd"]
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and p.suffix != ".nrrd")
    names = "".join(str(p) for p in out.rglob("*"))
    for identifier in ("DOE", "PID-998877", "KNEE"):
        assert identifier not in written and identifier not in names

    import shutil

    redo = report["done"][0]
    shutil.rmtree(out / redo)  # a run killed while writing this series: only its staging folder is left
    stale = out / f".{redo}.mskai-staging-999999-x"
    stale.mkdir()
    second = run_mskai("batch", "segment", source, "-o", out, "--model", package, "--device", "cpu",
                       "--formats", "seg.nrrd,report", "--resume", ok=False)
    assert "1 done, 1 skipped (already done), 1 failed" in second.stdout
    again = json.loads((out / "batch.json").read_text())
    assert again["done"] == [redo] and again["skipped"] == [report["done"][1]]
    assert (out / redo / "segmentation.seg.nrrd").is_file() and not stale.exists()


def test_batch_from_a_database_with_identifiers_on_request(tree, tmp_path):
    source, package = tree
    index_folder(source, tmp_path / "db")
    out = tmp_path / "out"
    run_mskai("batch", "segment", tmp_path / "db", "-o", out, "--model", package, "--device", "cpu",
              "--formats", "report", "--show-identifiers", ok=False)
    rows = json.loads((out / "batch.json").read_text())["series"]
    assert len(rows) == 3 and all(r["series_uid"].startswith("1.") or r["series_uid"][0].isdigit() for r in rows)


def test_batch_refuses_an_output_folder_of_other_files(tree, tmp_path):
    source, package = tree
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("precious")
    result = run_mskai("batch", "segment", source, "-o", tmp_path / "mine", "--model", package, ok=False)
    assert result.returncode == 1 and "not an earlier mskai batch" in result.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.docx"]
