"""The batch runner on Dask: a real LocalCluster of 2 worker processes, a real ctkDICOM.sql of synthetic series.

Broken series are recorded and the batch goes on; a worker killed mid-run has its series retried elsewhere and every
series ends with exactly one result; Ctrl-C stops cleanly and --resume runs only what is missing; the manifest and
the folder names hold no identifying data.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_package, run_mskai
from mskai import MskaiError
from mskai.runner.batch import MANIFEST, run_batch
from mskai.runner.cluster import PRELOAD, ClusterOptions
from mskai.dicom import index_folder
from mskai.outputs import OUTPUT_MARKER
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom

PATIENT = ("ROE^RICHARD", "PID-424242")
PLANES = ("sagittal", "coronal", "axial")


def _database(root: Path, good: int = 6) -> Path:
    """``good`` small series, one with a slice missing and one of a single slice, indexed into a ctkDICOM.sql."""
    for n in range(good):
        write_series(phantom(shape=(40, 40, 12 + n), plane=PLANES[n % 3]), root / "in" / f"good{n}",
                     series_number=n + 1, patient=PATIENT, description=f"KNEE {PATIENT[0]} {n}")
    write_series(phantom(shape=(40, 40, 12)), root / "in" / "gap", series_number=20, patient=PATIENT,
                 description="KNEE gap")
    write_series(phantom(shape=(40, 40, 1)), root / "in" / "single", series_number=21, patient=PATIENT,
                 description="KNEE single")
    files = sorted((root / "in" / "gap").iterdir())
    files[len(files) // 2].unlink()
    index_folder(root / "in", root / "db")
    return root / "db"


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_dask")
    return _database(root), make_package(root / "model", constant_class=2)


@pytest.fixture(scope="module")
def cluster():
    """An existing Dask cluster (2 worker processes with mskai's preload), as `--scheduler` would use it."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, preload=[PRELOAD], dashboard_address=":0",
                      scheduler_port=0) as local, Client(local) as client:
        yield local, client


def _rows(out: Path) -> list[dict]:
    with open(out / "batch.csv") as f:
        return list(csv.DictReader(f))


def _assert_exactly_one_result_each(out: Path, keys):
    """Each key: one complete folder and nothing half-written beside it."""
    for key in keys:
        assert (out / key / OUTPUT_MARKER).is_file()
    leftovers = [p.name for p in out.iterdir() if ".mskai-" in p.name and p.name != ".mskai-batch.json"]
    assert leftovers == []


def _running_in_group(pgid: int) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def _assert_private(out: Path):
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file() and p.suffix != ".nrrd")
    names = "".join(str(p.relative_to(out)) for p in out.rglob("*"))
    for identifier in ("ROE", "RICHARD", "PID-424242", "KNEE", "1.2.", str(out.parent / "in")):
        assert identifier not in written and identifier not in names


def test_six_done_two_failed_on_two_workers_model_loaded_once_each(database, cluster, tmp_path):
    db, package = database
    local, client = cluster
    out = tmp_path / "out"
    summary = run_batch(db, out, model=str(package), device="cpu", formats="seg.nrrd,report",
                        cluster=ClusterOptions(scheduler=local.scheduler_address))
    assert len(summary["done"]) == 6 and len(summary["failed"]) == 2 and summary["pending"] == []
    errors = " | ".join(f["error"] for f in summary["failed"])
    assert "too small" in errors and "not equally spaced" in errors
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["model"]["id"] == "test-bones" and manifest["engine"]["workers"] == 2
    rows = _rows(out)
    assert len(rows) == 8 and len({r["series"] for r in rows}) == 8
    assert {r["status"] for r in rows} == {"done", "failed"} and all(float(r["seconds"]) >= 0 for r in rows)
    assert len({r["worker"] for r in rows}) == 2  # both workers took series
    _assert_exactly_one_result_each(out, summary["done"])
    _assert_private(out)
    loads = client.run(lambda: len(sys.modules["mskai.runner.batch"]._PACKAGES))  # the model, once per worker process
    assert sorted(loads.values()) == [1, 1]


