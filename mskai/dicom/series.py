"""Turn the frames of one series into geometry-checked volumes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pydicom

from mskai import MskaiError
from mskai.dicom.plane import Plane, detect_plane, slice_normal
from mskai.dicom.scan import (MAX_SPACING_MM, Frame, Series, check_pixel_element, group_by, pixel_element, read_header,
                              stored_dtype, transfer_syntax)
from mskai.volume import Volume
from mskai.volume_files import check_memory

# Positions closer than this along the normal are "the same slice" (mm).
DUPLICATE_TOLERANCE_MM = 1e-3
# Slice gaps may differ from the median gap by this much before the stack counts as uneven.
GAP_TOLERANCE_MM = 1e-2
GAP_TOLERANCE_RELATIVE = 1e-3


@dataclass
class VolumePlan:
    """One volume of a series, with its geometry worked out from headers alone.

    ``problem`` says why the volume cannot be built as is (read_volume raises it);
    ``uneven_gaps`` is set when slices are not equally spaced (resample=True resamples them).
    """

    series: Series
    frames: list[Frame]
    label: str
    affine_lps: np.ndarray | None = None
    plane: Plane | None = None
    slice_offsets: np.ndarray | None = None  # positions along the normal, ascending, mm
    problem: str | None = None
    uneven_gaps: str | None = None

    @property
    def shape(self) -> tuple:
        f = self.frames[0]
        return (f.columns, f.rows, len(self.frames))

    def check(self, resample: bool = False):
        """Raise MskaiError when this volume cannot be built (with ``resample``, uneven gaps are allowed)."""
        if self.problem:
            raise MskaiError(f"Cannot build volume {self.label!r}: {self.problem}")
        if self.uneven_gaps and not resample:
            raise MskaiError(
                f"Cannot build volume {self.label!r}: {self.uneven_gaps}. Stacking them would distort the anatomy; "
                "load with resampling (--resample) to interpolate onto an even grid."
            )


def _key_orientation(f: Frame):
    return None if f.orientation is None else tuple(np.round(f.orientation, 3))


def _split_keys(frames):
    """The (label, key function) pairs that split a series into volumes."""
    return [
        ("orientation", _key_orientation),
        ("size", lambda f: (f.rows, f.columns)),
        ("pixel spacing", lambda f: None if f.pixel_spacing is None else tuple(np.round(f.pixel_spacing, 4))),
        ("echo", lambda f: f.echo_time),
    ]


def _describe(name, key, frames) -> str:
    if name == "orientation":
        return str(detect_plane(frames[0].orientation)) if key is not None else "no orientation"
    if name == "size":
        return f"{key[1]}x{key[0]}"
    if name == "pixel spacing":
        return "no pixel spacing" if key is None else f"{key[0]:g}x{key[1]:g} mm"
    if name == "echo":
        return "no echo time" if key is None else f"echo {key:g} ms"
    return f"{name} {key}"


def _has_duplicate_positions(frames) -> bool:
    pos = [tuple(np.round(f.position, 2)) for f in frames if f.position is not None]
    return len(pos) != len(set(pos))


def _split(frames, keys, label_parts):
    """Recursively split frames by each key that takes more than one value."""
    if not keys:
        return [(frames, label_parts)]
    (name, key), rest = keys[0], keys[1:]
    groups = group_by(frames, key)
    if len(groups) == 1:
        return _split(frames, rest, label_parts)
    out = []
    for k in sorted(groups, key=lambda k: (k is None, str(k) if not isinstance(k, (int, float)) else k)):
        out.extend(_split(groups[k], rest, label_parts + [_describe(name, k, groups[k])]))
    return out


def _split_repeats(frames, label_parts):
    """Split a stack that repeats positions by acquisition, then by temporal position."""
    for name, key in (("acquisition", lambda f: f.acquisition_number), ("time point", lambda f: f.temporal_position)):
        if not _has_duplicate_positions(frames):
            break
        groups = group_by(frames, key)
        if len(groups) > 1:
            return [
                part
                for k in sorted(groups, key=lambda k: (k is None, str(k)))
                for part in _split_repeats(groups[k], label_parts + [f"{name} {k}"])
            ]
    return [(frames, label_parts)]


def plan_volumes(series: Series) -> list[VolumePlan]:
    """Split a series into volumes (echoes, acquisitions, orientations, sizes) and check each one's geometry."""
    if series.problem:
        raise MskaiError(f"Series {series.number or ''} cannot be used: {series.problem}")
    if not series.is_image:
        raise MskaiError(
            f"Series {series.number or ''} {series.description!r} is a {series.sop_class_name or 'non-image object'}, not images"
        )
    plans = []
    for frames, parts in _split(series.frames, _split_keys(series.frames), []):
        for sub, sub_parts in _split_repeats(frames, parts):
            plans.append(_plan(series, sub, ", ".join(sub_parts)))
    return plans


