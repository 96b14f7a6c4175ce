"""A run's outputs are one unit; every failure is one `mskai: error:` line; names print escaped."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest

from conftest import make_package, run_mskai
from mskai import MskaiError
from mskai.outputs import OUTPUT_MARKER, atomic_outputs, output_folder
from mskai.volume_files import write_volume
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg") / "tiny", constant_class=2, channels=(4, 8))


@pytest.fixture(scope="module")
def knee_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vol") / "knee.nrrd"
    write_volume(phantom(shape=(40, 40, 24), spacing=(1.5, 1.5, 1.5), plane="axial"), path)
    return path


def _segment(source, out, package, *extra, ok=True):
    return run_mskai("segment", source, "-o", out, "--model", package, "--progress", "none",
                     "--formats", "nrrd,stl,report", "--min-volume-ml", "0", *extra, ok=ok)


def test_a_new_run_replaces_the_earlier_run_as_a_whole(tmp_path, package, knee_file):
    out = tmp_path / "out"
    _segment(knee_file, out, package, "--formats", "nrrd,stl,obj,report")
    assert (out / "meshes" / "femur.obj").is_file() and (out / OUTPUT_MARKER).is_file()
    _segment(knee_file, out, package, "--formats", "nrrd,report")
    assert not (out / "meshes").exists(), "the earlier run's meshes must not survive beside the new run"
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, "labels.nrrd", "report.json",
                                                            "report.csv"])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or set-aside folder left


def test_a_folder_of_the_users_own_files_is_refused_before_any_work(tmp_path, package, knee_file):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    result = _segment(knee_file, out, package, ok=False)
    assert result.returncode == 1 and result.stderr.startswith("mskai: error: Output folder")
    assert "not an earlier mskai output" in result.stderr
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]


def test_an_unwritable_output_is_refused_before_loading(tmp_path, package, knee_file):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    started = time.perf_counter()
    result = _segment(tmp_path / "missing.nrrd", blocker / "out", package, ok=False)
    assert result.returncode == 1 and "Cannot write" in result.stderr and "Traceback" not in result.stderr
    assert "does not exist" not in result.stderr  # the output was checked before the input was read
    assert time.perf_counter() - started < 30


def test_a_failed_run_leaves_the_earlier_output_untouched(tmp_path, package, knee_file):
    out = tmp_path / "out"
    _segment(knee_file, out, package)
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = _segment(tmp_path / "no-such.nrrd", out, package, ok=False)
    assert result.returncode == 1
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failing_swap_restores_the_earlier_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with output_folder(out, "test") as staging:
        (staging / "a.txt").write_text("first run")
    real_rename = os.rename

    def rename(src, dst):
        if "staging" in str(src):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(MskaiError, match="No space left"):
        with output_folder(out, "test") as staging:
            (staging / "b.txt").write_text("second run")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_run_leaves_a_staging_folder_that_the_next_run_removes(tmp_path, package, knee_file):
    code = ("import sys, time; from mskai.outputs import output_folder\n"
            "with output_folder(sys.argv[1], 'test') as s:\n"
            "    (s / 'half.txt').write_text('x'); print('ready', flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert any("staging" in p.name for p in tmp_path.iterdir())
    _segment(knee_file, tmp_path / "out", package)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not (tmp_path / "out" / "half.txt").exists()


def test_multi_volume_convert_is_all_or_nothing(tmp_path):
    echoes = [phantom(seed=s) for s in range(3)]
    paths = write_series(echoes, tmp_path / "in", echo_times=[10.0, 20.0, 30.0])
    for p in paths:  # the third echo loses a slice: its volume cannot be built
        ds = pydicom.dcmread(p)
        if float(ds.EchoTime) == 30.0 and int(ds.InstanceNumber) % 12 == 5:
            p.unlink()
    result = run_mskai("dicom", "convert", tmp_path / "in", tmp_path / "out" / "v.nrrd", ok=False)
    assert result.returncode == 1 and "echo 30 ms" in result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_atomic_outputs_roll_back_when_a_rename_fails_half_way(tmp_path, monkeypatch):
    targets = [tmp_path / f"v{n}.txt" for n in range(3)]
    targets[0].write_text("old 0")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(MskaiError, match="No space left"):
        with atomic_outputs(targets) as temps:
            for n, tmp in enumerate(temps):
                tmp.write_text(f"new {n}")
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v0.txt"] and targets[0].read_text() == "old 0"


@pytest.mark.parametrize("option,value,message", [
    ("--overlap", "1.5", "overlap"), ("--overlap", "nan", "overlap"), ("--batch-size", "0", "batch size"),
    ("--threads", "0", "threads"), ("--volume", "0", "--volume"), ("--formats", "xyz", "Unknown output format"),
    ("--min-island-fraction", "-1", "min island fraction"), ("--min-volume-ml", "nan", "min volume"),
    ("--max-components", "-2", "max components"), ("--min-extra-fraction", "inf", "min extra fraction"),
    ("--slab", "a:b", "--slab"),
])
def test_out_of_range_options_are_one_clear_line(tmp_path, package, knee_dicom, option, value, message):
    result = _segment(knee_dicom, tmp_path / "out", package, option, value, ok=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mskai: error:") and message in last, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,message", [
    (["train-seg", "{tmp}", "-o", "{tmp}/m", "--patch", "7"], "patch"),
    (["train-seg", "{tmp}", "-o", "{tmp}/m", "--lr", "nan"], "learning rate"),
    (["train-seg", "{tmp}", "-o", "{tmp}/m", "--val-fraction", "2"], "validation fraction"),
    (["dicom", "convert", "{tmp}", "{tmp}/x.png"], "use .nrrd"),
    (["segment", "{tmp}/v.nrrd", "-o", "{tmp}/o"], "zero or parallel"),
    (["segment", "{tmp}/c.nii", "-o", "{tmp}/o"], "complex"),
    (["evaluate", "{tmp}/v.nrrd", "{tmp}/v.nrrd"], "zero or parallel"),
    (["dicom", "ls", "{tmp}/nothing-here"], "does not exist"),
    (["segment"], "required"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_files_and_arguments_are_one_clear_line(tmp_path, args, message):
    import nibabel as nib
    import nrrd

    nrrd.write(str(tmp_path / "v.nrrd"), np.ones((8, 8, 8), np.uint8),
               {"space": "left-posterior-superior", "space directions": np.diag([1.0, 0, 1.0]), "kinds": ["domain"] * 3})
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.complex64), np.eye(4)), tmp_path / "c.nii")
    result = run_mskai(*[a.replace("{tmp}", str(tmp_path)) for a in args], ok=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mskai: error:") and message in last, result.stderr


def test_disk_full_is_one_clear_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    import mskai.volume_files
    from mskai.cli import main

    write_series(phantom(shape=(16, 16, 4)), tmp_path / "in")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "v.nrrd"))

    monkeypatch.setattr(mskai.volume_files, "write_volume", full)
    assert main(["dicom", "convert", str(tmp_path / "in"), str(tmp_path / "v.nrrd")]) == 1
    assert capsys.readouterr().err.strip() == f"mskai: error: No space left on device: {tmp_path / 'v.nrrd'}"
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_terminal_escapes_in_names_and_paths_are_printed_escaped(tmp_path):
    folder = tmp_path / "evil\x1b]0;owned\x07dir\u202e"
    write_series(phantom(shape=(16, 16, 4)), folder, patient=("EVIL\x1b[2J^NAME", "ID\x9b31m"),
                 description="SAG \x1b[31mRED\x9b")
    (folder / "junk\x1b[1Acafe").write_text("not dicom")
    for args in (["dicom", "ls", folder, "--show-identifiers"], ["dicom", "ls", tmp_path / "nothing\x1b[2J"]):
        result = run_mskai(*args, ok=False)
        text = result.stdout + result.stderr
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)
    text = run_mskai("dicom", "ls", folder, "--show-identifiers").stdout + run_mskai("dicom", "ls", folder).stderr
    assert "\\x1b[31mRED" in text and "ID\\x9b31m" in text and "dir\\u202e/junk\\x1b[1Acafe" in text
