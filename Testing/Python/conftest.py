"""Shared fixtures: the real knee series, phantoms written as real DICOM files, SimpleITK as the reference reader."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MSKAI_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def knee_dicom() -> Path:
    folder = SHARED_DATA / "knee_mese_t2_dicom"
    assert folder.is_dir(), f"the shared knee series is missing: {folder} (set MSKAI_SHARED_DATA)"
    return folder


@pytest.fixture(scope="session")
def sitk_series():
    return _sitk_read_series


def _sitk_read_series(files):
    """SimpleITK/GDCM's reading of a set of files: (array[i, j, k], 4x4 IJK->LPS affine).

    The files are linked into a private folder so GDCM does its own slice sorting.
    """
    first = Path(files[0])
    folder = first.parent.parent / f"_sitk_{first.parent.name}_{len(files)}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for f in files:
        os.symlink(Path(f).resolve(), folder / Path(f).name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    shutil.rmtree(folder)
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine
