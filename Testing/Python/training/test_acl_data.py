"""ACL data readers: CSV lists, MRNet and KneeMRI layouts, the restricted unpickler against hostile pickles,
subject-level stratified splits, class weights."""

import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mskai import MskaiError
from mskai.acl import CLASS_NAMES
from mskai.training.acl_data import (
    KNEEMRI_LABELS, AclCase, class_weights, load_pickle_array, read_csv,
    read_kneemri, read_mrnet, stratified_subject_split,
)

PROTOCOLS = (2, 3, 4, 5)
DTYPES = ("uint8", "int16", ">u2", "<u2", "float32", "float64", "bool")


def _volume(dtype, shape=(4, 6, 5), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, shape) if dtype == "bool" else rng.integers(0, 4000, shape)).astype(dtype)


# ------------------------------------------------------------------------------------------------ pickles


def _numpy1_names(data: bytes) -> bytes:
    """The pickle as numpy 1.x writes it: numpy.core.* globals (numpy 2 writes numpy._core.*), frames dropped."""
    out, ops = bytearray(), list(pickletools.genops(data))
    for (op, arg, pos), nxt in zip(ops, ops[1:] + [(None, None, len(data))]):
        raw = data[pos:nxt[2]]
        if op.name == "FRAME":
            continue
        if op.name == "SHORT_BINUNICODE" and arg.startswith("numpy._core."):
            name = arg.replace("numpy._core.", "numpy.core.").encode()
            raw = b"\x8c" + bytes([len(name)]) + name
        elif op.name == "GLOBAL" and arg.startswith("numpy._core."):
            raw = raw.replace(b"numpy._core.", b"numpy.core.")
        out += raw
    return bytes(out)


def _python2_pickle(array: np.ndarray) -> bytes:
    """A pickle as Python 2 + numpy 1.x wrote it (protocol 2, data as a byte string), built opcode by opcode."""
    dtype = array.dtype
    order = "|" if dtype.itemsize == 1 else (">" if dtype.byteorder == ">" else "<")
    data = np.ascontiguousarray(array).tobytes()

    def short(s: bytes):
        return b"U" + bytes([len(s)]) + s

    shape = b"(" + b"".join(b"K" + bytes([n]) for n in array.shape) + b"t"
    return (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85" + short(b"b")
            + b"\x87R(K\x01" + shape + b"cnumpy\ndtype\n" + short(dtype.str[1:].encode()) + b"K\x00K\x01\x87R"
            + b"(K\x03" + short(order.encode()) + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
            + b"T" + struct.pack("<I", len(data)) + data + b"tb.")


def test_pickled_arrays_of_several_dtypes_and_protocols_read_back(tmp_path):
    for dtype in DTYPES:
        array = _volume(dtype)
        variants = [array, np.asfortranarray(array), array[:, ::2, :]]
        for p in PROTOCOLS:
            for n, a in enumerate(variants):
                blob = pickle.dumps(a, protocol=p)
                for tag, data in (("np2", blob), ("np1", _numpy1_names(blob))):
                    path = tmp_path / f"{dtype.replace('>', 'b').replace('<', 'l')}-{p}-{n}-{tag}.pck"
                    path.write_bytes(data)
                    got = load_pickle_array(path)
                    assert got.shape == a.shape and np.array_equal(got, a.astype(got.dtype)), path.name
                    if dtype != "bool":
                        assert got.dtype == a.dtype
    assert b"numpy.core.numeric" in _numpy1_names(pickle.dumps(_volume("int16"), protocol=5))
    for dtype in ("uint8", "int16", ">u2", "float32"):  # KneeMRI-era files: Python 2, numpy 1.x
        path = tmp_path / "py2.pck"
        path.write_bytes(_python2_pickle(_volume(dtype)))
        assert np.array_equal(load_pickle_array(path), _volume(dtype))


