"""Read DICOM headers (no pixels) and group the files of a folder tree into series."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from mskai import MskaiError

PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = (PIXEL_DATA, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float Pixel Data, Double Float Pixel Data

# Header-only read: values larger than this are left in the file and not read.
_DEFER_BYTES = 4096
# Header values beyond these are damage, not anatomy.
MAX_SPACING_MM = 1000.0  # a pixel or a slice gap of 1 m
MAX_COORDINATE_MM = 1e5  # a position 100 m from the origin
MAX_FRAMES = 100_000


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
    stored_dtype: str = "u2"  # numpy dtype of the stored values (Bits Allocated, Pixel Representation)


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
    identities: set = field(default_factory=set)  # identity() of its files: more than one is a mixed series
    unreadable: str | None = None  # why none of the files a database lists for this series can be used

    @property
    def is_image(self) -> bool:
        """False for series of non-image objects only (SR, PR, RTSTRUCT, ...); a database series whose files
        cannot be read at all counts as an (unusable) image series, so that it is reported, not dropped."""
        return bool(self.frames) or self.unreadable is not None

    @property
    def problem(self) -> str | None:
        """Why the files of this Series Instance UID must not be used together, or None."""
        return self.unreadable or mixed_identity(self.identities)

    @property
    def patient(self) -> tuple:
        """(Patient ID, Patient's Name): who the series belongs to, for grouping (never shown)."""
        return (self.patient_id, self.patient_name)


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
    seen: set = field(default_factory=set, repr=False)  # real paths of the files read: each file is read once

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


# The fields that must agree across the files of one series: which patient, study, space and modality.
IDENTITY_FIELDS = (("patients", ("PatientID", "PatientName")), ("studies", ("StudyInstanceUID",)),
                   ("frames of reference", ("FrameOfReferenceUID",)), ("modalities", ("Modality",)))


def identity(ds) -> tuple:
    """Who and where a file belongs to: one tuple of values per IDENTITY_FIELDS entry."""
    return tuple(tuple(str(ds.get(k, "")) for k in keywords) for _, keywords in IDENTITY_FIELDS)


def mixed_identity(identities) -> str | None:
    """Why files that share a UID must not be combined (several patients, studies, ...), or None."""
    counts = [(len({i[n] for i in identities}), name) for n, (name, _) in enumerate(IDENTITY_FIELDS)]
    mixed = [f"{count} {name}" for count, name in counts if count > 1]
    if not mixed:
        return None
    return f"its files come from {', '.join(mixed)}; refusing to combine them (separate the files first)"


def _value(item, keyword):
    """A header value; None when absent or empty; MskaiError when its stored text cannot be parsed."""
    try:
        value = item.get(keyword)
    except Exception as exc:  # pydicom converts values on access
        raise MskaiError(f"{keyword} cannot be read ({exc.__class__.__name__})") from None
    return None if value is None or value == "" else value


# A Decimal String as DICOM defines it (PS3.5 6.2): Python's float() also takes "1_0", "nan", "infinity".
_DECIMAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _decimal(x) -> float:
    text = getattr(x, "original_string", None) or (x if isinstance(x, str) else None)
    if text is not None and not _DECIMAL.fullmatch(text):
        raise ValueError(text)
    return float(x)


def _numbers(item, keyword, n, low=-np.inf, high=np.inf) -> np.ndarray | None:
    """``n`` finite numbers, each in (low, high), or None when absent; MskaiError otherwise."""
    value = _value(item, keyword)
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        v = np.array([_decimal(x) for x in values], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        v = np.full(1, np.nan)
    if v.shape != (n,) or not np.all(np.isfinite(v) & (v > low) & (v < high)):
        shown = "\\".join(map(str, values))[:60]
        raise MskaiError(f"{keyword} {shown!r} is not {n} finite number(s) between {low:g} and {high:g}")
    return v


def _number(item, keyword, default=None, **limits):
    v = _numbers(item, keyword, 1, **limits)
    return default if v is None else float(v[0])


def _integer(item, keyword, low, high, default=None) -> int:
    """An integer attribute in [low, high]; ``default`` when absent (MskaiError when there is none)."""
    value = _value(item, keyword)
    if value is None:
        if default is None:
            raise MskaiError(f"{keyword} is missing")
        return default
    text = str(value)
    number = int(text) if re.fullmatch(r"\s*[+-]?\d{1,12}\s*", text) else None  # int() also takes "1_0"
    if number is None or not low <= number <= high:
        raise MskaiError(f"{keyword} {str(value)[:30]!r} is not an integer from {low} to {high}")
    return number


def _int(value):
    """A descriptive integer (series number, acquisition number): None when unusable."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _informative(item, keyword):
    """A value used only as a hint (slice thickness): None when absent or unusable."""
    try:
        return _number(item, keyword, low=0, high=MAX_SPACING_MM)
    except MskaiError:
        return None


def _first(seq_owner, keyword):
    """First item of a sequence attribute, or None."""
    seq = seq_owner.get(keyword) if seq_owner is not None else None
    return seq[0] if seq else None


def _functional_group(shared, per_frame, sequence_keyword):
    """A functional-group macro item: the per-frame one wins over the shared one."""
    return _first(per_frame, sequence_keyword) or _first(shared, sequence_keyword)


def _frame(path, index, rows, columns, pos, ori, meas, vt, **extra) -> Frame:
    """A frame from its geometry, pixel-measure and value-transformation items, every field checked."""
    spacing = _numbers(meas, "PixelSpacing", 2, low=0, high=MAX_SPACING_MM) if meas is not None else None
    # Rescaled values must stay finite in float32: stored values times 1e9 plus 1e9 do.
    slope = _number(vt, "RescaleSlope", 1.0, low=-1e9, high=1e9) if vt is not None else 1.0
    if slope == 0:
        raise MskaiError("Rescale Slope is 0")
    return Frame(
        path=path, frame_index=index, rows=rows, columns=columns,
        position=_numbers(pos, "ImagePositionPatient", 3, -MAX_COORDINATE_MM, MAX_COORDINATE_MM)
        if pos is not None else None,
        orientation=_numbers(ori, "ImageOrientationPatient", 6, -1.001, 1.001) if ori is not None else None,
        pixel_spacing=tuple(spacing) if spacing is not None else None,
        slope=slope,
        intercept=_number(vt, "RescaleIntercept", 0.0, low=-1e9, high=1e9) if vt is not None else 0.0,
        slice_thickness=_informative(meas, "SliceThickness") if meas is not None else None,
        spacing_between_slices=_informative(meas, "SpacingBetweenSlices") if meas is not None else None,
        **extra,
    )


def _enhanced_frames(ds, path, rows, columns, n) -> list[Frame]:
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != n:
        raise MskaiError(f"Per-frame Functional Groups Sequence has {len(per_frame)} items for {n} frames")
    frames = []
    for i in range(n):
        pf = per_frame[i] if per_frame else None
        echo = _functional_group(shared, pf, "MREchoSequence")
        content = _first(pf, "FrameContentSequence")
        frames.append(_frame(
            path, i, rows, columns,
            _functional_group(shared, pf, "PlanePositionSequence"),
            _functional_group(shared, pf, "PlaneOrientationSequence"),
            _functional_group(shared, pf, "PixelMeasuresSequence"),
            _functional_group(shared, pf, "PixelValueTransformationSequence"),
            echo_time=_informative(echo, "EffectiveEchoTime") if echo else None,
            temporal_position=str(content.get("TemporalPositionIndex", "")) if content else None,
            instance_number=i + 1,
        ))
    return frames


def _classic_frame(ds, path, rows, columns) -> Frame:
    temporal = ds.get("TemporalPositionIdentifier", ds.get("TriggerTime", ""))
    return _frame(
        path, None, rows, columns, ds, ds, ds, ds,
        echo_time=_informative(ds, "EchoTime"),
        acquisition_number=_int(ds.get("AcquisitionNumber")),
        temporal_position=str(temporal) if temporal not in (None, "") else None,
        instance_number=_int(ds.get("InstanceNumber")),
    )


def read_header(path: str) -> pydicom.Dataset:
    """Read a file's header, leaving large values (the pixels) on disk. Raises MskaiError."""
    if not os.path.lexists(path):
        raise MskaiError("file is missing")
    if not os.path.isfile(path):
        raise MskaiError("not a regular file (a folder, device or pipe)")
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


def transfer_syntax(ds):
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def check_pixel_element(ds, path, rows, columns, frames):
    """The pixel data element must lie inside the file and, uncompressed, hold exactly the declared frames."""
    elem = pixel_element(ds)
    length, tell = getattr(elem, "length", None), getattr(elem, "value_tell", None)
    tsyntax = transfer_syntax(ds)
    if tsyntax == pydicom.uid.DeflatedExplicitVRLittleEndian or length is None or tell is None:
        return  # positions refer to the inflated stream: the decoder checks lengths
    if length != 0xFFFFFFFF and tell + length > os.path.getsize(path):
        raise MskaiError(f"truncated file: pixel data needs {tell + length} bytes, file has {os.path.getsize(path)}")
    if elem.tag != PIXEL_DATA or tsyntax is None or tsyntax.is_compressed:
        return
    needed = rows * columns * frames * int(ds.BitsAllocated) // 8  # Python ints: no overflow
    if length == 0xFFFFFFFF or length not in (needed, needed + 1):  # one padding byte keeps lengths even
        shown = "undefined" if length == 0xFFFFFFFF else f"{length} bytes"
        raise MskaiError(f"pixel data is {shown}; {rows}x{columns}x{frames} pixels of "
                         f"{ds.BitsAllocated} bits need {needed}")


def _image_frames(ds, path) -> list[Frame]:
    """The frames of an image file after checking every pixel-format field; [] for non-image objects."""
    if pixel_element(ds) is None:
        return []
    rows = _integer(ds, "Rows", 1, 65535)
    columns = _integer(ds, "Columns", 1, 65535)
    samples = _integer(ds, "SamplesPerPixel", 1, 4)
    photometric = str(_value(ds, "PhotometricInterpretation") or "(missing)").strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise MskaiError(f"only grayscale images are supported (Photometric Interpretation {photometric}, "
                         f"{samples} samples per pixel)")
    if pixel_element(ds).tag == PIXEL_DATA:  # the Image Pixel module's type 1 fields: none may be guessed
        bits = _integer(ds, "BitsAllocated", 1, 64)
        if bits not in (8, 16, 32):
            raise MskaiError(f"unsupported Bits Allocated {bits}")
        _integer(ds, "HighBit", _integer(ds, "BitsStored", 1, bits) - 1, bits - 1)
        _integer(ds, "PixelRepresentation", 0, 1)
    n = _integer(ds, "NumberOfFrames", 1, MAX_FRAMES, default=1)
    check_pixel_element(ds, path, rows, columns, n)
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        frames = _enhanced_frames(ds, path, rows, columns, n)
    elif n > 1:
        raise MskaiError("multi-frame file without functional groups: per-frame geometry is unknown")
    else:
        frames = [_classic_frame(ds, path, rows, columns)]
    dtype = stored_dtype(ds)
    for f in frames:
        f.stored_dtype = dtype
    return frames


def stored_dtype(ds) -> str:
    """The numpy dtype of a file's stored pixel values."""
    elem = pixel_element(ds)
    if elem.tag != PIXEL_DATA:
        return "f4" if elem.tag == 0x7FE00008 else "f8"
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    return f"{'i' if signed else 'u'}{int(ds.BitsAllocated) // 8}"


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
    non-image objects (SR, PR, RTSTRUCT, ...) have no frames. A file is read once, however often it is listed
    (under two database series rows, or through a symbolic link).
    """
    report = report or ScanReport()
    by_uid: dict[str, Series] = {s.uid: s for s in report.series}
    for path in paths:
        path = str(path)
        real = os.path.realpath(path)
        if real in report.seen:
            continue
        report.seen.add(real)
        try:  # every value used below is read here: a damaged one makes this file a problem, not a crash
            ds = read_header(path)
            frames = _image_frames(ds, path)
            uid, file_identity = str(ds.SeriesInstanceUID), identity(ds)
            series = by_uid.get(uid) or _new_series(ds)
        except MskaiError as exc:
            report.problems.append(FileProblem(path, str(exc)))
            continue
        except Exception as exc:  # a damaged value deep inside a header
            report.problems.append(FileProblem(path, f"unreadable header ({exc.__class__.__name__}: {exc})"))
            continue
        if uid not in by_uid:
            by_uid[uid] = series
            report.series.append(series)
        series.files.append(path)
        series.frames.extend(frames)
        series.identities.add(file_identity)
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
