"""The ACL engine against hostile and careless input: pickle memo amplification (mskai.training.acl_data), a prepared-case
cache keyed on content in the user's cache folder (mskai.training.acl), impossible knee geometry and noise
(mskai.acl.preprocess), a sagittal volume file stored slices-first, training options checked before any work, and
case lists pointing at devices, pipes, /proc and whole directory trees."""

import json
import os
import pickle
import subprocess
import sys
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from conftest import make_acl_package, run_mskai
from mskai import MskaiError
from mskai.acl.preprocess import AclPreprocessing, check_sagittal
from mskai.training.acl import PreparedSet, case_fingerprint
from mskai.training.acl_data import array_to_volume, load_pickle_array, read_csv
from mskai.volume import Volume


class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _amplifying_pickles():
    """Small pickles whose unpickling rebuilds one memoised buffer thousands of times (GBs with plain pickle)."""
    import codecs

    buffer = bytes(1 << 20)
    dtype = np.dtype("u1")
    frombuffer = np._core.numeric._frombuffer
    yield "arrays from one buffer", pickle.dumps([_Call(frombuffer, buffer, dtype, (1 << 20,), "C")
                                                  for _ in range(3000)], protocol=5)
    text = buffer.decode("latin1")
    yield "encodes of one string", pickle.dumps([_Call(codecs.encode, text, "latin1") for _ in range(3000)],
                                               protocol=2)
    yield "two arrays", pickle.dumps((np.zeros((8, 32, 32)), np.zeros((8, 32, 32))), protocol=4)


