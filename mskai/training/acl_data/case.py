"""One labelled ACL case (``AclCase``): what a case source may be, and how it is read into a Volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mskai import MskaiError
from mskai.training.acl_data.arrays import ASSUMED_SPACING, array_to_volume, load_npy_array
from mskai.training.acl_data.common import MAX_FILE_BYTES, _pseudonym
from mskai.training.acl_data.safe_pickle import load_pickle_array
from mskai.volume import Volume

ARRAY_SUFFIXES = (".npy", ".pck", ".pkl", ".pickle")
VOLUME_FILE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz")
MAX_CASE_FILES = 4096  # a DICOM folder of one knee series (a few echoes of a few hundred slices) holds fewer
MAX_CASE_DEPTH = 4  # folder levels below a case folder


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
            from mskai.volume_files import read_volume_file

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