def _asm_global(module: str, name: str, proto: int) -> bytes:
    if proto >= 4:
        return (b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode()
                + b"\x93")
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _asm_str(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _argv(*words) -> bytes:
    """Opcodes pushing one list of strings."""
    return b"(" + b"".join(_asm_str(w) for w in words) + b"l"


def _call(module, name, args: bytes, proto=2) -> bytes:
    """Opcodes that call module.name(*args): args are already-assembled opcodes pushing the arguments."""
    return _asm_global(module, name, proto) + b"(" + args + b"tR"


def _program(body: bytes, proto=2) -> bytes:
    return b"\x80" + bytes([proto]) + body + b"."


class _Reduce:
    """An object whose pickle calls func(*args) on loading."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


N_HOSTILE = 13


def _hostile(tmp_path: Path):
    """(name, pickle bytes, marker path) of pickles that each create their marker when really unpickled."""
    out = []

    def marker(name):
        return tmp_path / f"marker-{name}"

    touch = lambda m: f"touch {shlex.quote(str(m))}"  # noqa: E731
    m = marker("os-system")
    out.append(("os.system", _program(_call("os", "system", _asm_str(touch(m)))), m))
    m = marker("os-system-p4")
    out.append(("os.system p4", _program(_call("os", "system", _asm_str(touch(m)), proto=4), proto=4), m))
    m = marker("posix-system")
    out.append(("posix.system", pickle.dumps(_Reduce(os.system, touch(m)), protocol=2), m))
    m = marker("eval")
    out.append(("builtins.eval", pickle.dumps(_Reduce(eval, f"open({str(m)!r}, 'w').close()"), protocol=4), m))
    m = marker("popen")
    out.append(("subprocess.Popen", pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(m)]), protocol=3), m))
    m = marker("popen2")
    out.append(("subprocess.Popen p2", _program(_call("subprocess", "Popen", _argv("touch", str(m)))), m))
    m = marker("numpy-load")
    inner = tmp_path / "inner.npy"
    inner.write_bytes(pickle.dumps(_Reduce(os.system, touch(m)), protocol=2))
    out.append(("numpy.load allow_pickle", pickle.dumps(_Reduce(np.load, str(inner), None, True), protocol=4), m))
    m = marker("reconstruct-obj")
    evil = _Reduce(os.system, touch(m))
    out.append(("_reconstruct with a malicious argument",
                pickle.dumps(_Reduce(np._core.multiarray._reconstruct, np.ndarray, (0,), evil), protocol=2), m))
    m = marker("reconstruct-type")
    out.append(("_reconstruct of a malicious type", _program(_call(
        "numpy.core.multiarray", "_reconstruct",
        _call("subprocess", "Popen", _argv("touch", str(m))) + b"K\x00\x85" + _asm_str("b"))), m))
    m = marker("object-array")
    obj = np.empty((1, 1, 2), dtype=object)
    obj[0, 0, 0], obj[0, 0, 1] = 1, _Reduce(os.system, touch(m))
    out.append(("object array holding a call", pickle.dumps(obj, protocol=2), m))
    out.append(("object array (protocol 5)", pickle.dumps(obj, protocol=5), m))
    m = marker("frombuffer")
    out.append(("_frombuffer with a malicious buffer", pickle.dumps(
        _Reduce(np._core.numeric._frombuffer, _Reduce(os.system, touch(m)), np.dtype("u1"), (1, 1, 1), "C"),
        protocol=5), m))
    m = marker("codecs")
    out.append(("eval via a nested global", pickle.dumps(
        _Reduce(np._core.multiarray._reconstruct, np.ndarray, (0,), _Reduce(eval, f"open({str(m)!r},'w')")),
        protocol=3), m))
    return out


def test_hostile_pickles_really_run_their_payload_with_plain_pickle(tmp_path):
    """Control: each crafted pickle does create its marker when loaded by the ordinary unpickler."""
    hostile = _hostile(tmp_path)
    assert len(hostile) == N_HOSTILE
    for name, data, marker in hostile:
        if "protocol 5" in name:
            continue  # same payload as the protocol 2 object array
        try:
            result = pickle.loads(data)
            if isinstance(result, subprocess.Popen):
                result.wait(10)
        except Exception:  # noqa: BLE001 - numpy may reject the payload's return value after the call ran
            pass
        deadline = time.monotonic() + 10  # a Popen whose result numpy rejected still runs, unwaited
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("index", range(N_HOSTILE))
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, index):
    name, data, marker = _hostile(tmp_path)[index]
    path = tmp_path / "evil.pck"
    path.write_bytes(data)
    with pytest.raises(MskaiError) as info:
        load_pickle_array(path)
    message = str(info.value)
    assert "refused to load" in message and "evil.pck" in message, (name, message)
    with pytest.raises(MskaiError):
        AclCase(str(path), 0, "s").load()
    assert not marker.exists(), name


def test_refusal_names_the_global(tmp_path):
    path = tmp_path / "evil.pck"
    path.write_bytes(_program(_call("os", "system", _asm_str("true"))))
    with pytest.raises(MskaiError, match=r"refused to load os\.system"):
        load_pickle_array(path)
    path.write_bytes(pickle.dumps(_Reduce(os.system, "true"), protocol=2))
    with pytest.raises(MskaiError, match=r"refused to load posix\.system"):
        load_pickle_array(path)


def test_odd_but_harmless_pickles_are_refused(tmp_path):
    path = tmp_path / "odd.pck"
    cases = {
        "2D array": pickle.dumps(np.zeros((4, 4)), protocol=4),
        "4D array": pickle.dumps(np.zeros((1, 2, 2, 2)), protocol=4),
        "list": pickle.dumps([1, 2, 3]),
        "plain object array": pickle.dumps(np.zeros((2, 2, 2), dtype=object)),
        "string array": pickle.dumps(np.full((2, 2, 2), "a")),
        "record array": pickle.dumps(np.zeros((2, 2, 2), dtype=[("a", "i4"), ("b", "f4")])),
        "complex array": pickle.dumps(np.zeros((2, 2, 2), dtype=complex)),
        "NaN voxels": pickle.dumps(np.full((2, 2, 2), np.nan)),
        "truncated": pickle.dumps(_volume("int16"), protocol=2)[:-20],
        "empty": b"",
        "not a pickle": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        "huge shape": pickle.dumps(_volume("uint8"), protocol=2).replace(b"K\x04K\x06K\x05",
                                                                          b"J\x00\x00\x00\x01K\x06K\x05"),
        "dtype with object flags": pickle.dumps(_volume("float64"), protocol=2).replace(
            b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK?"),
        "numbers given as objects": pickle.dumps(np.zeros((1, 1, 1), dtype=object), protocol=2).replace(
            b"O8", b"f8").replace(b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK?", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00"),
        "bytes via zlib": _program(_call("_codecs", "encode", _asm_str("x") + _asm_str("zlib_codec"))),
    }
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(MskaiError) as info:
            load_pickle_array(path)
        assert "odd.pck" in str(info.value), what
    path.write_bytes(pickle.dumps(_volume("int16")))
    with pytest.raises(MskaiError, match="MiB"):
        load_pickle_array(path, max_bytes=100)


# ------------------------------------------------------------------------------------------------ layouts


def _write_kneemri(root: Path, rows, patient_column=False):
    """rows: (name, diagnosis, exam, folder, roi (z, y, x, d, h, w), dtype, protocol)."""
    header = ["examId", "seriesNo", "aclDiagnosis", "kneeLR", "roiX", "roiY", "roiZ", "roiHeight", "roiWidth",
              "roiDepth", "volumeFilename"]
    lines = [",".join((["patientID"] if patient_column else []) + header)]
    for n, (name, diagnosis, exam, folder, roi, dtype, protocol) in enumerate(rows):
        (root / folder).mkdir(parents=True, exist_ok=True)
        with open(root / folder / name, "wb") as f:
            pickle.dump(_volume(dtype, (5, 12, 10), seed=n), f, protocol=protocol)
        z, y, x, d, h, w = roi
        cells = [exam, 5, diagnosis, n % 2, x, y, z, h, w, d, name]
        lines.append(",".join(map(str, ([f"P{exam // 10}"] if patient_column else []) + cells)))
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


KNEE_ROWS = [
    ("100-5.pck", 0, 100, "vol01", (1, 2, 3, 3, 6, 4), "int16", 2),
    ("101-5.pck", 1, 101, "vol01", (0, 0, 0, 5, 12, 10), "uint16", 3),
    ("102-5.pck", 2, 102, "vol02", (2, 1, 1, 2, 5, 5), "float32", 4),
    ("102-6.pck", 2, 102, "vol02", (2, 1, 1, 2, 5, 5), ">u2", 5),
]


def test_kneemri_layout_labels_subjects_and_roi(tmp_path):
    _write_kneemri(tmp_path, KNEE_ROWS)
    cases = read_kneemri(tmp_path)
    assert [c.label for c in cases] == [0, 2, 3, 3]  # healthy, partial rupture, complete rupture
    assert [c.label for c in read_kneemri(tmp_path, classes=2)] == [0, 1, 1, 1]
    assert KNEEMRI_LABELS[4] == {0: 0, 1: 2, 2: 3} and CLASS_NAMES[4][2] == "partial rupture"
    assert cases[2].subject == cases[3].subject != cases[0].subject  # one exam, two series
    assert all(c.subject.startswith("s-") and "102" not in c.subject for c in cases)
    volume = cases[0].load()
    array = _volume("int16", (5, 12, 10), seed=0)
    assert volume.shape == (10, 12, 5)  # (columns, rows, slices): i along a row, k across slices
    assert np.array_equal(volume.array.transpose(2, 1, 0), array)
    assert volume.meta["geometry"] == "assumed" and np.allclose(sorted(volume.spacing), [0.5, 0.5, 3.0])
    assert volume.meta["roi"] == [1, 2, 3, 3, 6, 4]
    cropped = read_kneemri(tmp_path, use_roi=True)[0].load()
    assert np.array_equal(cropped.array.transpose(2, 1, 0), array[1:4, 2:8, 3:7])
    # The crop keeps the frame: its first voxel sits where voxel (x=3, y=2, z=1) of the whole volume is.
    assert np.allclose(cropped.origin_lps, volume.ijk_to_lps([3, 2, 1])[0])
    assert cases[3].load().array.dtype == np.dtype(">u2")


def test_kneemri_patient_column_groups_exams_of_one_patient(tmp_path):
    rows = [("200-5.pck", 0, 200, ".", (0, 0, 0, 1, 1, 1), "int16", 4),
            ("201-5.pck", 1, 201, ".", (0, 0, 0, 1, 1, 1), "int16", 4),
            ("310-5.pck", 0, 310, ".", (0, 0, 0, 1, 1, 1), "int16", 4)]
    _write_kneemri(tmp_path, rows, patient_column=True)
    cases = read_kneemri(tmp_path)
    assert cases[0].subject == cases[1].subject != cases[2].subject  # P20, P20, P31
    assert all("P20" not in c.subject for c in cases)


def test_kneemri_problems_are_listed_together(tmp_path):
    _write_kneemri(tmp_path, KNEE_ROWS)
    text = (tmp_path / "metadata.csv").read_text().splitlines()
    text.append("103,5,0,0,0,0,0,1,1,1,../../etc/passwd")
    text.append("104,5,7,0,0,0,0,1,1,1,104-5.pck")
    text.append(text[2])
    (tmp_path / "metadata.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(MskaiError) as info:
        read_kneemri(tmp_path)
    message = str(info.value)
    for needle in ("line 6", "not a plain .pck file name", "line 7", "aclDiagnosis '7'", "104-5.pck not found",
                   "line 8", "repeats line 3", "nothing was read"):
        assert needle in message, (needle, message)
    (tmp_path / "metadata.csv").write_text("examId,volumeFilename\n1,1-5.pck\n")
    with pytest.raises(MskaiError, match="lacks the column.*aclDiagnosis"):
        read_kneemri(tmp_path)
    with pytest.raises(MskaiError, match="metadata.csv is missing"):
        read_kneemri(tmp_path / "vol01")


def _write_mrnet(root: Path, split: str, labels: dict, task="acl"):
    folder = root / split / "sagittal"
    folder.mkdir(parents=True, exist_ok=True)
    for case in labels:
        np.save(folder / f"{case:04d}.npy", _volume("uint8", (3 + case % 3, 16, 16), seed=case))
    (root / f"{split}-{task}.csv").write_text("".join(f"{case:04d},{label}\n" for case, label in labels.items()))


def test_mrnet_layout(tmp_path):
    _write_mrnet(tmp_path, "train", {0: 0, 1: 1, 2: 0})
    _write_mrnet(tmp_path, "valid", {1130: 1, 1131: 0})
    train, valid = read_mrnet(tmp_path), read_mrnet(tmp_path, "valid")
    assert [c.label for c in train] == [0, 1, 0] and [c.label for c in valid] == [1, 0]
    assert Path(train[1].source).name == "0001.npy" and len({c.subject for c in train + valid}) == 5
    volume = train[2].load()
    assert volume.shape == (16, 16, 5) and volume.meta["geometry"] == "assumed"
    assert np.allclose(sorted(volume.spacing), [0.625, 0.625, 3.0])
    assert np.array_equal(volume.array.transpose(2, 1, 0), _volume("uint8", (5, 16, 16), seed=2))
    (tmp_path / "train-acl.csv").write_text("0000,0\n0001,2\n0007,1\nabc\n")
    with pytest.raises(MskaiError) as info:
        read_mrnet(tmp_path)
    message = str(info.value)
    assert "line 2: label '2'" in message and "line 3: train/sagittal/0007.npy not found" in message
    assert "line 4" in message
    with pytest.raises(MskaiError, match="meniscus.csv is missing"):
        read_mrnet(tmp_path, task="meniscus")
    with pytest.raises(MskaiError, match="split must be"):
        read_mrnet(tmp_path, split="test")


def test_npy_with_objects_is_refused(tmp_path):
    _write_mrnet(tmp_path, "train", {0: 0})
    np.save(tmp_path / "train" / "sagittal" / "0000.npy", np.zeros((2, 2, 2), dtype=object), allow_pickle=True)
    with pytest.raises(MskaiError, match="0000.npy"):
        read_mrnet(tmp_path)[0].load()
    np.save(tmp_path / "train" / "sagittal" / "0000.npy", np.zeros((4, 4)))
    with pytest.raises(MskaiError, match="2D array"):
        read_mrnet(tmp_path)[0].load()


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_cases_relative_paths_header_and_pseudonymous_subjects(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for n in range(3):
        np.save(data / f"c{n}.npy", _volume("uint8", (3, 8, 8), seed=n))
    with open(data / "k.pck", "wb") as f:
        pickle.dump(_volume("int16", (3, 8, 8)), f, protocol=2)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "cases.csv").write_text("path,label,subject\n../data/c0.npy,0,Jane Doe\n../data/c1.npy,3,Jane Doe\n"
                                     "../data/c2.npy,2,\n../data/k.pck,1,John Roe\n")
    cases = read_csv(lists / "cases.csv")
    assert [c.label for c in cases] == [0, 3, 2, 1]
    assert cases[0].subject == cases[1].subject and len({c.subject for c in cases}) == 3
    assert not any("Doe" in c.subject or "Roe" in c.subject for c in cases)
    assert cases[3].load().shape == (8, 8, 3)
    with pytest.raises(MskaiError, match="line 3: label '3' is not one of 0-1"):
        read_csv(lists / "cases.csv", classes=2)
    with pytest.raises(MskaiError, match="classes must be"):
        read_csv(lists / "cases.csv", classes=3)


def test_csv_with_missing_file_and_unknown_label_fails_once_naming_lines(tmp_path):
    np.save(tmp_path / "a.npy", _volume("uint8"))
    (tmp_path / "cases.csv").write_text("a.npy,0\nmissing.npy,1\na.npy,9\nb.txt\n\na.npy,x\n")
    with pytest.raises(MskaiError) as info:
        read_csv(tmp_path / "cases.csv")
    message = str(info.value)
    assert message.count("cases.csv") == 1 and "nothing was read" in message
    for needle in ("line 2: missing.npy not found", "line 3: label '9' is not one of 0-3", "repeats line 1",
                   "line 4: expected path,label[,subject]", "line 6: label 'x'"):
        assert needle in message, (needle, message)


def test_csv_dicom_folder_subject_is_a_pseudonym(tmp_path, knee_dicom):
    import pydicom

    (tmp_path / "cases.csv").write_text(f"{knee_dicom},2\n")
    (case,) = read_csv(tmp_path / "cases.csv")
    ds = pydicom.dcmread(next(p for p in sorted(knee_dicom.iterdir()) if p.is_file()), stop_before_pixels=True)
    for value in (str(ds.get("PatientID", "")), str(ds.get("PatientName", ""))):
        assert not value or value not in case.subject
    assert case.subject == read_csv(tmp_path / "cases.csv")[0].subject  # stable
    volume = case.load()
    assert volume.array.ndim == 3 and min(volume.shape) >= 20


# ------------------------------------------------------------------------------------------------ splits


def _population(seed=1):
    """~300 cases of 200 subjects; labels 60/10/15/15 %; some subjects with 2-3 cases of the same label."""
    rng = np.random.default_rng(seed)
    cases = []
    for s in range(200):
        label = int(rng.choice(4, p=[0.6, 0.1, 0.15, 0.15]))
        for n in range(int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))):
            cases.append(AclCase(f"/data/{s}-{n}.npy", label if n == 0 else int(rng.choice([0, label])), f"s{s}"))
    return cases


def test_subject_split_keeps_subjects_whole_and_proportions(tmp_path):
    cases = _population()
    parts = stratified_subject_split(cases, (0.7, 0.15, 0.15), seed=3)
    assert list(parts) == ["train", "val", "test"]
    assert sorted(c.source for p in parts.values() for c in p) == sorted(c.source for c in cases)
    subjects = [{c.subject for c in p} for p in parts.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    overall = Counter(c.label for c in cases)
    for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        part = parts[name]
        assert abs(len(part) / len(cases) - share) < 0.03, (name, len(part))
        counts = Counter(c.label for c in part)
        for label in range(4):
            assert abs(counts[label] / len(part) - overall[label] / len(cases)) < 0.06, (name, label, counts)
    again = stratified_subject_split(list(cases), (0.7, 0.15, 0.15), seed=3)
    assert {k: [c.source for c in v] for k, v in again.items()} == {k: [c.source for c in v] for k, v in parts.items()}
    other = stratified_subject_split(cases, (0.7, 0.15, 0.15), seed=4)
    assert [c.source for c in other["test"]] != [c.source for c in parts["test"]]
    two = stratified_subject_split(cases, {"fit": 0.8, "check": 0.2})
    assert list(two) == ["fit", "check"] and len(two["fit"]) + len(two["check"]) == len(cases)
    for bad in ((0.5, 0.6), (1.2, -0.2), (), {"a": "x"}):
        with pytest.raises(MskaiError, match="fractions"):
            stratified_subject_split(cases, bad)


def test_split_of_few_subjects_and_one_subject_many_cases():
    cases = [AclCase(f"/x/{n}", n % 2, "one") for n in range(10)] + [AclCase("/x/a", 1, "two")]
    parts = stratified_subject_split(cases, (0.5, 0.25, 0.25))
    homes = [name for name, p in parts.items() if any(c.subject == "one" for c in p)]
    assert len(homes) == 1 and len(parts[homes[0]]) >= 10


def test_class_weights():
    labels = [0, 0, 0, 2]
    weights = class_weights(labels, 4)
    assert np.allclose(weights, [4 / 6, 0, 2, 0])  # N / (K_present * n_c); absent classes 0
    per_case = weights[labels]  # what training samples by: classes drawn evenly
    assert np.allclose(per_case, [4 / 6] * 3 + [2]) and np.isclose(per_case.mean(), 1.0)
    with pytest.raises(MskaiError):
        class_weights(labels, 2)