def chosen_plans(series: Series, volume: int | None = None) -> list[VolumePlan]:
    """The volumes a command reads of a series, the first being the default: all its plans, or only the one
    ``volume`` (1-based) names. MskaiError for a series without a volume or a number out of range."""
    plans = plan_volumes(series)
    if not plans:
        raise MskaiError("the series holds no volume")
    if volume is not None:
        if not 1 <= volume <= len(plans):
            raise MskaiError(f"--volume must be 1-{len(plans)} for this series")
        plans = [plans[volume - 1]]
    return plans


def _plan(series: Series, frames: list[Frame], label: str) -> VolumePlan:
    plan = VolumePlan(series, frames, label or "volume")
    missing = [
        name
        for name, attr in (("Image Position (Patient)", "position"), ("Image Orientation (Patient)", "orientation"),
                           ("Pixel Spacing", "pixel_spacing"))
        if any(getattr(f, attr) is None for f in frames)
    ]
    if missing:
        plan.problem = f"missing geometry ({', '.join(missing)}): the volume's position in the patient is unknown"
        return plan
    orientation = frames[0].orientation
    row, col = orientation[:3], orientation[3:]
    if abs(np.dot(row, col)) > 1e-3 or abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3:
        plan.problem = "Image Orientation (Patient) is not two orthogonal unit vectors"
        return plan
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = slice_normal(orientation)
    offsets = np.array([f.position @ normal for f in frames])
    order = np.argsort(offsets, kind="stable")
    plan.frames = frames = [frames[i] for i in order]
    offsets = offsets[order]
    plan.slice_offsets = offsets
    plan.plane = detect_plane(orientation)

    gaps = np.diff(offsets)
    if len(gaps) and gaps.min() < DUPLICATE_TOLERANCE_MM:
        k = int(np.argmin(gaps))
        plan.problem = (
            f"duplicate slice position {offsets[k]:.3f} mm ({frames[k].path} and {frames[k + 1].path}): "
            "the series mixes volumes that cannot be told apart"
        )
        return plan
    first = frames[0].position
    drift = max(np.linalg.norm((f.position - first) - ((f.position - first) @ normal) * normal) for f in frames)
    if drift > 0.05:
        plan.problem = f"slices are shifted in-plane by up to {drift:.2f} mm (sheared or tilted stack)"
        return plan
    if len(frames) > 1:
        step = float(np.median(gaps))
        if step >= MAX_SPACING_MM:
            plan.problem = f"slices are {step:.0f} mm apart: damaged positions, not an image stack"
            return plan
        if np.abs(gaps - step).max() > max(GAP_TOLERANCE_MM, GAP_TOLERANCE_RELATIVE * step):
            plan.uneven_gaps = (
                f"slices are not equally spaced: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm "
                f"(median {step:.3f} mm; a missing slice?)"
            )
    else:
        f = frames[0]
        step = f.spacing_between_slices or f.slice_thickness or 1.0

    row_spacing, col_spacing = frames[0].pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row * col_spacing
    affine[:3, 1] = col * row_spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = first
    plan.affine_lps = affine
    return plan


# --- pixels -----------------------------------------------------------------------------------------


def _invert_monochrome1(raw: np.ndarray, ds) -> np.ndarray:
    """MONOCHROME1 shows low values bright; flip within the stored range (same dtype) so bright is high."""
    if raw.dtype.kind == "i":
        return ~raw  # -1 - raw
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    return ((2**bits - 1) - raw.astype(np.int64)).astype(raw.dtype)


def _read_native(path, ds, frames_wanted, rows, cols) -> dict:
    """Uncompressed pixels straight from the file at the pixel element's offset (its length was checked)."""
    elem = pixel_element(ds)
    dtype = np.dtype(stored_dtype(ds)).newbyteorder("<" if ds.original_encoding[1] else ">")
    n = rows * cols
    out = {}
    with open(path, "rb") as fh:
        for idx in frames_wanted:
            fh.seek(elem.value_tell + (idx or 0) * n * dtype.itemsize)
            data = np.fromfile(fh, dtype=dtype, count=n)
            if data.size != n:
                raise MskaiError(f"{path}: truncated pixel data")
            out[idx] = data.reshape(rows, cols)
    return out


def _read_decoded(path, frames_wanted) -> dict:
    """Compressed or unusual pixels through pydicom's decoders (pylibjpeg, pyjpegls, gdcm)."""
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:
        raise MskaiError(f"{path}: cannot decode pixel data ({exc.__class__.__name__}: {exc})") from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise MskaiError(f"{path}: colour images are not supported (Samples per Pixel {ds.SamplesPerPixel})")
    multi = (int(ds.get("NumberOfFrames", 1) or 1) > 1)
    return {idx: (arr[idx] if multi else arr) for idx in frames_wanted}


