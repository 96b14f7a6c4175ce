"""Splitting series into volumes, and every kind of bad input: clear errors, good data kept."""

import os
import sqlite3

import numpy as np
import pydicom
import pytest

from mskai import MskaiError
from mskai.dicom import DicomDatabase, index_folder, load_series, plan_volumes, read_volume, scan_folder
from mskai.synth.dicom_writer import write_non_image, write_series
from mskai.synth.phantom import phantom
from pydicom.uid import generate_uid


def _plans(folder):
    report = scan_folder(folder)
    assert len(report.series) == 1, report.series
    return plan_volumes(report.series[0])


def test_multi_echo_splits_by_echo_time(tmp_path):
    echoes = [phantom(seed=s) for s in range(3)]
    write_series(echoes, tmp_path, echo_times=[8.0, 16.0, 32.0])
    plans = _plans(tmp_path)
    assert [p.label for p in plans] == ["echo 8 ms", "echo 16 ms", "echo 32 ms"]
    for plan, truth in zip(plans, echoes):
        np.testing.assert_array_equal(read_volume(plan).array, truth.array)


def test_repeated_acquisitions_split_by_acquisition_number(tmp_path):
    runs = [phantom(seed=s) for s in (5, 6)]
    write_series(runs, tmp_path, acquisition_numbers=[1, 2])
    plans = _plans(tmp_path)
    assert [p.label for p in plans] == ["acquisition 1", "acquisition 2"]
    np.testing.assert_array_equal(read_volume(plans[1]).array, runs[1].array)


def test_acquisition_number_per_slice_does_not_split(tmp_path):
    """Some scanners number every 2D slice as its own acquisition: positions do not repeat, so one volume."""
    paths = write_series(phantom(), tmp_path)
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.AcquisitionNumber = n + 1
        ds.save_as(p)
    assert len(_plans(tmp_path)) == 1


def test_orientations_and_sizes_in_one_series_become_separate_volumes(tmp_path):
    uid, study = generate_uid(), generate_uid()
    sag = phantom(plane="sagittal")
    ax = phantom(plane="axial", shape=(30, 30, 5))
    write_series(sag, tmp_path, series_uid=uid, study_uid=study)
    write_series(ax, tmp_path, series_uid=uid, study_uid=study, first_instance=100)
    plans = _plans(tmp_path)
    labels = sorted(p.label for p in plans)
    assert labels == ["axial", "sagittal"]
    by_plane = {p.plane.name: read_volume(p) for p in plans}
    np.testing.assert_array_equal(by_plane["axial"].array, ax.array)
    np.testing.assert_array_equal(by_plane["sagittal"].array, sag.array)


def test_missing_slice_is_refused_or_resampled(tmp_path):
    truth = phantom(plane="axial", shape=(20, 20, 10), spacing=(1, 1, 2))
    paths = write_series(truth, tmp_path)
    os.remove(paths[4])
    (plan,) = _plans(tmp_path)
    assert plan.uneven_gaps and "not equally spaced" in plan.uneven_gaps
    with pytest.raises(MskaiError, match="not equally spaced"):
        read_volume(plan)
    volume = read_volume(plan, resample=True)
    assert volume.shape == (20, 20, 10)
    np.testing.assert_allclose(volume.spacing, [1, 1, 2], atol=1e-6)
    np.testing.assert_allclose(volume.array[:, :, 3], truth.array[:, :, 3])  # measured slices kept
    np.testing.assert_allclose(volume.array[:, :, 4], (truth.array[:, :, 3] + truth.array[:, :, 5]) / 2.0, atol=1e-3)
    assert volume.meta["resampled"]


def test_duplicate_positions_that_cannot_be_split_are_refused(tmp_path):
    paths = write_series(phantom(), tmp_path)
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = pydicom.dcmread(paths[3]).ImagePositionPatient
    ds.save_as(paths[2])
    (plan,) = _plans(tmp_path)
    with pytest.raises(MskaiError, match="duplicate slice position"):
        read_volume(plan)


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry_is_refused(tmp_path, keyword):
    paths = write_series(phantom(), tmp_path)
    ds = pydicom.dcmread(paths[0])
    delattr(ds, keyword)
    ds.save_as(paths[0])
    plans = _plans(tmp_path)
    with pytest.raises(MskaiError, match="missing geometry"):
        [read_volume(p) for p in plans]


