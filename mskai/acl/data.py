"""ACL training data: case lists (CSV, MRNet, KneeMRI), safe readers of their files, subject-level splits.

Classes (``classes=4``): 0 healthy, 1 minor strain, 2 partial rupture, 3 complete rupture;
(``classes=2``): 0 intact, 1 torn. See CLASS_NAMES and the KneeMRI mapping below.

Every reader checks its whole list first and fails with one MskaiError naming the first few problems (with line
numbers), so a run never starts on a half-read data set. Subjects are always pseudonyms (a salted hash of what
identifies the patient), never names or record numbers; they are for grouping cases, not a de-identification.

Dataset layouts relied on (sources):

* MRNet (Bien et al. 2018, PLOS Med; https://stanfordmlgroup.github.io/competitions/mrnet/ and the layout
  documented by many users of MRNet-v1.0, e.g. the README of the public "MRNet" loaders):
  ``<root>/{train,valid}/{axial,coronal,sagittal}/NNNN.npy`` and ``<root>/{train,valid}-{abnormal,acl,meniscus}.csv``
  with lines ``case,label`` (zero-padded 4-digit case, 0/1), no header. Each .npy is a uint8 array
  ``(slices, 256, 256)``; the slice count varies. Train: 1,130 exams of 1,088 patients; valid: 120 exams of 111
  patients ("all exams from each patient were put in the same split"). No patient identifiers are published, so
  within a split each exam is its own subject (a few patients have two exams: a split of MRNet's train set by
  exam is not strictly patient-level).
* KneeMRI (Štajduhar et al. 2017, Comput Methods Programs Biomed 140:151-164; data page
  http://www.riteh.uniri.hr/~istajduh/projects/kneeMRI/, its ``metadata.csv`` and example script): 917 12-bit
  sagittal PD fat-suppressed volumes (Siemens Avanto 1.5 T, Rijeka), Python pickles of numpy arrays (.pck) in
  ``vol01``..``vol10`` (or one ``volumetric_data`` folder). ``metadata.csv`` has a header row with the columns
  examId, seriesNo, aclDiagnosis, kneeLR, roiX, roiY, roiZ, roiHeight, roiWidth, roiDepth, volumeFilename
  (some copies add patientID first). The official example indexes a volume ``[z, y, x]`` = (slices, rows,
  columns) and the ROI as ``[roiZ:roiZ+roiDepth, roiY:roiY+roiHeight, roiX:roiX+roiWidth]``.
  aclDiagnosis: 0 healthy, 1 partially injured, 2 completely ruptured.

KneeMRI label mapping (KNEEMRI_LABELS): 4 classes: 0 healthy -> 0 healthy, 1 partially injured -> 2 partial
rupture, 2 completely ruptured -> 3 complete rupture (KneeMRI has no "minor strain": class 1 stays empty);
2 classes: 0 -> 0 intact, 1 and 2 -> 1 torn (any injury, the MRNet-style "ACL tear" reading of a partial tear).

Geometry of bare arrays (.npy, .pck): the files hold voxels only. ``AclCase.load`` gives them an assumed,
documented geometry so a Volume exists, marks it ``meta["geometry"] = "assumed"`` and never claims more: the
slices are sagittal, array ``(slices, rows, columns)``; columns run anterior -> posterior (+P), rows superior ->
inferior (-S), slices toward the patient's left (+L; the true side and slice order are not recorded); voxel size
ASSUMED_SPACING (slice, row, column mm): a nominal 3 mm slice with 0.625 mm (MRNet, 256 px) or 0.5 mm
(KneeMRI, 320 px) pixels, typical of clinical knee protocols, not measured. Do not measure millimetres on them.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import pickle
import pickletools
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mskai import MskaiError
from mskai.acl import CLASS_NAMES
from mskai.volume import Volume

KNEEMRI_LABELS = {4: {0: 0, 1: 2, 2: 3}, 2: {0: 0, 1: 1, 2: 1}}

ASSUMED_SPACING = {"mrnet": (3.0, 0.625, 0.625), "kneemri": (3.0, 0.5, 0.5), "array": (3.0, 0.5, 0.5)}
ARRAY_SUFFIXES = (".npy", ".pck", ".pkl", ".pickle")
VOLUME_FILE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz")

MAX_FILE_BYTES = 1 << 30       # a pickled or .npy volume larger than 1 GiB is not a knee series
MAX_CSV_BYTES = 64 << 20
MAX_DIM = 4096
MAX_SLICES = 2048
MAX_PROBLEMS_SHOWN = 5
MAX_CASE_FILES = 4096  # a DICOM folder of one knee series (a few echoes of a few hundred slices) holds fewer
MAX_CASE_DEPTH = 4  # folder levels below a case folder
_SALT = "mskai-acl-subject-v1"


def _pseudonym(kind: str, value: str) -> str:
    """A stable pseudonym: the same value always gives the same subject; the value itself is not kept."""
    return "s-" + hashlib.sha256(f"{_SALT}\0{kind}\0{value}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _check_classes(classes) -> int:
    if classes not in CLASS_NAMES:
        raise MskaiError(f"classes must be 2 (intact/torn) or 4 (healthy/minor strain/partial/complete "
                         f"rupture), not {classes!r}")
    return classes


def _fail(what: str, problems: list[str]):
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    raise MskaiError(f"{what}: {len(problems)} problem(s): {shown}{more}; nothing was read")


def _source_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a case source, or None: a case is a regular, non-empty file (a DICOM file must carry
    the DICM prefix) or a folder of at most MAX_CASE_FILES files within MAX_CASE_DEPTH levels; never a device,
    pipe, /proc entry or a whole directory tree such as /usr/share."""
    import os
    import stat

    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if stat.S_ISDIR(info.st_mode):
        count, root_depth = 0, len(path.parts)
        for root, dirs, files in os.walk(path):
            if len(Path(root).parts) - root_depth >= MAX_CASE_DEPTH:
                dirs[:] = []
            count += len(files)
            if count > MAX_CASE_FILES:
                return f"holds more than {MAX_CASE_FILES} files: not the folder of one series"
        return None if count else "is an empty folder"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, pipe or socket)"
    if info.st_size == 0:
        return "is empty"
    if info.st_size > MAX_FILE_BYTES:
        return f"is larger than {MAX_FILE_BYTES >> 20} MiB"
    if _source_kind(path) == "dicom":
        with open(path, "rb") as fh:
            if fh.read(132)[128:] != b"DICM":
                return "is not a DICOM file (no DICM prefix)"
    return None