def _can_read_native(ds) -> bool:
    tsyntax = transfer_syntax(ds)
    return (
        tsyntax is not None
        and not tsyntax.is_compressed
        and tsyntax != pydicom.uid.DeflatedExplicitVRLittleEndian
        and int(ds.get("SamplesPerPixel", 1)) == 1
        and int(ds.get("BitsAllocated", 0)) in (8, 16, 32)
        and int(ds.get("BitsStored", 0)) == int(ds.get("BitsAllocated", 0))
        and 0x7FE00010 in ds
    )


def _read_frames(path, frames_wanted, rows, cols, dtype):
    """Stored values of the wanted frames of one file and its header.

    The header is read again and must still match what the scan saw (the file may have changed since).
    """
    ds = read_header(path)
    if pixel_element(ds) is None or (ds.get("Rows"), ds.get("Columns")) != (rows, cols) or stored_dtype(ds) != dtype:
        raise MskaiError(f"{path}: the file changed since it was scanned")
    try:
        check_pixel_element(ds, path, rows, cols, int(ds.get("NumberOfFrames") or 1))
    except MskaiError as exc:
        raise MskaiError(f"{path}: {exc}") from None
    if _can_read_native(ds):
        pixels = _read_native(path, ds, frames_wanted, rows, cols)
    else:
        pixels = _read_decoded(path, frames_wanted)
    return pixels, ds


def read_volume(plan: VolumePlan, resample: bool = False) -> Volume:
    """Read the pixels of a planned volume and apply rescale and MONOCHROME1 inversion.

    resample: when slices are unequally spaced, resample them linearly onto the median spacing
        instead of refusing (the volume's meta records that it was resampled).
    """
    plan.check(resample)
    frames = plan.frames
    rows, cols = frames[0].rows, frames[0].columns
    rescaled = any(f.slope != 1.0 or f.intercept != 0.0 for f in frames)
    where = {}
    for k, f in enumerate(frames):
        where.setdefault((f.path, f.stored_dtype), []).append((k, f.frame_index))
    # One dtype that holds every file's values: uint16 and int16 files together give int32, never a wrap.
    dtype = np.float32 if rescaled else np.result_type(*{f.stored_dtype for f in frames})
    check_memory(len(frames) * rows * cols * np.dtype(dtype).itemsize, f"Volume {plan.label!r}")
    buf = np.empty((len(frames), rows, cols), dtype=dtype)

    def fill(key, items):
        path, stored = key
        pixels, ds = _read_frames(path, [idx for _, idx in items], rows, cols, stored)
        monochrome1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        for k, idx in items:
            raw = pixels[idx]
            if raw.shape != (rows, cols):
                raise MskaiError(f"{path}: pixel data is {raw.shape}, header says {rows}x{cols}")
            if monochrome1:
                raw = _invert_monochrome1(raw, ds)
            f = frames[k]
            buf[k] = raw * np.float32(f.slope) + np.float32(f.intercept) if rescaled else raw

    # File reads release the GIL: a few threads overlap I/O, decoding and copying.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for future in [pool.submit(fill, key, items) for key, items in where.items()]:
            future.result()
    array = buf.transpose(2, 1, 0)  # (k, j, i) -> (i, j, k), no copy
    affine = plan.affine_lps
    meta = {
        "series_uid": plan.series.uid,
        "series_description": plan.series.description,
        "modality": plan.series.modality,
        "plane": plan.plane.name if plan.plane else "",
        "label": plan.label,
        "echo_time": frames[0].echo_time,
        "resampled": None,
        "frame_files": [f.path for f in frames],  # slice k's file: lets a DICOM SEG reference its sources
    }
    if plan.uneven_gaps:
        array, affine = _resample_slices(array, plan)
        meta["resampled"] = plan.uneven_gaps
    return Volume(array, affine, label=plan.label, meta=meta)


def _resample_slices(array, plan: VolumePlan):
    """Linear interpolation along k from measured slice offsets onto an even grid."""
    offsets = plan.slice_offsets
    step = float(np.median(np.diff(offsets)))
    n = int(round((offsets[-1] - offsets[0]) / step)) + 1
    targets = offsets[0] + step * np.arange(n)
    upper = np.clip(np.searchsorted(offsets, targets, side="right"), 1, len(offsets) - 1)
    lower = upper - 1
    w = ((targets - offsets[lower]) / (offsets[upper] - offsets[lower])).astype(np.float32)
    out = np.empty(array.shape[:2] + (n,), dtype=np.float32, order="F")
    for k in range(n):
        out[:, :, k] = array[:, :, lower[k]] * (1 - w[k]) + array[:, :, upper[k]] * w[k]
    affine = plan.affine_lps.copy()
    affine[:3, 2] = affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * step
    return out, affine


def load_series(series: Series, resample: bool = False) -> list[Volume]:
    """All volumes of a series; raises MskaiError naming the first volume that cannot be built."""
    return [read_volume(p, resample=resample) for p in plan_volumes(series)]

