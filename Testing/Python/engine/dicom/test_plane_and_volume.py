"""Acquisition plane detection and the Volume type's LPS/RAS helpers."""

import numpy as np
import pytest

from mskai import MskaiError
from mskai.dicom.plane import detect_plane
from mskai.synth.phantom import ORIENTATIONS, grid_affine, rotation
from mskai.volume import Volume


def _iop(directions):
    return np.concatenate([directions[:, 0], directions[:, 1]])


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_standard_planes(plane):
    result = detect_plane(_iop(ORIENTATIONS[plane]))
    assert result.name == plane and result.nearest == plane and result.obliquity_deg == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("tilt,expected", [(10, "sagittal"), (24, "sagittal"), (26, "oblique"), (40, "oblique")])
def test_oblique_sagittal_within_tolerance(tilt, expected):
    # rotate a sagittal grid about the S axis: the slice normal leans from L towards P by `tilt` degrees
    iop = _iop(rotation([0, 0, 1], tilt) @ ORIENTATIONS["sagittal"])
    result = detect_plane(iop)
    assert result.name == expected and result.nearest == "sagittal"
    assert result.obliquity_deg == pytest.approx(tilt, abs=1e-6)
    assert detect_plane(iop, tolerance_deg=5).name == "oblique"


def test_flipped_axes_still_give_the_plane():
    flipped = -ORIENTATIONS["coronal"]  # feet-first, mirrored rows
    assert detect_plane(_iop(flipped)).name == "coronal"


def test_volume_lps_ras_and_spacing():
    affine = grid_affine(ORIENTATIONS["sagittal"], (0.5, 0.6, 3.0), (10.0, -20.0, 30.0))
    v = Volume(np.zeros((4, 5, 6), np.int16), affine)
    np.testing.assert_allclose(v.spacing, [0.5, 0.6, 3.0])
    np.testing.assert_allclose(v.affine_ras[:3, 3], [-10.0, 20.0, 30.0])
    np.testing.assert_allclose(Volume.from_ras(v.array, v.affine_ras).affine_lps, affine)
    np.testing.assert_allclose(v.ijk_to_lps([1, 0, 0])[0], [10.0, -19.5, 30.0])
    np.testing.assert_allclose(v.directions_lps, ORIENTATIONS["sagittal"])
    with pytest.raises(MskaiError, match="3 dimensions"):
        Volume(np.zeros((4, 5)), affine)
    with pytest.raises(MskaiError, match="complex"):
        Volume(np.zeros((4, 5, 6), np.complex64), affine)
    flat = affine.copy()
    flat[:3, 2] = 0
    with pytest.raises(MskaiError, match="degenerate"):
        Volume(np.zeros((4, 5, 6)), flat)
    with pytest.raises(MskaiError, match="finite"):
        Volume(np.zeros((4, 5, 6)), np.full((4, 4), np.nan))
