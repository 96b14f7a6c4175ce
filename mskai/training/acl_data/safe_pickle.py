"""The restricted unpickler of pickled volume arrays (KneeMRI's .pck): it can build one numeric numpy array and
nothing else, within a byte budget, after a pickletools pre-scan of every length in the file."""

from __future__ import annotations

import functools
import io
import math
import pickle
import pickletools
from pathlib import Path

import numpy as np

from mskai import MskaiError
from mskai.training.acl_data.arrays import check_array
from mskai.training.acl_data.common import MAX_FILE_BYTES, _file_bytes


# --- restricted unpickling -------------------------------------------------------------------------------
# What pickled numpy arrays reference (checked with numpy 2.4 on protocols 2-5; numpy 1.x and Python 2 pickles
# use numpy.core.* instead of numpy._core.*): protocols 2-4: numpy.(_)core.multiarray._reconstruct,
# numpy.ndarray, numpy.dtype (+ _codecs.encode for bytes under protocol 2); protocol 5:
# numpy.(_)core.numeric._frombuffer, numpy.dtype. None of the real numpy objects is handed to the unpickler:
# each name maps to a stand-in that validates its arguments and builds the array itself with np.frombuffer,
# so numpy's own __setstate__ never sees attacker-chosen state and no other callable is reachable.

_NUMERIC_TYPES = {"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"}
_BYTE_ORDERS = {"<", ">", "|", "="}


def _refuse(reason: str):
    raise _Refused(reason)


class _Refused(Exception):
    pass


def _as_text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin1")
    return value if isinstance(value, str) else None


class _NdarrayMarker:
    """Stands in for numpy.ndarray: only accepted as _reconstruct's first argument."""

    __slots__ = ()

    def __setstate__(self, state):
        _refuse("numpy.ndarray used other than as an array's type")


_NDARRAY = _NdarrayMarker()


class _Dtype:
    """Stands in for numpy.dtype(typestr, align, copy) + its __setstate__: plain numeric types only."""

    __slots__ = ("typestr", "order", "built")

    def __init__(self, typestr, align=False, copy=False):
        text = _as_text(typestr)
        if text is None:
            _refuse(f"a dtype described by {type(typestr).__name__}")
        order = "="
        if text[:1] in _BYTE_ORDERS:
            order, text = text[0], text[1:]
        if text not in _NUMERIC_TYPES:
            _refuse(f"arrays of type {text!r} (objects, strings, records...); only numbers are accepted")
        self.typestr, self.order, self.built = text, order, False

    def __setstate__(self, state):
        if self.built or not isinstance(state, tuple) or len(state) not in (8, 9):
            _refuse("a dtype state that plain numeric arrays never have")
        version, order, subdescr, names, fields, elsize, alignment, flags = state[:8]
        order = _as_text(order)
        if (version not in (3, 4) or order not in _BYTE_ORDERS or subdescr is not None or names is not None
                or fields is not None or elsize != -1 or alignment != -1 or flags != 0
                or (len(state) == 9 and state[8] is not None)):
            _refuse("a dtype state with sub-arrays, fields, objects or metadata")
        self.order, self.built = order, True

    @property
    def dtype(self) -> np.dtype:
        dtype = np.dtype(self.typestr)
        return dtype.newbyteorder(self.order) if dtype.itemsize > 1 and self.order in "<>" else dtype


def _shape(value) -> tuple:
    if (not isinstance(value, tuple) or not 1 <= len(value) <= 4
            or not all(type(n) is int and 0 <= n <= 1 << 24 for n in value)):
        _refuse(f"an array shape {value!r:.60}")
    if math.prod(value) * 8 > MAX_FILE_BYTES:
        _refuse(f"an array of {list(value)} elements")
    return value


class _Budget:
    """What one file's unpickling may build: exactly one array, and at most ``limit`` bytes in all (a pickle's memo
    lets a small file refer to one stored buffer thousands of times; each rebuild is paid here)."""

    def __init__(self, limit: int):
        self.limit, self.spent, self.arrays = limit, 0, 0

    def pay(self, nbytes: int):
        self.spent += nbytes
        if self.spent > self.limit:
            _refuse(f"a pickle that builds more than {self.limit >> 20} MiB (a volume file holds one array)")

    def one_array(self):
        self.arrays += 1
        if self.arrays > 1:
            _refuse("a pickle of more than one array (a volume file holds exactly one)")


