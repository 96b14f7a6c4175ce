"""`mskai cases improve`: fine-tuning on the case library, end to end on tiny real packages and synthetic cases."""

import time

import numpy as np
import pytest

from conftest import make_package, run_mskai
from mskai import MskaiError
from mskai.cases import CaseLibrary
from mskai.synth.synthseg import LowerLimbPhantom, synthetic_case

VALUES = [1, 2, 3, 4, 5, 6]


def _library(folder, n, seed=3):
    library = CaseLibrary(folder)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        phantom = LowerLimbPhantom(rng)
        image, labels = synthetic_case(phantom, rng, (2.0, 2.0, 2.5), extent_mm=(64, 64, 64),
                                       centre=phantom.knee + [0, 0, 20])
        library.add(image, labels, VALUES, model="test-bones@1.0.0")
    return library


@pytest.fixture
def tiny_model(model_dirs):
    make_package(model_dirs / "bundled" / "test-bones", seed=1)
    return model_dirs


def test_improve_installs_a_local_version_with_its_figures_and_lineage(tiny_model, tmp_path):
    from mskai.models.package import load_package
    from mskai.models.registry import default_version, find_model, user_dir
    from mskai.training.local import improve

    library = _library(tmp_path / "lib", 3)
    result = improve("test-bones", minutes=0.05, library=library, threads=2)
    assert result["model"] == "test-bones@1.0.0+local.1" and result["parent"] == "test-bones@1.0.0"
    assert result["training_cases"] == 2 and len(result["heldout_cases"]) == 1
    package = find_model("test-bones@1.0.0+local.1")
    package.build_network()
    local = package.metadata["local"]
    assert local["lineage"] == ["test-bones@1.0.0"] and local["accepted"] == result["accepted"]
    assert "femur" in set(local["before"]) & set(local["after"])
    assert all(0 <= v["dice"] <= 1 for v in local["after"].values())
    assert package.input == load_package(tiny_model / "bundled" / "test-bones").input  # made for the same input
    assert (default_version("test-bones") == "1.0.0+local.1") == result["accepted"]
    assert find_model("test-bones").version == ("1.0.0+local.1" if result["accepted"] else "1.0.0")
    assert sorted(p.name for p in user_dir().iterdir()) == sorted(
        ["test-bones-1.0.0+local.1", *(["defaults.json"] if result["accepted"] else [])])
    assert not (user_dir() / "test-bones-1.0.0+local.1" / "checkpoint.pt").exists()
    listing = run_mskai("models", "list").stdout
    assert "test-bones@1.0.0+local.1" in listing and "local: 1.0.0 -> this; 2 cases" in listing


def test_better_means_higher_on_average_and_no_bone_much_lower():
    from mskai.training.local import is_better

    def figures(**dice):
        return {"mean": {bone: {"dice": d, "hd95_mm": 1.0} for bone, d in dice.items()}}

    assert is_better(figures(femur=0.80, tibia=0.90), figures(femur=0.92, tibia=0.895))
    assert is_better(figures(femur=0.40, pelvis=0.05), figures(femur=0.36, pelvis=0.55))  # femur lost 0.04: noise
    assert not is_better(figures(femur=0.80, tibia=0.90), figures(femur=0.99, tibia=0.84))  # tibia lost 0.06
    assert not is_better(figures(femur=0.80, tibia=0.90), figures(femur=0.80, tibia=0.90))  # no gain
    assert not is_better(figures(), figures())
    assert not is_better(figures(femur=0.80), figures(femur=0.95, sacrum=0.0))  # a sacrum drawn where there is none


def test_improve_skips_damaged_cases_by_name_and_a_single_case_is_kept_aside(tiny_model, tmp_path):
    from mskai.training.local import improve

    library = _library(tmp_path / "lib", 2)
    damaged = library.cases()[0][0]
    (damaged.folder / "image.nrrd").write_bytes(b"NRRD0004\nnot really\n")
    with pytest.raises(MskaiError, match="library is empty"):
        improve("test-bones", minutes=0.05, library=CaseLibrary(tmp_path / "empty"))
    failed = run_mskai("cases", "improve", "--library", tmp_path / "empty", "--model", "test-bones", ok=False)
    assert failed.returncode == 1 and "library is empty" in failed.stderr and "Traceback" not in failed.stderr
    single = improve("test-bones", minutes=0.05, library=library)  # one readable case: trained on, never the default
    assert single["training_cases"] == 1 and single["heldout_cases"] == [] and single["accepted"] is False
    assert single["skipped"] and single["skipped"][0].startswith(damaged.id)
    _library(tmp_path / "lib", 2, seed=5)
    done = run_mskai("cases", "improve", "--library", tmp_path / "lib", "--model", "test-bones", "--minutes", "0.05",
                     "--threads", "2")
    assert damaged.id in done.stderr and "test-bones@1.0.0+local.2" in done.stdout


def test_a_cancelled_improve_leaves_no_package_and_no_partial_files(tiny_model, tmp_path):
    from mskai.models.registry import user_dir
    from mskai.runner.engine import EngineJob
    from mskai.training.local import STAGING_NAME

    _library(tmp_path / "lib", 3)
    job = EngineJob(["cases", "improve", "--library", tmp_path / "lib", "--model", "test-bones", "--minutes", "5",
                     "--progress", "json"], output=user_dir() / STAGING_NAME).start()
    deadline, stages = time.monotonic() + 120, set()
    while "train" not in stages and job.running and time.monotonic() < deadline:
        stages |= {event["stage"] for event in job.poll()}
        time.sleep(0.2)
    assert "train" in stages, job.error
    time.sleep(1.0)  # well inside training: the staging folder exists now
    assert [p for p in user_dir().iterdir() if p.name.startswith(".local-training")]
    started = time.monotonic()
    job.cancel()
    assert time.monotonic() - started < 3.0 and job.state == "cancelled"
    assert list(user_dir().iterdir()) == []
