"""The output transaction's rules (mskai.outputs.check_output_folder, read/write_marker), through the real commands:
an output folder that is, contains or lies inside the input is refused before any work; an earlier output of
another kind is never replaced; marker files that are symbolic links are never followed."""

import json
import os

import pytest

from conftest import make_acl_package, make_package, run_mskai
from mskai import MskaiError
from mskai.outputs import OUTPUT_MARKER, check_output_folder, read_marker, write_marker
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("rules")
    write_series(phantom(shape=(40, 40, 12)), root / "study" / "sag", series_number=1)
    return root


@pytest.mark.parametrize("where", ["study", "study/sag", "."])
def test_segment_refuses_an_output_that_is_inside_or_contains_its_input(series, where, tmp_path):
    package = make_package(tmp_path / "model", constant_class=1)
    before = _snapshot(series)
    result = run_mskai("segment", series / "study" / "sag", "--model", package, "--device", "cpu",
                       "-o", series / where, ok=False)
    assert result.returncode == 1 and "unexpected" not in result.stderr
    assert "apart from the input" in result.stderr and result.stderr.count("mskai: error:") == 1
    assert _snapshot(series) == before  # nothing created, changed or deleted


def test_classify_and_anonymise_refuse_to_write_onto_their_input(series, tmp_path):
    acl = make_acl_package(tmp_path / "acl")
    before = _snapshot(series)
    for command in (["classify", series / "study", "--model", acl, "-o", series / "study"],
                    ["classify", series / "study", "--model", acl, "-o", series / "study" / "sag" / "out"],
                    ["dicom", "anonymise", series / "study", series / "study" / "anon"]):
        result = run_mskai(*command, ok=False)
        assert result.returncode == 1 and "apart from the input" in result.stderr, command
    assert _snapshot(series) == before
    anon = tmp_path / "anon"  # an earlier mskai output (it holds the marker) that is also the input
    run_mskai("dicom", "anonymise", series / "study", anon)
    before = _snapshot(anon)
    for command in (["classify", anon, "--model", acl, "-o", anon], ["segment", anon, "-o", anon],
                    ["dicom", "anonymise", anon, anon]):
        result = run_mskai(*command, ok=False)
        assert result.returncode == 1 and "onto itself" in result.stderr, command
    assert _snapshot(anon) == before


def test_an_output_of_another_kind_is_never_replaced(series, tmp_path):
    package = make_package(tmp_path / "model", constant_class=1)
    seg = tmp_path / "seg"
    run_mskai("segment", series / "study" / "sag", "--model", package, "--device", "cpu", "--formats",
              "nii.gz,stl", "-o", seg)
    before = _snapshot(seg)
    result = run_mskai("classify", series / "study", "--model", make_acl_package(tmp_path / "acl"), "-o", seg,
                       ok=False)
    assert result.returncode == 1 and "'segmentation' output" in result.stderr and "'acl-classification'" in result.stderr
    assert _snapshot(seg) == before and (seg / "meshes").is_dir()
    batch = tmp_path / "batch"
    batch.mkdir()
    write_marker(batch / ".mskai-batch.json", {"kind": "batch"})
    (batch / "batch.csv").write_text("series\n")
    result = run_mskai("segment", series / "study" / "sag", "--model", package, "--device", "cpu", "-o", batch,
                       ok=False)
    assert result.returncode == 1 and "not an earlier mskai output" in result.stderr  # a batch folder is not one


def test_marker_files_that_are_links_are_refused_and_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / OUTPUT_MARKER)
    with pytest.raises(MskaiError, match="symbolic link"):
        check_output_folder(out, "segmentation")
    with pytest.raises(MskaiError, match="symbolic link"):
        read_marker(out / OUTPUT_MARKER)
    write_marker(out / OUTPUT_MARKER, {"kind": "segmentation"})  # replaces the link, not its target
    assert victim.read_text() == "precious" and not (out / OUTPUT_MARKER).is_symlink()
    assert json.loads((out / OUTPUT_MARKER).read_text()) == {"kind": "segmentation"}
    (out / "x").write_text("")
    assert check_output_folder(out, "segmentation") == out.resolve()
    link = tmp_path / "link"
    os.symlink(out, link)
    with pytest.raises(MskaiError, match="is a symbolic link"):
        check_output_folder(link, "segmentation")
    for damaged in (b"[1, 2]", b"\xff\xfe", b'{"kind": "segmentation"'):
        (out / OUTPUT_MARKER).write_bytes(damaged)
        with pytest.raises(MskaiError, match="damaged"):
            check_output_folder(out, "segmentation")
