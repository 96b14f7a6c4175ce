"""The one image type that crosses every boundary: voxels plus an IJK->patient affine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mskai import MskaiError

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
        """Refuse what no reader should hand on: other than 3D, complex or object voxels, a degenerate affine."""
        if self.array.ndim != 3:
            raise MskaiError(f"a volume needs 3 dimensions, this one has shape {self.array.shape}")
        if self.array.dtype.kind not in "biuf":
            raise MskaiError(f"voxels of type {self.array.dtype} are not supported (complex or non-numeric; real numbers only)")
        try:
            self.affine_lps = np.asarray(self.affine_lps, dtype=np.float64)
        except (TypeError, ValueError):
            raise MskaiError("the volume's affine is not numeric") from None
        if self.affine_lps.shape != (4, 4) or not np.all(np.isfinite(self.affine_lps)):
            raise MskaiError("the volume's affine is not a finite 4x4 matrix")
        if np.any(self.spacing == 0) or abs(np.linalg.det(self.directions_lps)) < 1e-3:
            raise MskaiError(f"the volume's axes are degenerate (voxel size {np.round(self.spacing, 4).tolist()} mm, "
                             "zero or parallel directions)")

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
