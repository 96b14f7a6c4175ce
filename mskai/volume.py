"""The one image type that crosses every boundary: voxels plus an IJK->patient affine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D image.

    ``array[i, j, k]``: i runs along a DICOM row (columns index), j down the rows, k across slices.
    ``affine_lps`` maps homogeneous (i, j, k, 1) to patient LPS millimetres (DICOM's frame).
    ``meta`` holds descriptive, possibly identifying, fields; writers never copy it into files.
    """

    array: np.ndarray
    affine_lps: np.ndarray
    label: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.array.ndim != 3:
            raise ValueError(f"a Volume needs a 3D array, got shape {self.array.shape}")
        self.affine_lps = np.asarray(self.affine_lps, dtype=np.float64)
        if self.affine_lps.shape != (4, 4):
            raise ValueError("affine_lps must be 4x4")

    @classmethod
    def from_ras(cls, array, affine_ras, **kwargs) -> "Volume":
        return cls(array, LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64), **kwargs)

    @property
    def affine_ras(self) -> np.ndarray:
        """IJK -> RAS (NIfTI, Slicer's world frame)."""
        return LPS_TO_RAS @ self.affine_lps

    @property
    def shape(self) -> tuple:
        return self.array.shape

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine_lps[:3, :3], axis=0)

    @property
    def origin_lps(self) -> np.ndarray:
        """Patient position of voxel (0, 0, 0)."""
        return self.affine_lps[:3, 3].copy()

    @property
    def directions_lps(self) -> np.ndarray:
        """Unit direction of the i, j, k axes as the columns of a 3x3 matrix."""
        return self.affine_lps[:3, :3] / self.spacing

    def ijk_to_lps(self, ijk) -> np.ndarray:
        ijk = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return ijk @ self.affine_lps[:3, :3].T + self.affine_lps[:3, 3]