def test_sheared_stack_is_refused(tmp_path):
    truth = phantom(plane="axial")
    paths = write_series(truth, tmp_path)
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 0.5 * k, y, z]  # each slice slides sideways
        ds.save_as(p)
    (plan,) = _plans(tmp_path)
    with pytest.raises(MskaiError, match="shifted in-plane"):
        read_volume(plan)


@pytest.mark.parametrize("kind", ["SR", "PR", "RTSTRUCT"])
def test_non_image_objects_are_listed_and_refused_clearly(tmp_path, kind):
    write_series(phantom(), tmp_path / "img")
    write_non_image(tmp_path, kind)
    report = scan_folder(tmp_path)
    assert report.problems == []
    images = [s for s in report.series if s.is_image]
    others = [s for s in report.series if not s.is_image]
    assert len(images) == 1 and len(others) == 1
    with pytest.raises(MskaiError, match="not images"):
        plan_volumes(others[0])
    assert len(load_series(images[0])) == 1


def test_broken_files_are_reported_and_good_series_still_load(tmp_path):
    truth = phantom()
    paths = write_series(truth, tmp_path / "good")
    other = write_series(phantom(plane="axial"), tmp_path / "bad")
    (tmp_path / "notes.txt").write_text("not dicom")
    truncated = other[0]
    truncated.write_bytes(truncated.read_bytes()[:1500])
    report = scan_folder(tmp_path)
    messages = {os.path.basename(p.path): p.message for p in report.problems}
    assert "not a DICOM file" in messages["notes.txt"]
    assert "truncated" in messages[truncated.name]
    good = [s for s in report.series if s.files[0].startswith(str(tmp_path / "good"))]
    np.testing.assert_array_equal(load_series(good[0])[0].array, truth.array)
    assert len(paths) == len(good[0].files)


def test_pixel_data_shorter_than_header_says_is_an_error_naming_the_file(tmp_path):
    paths = write_series(phantom(), tmp_path)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-100])
    report = scan_folder(tmp_path)
    assert [os.path.basename(p.path) for p in report.problems] == [paths[1].name]


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(MskaiError, match="No DICOM series found"):
        scan_folder(tmp_path).require_series(str(tmp_path))
    with pytest.raises(MskaiError, match="does not exist"):
        scan_folder(tmp_path / "missing")


def test_locked_database_is_a_clear_error(tmp_path):
    write_series(phantom(), tmp_path / "dicom")
    index_folder(tmp_path / "dicom", tmp_path / "db")
    locker = sqlite3.connect(tmp_path / "db" / "ctkDICOM.sql")
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(MskaiError, match="locked"):
            DicomDatabase(tmp_path / "db", timeout_s=0.2)
        with pytest.raises(MskaiError, match="locked"):
            index_folder(tmp_path / "dicom", tmp_path / "db", timeout_s=0.2)
    finally:
        locker.rollback()
        locker.close()
    assert DicomDatabase(tmp_path / "db").patients()


def test_database_of_another_schema_version_is_refused(tmp_path):
    write_series(phantom(), tmp_path / "dicom")
    index_folder(tmp_path / "dicom", tmp_path / "db")
    con = sqlite3.connect(tmp_path / "db" / "ctkDICOM.sql")
    con.execute("UPDATE SchemaInfo SET Version = '0.6.3'")
    con.commit()
    con.close()
    with pytest.raises(MskaiError, match="schema 0.6.3"):
        DicomDatabase(tmp_path / "db")
    with pytest.raises(MskaiError, match="schema 0.6.3"):
        index_folder(tmp_path / "dicom", tmp_path / "db")


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    (tmp_path / "ctkDICOM.sql").write_text("hello")
    with pytest.raises(MskaiError, match="not a Slicer DICOM database"):
        DicomDatabase(tmp_path)
