"""Fuzzing the ACL readers (restricted unpickler, .npy reader, case-list CSV) and the batch manifest reader: every
mutated input gives a correct result or a clear MskaiError, nothing else. Seeded and bounded in time
(MSKAI_FUZZ_SECONDS shared out between the four readers, MSKAI_FUZZ_SEED); prints what became of the mutations."""

import json
import os
import pickle
import time
from collections import Counter

import numpy as np
import pytest

from mskai import MskaiError
from mskai.training.acl_data import load_npy_array, load_pickle_array, read_csv
from mskai.runner.batch import Manifest, _earlier_manifest, _known_rows

SECONDS = float(os.environ.get("MSKAI_FUZZ_SECONDS", "20")) / 4
SEED = int(os.environ.get("MSKAI_FUZZ_SEED", "20261201"))
ARRAY = (np.arange(4 * 16 * 16) % 97).astype(np.int16).reshape(4, 16, 16)


def _mutate(data: bytes, rng) -> bytes:
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        what, at = rng.random(), int(rng.integers(0, max(1, len(data))))
        if not data:
            what = 1.0
        if what < 0.6:
            data[at] = int(rng.integers(0, 256))
        elif what < 0.8:
            del data[at:at + int(rng.integers(1, 16))]
        else:
            data[at:at] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
    return bytes(data)


def _fuzz(name, seeds, read, check, tmp_path, suffix):
    rng = np.random.default_rng(SEED)
    outcomes, deadline, n = Counter(), time.monotonic() + SECONDS, 0
    path = tmp_path / f"case{suffix}"
    while time.monotonic() < deadline:
        path.write_bytes(_mutate(seeds[n % len(seeds)], rng))
        n += 1
        try:
            result = read(path)
        except MskaiError:
            outcomes["clear error"] += 1
            continue
        check(result)
        outcomes["read"] += 1
    print(f"{name}: {n} mutations: {dict(outcomes)}")
    assert n > 50 and outcomes["clear error"] > 0


def _sane_array(array):
    assert isinstance(array, np.ndarray) and array.ndim == 3 and array.dtype.kind in "biuf"


def test_fuzz_pickled_arrays(tmp_path):
    seeds = [pickle.dumps(ARRAY, protocol=p) for p in (2, 3, 4, 5)]
    _fuzz("pickles", seeds, load_pickle_array, _sane_array, tmp_path, ".pck")


def test_fuzz_npy_arrays(tmp_path):
    import io

    buffer = io.BytesIO()
    np.save(buffer, ARRAY)
    _fuzz("npy", [buffer.getvalue()], load_npy_array, _sane_array, tmp_path, ".npy")


def test_fuzz_case_lists(tmp_path):
    np.save(tmp_path / "a.npy", ARRAY)
    (tmp_path / "sub").mkdir()
    seeds = [b"path,label,subject\na.npy,1,s1\n", b'"a.npy",0\n"sub",3,"x,y"\n', b"a.npy,2\n/dev/null,1\n"]
    _fuzz("case lists", seeds, read_csv, lambda cases: all(0 <= c.label < 4 for c in cases), tmp_path, ".csv")


def _valid_manifest():
    return {"done": ["series-0123456789abcdef"], "skipped": [], "failed": [], "pending": [], "kind": "mskai-batch",
            "task": "segment", "settings": {"options": {"fast": False}, "formats": ["report"]},
            "model": {"id": "m", "version": "1", "label": "m@1", "sha256": "a" * 64, "demo": True},
            "series": [{"series": "series-0123456789abcdef", "status": "done", "error": None, "seconds": 1.5,
                        "volume": "volume", "model": "m@1", "worker": "host:1", "finished": "2026", "output": "x"}]}


def _random_value(rng):
    choices = [None, True, -1, 0, 2**70, 1e308, float("nan"), "", "x" * 5000, "\x1b[2J\0", [], [1, "a"], {},
               {"status": "done"}, "series-0123456789abcdef", "../../etc"]
    return choices[int(rng.integers(0, len(choices)))]


def _mutate_json(value, rng):
    """The manifest with one value somewhere replaced, removed or given a new key."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = list(value)[int(rng.integers(0, len(value)))]
        out = dict(value)
        roll = rng.random()
        if roll < 0.2:
            del out[key]
        elif roll < 0.3:
            out["extra"] = _random_value(rng)
        else:
            out[key] = _mutate_json(value[key], rng) if rng.random() < 0.5 else _random_value(rng)
        return out
    if isinstance(value, list) and value and rng.random() < 0.8:
        out = list(value)
        i = int(rng.integers(0, len(out)))
        out[i] = _mutate_json(out[i], rng)
        return out
    return _random_value(rng)


def test_fuzz_batch_manifests(tmp_path):
    rng = np.random.default_rng(SEED)
    run = {k: v for k, v in _valid_manifest().items() if k in ("kind", "task", "settings", "model")}
    fields = ("series", "status", "error", "seconds", "volume", "model", "worker", "finished", "output")
    outcomes, deadline, n = Counter(), time.monotonic() + SECONDS, 0
    while time.monotonic() < deadline:
        manifest = _mutate_json(_valid_manifest(), rng)
        text = json.dumps(manifest) if rng.random() < 0.9 else json.dumps(manifest)[:-int(rng.integers(1, 20))]
        (tmp_path / "batch.json").write_text(text)
        n += 1
        try:
            rows = _known_rows(_earlier_manifest(tmp_path, run), "series", "series", fields)
        except MskaiError:
            outcomes["clear error"] += 1
            continue
        assert all(set(row) <= set(fields) for row in rows.values())
        assert all(isinstance(v, (str, int, float, bool, type(None))) for row in rows.values() for v in row.values())
        assert all(len(v) <= 2000 for row in rows.values() for v in row.values() if isinstance(v, str))
        assert Manifest.previous(tmp_path)["model"]["sha256"] == "a" * 64
        outcomes["accepted"] += 1
    print(f"manifests: {n} mutations: {dict(outcomes)}")
    assert n > 50 and outcomes["clear error"] > 0 and outcomes["accepted"] > 0


@pytest.mark.parametrize("text", ["", "{}", '{"kind": "mskai-batch"}', "\0", "[" * 100000])
def test_manifests_a_person_might_leave_behind_are_clear_errors(tmp_path, text):
    (tmp_path / "batch.json").write_text(text)
    with pytest.raises(MskaiError):
        Manifest.previous(tmp_path)
