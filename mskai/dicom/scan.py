"""Read DICOM headers (no pixels) and group the files of a folder tree into series."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from mskai import MskaiError

PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data

# Header-only read: values larger than this are left in the file and not read.
_DEFER_BYTES = 4096


@dataclass
class Frame:
    """One 2D image: a single-frame file, or one frame of a multi-frame (enhanced) file."""

    path: str
    frame_index: int | None  # None for a single-frame file
    position: np.ndarray | None  # Image Position (Patient), mm, LPS
    orientation: np.ndarray | None  # Image Orientation (Patient), six direction cosines
    pixel_spacing: tuple | None  # (row spacing, column spacing) in mm
    rows: int
    columns: int
    slope: float = 1.0
    intercept: float = 0.0
    echo_time: float | None = None
    acquisition_number: int | None = None
    temporal_position: str | None = None
    instance_number: int | None = None
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None


@dataclass
class Series:
    """The files of one Series Instance UID, as found on disk or in a database."""

    uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    sop_class_name: str = ""
    study_uid: str = ""
    study_description: str = ""
    study_date: str = ""
    patient_name: str = ""
    patient_id: str = ""
    frames: list[Frame] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def is_image(self) -> bool:
        """False for series of non-image objects only (SR, PR, RTSTRUCT, ...)."""
        return bool(self.frames)


@dataclass
class FileProblem:
    path: str
    message: str

    def __str__(self):
        return f"{self.path}: {self.message}"


@dataclass
class ScanReport:
    """What a scan found: the series, and the files that could not be used and why."""

    series: list[Series] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)

    def require_series(self, where: str) -> list[Series]:
        if not self.series:
            detail = f" ({len(self.problems)} unreadable files, e.g. {self.problems[0]})" if self.problems else ""
            raise MskaiError(f"No DICOM series found in {where}{detail}")
        return self.series

    def find(self, key: str) -> Series:
        """A series by Series Instance UID, or by its 1-based position in this report."""
        for s in self.series:
            if s.uid == key:
                return s
        if key.isdigit() and 1 <= int(key) <= len(self.series):
            return self.series[int(key) - 1]
        raise MskaiError(f"No series {key!r} here; give a Series Instance UID or a number 1-{len(self.series)}")


def _float(value, default=None):
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _int(value):
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _vector(value, n):
    if value is None:
        return None
    try:
        v = np.array([float(x) for x in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def _first(seq_owner, keyword):
    """First item of a sequence attribute, or None."""
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    return seq[0] if seq else None


def _functional_group(shared, per_frame, sequence_keyword):
    """A functional-group macro item: the per-frame one wins over the shared one."""
    return _first(per_frame, sequence_keyword) or _first(shared, sequence_keyword)


def _enhanced_frames(ds, path) -> list[Frame]:
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = _int(ds.get("NumberOfFrames")) or 1
    frames = []
    for i in range(n):
        pf = per_frame[i] if i < len(per_frame) else None
        pos = _functional_group(shared, pf, "PlanePositionSequence")
        ori = _functional_group(shared, pf, "PlaneOrientationSequence")
        meas = _functional_group(shared, pf, "PixelMeasuresSequence")
        vt = _functional_group(shared, pf, "PixelValueTransformationSequence")
        echo = _functional_group(shared, pf, "MREchoSequence")
        content = _first(pf, "FrameContentSequence")
        spacing = _vector(meas.get("PixelSpacing"), 2) if meas else None
        frames.append(
            Frame(
                path=path,
                frame_index=i,
                position=_vector(pos.get("ImagePositionPatient"), 3) if pos else None,
                orientation=_vector(ori.get("ImageOrientationPatient"), 6) if ori else None,
                pixel_spacing=tuple(spacing) if spacing is not None else None,
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                slope=_float(vt.get("RescaleSlope"), 1.0) if vt else 1.0,
                intercept=_float(vt.get("RescaleIntercept"), 0.0) if vt else 0.0,
                echo_time=_float(echo.get("EffectiveEchoTime")) if echo else None,
                temporal_position=str(content.get("TemporalPositionIndex", "")) if content else None,
                instance_number=i + 1,
                slice_thickness=_float(meas.get("SliceThickness")) if meas else None,
                spacing_between_slices=_float(meas.get("SpacingBetweenSlices")) if meas else None,
            )
        )
    return frames


def _classic_frame(ds, path) -> Frame:
    spacing = _vector(ds.get("PixelSpacing"), 2)
    temporal = ds.get("TemporalPositionIdentifier", ds.get("TriggerTime", ""))
    return Frame(
        path=path,
        frame_index=None,
        position=_vector(ds.get("ImagePositionPatient"), 3),
        orientation=_vector(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=tuple(spacing) if spacing is not None else None,
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        slope=_float(ds.get("RescaleSlope"), 1.0),
        intercept=_float(ds.get("RescaleIntercept"), 0.0),
        echo_time=_float(ds.get("EchoTime")),
        acquisition_number=_int(ds.get("AcquisitionNumber")),
        temporal_position=str(temporal) if temporal not in (None, "") else None,
        instance_number=_int(ds.get("InstanceNumber")),
        slice_thickness=_float(ds.get("SliceThickness")),
        spacing_between_slices=_float(ds.get("SpacingBetweenSlices")),
    )


def read_header(path: str) -> pydicom.Dataset:
    """Read a file's header, leaving large values (the pixels) on disk. Raises MskaiError."""
    if not os.path.isfile(path):
        raise MskaiError("file is missing")
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
    except InvalidDicomError:
        raise MskaiError("not a DICOM file") from None
    except Exception as exc:  # pydicom raises many kinds on damaged files
        raise MskaiError(f"unreadable DICOM header ({exc.__class__.__name__}: {exc})") from None
    if "SeriesInstanceUID" not in ds:
        raise MskaiError("DICOM file without Series Instance UID (a DICOMDIR or a damaged file)")
    return ds