def _source_kind(path: Path) -> str | None:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    for s in ARRAY_SUFFIXES:
        if name.endswith(s):
            return "array"
    for s in VOLUME_FILE_SUFFIXES:
        if name.endswith(s):
            return "volume"
    if name.endswith(".dcm") or "." not in name:
        return "dicom"
    return None


# ---------------------------------------------------------------------------------------------- the case


@dataclass(frozen=True)
class AclCase:
    """One labelled sagittal knee series.

    source: a DICOM folder (one image series) or file, a volume file (.nrrd/.nhdr/.nii/.nii.gz), or a bare
        array (.npy, or .pck/.pkl pickle of a numpy array, read by the restricted unpickler).
    label: class index (see CLASS_NAMES). subject: a pseudonym grouping the cases of one patient.
    layout: for bare arrays, whose assumed geometry applies ("mrnet", "kneemri" or "array").
    roi: KneeMRI's box (z, y, x, depth, height, width) in array indices; crop_roi: load only that box.
    """

    source: str
    label: int
    subject: str
    layout: str = "array"
    roi: tuple | None = None
    crop_roi: bool = False

    def load(self) -> Volume:
        """Read the series into a Volume; MskaiError for anything unreadable or implausible."""
        path = Path(self.source)
        if not path.exists():
            raise MskaiError(f"{path} does not exist")
        kind = _source_kind(path)
        if kind == "array":
            return self._load_array(path)
        if kind == "volume":
            from mskai.io import read_volume_file

            return read_volume_file(path)
        if kind == "dicom":
            return _load_dicom(path)
        raise MskaiError(f"{path.name}: not a DICOM folder, volume file ({', '.join(VOLUME_FILE_SUFFIXES)}) "
                         f"or array ({', '.join(ARRAY_SUFFIXES)})")

    def _load_array(self, path: Path) -> Volume:
        array = load_npy_array(path) if path.name.lower().endswith(".npy") else load_pickle_array(path)
        offset = (0, 0, 0)
        if self.roi is not None:
            z, y, x, d, h, w = self.roi
            if min(self.roi) < 0 or min(d, h, w) < 1 or z + d > array.shape[0] or y + h > array.shape[1] \
                    or x + w > array.shape[2]:
                raise MskaiError(f"{path.name}: the ROI {list(self.roi)} (z, y, x, depth, height, width) lies "
                                 f"outside the volume {list(array.shape)}")
            if self.crop_roi:
                array = array[z:z + d, y:y + h, x:x + w]
                offset = (z, y, x)
        spacing = ASSUMED_SPACING.get(self.layout, ASSUMED_SPACING["array"])
        return array_to_volume(array, spacing, offset=offset, label=path.name,
                               meta={"layout": self.layout, "roi": list(self.roi) if self.roi else None,
                                     "cropped_to_roi": bool(self.crop_roi and self.roi)})