@pytest.mark.parametrize("name", [name for name, _ in _amplifying_pickles()])
def test_pickle_memo_amplification_is_refused_within_the_file_s_own_size(tmp_path, name):
    data = dict(_amplifying_pickles())[name]
    assert len(data) < 2 << 20
    path = tmp_path / "case.pck"
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(MskaiError, match="more than one array|more than 2 MiB|more than 3 MiB"):
        load_pickle_array(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20 and time.perf_counter() - start < 5  # plain pickle would build gigabytes


def test_one_honest_array_still_loads(tmp_path):
    array = (np.arange(16 * 64 * 64) % 251).astype(np.uint8).reshape(16, 64, 64)
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pck"
        path.write_bytes(pickle.dumps(array, protocol=protocol))
        assert np.array_equal(load_pickle_array(path), array)


def _structured(seed: int, shape=(16, 64, 64)) -> np.ndarray:
    """A smooth (image-like, not noise) uint8 array."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    return (100 + 80 * np.sin(6 * x + rng.random()) * np.cos(5 * y) + 20 * z).astype(np.uint8)


def test_the_prepared_case_cache_is_keyed_on_content_not_on_the_path(tmp_path):
    for n in range(2):
        np.save(tmp_path / f"case{n}.npy", _structured(n))
    (tmp_path / "cases.csv").write_text("path,label\ncase0.npy,0\ncase1.npy,1\n")
    items = [(c.source, c.load, c.label, c.subject) for c in read_csv(tmp_path / "cases.csv")]
    config = AclPreprocessing(size=32, depth=8, field_mm=None)
    first = PreparedSet.build(items, config, tmp_path / "cache", progress=None)
    cached = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 2
    before = case_fingerprint(str(tmp_path / "case1.npy"))
    np.save(tmp_path / "case1.npy", 255 - _structured(1))  # same path, new content
    assert case_fingerprint(str(tmp_path / "case1.npy")) != before
    second = PreparedSet.build(items, config, tmp_path / "cache", progress=None)
    assert np.array_equal(first.images[0], second.images[0])  # unchanged: from the cache
    assert not np.array_equal(first.images[1], second.images[1])  # changed: prepared again
    assert len(sorted((tmp_path / "cache").rglob("*.npy"))) == 3


def test_evaluate_acl_caches_in_the_user_cache_folder_and_says_so(tmp_path):
    for n in range(4):
        np.save(tmp_path / f"case{n}.npy", _structured(n))
    (tmp_path / "cases.csv").write_text("".join(f"case{n}.npy,{n}\n" for n in range(4)))
    package = make_acl_package(tmp_path / "acl", size=32, depth=8)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "MSKAI_CACHE_DIR": str(tmp_path / "user-cache")}
    mskai = os.path.join(os.path.dirname(sys.executable), "mskai")
    result = subprocess.run([mskai, "evaluate-acl", "--csv", str(tmp_path / "cases.csv"), "--split", "all",
                             "--model", str(package), "--bootstrap", "10", "-o", str(tmp_path / "eval")],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"cached in {tmp_path / 'user-cache' / 'acl-prepared'}" in result.stderr
    assert len(list((tmp_path / "user-cache" / "acl-prepared").rglob("*.npy"))) == 4
    assert list(work.iterdir()) == []  # nothing in the working directory


def _sagittal_file(tmp_path, spacing, shape=(29, 256, 256), array=None):
    """A sagittal NIfTI stored slices-first, as MRNet-style arrays often are: axis 0 runs left-right."""
    array = _structured(3, shape).astype(np.int16) if array is None else array
    affine = np.zeros((4, 4))
    affine[0, 0], affine[1, 2], affine[2, 1], affine[3, 3] = spacing[0], -spacing[2], -spacing[1], 1  # RAS
    path = tmp_path / "sagittal.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_a_sagittal_volume_file_with_slices_along_the_first_axis_is_classified(tmp_path):
    path = _sagittal_file(tmp_path, (3.0, 0.6, 0.6))
    package = make_acl_package(tmp_path / "acl")
    run_mskai("classify", path, "--model", package, "-o", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["key_slice_axis"] == 0 and 0 <= report["key_slice"] < 29
    volume = Volume.from_ras(np.zeros((8, 64, 64)), np.diag([0.5, 0.5, 0.5, 1]))  # isotropic: the third axis
    with pytest.raises(MskaiError, match="this series is axial"):
        check_sagittal(volume)


@pytest.mark.parametrize("spacing, message", [((3.0, 0.0012, 0.0012), "in-plane pixels of 0.0012 mm"),
                                              ((3.0, 861, 861), "in-plane pixels of 861 mm"),
                                              ((40.0, 0.6, 0.6), "slice spacing of 40 mm")])
def test_voxel_sizes_no_knee_has_are_refused(tmp_path, spacing, message):
    volume = array_to_volume(_structured(1, (29, 128, 128)), spacing)
    with pytest.raises(MskaiError, match=message):
        check_sagittal(volume)


def test_pure_noise_is_refused_before_a_grade(tmp_path):
    noise = np.random.default_rng(0).integers(0, 4000, (29, 256, 256)).astype(np.int16)
    path = _sagittal_file(tmp_path, (3.0, 0.6, 0.6), array=noise)
    result = run_mskai("classify", path, "--model", make_acl_package(tmp_path / "acl"), "-o", tmp_path / "out",
                       ok=False)
    assert result.returncode == 1 and "looks like noise" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    (("--layers", "a,b"), "--layers takes whole numbers"), (("--layers", "1,1"), "layers must be four numbers"),
    (("--widths", "16,32"), "widths must be four numbers"), (("--id", "../../evil"), "package id"),
    (("--version", "1/2"), "package version"), (("--workers", "-3"), "--workers must be"),
    (("--threads", "0"), "threads must be"), (("--pooling", "max", "--depth", "0"), "depth must be"),
    (("--backbone-weights", "missing.safetensors"), "is not a file"), (("--synthetic", "-5"), "--synthetic must be"),
])
def test_train_acl_options_are_refused_before_any_work(tmp_path, options, message):
    start = time.perf_counter()
    args = ["train-acl", "-o", tmp_path / "pkg", *options]
    if "--synthetic" not in options:
        args += ["--synthetic", "8"]
    result = run_mskai(*args, ok=False)
    assert result.returncode == 1 and message in result.stderr and "unexpected" not in result.stderr
    assert not (tmp_path / "pkg").exists() and time.perf_counter() - start < 30


def test_a_nul_in_a_case_list_path_is_a_clear_error(tmp_path):
    (tmp_path / "cases.csv").write_text("path,label\ncase\0one.npy,0\n")
    result = run_mskai("train-acl", "--csv", tmp_path / "cases.csv", "-o", tmp_path / "pkg", ok=False)
    assert result.returncode == 1 and "is not a usable path" in result.stderr and "unexpected" not in result.stderr


def test_case_lists_accept_regular_files_and_series_folders_only(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notdicom").write_bytes(b"x" * 200)
    rows = {"/dev/zero": "not a regular file", str(fifo): "not a regular file", "/proc/self/environ": "is empty",
            "/usr/share": "not the folder of one series", str(tmp_path / "empty"): "empty folder",
            str(tmp_path / "notdicom"): "no DICM prefix"}
    (tmp_path / "cases.csv").write_text("".join(f"{path},0\n" for path in rows))
    start = time.perf_counter()
    with pytest.raises(MskaiError) as refused:
        read_csv(tmp_path / "cases.csv")
    assert time.perf_counter() - start < 10  # bounded: /usr/share is not walked through
    text = str(refused.value)
    assert "6 problem(s)" in text and "nothing was read" in text
    for reason in list(rows.values())[:5]:  # the first five are shown
        assert reason in text, reason
