"""mskai.runner.engine.EngineJob with real engine processes: progress, failure messages, cancelling a process tree."""

import os
import sys
import time

import psutil
import pytest

from conftest import run_mskai
from mskai import MskaiError
from mskai.runner.engine import EngineJob, python_executable


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A tiny volume (segments in ~4 s) and a larger one (inference takes several seconds: time to cancel)."""
    folder = tmp_path_factory.mktemp("engine")
    run_mskai("synth", "series", folder / "small", "--shape", "64", "64", "20")
    run_mskai("dicom", "convert", folder / "small", folder / "small.nii.gz")
    run_mskai("synth", "series", folder / "large", "--shape", "256", "256", "80", "--spacing", "1", "1", "2")
    run_mskai("dicom", "convert", folder / "large", folder / "large.nii.gz")
    return folder / "small.nii.gz", folder / "large.nii.gz"


def _until(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _leftovers(out):
    return sorted(p.name for p in out.parent.glob(f".{out.name}.mskai-*"))


def test_a_small_command_runs_to_the_end(tmp_path):
    job = EngineJob(["synth", "series", tmp_path / "dicom", "--shape", "16", "16", "4"], output=tmp_path / "dicom")
    assert job.state == "new" and not job.running and job.returncode is None
    assert job.start() is job and job.state in ("running", "done")
    assert job.wait() == 0 and job.state == "done" and not job.running and job.error is None
    assert any("Wrote 4 file(s)" in line for line in job.messages)
    assert len(list((tmp_path / "dicom").iterdir())) == 4
    assert job.poll() == [] and job.cancel() is None and job.state == "done"
    assert (tmp_path / "dicom").is_dir()  # cancel after the end removes nothing


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs a second Python without mskai installed")
def test_the_engine_runs_this_mskai_in_an_interpreter_that_does_not_have_it(tmp_path):
    """As PythonSlicer does not have the extension's mskai on its path: the launcher puts it there."""
    import subprocess

    bare = subprocess.run(["/usr/bin/python3", "-c", "import mskai"], cwd=tmp_path, capture_output=True)
    assert bare.returncode != 0  # this interpreter cannot import mskai by itself
    job = EngineJob(["--help"], python="/usr/bin/python3").start()
    assert job.wait(60) == 0, job.error
    assert any("segment" in line for line in job.messages)


def test_segment_progress_events_are_parsed_from_the_engine(volumes, tmp_path):
    out = tmp_path / "out"
    job = EngineJob(["segment", volumes[0], "-o", out, "--progress", "json", "--formats", "nrrd", "--threads", "1"],
                    output=out)
    job.start()
    events = []
    while job.running:
        events += job.poll()
        time.sleep(0.05)
    events += job.poll()
    assert job.state == "done" and job.returncode == 0 and job.error is None
    assert {e["stage"] for e in events} == {"preprocess", "infer", "postprocess"}
    assert all(0 <= e["progress"] <= 1 for e in events) and events[-1] == {"stage": "postprocess", "progress": 1.0}
    assert any(line.startswith("Wrote") for line in job.messages) and not any("{" in m for m in job.messages)
    assert (out / "labels.nrrd").is_file() and job.output == out.resolve() and _leftovers(out) == []


def test_cancel_in_the_middle_of_a_segment_run(volumes, tmp_path):
    out = tmp_path / "out"
    job = EngineJob(["segment", volumes[1], "-o", out, "--progress", "json", "--formats", "nrrd", "--threads", "1"],
                    output=out)
    job.start()
    seen = []
    _until(lambda: seen.extend(job.poll()) or any(e["stage"] == "infer" for e in seen))
    tree = [job._proc.pid] + [p.pid for p in psutil.Process(job._proc.pid).children(recursive=True)]
    assert job.running and _leftovers(out), "the run should be writing into its staging folder"
    t = time.monotonic()
    job.cancel()
    assert time.monotonic() - t < 5
    assert job.state == "cancelled" and not job.running and job.returncode != 0 and job.error is None
    assert all(_gone(pid) for pid in tree)
    assert not out.exists() and _leftovers(out) == []
    assert job.cancel() is None and job.state == "cancelled"
    assert all(e["stage"] in ("preprocess", "infer") for e in job.poll())
    assert job.poll() == [] and job.wait() == job.returncode