def _array_from_bytes(raw, dtype_proxy, shape, order: str, budget: _Budget) -> np.ndarray:
    if not isinstance(dtype_proxy, _Dtype):
        _refuse("an array whose type is not a plain numpy dtype")
    if isinstance(raw, str):
        raw = raw.encode("latin1")  # Python 2 pickles (read with encoding="latin1")
    if not isinstance(raw, (bytes, bytearray)):
        _refuse(f"array data given as {type(raw).__name__} (object arrays are refused)")
    dtype, shape = dtype_proxy.dtype, _shape(shape)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        _refuse(f"array data of {len(raw)} bytes for {list(shape)} {dtype} voxels")
    budget.one_array()
    budget.pay(len(raw))
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order).copy()  # a copy: owns its memory


class _Array:
    """Stands in for the result of numpy.(_)core.multiarray._reconstruct; its __setstate__ builds the array."""

    __slots__ = ("array", "budget")

    def __init__(self, budget: _Budget, array=None):
        self.budget, self.array = budget, array

    def __setstate__(self, state):
        if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            _refuse("an array state that numpy never writes")
        if len(state) == 5:
            if state[0] != 1:
                _refuse(f"array state version {state[0]!r}")
            state = state[1:]
        shape, dtype_proxy, fortran, raw = state
        if not isinstance(fortran, bool) and fortran not in (0, 1):
            _refuse("an array state with a non-boolean order flag")
        self.array = _array_from_bytes(raw, dtype_proxy, shape, "F" if fortran else "C", self.budget)


def _reconstruct(budget, subtype, shape, typecode):
    if subtype is not _NDARRAY:
        _refuse("an array of a type other than numpy.ndarray")
    if _shape(shape) != (0,) or _as_text(typecode) != "b":
        _refuse("numpy's array template with unusual arguments")
    return _Array(budget)


def _frombuffer(budget, buffer, dtype_proxy, shape, order):
    order = _as_text(order)
    if order not in ("C", "F"):
        _refuse(f"array order {order!r}")
    return _Array(budget, _array_from_bytes(buffer, dtype_proxy, shape, order, budget))


def _codecs_encode(budget, text, encoding="utf-8", errors="strict"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        _refuse("_codecs.encode other than the latin1 bytes of protocol 2")
    budget.pay(len(text))
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _codecs_encode,
}


_CHARGED = (_reconstruct, _frombuffer, _codecs_encode)


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only _ALLOWED_GLOBALS; the functions among them charge one budget per file (``_Budget``)."""

    def __init__(self, file, budget: _Budget, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = budget

    def find_class(self, module, name):
        try:
            found = _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise MskaiError(f"refused to load {str(module)[:80]}.{str(name)[:80]}: a volume pickle may only "
                             "rebuild a numeric numpy array") from None
        return functools.partial(found, self.budget) if found in _CHARGED else found

    def persistent_load(self, pid):
        raise MskaiError("refused to load a persistent reference: a volume pickle may only rebuild a numeric "
                         "numpy array")


def load_pickle_array(path, max_bytes: int = MAX_FILE_BYTES) -> np.ndarray:
    """The numpy array of a pickle file (KneeMRI's .pck), through an unpickler that can build nothing else.

    Only the globals a pickled numeric ndarray needs are resolved, each to a checking stand-in (see above);
    any other global (os.system, builtins.eval, subprocess.Popen, numpy.load, ...) raises
    MskaiError("refused to load <module>.<name>: ...") before anything runs. Object, string and record arrays
    are refused, the file is capped at ``max_bytes``, its unpickling may build exactly one array and at most twice
    the file's bytes (memo amplification), and the result must pass check_array (3D, numeric, sane).
    """
    path = Path(path)
    if not path.exists():
        raise MskaiError(f"{path} does not exist")
    data = _file_bytes(path, max_bytes)
    try:
        for _ in pickletools.genops(data):  # every length inside the file first: no absurd allocation below
            pass
    except Exception as exc:  # noqa: BLE001 - truncated or malformed: pickletools raises ValueError and others
        raise MskaiError(f"{path.name}: not a pickled numpy array ({str(exc)[:120]})") from None
    try:
        result = _ArrayUnpickler(io.BytesIO(data), _Budget(2 * len(data) + (1 << 20)), encoding="latin1").load()
    except MskaiError as exc:
        raise MskaiError(f"{path.name}: {exc}") from None
    except _Refused as exc:
        raise MskaiError(f"{path.name}: refused to load {exc}: a volume pickle may only rebuild a numeric "
                         "numpy array") from None
    except RecursionError:
        raise MskaiError(f"{path.name}: not a pickled numpy array (nested too deeply)") from None
    except Exception as exc:  # truncated or malformed pickles raise many kinds
        raise MskaiError(f"{path.name}: not a pickled numpy array ({exc.__class__.__name__}: "
                         f"{str(exc)[:120]})") from None
    if not isinstance(result, _Array) or result.array is None:
        raise MskaiError(f"{path.name}: the pickle holds {type(result).__name__}, not a numpy array")
    return check_array(result.array, path.name)
