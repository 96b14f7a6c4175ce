"""Small test phantoms on any grid."""

from __future__ import annotations

import numpy as np

from mskai.volume import Volume

# Direction cosines of the i, j, k axes (columns) in LPS for the standard planes.
ORIENTATIONS = {
    "axial": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float).T,
    "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float).T,
    "sagittal": np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float).T,
}


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def grid_affine(directions, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions, dtype=float) * np.asarray(spacing, dtype=float)
    affine[:3, 3] = origin
    return affine


def phantom(shape=(48, 40, 12), spacing=(0.6, 0.5, 3.0), plane="sagittal", tilt_deg=0.0, tilt_axis=(0, 0, 1),
            origin=(-20.0, -30.0, 40.0), seed=0) -> Volume:
    """An asymmetric ellipsoid with a ramp and noise, so a flipped or shifted axis is always visible.

    plane: sagittal | coronal | axial; tilt_deg rotates the grid about tilt_axis (LPS; default S) to make it oblique.
    """
    directions = rotation(tilt_axis, tilt_deg) @ ORIENTATIONS[plane]
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = ((i - 0.2) ** 2 / 0.5 + (j + 0.1) ** 2 / 0.4 + k**2 / 0.9) < 1
    rng = np.random.default_rng(seed)
    values = 300 + 1500 * body + 200 * i + 100 * j + 50 * k + rng.normal(0, 20, shape)
    return Volume(np.rint(values).astype(np.int16), grid_affine(directions, spacing, origin), label=f"phantom {plane}")