FAKE_ENGINE = """#!{python}
# Stands in for the interpreter: started as `fake -m mskai ...`; spawns a grandchild in its own process group and
# one in a new session that ignores SIGTERM, prints their pids and sleeps.
import signal, subprocess, sys, time
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
a = subprocess.Popen(["sleep", "60"])
b = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
print("pids", a.pid, b.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def fake_engine(tmp_path):
    script = tmp_path / "fake-python"
    script.write_text(FAKE_ENGINE.format(python=sys.executable))
    script.chmod(0o755)
    return script


def _grandchildren(job):
    _until(lambda: any(m.startswith("pids ") for m in job.messages), timeout=20)
    pids = [int(p) for p in next(m for m in job.messages if m.startswith("pids ")).split()[1:]]
    time.sleep(0.3)  # let the stubborn one install its SIGTERM handler
    return pids


@pytest.mark.skipif(os.name == "nt", reason="POSIX shebang script")
def test_cancel_ends_every_descendant_even_one_that_ignores_sigterm(fake_engine, tmp_path):
    job = EngineJob(["segment"], output=tmp_path / "out", python=fake_engine)
    job.grace = 0.5
    job.start()
    pids = [job._proc.pid, *_grandchildren(job)]
    assert not any(_gone(pid) for pid in pids)
    job.cancel()
    assert all(_gone(pid) for pid in pids) and job.state == "cancelled"


@pytest.mark.skipif(os.name == "nt", reason="POSIX shebang script")
def test_leaving_a_with_block_or_dropping_the_job_cancels_it(fake_engine, tmp_path):
    with EngineJob([], python=fake_engine) as job:
        job.grace = 0.5
        job.start()
        pids = [job._proc.pid, *_grandchildren(job)]
    assert job.state == "cancelled" and all(_gone(pid) for pid in pids)
    job = EngineJob([], python=fake_engine)
    job.grace = 0.5
    job.start()
    pids = [job._proc.pid, *_grandchildren(job)]
    del job
    _until(lambda: all(_gone(pid) for pid in pids), timeout=10)


def test_a_failing_run_gives_the_engine_one_line_message(tmp_path):
    out = tmp_path / "out"
    job = EngineJob(["segment", tmp_path / "missing.nrrd", "-o", out, "--progress", "json"], output=out).start()
    assert job.wait() == 1 and job.state == "failed"
    assert "missing.nrrd" in job.error and "\n" not in job.error and not job.error.startswith("mskai:")
    assert "Traceback" not in job.error and job.poll() == [] and job.cancel() is None and job.state == "failed"
    usage = EngineJob(["segment"]).start()
    assert usage.wait() == 2 and usage.error == "the following arguments are required: source, -o/--output"


def test_an_interpreter_that_cannot_start_is_a_clear_error(tmp_path):
    job = EngineJob(["models", "list"], python=tmp_path / "no-such-python")
    with pytest.raises(MskaiError, match="Cannot start the engine with .*no-such-python"):
        job.start()
    assert job.state == "failed" and "no-such-python" in job.error and job.cancel() is None
    with pytest.raises(MskaiError, match="already started"):
        job.start()


def _executable(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(os.name == "nt", reason="POSIX executables")
def test_python_executable_inside_and_outside_slicer(tmp_path, monkeypatch):
    monkeypatch.delenv("MSKAI_PYTHON", raising=False)
    assert python_executable() == sys.executable
    monkeypatch.setenv("MSKAI_PYTHON", str(_executable(tmp_path / "custom" / "python3")))
    assert python_executable() == str(tmp_path / "custom" / "python3")
    monkeypatch.setenv("MSKAI_PYTHON", str(tmp_path / "nothing"))
    with pytest.raises(MskaiError, match="MSKAI_PYTHON"):
        python_executable()
    monkeypatch.delenv("MSKAI_PYTHON")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "Slicer-5.8" / "bin" / "SlicerApp-real"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    with pytest.raises(MskaiError, match="PythonSlicer"):
        python_executable()
    on_path = _executable(tmp_path / "path" / "PythonSlicer")
    assert python_executable() == str(on_path)
    beside = _executable(tmp_path / "Slicer-5.8" / "bin" / "PythonSlicer")
    assert python_executable() == str(beside)  # the same Slicer installation wins over PATH
    monkeypatch.setenv("MSKAI_PYTHON", str(on_path))
    assert python_executable() == str(on_path)


SWAP_ENGINE = """#!{python}
# Stands in for the interpreter, as `fake -m mskai <mode> <out>`: leaves <out> as a killed engine would mid-swap.
import json, os, sys, time
from pathlib import Path
mode, out = sys.argv[3], Path(sys.argv[4])
staging = out.parent / f".{{out.name}}.mskai-staging-{{os.getpid()}}-abc"
staging.mkdir()
(staging / "labels.nrrd").write_text("partial")
if mode == "set-aside":  # killed between the two renames of swap_in
    os.rename(out, out.parent / f".{{out.name}}.mskai-old-{{os.getpid()}}-abc")
else:  # killed just after the new output was swapped in
    out.mkdir(exist_ok=True)
    (out / ".mskai-output.json").write_text(json.dumps({{"kind": "segmentation"}}))
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX shebang script")
def test_cancel_at_the_very_end_of_a_run_leaves_no_mixed_output(tmp_path):
    script = tmp_path / "swap-python"
    script.write_text(SWAP_ENGINE.format(python=sys.executable))
    script.chmod(0o755)

    def cancelled(mode, out):
        job = EngineJob([mode, out], output=out, python=script).start()
        _until(lambda: "ready" in job.messages, timeout=20)
        job.cancel()
        assert job.state == "cancelled" and _leftovers(out) == []

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "report.json").write_text("earlier run")
    cancelled("set-aside", earlier)  # the earlier output is put back
    assert [p.name for p in earlier.iterdir()] == ["report.json"]
    cancelled("swapped", tmp_path / "new")  # this cancelled run's output is removed
    assert not (tmp_path / "new").exists()
    cancelled("swapped", earlier)  # an output folder that existed before start is never removed
    assert earlier.is_dir()
