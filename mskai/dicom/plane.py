"""Acquisition plane from Image Orientation (Patient)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANES = ("sagittal", "coronal", "axial")  # slice normal along L, P, S respectively


@dataclass(frozen=True)
class Plane:
    name: str  # sagittal | coronal | axial | oblique
    nearest: str  # the closest of sagittal / coronal / axial
    obliquity_deg: float  # angle between the slice normal and the nearest patient axis

    def __str__(self):
        if self.name == "oblique":
            return f"oblique (near {self.nearest}, {self.obliquity_deg:.0f} deg)"
        return self.name


def slice_normal(orientation) -> np.ndarray:
    """Unit normal (row direction x column direction) of a six-value Image Orientation (Patient)."""
    o = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
    n = np.cross(o[0], o[1])
    return n / np.linalg.norm(n)


def detect_plane(orientation, tolerance_deg: float = 25.0) -> Plane:
    """Classify a slice orientation.

    orientation: the six direction cosines of Image Orientation (Patient).
    tolerance_deg: largest angle between slice normal and a patient axis still called by that
        axis's plane name; oblique-sagittal knee protocols (about 10-20 deg) stay "sagittal".
    """
    n = np.abs(slice_normal(orientation))
    axis = int(np.argmax(n))
    angle = float(np.degrees(np.arccos(np.clip(n[axis], -1.0, 1.0))))
    name = PLANES[axis] if angle <= tolerance_deg else "oblique"
    return Plane(name, PLANES[axis], angle)


def volume_slice_axis(spacing) -> int:
    """The voxel axis that runs across the slices: the one with the thickest voxels (10 % thicker than both
    others), else the third (DICOM's slice axis; isotropic 3D acquisitions)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    thickest = int(np.argmax(spacing))
    return thickest if spacing[thickest] > 1.1 * np.delete(spacing, thickest).max() else 2


def volume_plane(affine_lps) -> tuple[Plane, int]:
    """(plane, slice axis) of a volume from its geometry alone, whatever the order of its array axes (a sagittal
    series saved as (slices, rows, columns) is as sagittal as one saved as DICOM orders it)."""
    matrix = np.asarray(affine_lps, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    axis = volume_slice_axis(spacing)
    in_plane = [a for a in range(3) if a != axis]
    directions = matrix[:, in_plane] / spacing[in_plane]
    return detect_plane(np.concatenate([directions[:, 0], directions[:, 1]])), axis
