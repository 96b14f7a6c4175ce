"""Series -> volume: geometry and voxels checked against SimpleITK/GDCM on real files."""

import numpy as np
import pydicom
import pytest

from mskai.dicom import load_series, plan_volumes, read_volume, scan_folder
from mskai.synth.dicom_writer import TRANSFER_SYNTAXES, write_series
from mskai.synth.phantom import phantom


def _only_volume(folder):
    report = scan_folder(folder)
    assert report.problems == []
    assert len(report.series) == 1
    volumes = load_series(report.series[0])
    assert len(volumes) == 1
    return volumes[0], report.series[0]


@pytest.mark.parametrize(
    "plane,tilt,spacing,expected",
    [("axial", 0, (0.7, 0.8, 2.5), "axial"), ("coronal", 0, (0.5, 0.5, 3.0), "coronal"),
     ("sagittal", 0, (0.4, 0.45, 4.0), "sagittal"), ("sagittal", 12, (0.625, 0.625, 4.0), "sagittal"),
     ("axial", 35, (1.0, 0.9, 1.2), "oblique")],
)
def test_orientations_match_simpleitk_and_truth(tmp_path, sitk_series, plane, tilt, spacing, expected):
    truth = phantom(plane=plane, tilt_deg=tilt, tilt_axis=(1, 0.3, 0), spacing=spacing)
    write_series(truth, tmp_path / "s")
    volume, series = _only_volume(tmp_path / "s")
    ref_array, ref_affine = sitk_series(series.files)

    np.testing.assert_allclose(volume.affine_lps, ref_affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array, ref_array)
    np.testing.assert_allclose(volume.affine_lps, truth.affine_lps, atol=1e-4)
    np.testing.assert_array_equal(volume.array, truth.array)
    assert volume.meta["plane"] == expected


def test_shuffled_file_order_and_names_do_not_change_the_volume(tmp_path):
    truth = phantom(plane="coronal")
    paths = write_series(truth, tmp_path / "s")
    rng = np.random.default_rng(1)
    for n, p in enumerate(rng.permutation(paths)):  # names no longer follow slice order
        p.rename(p.with_name(f"Z{n:03d}.dcm"))
    volume, _ = _only_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, truth.array)
    np.testing.assert_allclose(volume.affine_lps, truth.affine_lps, atol=1e-4)


@pytest.mark.parametrize("syntax", sorted(TRANSFER_SYNTAXES))
@pytest.mark.parametrize("multiframe", [False, True])
def test_transfer_syntaxes(tmp_path, sitk_series, syntax, multiframe):
    truth = phantom(plane="sagittal", tilt_deg=8)
    if syntax == "jpeg-baseline":  # 8-bit lossy
        truth.array = (truth.array // 10).astype(np.int16)
    paths = write_series(truth, tmp_path / "s", transfer_syntax=syntax, multiframe=multiframe)
    assert pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    volume, series = _only_volume(tmp_path / "s")
    np.testing.assert_allclose(volume.affine_lps, truth.affine_lps, atol=1e-4)
    if syntax == "jpeg-baseline":
        assert np.abs(volume.array.astype(float) - truth.array).mean() < 3
    else:
        np.testing.assert_array_equal(volume.array, truth.array)
    if not multiframe:  # GDCM's series reader is the reference for classic single-frame files
        ref_array, ref_affine = sitk_series(series.files)
        np.testing.assert_allclose(volume.affine_lps, ref_affine, atol=1e-4)
        np.testing.assert_allclose(volume.array, ref_array, atol=0 if syntax != "jpeg-baseline" else 1)


def test_rescale_slope_intercept_gives_float_values(tmp_path, sitk_series):
    truth = phantom(plane="axial")
    truth.array = truth.array.astype(np.float32) * 0.5 - 100.0
    write_series(truth, tmp_path / "s", rescale=(0.5, -100.0))
    volume, series = _only_volume(tmp_path / "s")
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, truth.array, atol=1e-4)
    ref_array, _ = sitk_series(series.files)
    np.testing.assert_allclose(volume.array, ref_array, atol=1e-3)


@pytest.mark.parametrize("multiframe", [False, True])
def test_monochrome1_is_inverted_to_bright_high_values(tmp_path, multiframe):
    truth = phantom(plane="coronal")
    write_series(truth, tmp_path / "m1", monochrome1=True, multiframe=multiframe)
    write_series(truth, tmp_path / "m2", multiframe=multiframe)
    inverted, _ = _only_volume(tmp_path / "m1")
    plain, _ = _only_volume(tmp_path / "m2")
    stored = pydicom.dcmread(next((tmp_path / "m1").iterdir()))
    assert stored.PhotometricInterpretation == "MONOCHROME1"
    assert not np.array_equal(stored.pixel_array, pydicom.dcmread(next((tmp_path / "m2").iterdir())).pixel_array)
    # inside the body (bright in MONOCHROME2) stays brighter than the background after inversion
    body = plain.array > 1000
    assert inverted.array[body].mean() > inverted.array[~body].mean() + 1000
    np.testing.assert_allclose(inverted.array - inverted.array.mean(), plain.array - plain.array.mean(), atol=1e-3)


def test_enhanced_multiframe_multi_echo(tmp_path):
    echoes = [phantom(plane="sagittal", seed=s) for s in (1, 2)]
    write_series(echoes, tmp_path / "s", echo_times=[10.0, 60.0], multiframe=True)
    report = scan_folder(tmp_path / "s")
    plans = plan_volumes(report.series[0])
    assert [p.label for p in plans] == ["echo 10 ms", "echo 60 ms"]
    for plan, truth in zip(plans, echoes):
        volume = read_volume(plan)
        np.testing.assert_array_equal(volume.array, truth.array)
        np.testing.assert_allclose(volume.affine_lps, truth.affine_lps, atol=1e-4)


def test_shared_knee_series_is_eight_echo_volumes_matching_simpleitk(knee_dicom, sitk_series):
    report = scan_folder(knee_dicom)
    assert report.problems == [] and len(report.series) == 1
    plans = plan_volumes(report.series[0])
    assert len(plans) == 8
    echo_times = [p.frames[0].echo_time for p in plans]
    assert echo_times == sorted(echo_times) and len(set(echo_times)) == 8
    for plan in (plans[0], plans[-1]):
        assert plan.shape == (256, 256, 24)
        assert plan.plane.name == "sagittal" and 5 < plan.plane.obliquity_deg < 15  # oblique-sagittal protocol
        volume = read_volume(plan)
        np.testing.assert_allclose(volume.spacing, [0.625, 0.625, 4.0], atol=1e-3)
        ref_array, ref_affine = sitk_series([f.path for f in plan.frames])
        np.testing.assert_allclose(volume.affine_lps, ref_affine, atol=1e-4)
        np.testing.assert_array_equal(volume.array, ref_array)
    assert read_volume(plans[0]).array.mean() > read_volume(plans[-1]).array.mean()  # T2 decay across echoes
