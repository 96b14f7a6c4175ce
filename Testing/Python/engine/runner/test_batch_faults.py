"""Batches that never stop for one bad series (mskai.runner.batch, mskai.runner.cluster, mskai.dicom.database): a series that
kills its worker, a worker killed while the local cluster starts, database rows of missing, escaping or device
files, a file listed under two series, another model in the same folder, forged manifests, two patients in one
study, and a console script without the main guard. Real Dask LocalClusters, real ctkDICOM.sql files."""

import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest

from conftest import make_acl_package, make_package, run_mskai
from mskai import MskaiError
from mskai.runner.batch import MANIFEST, run_batch
from mskai.runner.cluster import ClusterOptions
from mskai.dicom import index_folder, scan_source
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom
from mskai.volume import Volume

PATIENT = ("ROE^RICHARD", "PID-424242")


def _memory_bomb(folder: Path, frames: int = 600) -> Path:
    """One 20 MB RLE Enhanced MR file that decodes to 1.2 GB (600 frames of 1024x1024, 16 bits)."""
    from pydicom.encaps import encapsulate, generate_frames

    array = np.zeros((1024, 1024, 2), np.uint16)
    array[0, 0, :] = 1
    path, = write_series(Volume(array, np.diag([0.2, 0.2, 1.0, 1.0])), folder, multiframe=True,
                         transfer_syntax="rle", series_number=9)
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=2))
    items = []
    for i in range(frames):
        item = copy.deepcopy(ds.PerFrameFunctionalGroupsSequence[0])
        item.PlanePositionSequence[0].ImagePositionPatient = [0, 0, float(i)]
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence, ds.NumberOfFrames = items, frames
    ds.PixelData = encapsulate([frame] * frames)
    ds.save_as(path)
    return path


def test_a_series_that_kills_its_worker_is_one_failure_the_rest_finish_and_resume_redoes_nothing(tmp_path):
    for n in range(2):
        write_series(phantom(shape=(40, 40, 12)), tmp_path / "in" / f"good{n}", series_number=n + 1)
    _memory_bomb(tmp_path / "in" / "bomb")
    package = make_package(tmp_path / "model", constant_class=1)
    out = tmp_path / "out"
    args = ("batch", "segment", tmp_path / "in", "-o", out, "--model", package, "--device", "cpu", "--formats",
            "report", "--workers", "1", "--memory-limit", "1.5GB", "--retries", "0")
    result = run_mskai(*args, ok=False)
    assert result.returncode == 1 and "unexpected" not in result.stderr and "Traceback" not in result.stderr
    assert "2 done, 0 skipped (already done), 1 failed" in result.stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(manifest["done"]) == 2 and manifest["pending"] == []
    assert "worker running it died" in manifest["failed"][0]["error"]
    stamps = {key: (out / key / "report.json").stat().st_mtime_ns for key in manifest["done"]}
    again = run_mskai(*args, "--resume", ok=False)  # the bomb kills its worker again; the done are not redone
    assert "0 done, 2 skipped (already done), 1 failed" in again.stdout
    assert {key: (out / key / "report.json").stat().st_mtime_ns for key in manifest["done"]} == stamps


def _kill_the_first_new_worker(known: set, delay: float = 0.1):
    """In a thread: SIGKILL the first worker process this test process spawns (not one in ``known``)."""
    killed = []

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for child in psutil.Process().children(recursive=True):
                try:
                    spawned = child.pid not in known and "spawn_main" in " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if spawned:
                    time.sleep(delay)
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return killed, thread


def test_a_worker_killed_while_the_local_cluster_starts_does_not_end_the_batch(tmp_path):
    for n in range(3):
        write_series(phantom(shape=(40, 40, 12)), tmp_path / "in" / f"s{n}", series_number=n + 1)
    package = make_package(tmp_path / "model", constant_class=1)
    killed, thread = _kill_the_first_new_worker({p.pid for p in psutil.Process().children(recursive=True)})
    summary = run_batch(tmp_path / "in", tmp_path / "out", model=str(package), device="cpu", formats="report",
                        cluster=ClusterOptions(workers=2, retries=2))
    thread.join(5)
    assert killed, "no worker process was seen starting"
    assert len(summary["done"]) == 3 and summary["failed"] == [] and summary["pending"] == []


