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