def array_to_volume(array: np.ndarray, spacing=(3.0, 0.5, 0.5), offset=(0, 0, 0), label: str = "",
                    meta: dict | None = None) -> Volume:
    """A (slices, rows, columns) sagittal array as a Volume with the assumed geometry of this module's docstring.

    spacing: (slice, row, column) mm. offset: (slice, row, column) index of array[0, 0, 0] in the original
    array (after a crop), so cropped and whole volumes share one frame.
    """
    s, r, c = (float(v) for v in spacing)
    # Volume.array[i, j, k]: i along a row (columns), j down the rows, k across slices.
    # Columns of the LPS direction matrix: i (column) -> +P, j (row) -> -S (down), k (slice) -> +L.
    directions = np.column_stack([[0.0, c, 0.0], [0.0, 0.0, -r], [s, 0.0, 0.0]])
    affine = np.eye(4)
    affine[:3, :3] = directions
    affine[:3, 3] = directions @ np.array([offset[2], offset[1], offset[0]], dtype=float)
    info = {"geometry": "assumed", "geometry_note": "bare array: sagittal (slices, rows, columns), voxel size "
            f"{s:g} x {r:g} x {c:g} mm assumed, side and slice order unknown", "array_shape": list(array.shape)}
    info.update(meta or {})
    return Volume(np.ascontiguousarray(array).transpose(2, 1, 0), affine, label=label, meta=info)


def _load_dicom(path: Path) -> Volume:
    from mskai.dicom import plan_volumes, read_volume, scan_source

    report = scan_source(path)
    images = [s for s in report.require_series(str(path)) if s.is_image]
    if len(images) != 1:
        raise MskaiError(f"{path} holds {len(images)} image series; an ACL case needs a folder of exactly one "
                         "(sagittal) series")
    series = images[0]
    if series.problem:
        raise MskaiError(f"{path}: {series.problem}")
    plans = plan_volumes(series)
    if not plans:
        raise MskaiError(f"{path}: the series holds no volume")
    volume = read_volume(plans[0])
    if len(plans) > 1:
        volume.meta["note"] = f"first of {len(plans)} volumes of the series ({plans[0].label})"
    return volume


def _dicom_subject(path: Path) -> str | None:
    """Pseudonym of the patient of the first readable DICOM file under ``path`` (None when there is none)."""
    from mskai.dicom.scan import iter_files, read_header

    for n, file in enumerate(iter_files(path)):
        if n >= 50:
            break
        try:
            ds = read_header(file)
        except MskaiError:
            continue
        pid = str(ds.get("PatientID", "") or "").strip()
        other = f"{ds.get('PatientName', '')}\0{ds.get('PatientBirthDate', '')}".strip("\0 ")
        key = f"id:{pid}" if pid else (f"name:{other}" if other else f"study:{ds.get('StudyInstanceUID', '')}")
        return _pseudonym("dicom", key)
    return None


