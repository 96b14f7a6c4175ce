"""Bare volume arrays (.npy; the checks a pickled one passes too) and the geometry they are given.

Geometry of bare arrays (.npy, .pck): the files hold voxels only. ``AclCase.load`` gives them an assumed,
documented geometry so a Volume exists, marks it ``meta["geometry"] = "assumed"`` and never claims more: the
slices are sagittal, array ``(slices, rows, columns)``; columns run anterior -> posterior (+P), rows superior ->
inferior (-S), slices toward the patient's left (+L; the true side and slice order are not recorded); voxel size
ASSUMED_SPACING (slice, row, column mm): a nominal 3 mm slice with 0.625 mm (MRNet, 256 px) or 0.5 mm
(KneeMRI, 320 px) pixels, typical of clinical knee protocols, not measured. Do not measure millimetres on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mskai import MskaiError
from mskai.training.acl_data.common import MAX_FILE_BYTES
from mskai.volume import Volume

ASSUMED_SPACING = {"mrnet": (3.0, 0.625, 0.625), "kneemri": (3.0, 0.5, 0.5), "array": (3.0, 0.5, 0.5)}
MAX_DIM = 4096
MAX_SLICES = 2048


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
    from mskai.volume_files import check_memory

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