def _killer(client):
    """A progress callback that kills one worker process while it runs a series (once); what it did in .killed."""
    def kill_a_busy_worker(row, counts):
        if kill_a_busy_worker.killed:
            return
        busy = {address: keys for address, keys in client.processing().items() if keys}
        if busy:
            address = sorted(busy)[0]
            pid = client.run(os.getpid, workers=[address])[address]
            kill_a_busy_worker.killed = {"pid": pid, "series": [k.split("-", 1)[1].rsplit("-", 1)[0]
                                                                for k in busy[address]]}
            os.kill(pid, signal.SIGKILL)
    kill_a_busy_worker.killed = None
    return kill_a_busy_worker


def test_a_worker_killed_mid_run_its_series_retried_each_series_one_result(database, cluster, tmp_path):
    db, _ = database
    local, client = cluster
    out = tmp_path / "out"
    killer = _killer(client)
    summary = run_batch(db, out, device="cpu", formats="report", progress=killer,
                        cluster=ClusterOptions(scheduler=local.scheduler_address))
    assert killer.killed, "no worker was busy when the first series finished"
    assert len(summary["done"]) == 6 and len(summary["failed"]) == 2
    rows = {r["series"]: r for r in _rows(out)}
    assert len(rows) == 8
    retried = [rows[key] for key in killer.killed["series"]]
    assert retried and all(not r["worker"].endswith(f":{killer.killed['pid']}") for r in retried)
    _assert_exactly_one_result_each(out, summary["done"])
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it: the module's cluster is whole again


def test_retries_are_bounded_a_series_whose_worker_died_is_failed_and_the_batch_goes_on(database, tmp_path):
    """A scheduler that allows no retry: the killed worker's series is recorded as failed, the rest finish."""
    import dask
    from distributed import Client, LocalCluster

    db, package = database
    out = tmp_path / "out"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, preload=[PRELOAD],
                             dashboard_address=":0", scheduler_port=0)
    with local, Client(local) as client:
        killer = _killer(client)
        summary = run_batch(db, out, device="cpu", formats="report", progress=killer,
                            cluster=ClusterOptions(scheduler=local.scheduler_address))
    assert killer.killed and summary["pending"] == []
    died = {f["series"]: f["error"] for f in summary["failed"] if "worker running it died" in f["error"]}
    assert set(died) == set(killer.killed["series"]) and "out of memory" in next(iter(died.values()))
    others = [f["error"] for f in summary["failed"] if f["series"] not in died]
    assert all("too small" in e or "not equally spaced" in e for e in others)  # the two broken series
    assert len(summary["done"]) + len(died) + len(others) == 8 and len(summary["done"]) >= 8 - 2 - len(died)
    _assert_exactly_one_result_each(out, summary["done"])


def test_resume_needs_the_same_model_and_settings(database, cluster, tmp_path):
    db, package = database
    local, _ = cluster
    out = tmp_path / "out"
    options = ClusterOptions(scheduler=local.scheduler_address)
    run_batch(db, out, model=str(package), device="cpu", formats="report", cluster=options,
              series_filter=lambda s: s["number"] == 1)
    with pytest.raises(MskaiError, match="resume it with the same model"):
        run_batch(db, out, device="cpu", formats="report", cluster=options, resume=True)
    with pytest.raises(MskaiError, match="same model and settings"):
        run_batch(db, out, model=str(package), device="cpu", formats="report,seg.nrrd", cluster=options, resume=True)