def _database(root: Path) -> Path:
    for n, name in enumerate(("good", "missing", "escaping", "device", "shared")):
        write_series(phantom(shape=(40, 40, 10)), root / "in" / name, series_number=n + 1, patient=PATIENT,
                     description=f"KNEE {name}")
    index_folder(root / "in", root / "db")
    con = sqlite3.connect(root / "db" / "ctkDICOM.sql")
    uid = {name: str(pydicom.dcmread(next((root / "in" / name).iterdir())).SeriesInstanceUID)
           for name in ("missing", "escaping", "device", "shared", "good")}
    for path in (root / "in" / "missing").iterdir():
        path.unlink()
    con.execute("UPDATE Images SET Filename = '../../../../../../etc/passwd' WHERE SeriesInstanceUID = ?",
                (uid["escaping"],))
    con.execute("UPDATE Images SET Filename = '/dev/zero' WHERE SeriesInstanceUID = ?", (uid["device"],))
    # one file of the good series listed a second time, under the "shared" series' row
    good_file = con.execute("SELECT Filename FROM Images WHERE SeriesInstanceUID = ? LIMIT 1", (uid["good"],)).fetchone()
    con.execute("INSERT INTO Images (SOPInstanceUID, Filename, SeriesInstanceUID, InsertTimestamp) "
                "VALUES ('1.2.3.999', ?, ?, '0')", (good_file[0], uid["shared"]))
    con.commit()
    con.close()
    return root / "db"


def test_database_rows_of_missing_escaping_and_device_files_are_failures_with_their_reason(tmp_path):
    db = _database(tmp_path)
    report = scan_source(db)
    by_description = {s.description: s for s in report.series}
    assert len(by_description["KNEE good"].files) == 10 and by_description["KNEE good"].problem is None  # read once
    assert "file is missing" in by_description["KNEE missing"].problem
    assert "leads out of the database folder" in by_description["KNEE escaping"].problem
    assert "not a regular file" in by_description["KNEE device"].problem
    package = make_package(tmp_path / "model", constant_class=1)
    summary = run_batch(db, tmp_path / "out", model=str(package), device="cpu", formats="report",
                        cluster=ClusterOptions(workers=1))
    assert len(summary["done"]) == 2 and summary["pending"] == []  # good and shared: the shared file is good's
    errors = sorted(f["error"] for f in summary["failed"])
    assert len(errors) == 3 and all("none of the 10 files the database lists" in e for e in errors)
    assert any("leads out" in e for e in errors) and any("not a regular file" in e for e in errors)
    assert not any("passwd" in e or "/dev" in e for e in errors)  # file names stay out of the manifest
    listing = run_mskai("dicom", "ls", db)
    assert "duplicate slice position" not in listing.stdout + listing.stderr


def test_another_model_or_settings_in_the_same_folder_is_refused_with_or_without_resume(tmp_path):
    for n in range(2):
        write_series(phantom(shape=(40, 40, 12)), tmp_path / "in" / f"s{n}", series_number=n + 1)
    first, second = (make_package(tmp_path / name, constant_class=c, seed=c) for name, c in (("a", 1), ("b", 2)))
    out = tmp_path / "out"
    base = ("batch", "segment", tmp_path / "in", "-o", out, "--device", "cpu", "--formats", "report", "--workers", "1")
    run_mskai(*base, "--model", first)
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    for extra in ((), ("--resume",)):
        result = run_mskai(*base, "--model", second, *extra, ok=False)
        assert result.returncode == 1 and "a different model" in result.stderr, extra
        result = run_mskai(*base, "--model", first, "--fast", *extra, ok=False)
        assert result.returncode == 1 and "other settings" in result.stderr, extra
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    run_mskai(*base, "--model", first)  # the same model and settings again: allowed, every series redone
    assert len(json.loads((out / MANIFEST).read_text())["done"]) == 2


@pytest.mark.parametrize("forgery", [
    b"not json", b"[]", json.dumps({"kind": "mskai-batch"}).encode(),
    json.dumps({"kind": "mskai-batch", "task": "segment", "model": "x", "settings": {}}).encode(),
    json.dumps({"kind": "mskai-batch", "task": "segment", "settings": {}, "series": [{"status": "done"}],
                "model": {"id": "a", "version": "1", "label": "a@1", "sha256": "0" * 63}}).encode(),
    json.dumps({"kind": "mskai-batch", "task": "segment", "settings": {}, "series": [{"series": "../../x",
                "status": "done"}], "model": {"id": "a", "version": "1", "label": "a@1", "sha256": "0" * 64}}).encode(),
])
def test_a_forged_manifest_is_a_clear_error(tmp_path, forgery):
    write_series(phantom(shape=(40, 40, 12)), tmp_path / "in" / "s", series_number=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".mskai-batch.json").write_text('{"kind": "batch"}')
    (out / MANIFEST).write_bytes(forgery)
    result = run_mskai("batch", "segment", tmp_path / "in", "-o", out, "--model",
                       make_package(tmp_path / "model", constant_class=1), "--device", "cpu", ok=False)
    assert result.returncode == 1 and "unexpected" not in result.stderr
    assert ("not a manifest mskai wrote" in result.stderr or "is damaged" in result.stderr) and \
        result.stderr.count("mskai: error:") == 1
    assert (out / MANIFEST).read_bytes() == forgery