def pixel_element(ds):
    """The raw (not yet read) pixel data element of a header, or None for non-image objects."""
    for tag in PIXEL_TAGS:
        if tag in ds:
            return ds.get_item(tag, keep_deferred=True)
    return None


def _check_pixel_length(ds, path):
    elem = pixel_element(ds)
    if elem is None:
        return False
    length = getattr(elem, "length", None)
    tell = getattr(elem, "value_tell", None)
    if length not in (None, 0xFFFFFFFF) and tell is not None and tell + length > os.path.getsize(path):
        raise MskaiError(f"truncated file: pixel data needs {tell + length} bytes, file has {os.path.getsize(path)}")
    return True


def _frames_of(ds, path) -> list[Frame]:
    if "Rows" not in ds or "Columns" not in ds:
        raise MskaiError("image without Rows/Columns")
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, path)
    if (_int(ds.get("NumberOfFrames")) or 1) > 1:
        raise MskaiError("multi-frame file without functional groups: per-frame geometry is unknown")
    return [_classic_frame(ds, path)]


def _new_series(ds) -> Series:
    sop = ds.get("SOPClassUID")
    return Series(
        uid=str(ds.SeriesInstanceUID),
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        number=_int(ds.get("SeriesNumber")),
        sop_class_name=getattr(sop, "name", str(sop or "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        study_description=str(ds.get("StudyDescription", "")),
        study_date=str(ds.get("StudyDate", "")),
        patient_name=str(ds.get("PatientName", "")),
        patient_id=str(ds.get("PatientID", "")),
    )


def scan_files(paths, report: ScanReport | None = None) -> ScanReport:
    """Read the headers of the given files and group their images by series.

    Files that are not DICOM, truncated or damaged go to ``report.problems``; series of
    non-image objects (SR, PR, RTSTRUCT, ...) have no frames.
    """
    report = report or ScanReport()
    by_uid: dict[str, Series] = {s.uid: s for s in report.series}
    for path in paths:
        path = str(path)
        try:
            ds = read_header(path)
            has_pixels = _check_pixel_length(ds, path)
            frames = _frames_of(ds, path) if has_pixels else []
        except MskaiError as exc:
            report.problems.append(FileProblem(path, str(exc)))
            continue
        except Exception as exc:  # a damaged value deep inside a header
            report.problems.append(FileProblem(path, f"unreadable header ({exc.__class__.__name__}: {exc})"))
            continue
        uid = str(ds.SeriesInstanceUID)
        series = by_uid.get(uid)
        if series is None:
            series = by_uid[uid] = _new_series(ds)
            report.series.append(series)
        series.files.append(path)
        series.frames.extend(frames)
    report.series.sort(key=lambda s: (s.patient_id, s.study_date, s.study_uid, s.number or 0, s.uid))
    return report


def iter_files(folder) -> list[str]:
    """All regular files below a folder, sorted; hidden files and DICOMDIR skipped."""
    folder = Path(folder)
    if not folder.exists():
        raise MskaiError(f"{folder} does not exist")
    if folder.is_file():
        return [str(folder)]
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith(".") and f.upper() != "DICOMDIR")
    return out


def scan_folder(folder) -> ScanReport:
    """Find every DICOM series in a folder tree (or a single file)."""
    return scan_files(iter_files(folder))


def group_by(items, key):
    groups = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return groups