def test_ctrl_c_stops_cleanly_and_resume_runs_only_the_missing_series(tmp_path):
    good = 16  # enough that the batch is still running when Ctrl-C arrives, on a fast machine too
    db = _database(tmp_path, good=good)
    out = tmp_path / "out"
    command = [str(Path(sys.executable).with_name("mskai")), "batch", "segment", str(db), "-o", str(out),
               "--device", "cpu", "--formats", "report", "--workers", "2"]
    # A terminal's Ctrl-C goes to the whole foreground process group: the client and its worker processes.
    # A terminal's shell starts it with Ctrl-C at its default; an ignored SIGINT (left by something earlier in this
    # test process, e.g. an in-process Dask worker's setup) would be inherited and the batch would never stop.
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stderr:
        lines.append(line)
        if " done in " in line:
            break
    os.killpg(process.pid, signal.SIGINT)
    rest, more = process.communicate(timeout=120)
    stderr = "".join(lines) + more
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr + rest, stderr[-2000:]
    time.sleep(1)
    assert _running_in_group(process.pid) == []  # no worker process outlives the batch
    first = {r["series"]: r for r in _rows(out)}
    done_first = {k for k, r in first.items() if r["status"] == "done"}
    assert 1 <= len(done_first) < good and any(r["status"] == "pending" for r in first.values())
    assert done_first == {p.name for p in out.glob("series-*") if (p / OUTPUT_MARKER).is_file()}
    stamps = {k: (out / k / OUTPUT_MARKER).stat().st_mtime_ns for k in done_first}
    _assert_exactly_one_result_each(out, done_first)

    again = run_mskai(*command[1:], "--resume", ok=False)
    assert again.returncode == 1 and "Traceback" not in again.stderr  # 1: the two broken series failed
    second = {r["series"]: r for r in _rows(out)}
    assert {k for k, r in second.items() if r["status"] == "skipped"} == done_first
    assert sum(r["status"] == "done" for r in second.values()) == good - len(done_first)
    assert sum(r["status"] == "failed" for r in second.values()) == 2
    assert {k: (out / k / OUTPUT_MARKER).stat().st_mtime_ns for k in done_first} == stamps  # not run again
    assert all(second[k]["worker"] == first[k]["worker"] for k in done_first)  # their rows carried over
    _assert_private(out)


@pytest.mark.parametrize("arguments, message", [
    (("--scheduler", "http://host:8786"), "must be a Dask scheduler address"),
    (("--memory-limit", "lots"), "is not a size such as 4GB"),
    (("--workers", "0"), "workers must be a whole number"),
    (("--retries", "-1"), "retries must be a whole number"),
])
def test_bad_cluster_options_are_refused_before_anything_is_written(database, tmp_path, arguments, message):
    db, package = database
    result = run_mskai("batch", "segment", db, "-o", tmp_path / "out", "--model", package, *arguments, ok=False)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_a_clear_error(database, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db, package = database
    result = run_mskai("batch", "segment", db, "-o", tmp_path / "out", "--model", package,
                       "--scheduler", f"tcp://127.0.0.1:{port}", ok=False)
    assert result.returncode == 1 and "Cannot reach the Dask scheduler" in result.stderr
    assert "Traceback" not in result.stderr
    assert {r["status"] for r in _rows(tmp_path / "out")} == {"pending"}  # listed, nothing half-done


def test_inside_slicer_local_workers_are_started_with_pythonslicer(tmp_path, monkeypatch):
    """Spawned workers must not start a second Slicer application: multiprocessing uses PythonSlicer there."""
    import multiprocessing

    from mskai.runner import cluster as cluster_module

    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "PythonSlicer"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    chosen, plain = [], sys.executable
    monkeypatch.delenv("MSKAI_PYTHON", raising=False)
    monkeypatch.setattr(multiprocessing, "set_executable", chosen.append)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "SlicerApp-real"))
    cluster_module._spawn_interpreter()
    assert chosen == [str(python)]
    monkeypatch.setattr(sys, "executable", plain)
    cluster_module._spawn_interpreter()
    assert chosen == [str(python)]  # a plain Python spawns itself