def test_free_text_of_an_earlier_manifest_is_not_carried_into_the_new_one(tmp_path):
    write_series(phantom(shape=(40, 40, 12)), tmp_path / "in" / "s", series_number=1)
    package = make_package(tmp_path / "model", constant_class=1)
    out = tmp_path / "out"
    base = ("batch", "segment", tmp_path / "in", "-o", out, "--model", package, "--device", "cpu", "--formats",
            "report", "--workers", "1")
    run_mskai(*base)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["series"][0].update(error="DOE^JOHN was here", patient="DOE^JOHN")
    (out / MANIFEST).write_text(json.dumps(manifest))
    run_mskai(*base, "--resume")
    assert "DOE" not in (out / MANIFEST).read_text() and "DOE" not in (out / "batch.csv").read_text()


def _two_patients_one_study(folder: Path):
    from pydicom.uid import generate_uid

    study = generate_uid()
    for n, patient in enumerate((("DOE^JANE", "PID-1"), ("ROE^RICHARD", "PID-2"))):
        write_series(phantom(shape=(64, 56, 16), plane="sagittal", seed=n), folder / f"p{n}", series_number=1,
                     patient=patient, study_uid=study, description="SAG PD")


def test_two_patients_with_one_study_uid_are_never_classified_as_one(tmp_path):
    _two_patients_one_study(tmp_path / "in")
    acl = make_acl_package(tmp_path / "acl")
    result = run_mskai("classify", tmp_path / "in", "--model", acl, "-o", tmp_path / "one", ok=False)
    assert result.returncode == 1 and "come from 2 patients" in result.stderr
    assert not (tmp_path / "one").exists()
    out = tmp_path / "batch"
    run_mskai("batch", "classify", tmp_path / "in", "--model", acl, "-o", out, "--workers", "1")
    manifest = json.loads((out / MANIFEST).read_text())
    rows = manifest["studies"]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"} and len({r["study"] for r in rows}) == 2
    assert all("shared by 2 patients" in r["note"] for r in rows)
    assert "DOE" not in (out / MANIFEST).read_text() and "ROE" not in (out / "batch.csv").read_text()


SCRIPT = """
from mskai.runner.batch import run_batch
from mskai.runner.cluster import ClusterOptions
print(run_batch({source!r}, {output!r}, model={model!r}, formats="report", cluster=ClusterOptions(workers=1)))
"""


def test_a_console_script_without_the_main_guard_or_from_stdin_is_told_what_to_do(tmp_path):
    write_series(phantom(shape=(40, 40, 12)), tmp_path / "in" / "s", series_number=1)
    text = SCRIPT.format(source=str(tmp_path / "in"), output=str(tmp_path / "out"),
                         model=str(make_package(tmp_path / "model", constant_class=1)))
    (tmp_path / "unguarded.py").write_text(text)
    for command, stdin in (([sys.executable, str(tmp_path / "unguarded.py")], None), ([sys.executable, "-"], text)):
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode != 0 and 'if __name__ == "__main__":' in result.stderr, command
        assert "spawn_main" not in result.stderr and "bootstrapping phase" not in result.stderr
        assert not (tmp_path / "out" / MANIFEST).exists()
    guarded = "def main():\n" + "".join(f"    {line}\n" for line in text.strip().splitlines()) + \
        '\n\nif __name__ == "__main__":\n    main()\n'
    (tmp_path / "guarded.py").write_text(guarded)
    result = subprocess.run([sys.executable, str(tmp_path / "guarded.py")], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads((tmp_path / "out" / MANIFEST).read_text())["done"]) == 1


def test_the_batch_runner_refuses_an_output_inside_its_input_before_scanning(tmp_path):
    write_series(phantom(shape=(40, 40, 12)), tmp_path / "in" / "s", series_number=1)
    with pytest.raises(MskaiError, match="apart from the input"):
        run_batch(tmp_path / "in", tmp_path / "in" / "out", model=str(make_package(tmp_path / "m", constant_class=1)))
    assert not (tmp_path / "in" / "out").exists()
