"""Volume files: NRRD (LPS) and NIfTI (RAS) read and written with their geometry only, no DICOM fields."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np

from mskai import MskaiError
from mskai.outputs import atomic_output, suffix_of
from mskai.volume import Volume

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz")


def is_volume_file(path) -> bool:
    """Whether ``path`` is an existing NRRD/NIfTI file (commands read it as it is instead of as DICOM)."""
    return suffix_of(path) in VOLUME_SUFFIXES and Path(path).is_file()


def check_volume_path(path) -> str:
    """The volume file kind of an output path (.nrrd, .nii, .nii.gz); MskaiError for any other name."""
    kind = suffix_of(path)
    if kind not in (".nrrd", ".nii", ".nii.gz"):
        raise MskaiError(f"Cannot write {Path(path).name}: use .nrrd, .nii or .nii.gz")
    return kind


def write_volume(volume: Volume, path) -> Path:
    """Write a volume as NRRD (LPS) or NIfTI (RAS). Only geometry and voxels go in the file, no DICOM fields."""
    path = Path(path)
    kind = check_volume_path(path)
    with atomic_output(path) as tmp:
        if kind == ".nrrd":
            header = {
                "space": "left-posterior-superior",
                "space directions": volume.affine_lps[:3, :3].T,
                "space origin": volume.affine_lps[:3, 3],
                "kinds": ["domain", "domain", "domain"],
                "encoding": "gzip",
            }
            nrrd.write(str(tmp), np.asarray(volume.array), header, compression_level=1)
        else:
            image = nib.Nifti1Image(np.asarray(volume.array), volume.affine_ras)
            image.header.set_xyzt_units("mm")
            image.set_qform(volume.affine_ras, code=1)
            image.set_sform(volume.affine_ras, code=1)
            nib.save(image, str(tmp))
    return path


def check_memory(needed: int, what: str):
    """Refuse before allocating ``needed`` bytes when they would not fit in half of the free memory."""
    import psutil

    available = psutil.virtual_memory().available
    if needed > available // 2:
        raise MskaiError(f"{what} needs {needed / 2**30:.1f} GiB; only {available / 2**30:.1f} GiB of memory is "
                         "free (the header may declare an absurd image size)")


def read_volume_file(path) -> Volume:
    """Read a NRRD or NIfTI volume file; its declared size is checked before any voxel is read."""
    path = Path(path)
    kind = suffix_of(path)
    if not path.is_file():
        raise MskaiError(f"{path} does not exist")
    try:
        if kind in (".nrrd", ".nhdr", ".seg.nrrd"):
            header = nrrd.read_header(str(path))
            check_memory(math.prod(int(n) for n in header["sizes"]) * 8, path.name)  # 8: the widest NRRD type
            data, header = nrrd.read(str(path))
            space = header.get("space", "left-posterior-superior")
            directions = np.asarray(header["space directions"], dtype=float)
            rows = [i for i, d in enumerate(directions) if np.all(np.isfinite(d))]
            if len(rows) != 3:
                raise MskaiError("not a 3D volume")
            affine = np.eye(4)
            affine[:3, :3] = directions[rows].T
            affine[:3, 3] = header.get("space origin", np.zeros(3))
            if space in ("right-anterior-superior", "RAS"):
                return Volume.from_ras(data, affine, label=path.name)
            if space not in ("left-posterior-superior", "LPS"):
                raise MskaiError(f"unsupported NRRD space {space!r}")
            return Volume(data, affine, label=path.name)
        if kind in (".nii", ".nii.gz"):
            image = nib.load(str(path))
            check_memory(math.prod(int(n) for n in image.shape) * image.get_data_dtype().itemsize, path.name)
            return Volume.from_ras(np.asanyarray(image.dataobj), image.affine, label=path.name)
    except MskaiError as exc:
        raise MskaiError(f"{path.name}: {exc}") from None
    except Exception as exc:
        raise MskaiError(f"Cannot read {path.name}: {exc.__class__.__name__}: {exc}") from None
    raise MskaiError(f"{path.name}: not a volume file ({', '.join(VOLUME_SUFFIXES)})")