# ---------------------------------------------------------------------------------------------- arrays


def _file_bytes(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise MskaiError(f"{path} is not a file")
        if size > limit:
            raise MskaiError(f"{path.name} is {size / 2**20:.0f} MiB, more than the {limit / 2**20:.0f} MiB a "
                             "knee volume file may have")
        with open(path, "rb") as f:
            data = f.read(min(limit, size) + 1)  # never a buffer larger than the file
    except OSError as exc:
        raise MskaiError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise MskaiError(f"{path.name} grew beyond {limit / 2**20:.0f} MiB while being read")
    return data


def _check_layout(shape, dtype, what: str):
    if len(shape) != 3:
        raise MskaiError(f"{what} holds a {len(shape)}D array {list(shape)}; a 3D (slices, rows, columns) "
                         "volume is needed")
    if dtype.kind not in "biuf":
        raise MskaiError(f"{what} holds {dtype} voxels; only numbers are accepted")
    if not (1 <= shape[0] <= MAX_SLICES and all(1 <= n <= MAX_DIM for n in shape[1:])):
        raise MskaiError(f"{what} has an implausible size {list(shape)} (at most {MAX_SLICES} slices of "
                         f"{MAX_DIM}x{MAX_DIM})")


def check_array(array, what: str) -> np.ndarray:
    """A 3D real-valued (slices, rows, columns) array of sane size, finite; bool becomes uint8."""
    if not isinstance(array, np.ndarray):
        raise MskaiError(f"{what} does not hold a numpy array but {type(array).__name__}")
    _check_layout(array.shape, array.dtype, what)
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise MskaiError(f"{what} holds NaN or infinite voxels")
    return array


def load_npy_array(path) -> np.ndarray:
    """A .npy volume (no pickles: object arrays are refused), header checked before the voxels are read."""
    from mskai.io import check_memory

    path = Path(path)
    if not path.is_file():
        raise MskaiError(f"{path} does not exist")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise MskaiError(f"{path.name} is larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError... on damaged files
        raise MskaiError(f"{path.name} is not a readable .npy array ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(mapped, np.ndarray):
        raise MskaiError(f"{path.name} is not a single .npy array")
    _check_layout(mapped.shape, mapped.dtype, path.name)  # from the header: nothing read yet
    check_memory(mapped.nbytes, path.name)
    return check_array(np.array(mapped), path.name)


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


# ---------------------------------------------------------------------------------------------- case lists


def _read_text(path: Path, what: str) -> str:
    data = _file_bytes(path, MAX_CSV_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MskaiError(f"{what} {path} is not UTF-8 text") from None


def _rows(text: str):
    """(line number, cells) of each non-empty CSV row."""
    reader = csv.reader(io.StringIO(text))
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                yield reader.line_num, [c.strip() for c in cells]
    except csv.Error as exc:
        raise MskaiError(f"malformed CSV at line {reader.line_num}: {exc}") from None


def _int(text: str):
    return int(text) if re.fullmatch(r"[+-]?\d{1,9}", text or "") else None


def read_csv(path, classes: int = 4) -> list[AclCase]:
    """Cases of a CSV with columns path,label[,subject] (an optional header row starting with "path").

    Paths are relative to the CSV's folder (absolute paths are kept as written); a path may be a DICOM folder
    holding one series, a volume file or a bare array. label: 0..classes-1 (see CLASS_NAMES). subject: who the
    case belongs to, so that all cases of one patient stay in one part of a split; it is stored as a pseudonym.
    When it is empty, a DICOM source's own patient fields give it (as a pseudonym), any other source is its own
    subject. Missing files, unknown labels and repeated paths are all collected and refused together.
    """
    classes = _check_classes(classes)
    path = Path(path)
    if not path.is_file():
        raise MskaiError(f"case list {path} does not exist")
    base = path.resolve().parent
    rows = list(_rows(_read_text(path, "case list")))
    if rows and rows[0][1][0].lower() in ("path", "source", "file"):
        rows = rows[1:]
    if not rows:
        raise MskaiError(f"case list {path} holds no cases (expected lines: path,label[,subject])")
    problems, parsed, seen = [], [], {}
    for line, cells in rows:
        if len(cells) < 2 or len(cells) > 3 or not cells[0]:
            problems.append(f"line {line}: expected path,label[,subject], found {len(cells)} column(s)")
            continue
        try:
            source = (base / cells[0]).resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL, a loop of links
            problems.append(f"line {line}: {cells[0][:120]!r} is not a usable path")
            continue
        label = _int(cells[1])
        if label is None or not 0 <= label < classes:
            problems.append(f"line {line}: label {cells[1][:20]!r} is not one of 0-{classes - 1} "
                            f"({', '.join(CLASS_NAMES[classes])})")
        if not source.exists():
            problems.append(f"line {line}: {cells[0][:120]} not found")
        elif _source_kind(source) is None:
            problems.append(f"line {line}: {cells[0][:120]} is not a DICOM folder, volume file or array")
        elif (problem := _source_problem(source)) is not None:
            problems.append(f"line {line}: {cells[0][:120]} {problem}")
        if source in seen:
            problems.append(f"line {line}: {cells[0][:120]} repeats line {seen[source]}")
        seen.setdefault(source, line)
        parsed.append((source, label, cells[2] if len(cells) == 3 else ""))
    if problems:
        _fail(f"case list {path}", problems)
    cases = []
    for source, label, subject in parsed:
        if subject:
            subject = _pseudonym("subject", subject)
        else:
            subject = (_dicom_subject(source) if _source_kind(source) == "dicom" else None) \
                or _pseudonym("path", str(source))
        layout = "mrnet" if source.name.lower().endswith(".npy") else "kneemri" \
            if source.name.lower().endswith(".pck") else "array"
        cases.append(AclCase(str(source), label, subject, layout=layout))
    return cases


MRNET_TASKS = ("acl", "abnormal", "meniscus")


def read_mrnet(root, split: str = "train", task: str = "acl") -> list[AclCase]:
    """Sagittal cases of an MRNet-v1.0 folder: ``root/<split>/sagittal/NNNN.npy`` with ``root/<split>-<task>.csv``.

    Labels are binary (0 no tear / normal, 1 tear / abnormal). Each exam is its own subject (MRNet publishes
    no patient identifiers; its own train/valid split is already by patient).
    """
    if split not in ("train", "valid"):
        raise MskaiError(f"MRNet split must be 'train' or 'valid', not {split!r}")
    if task not in MRNET_TASKS:
        raise MskaiError(f"MRNet task must be one of {', '.join(MRNET_TASKS)}, not {task!r}")
    root = Path(root)
    labels = next((p for p in (root / f"{split}-{task}.csv", root / f"{split}_{task}.csv") if p.is_file()), None)
    if labels is None:
        raise MskaiError(f"{root} is not an MRNet folder: {split}-{task}.csv is missing")
    folder = root / split / "sagittal"
    if not folder.is_dir():
        raise MskaiError(f"{root} is not an MRNet folder: {split}/sagittal/ is missing")
    problems, cases, seen = [], [], {}
    for line, cells in _rows(_read_text(labels, "MRNet labels")):
        case, label = (_int(cells[0]), _int(cells[1])) if len(cells) == 2 else (None, None)
        if case is None or not 0 <= case <= 99999:
            if line == 1 and cells and not cells[0].isdigit():
                continue  # a header row some copies add
            problems.append(f"line {line}: expected case,label (e.g. 0000,1), found {','.join(cells)[:40]!r}")
            continue
        if label not in (0, 1):
            problems.append(f"line {line}: label {cells[1][:20]!r} is not 0 or 1")
        source = folder / f"{case:04d}.npy"
        if not source.is_file():
            problems.append(f"line {line}: {split}/sagittal/{case:04d}.npy not found")
        if case in seen:
            problems.append(f"line {line}: case {case:04d} repeats line {seen[case]}")
        seen.setdefault(case, line)
        cases.append(AclCase(str(source.resolve()), label if label is not None else -1,
                             _pseudonym("mrnet", f"{split}/{case}"), layout="mrnet"))
    if problems:
        _fail(f"MRNet labels {labels}", problems)
    if not cases:
        raise MskaiError(f"MRNet labels {labels} hold no cases")
    return cases


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_KNEEMRI_REQUIRED = ("examId", "aclDiagnosis", "volumeFilename")
_ROI_COLUMNS = ("roiZ", "roiY", "roiX", "roiDepth", "roiHeight", "roiWidth")


def _kneemri_files(root: Path) -> tuple[dict, list]:
    """.pck files in root and in folders up to two levels below it (vol01.., volumetric_data/vol01..)."""
    found, duplicates = {}, []
    folders = [root]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folders.append(sub)
        folders.extend(sorted(p for p in sub.iterdir() if p.is_dir() and not p.name.startswith(".")))
    for folder in folders:
        for p in sorted(folder.glob("*.pck")):
            if p.name in found:
                duplicates.append(p.name)
            found.setdefault(p.name, p)
    return found, duplicates


def read_kneemri(root, classes: int = 4, use_roi: bool = False) -> list[AclCase]:
    """Cases of a KneeMRI folder: ``root/metadata.csv`` and its .pck volumes (in root or vol01..vol10 folders).

    Labels follow KNEEMRI_LABELS (see the module docstring). subject: a pseudonym of patientID when the CSV has
    that column, else of examId (the series of one exam stay together; other exams of the same patient cannot
    be recognised). The ROI of each row is kept on the case; use_roi=True loads only that box.
    """
    classes = _check_classes(classes)
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise MskaiError(f"{root} is not a KneeMRI folder: metadata.csv is missing")
    rows = list(_rows(_read_text(meta, "KneeMRI metadata")))
    if not rows:
        raise MskaiError(f"{meta} is empty")
    header = {name.lower(): n for n, name in enumerate(rows[0][1])}
    missing = [c for c in _KNEEMRI_REQUIRED if c.lower() not in header]
    if missing:
        raise MskaiError(f"{meta} lacks the column(s) {', '.join(missing)} (found: {', '.join(rows[0][1])[:200]})")
    col = {c: header.get(c.lower()) for c in _KNEEMRI_REQUIRED + _ROI_COLUMNS + ("patientID",)}
    has_roi = all(col[c] is not None for c in _ROI_COLUMNS)
    files, duplicates = _kneemri_files(root)
    problems = [f"{name} is in more than one folder" for name in duplicates]
    cases, seen = [], {}
    for line, cells in rows[1:]:
        def cell(name, cells=cells):
            i = col[name]
            return cells[i] if i is not None and i < len(cells) else ""

        if len(cells) != len(rows[0][1]):
            problems.append(f"line {line}: {len(cells)} columns, the header has {len(rows[0][1])}")
            continue
        diagnosis, name = _int(cell("aclDiagnosis")), cell("volumeFilename")
        if diagnosis not in KNEEMRI_LABELS[classes]:
            problems.append(f"line {line}: aclDiagnosis {cell('aclDiagnosis')[:20]!r} is not 0, 1 or 2")
        if not _SAFE_NAME.fullmatch(name) or not name.lower().endswith(".pck"):
            problems.append(f"line {line}: volumeFilename {name[:60]!r} is not a plain .pck file name")
            continue
        if name not in files:
            problems.append(f"line {line}: {name} not found under {root}")
        if name in seen:
            problems.append(f"line {line}: {name} repeats line {seen[name]}")
        seen.setdefault(name, line)
        roi = None
        if has_roi:
            values = [_int(cell(c)) for c in _ROI_COLUMNS]
            if any(v is None or v < 0 for v in values) or min(values[3:]) < 1:
                problems.append(f"line {line}: the ROI columns are not non-negative whole numbers with a size")
            else:
                roi = tuple(values)
        elif use_roi:
            problems.append(f"line {line}: no ROI columns to crop with")
        who = cell("patientID")
        subject = _pseudonym("kneemri-patient", who) if who else _pseudonym("kneemri-exam", cell("examId"))
        if not who and not cell("examId"):
            problems.append(f"line {line}: neither patientID nor examId")
        cases.append(AclCase(str(files[name].resolve()) if name in files else name,
                             KNEEMRI_LABELS[classes].get(diagnosis, -1), subject, layout="kneemri", roi=roi,
                             crop_roi=use_roi))
    if problems:
        _fail(f"KneeMRI metadata {meta}", problems)
    if not cases:
        raise MskaiError(f"{meta} lists no volumes")
    return cases


# ---------------------------------------------------------------------------------------------- splits, weights

SPLIT_NAMES = ("train", "val", "test")


def _fractions(fractions) -> dict:
    if isinstance(fractions, dict):
        names, values = list(fractions), list(fractions.values())
    else:
        values = list(fractions)
        names = list(SPLIT_NAMES[:len(values)]) if len(values) <= 3 else [f"part{n}" for n in range(len(values))]
    ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)
    if not ok or abs(sum(values) - 1.0) > 1e-6 or len(set(names)) != len(names):
        raise MskaiError(f"split fractions must be numbers from 0 to 1 that add up to 1, not {fractions!r}")
    return dict(zip(names, (float(v) for v in values)))


def stratified_subject_split(cases, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, list[AclCase]]:
    """Split cases into parts by subject (all cases of a subject in one part), stratified by label.

    fractions: a sequence (parts named train, val, test) or a {name: fraction} dict; they add up to 1.
    Each subject is stratified by its most severe label. Within a stratum, subjects (shuffled with ``seed``,
    larger ones first) go one by one to the part furthest below its share of that stratum's cases, so every
    label is spread in proportion as far as whole subjects allow. Deterministic for a given seed and case list;
    each part keeps the input order.
    """
    shares = _fractions(fractions)
    cases = list(cases)
    by_subject: dict[str, list[int]] = {}
    for n, case in enumerate(cases):
        by_subject.setdefault(case.subject, []).append(n)
    strata: dict[int, list[str]] = {}
    for subject in sorted(by_subject):
        strata.setdefault(max(cases[n].label for n in by_subject[subject]), []).append(subject)
    rng = random.Random(seed)
    names = list(shares)
    part_of: dict[str, str] = {}
    for label in sorted(strata):
        subjects = strata[label]
        rng.shuffle(subjects)
        subjects.sort(key=lambda s: -len(by_subject[s]))  # stable: shuffled order among equal sizes
        total = sum(len(by_subject[s]) for s in subjects)
        filled = dict.fromkeys(names, 0)
        for subject in subjects:
            best = max(names, key=lambda p: (shares[p] * total - filled[p], shares[p], -names.index(p)))
            part_of[subject] = best
            filled[best] += len(by_subject[subject])
    return {name: [c for c in cases if part_of[c.subject] == name] for name in names}


def class_weights(labels, n_classes: int) -> np.ndarray:
    """Per-class weights (loss weights, or sampling weights per case): inverse class frequency, normalised so the
    mean weight per case is 1.

    w[c] = N / (K * n_c) over the K classes present (scikit-learn's "balanced"); absent classes get 0
    (no case carries them, e.g. KneeMRI's empty "minor strain").
    """
    labels = np.asarray(labels, dtype=int)
    if labels.size == 0:
        raise MskaiError("no cases to weigh")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise MskaiError(f"labels must lie in 0-{n_classes - 1}")
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = labels.size / (present.sum() * counts[present])
    return weights
