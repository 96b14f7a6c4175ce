"""Data integrity: no mixed patients in one volume, every pixel-format and geometry field checked per file."""

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import run_mskai
from mskai import MskaiError
from mskai.dicom import DicomDatabase, index_folder, load_series, plan_volumes, read_volume, scan_folder, scan_source
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom


def _edit(path, **values):
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.mark.parametrize("keyword,value,what", [
    ("PatientID", "OTHER-PATIENT", "2 patients"),
    ("StudyInstanceUID", generate_uid(), "2 studies"),
    ("FrameOfReferenceUID", generate_uid(), "2 frames of reference"),
    ("Modality", "CT", "2 modalities"),
])
def test_a_series_uid_shared_by_other_patients_studies_frames_or_modalities_is_refused(tmp_path, keyword, value,
                                                                                       what):
    paths = write_series(phantom(), tmp_path / "in")
    for p in paths[:3]:  # a few files of someone else carry the same Series Instance UID
        _edit(p, **{keyword: value})
    (series,) = scan_folder(tmp_path / "in").series
    assert what in series.problem
    with pytest.raises(MskaiError, match="refusing to combine"):
        load_series(series)
    result = run_mskai("dicom", "convert", tmp_path / "in", tmp_path / "out.nrrd", ok=False)
    assert result.returncode == 1 and result.stderr.startswith("mskai: error: ") and "refusing" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.nrrd").exists()
    listing = run_mskai("dicom", "ls", tmp_path / "in").stdout
    assert "refusing to combine" in listing


def test_index_never_attaches_a_series_to_another_patients_study(tmp_path):
    study = generate_uid()
    good = write_series(phantom(), tmp_path / "in" / "good", patient=("A^A", "ID-A"), study_uid=study)
    mixed = write_series(phantom(plane="axial"), tmp_path / "in" / "mixed", patient=("A^A", "ID-A"))
    _edit(mixed[0], PatientID="ID-B", PatientName="B^B")
    report = index_folder(tmp_path / "in", tmp_path / "db")
    refused = {os.path.basename(p.path) for p in report.problems}
    assert refused == {p.name for p in mixed}
    assert all("not indexed" in p.message for p in report.problems)
    # a later folder reusing the indexed series' UIDs for another patient is refused too
    intruder = write_series(phantom(), tmp_path / "later", patient=("C^C", "ID-C"), study_uid=study,
                            series_uid=str(pydicom.dcmread(good[0]).SeriesInstanceUID), first_instance=50)
    report = index_folder(tmp_path / "later", tmp_path / "db")
    assert len(report.problems) == len(intruder) and "another patient" in report.problems[0].message
    other_series_same_study = write_series(phantom(), tmp_path / "later2", patient=("C^C", "ID-C"), study_uid=study)
    report = index_folder(tmp_path / "later2", tmp_path / "db")
    assert len(report.problems) == len(other_series_same_study) and "several patients" in report.problems[0].message
    with DicomDatabase(tmp_path / "db") as db:
        assert [p["PatientID"] for p in db.patients()] == ["ID-A"]
        assert len(db.all_series()) == 1 and len(db.files(db.all_series()[0]["SeriesInstanceUID"])) == len(good)


def _short_pixel_data_followed_by_an_element(path):
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.add_new(0xFFFCFFFC, "OB", b"\x7f" * 4096)  # Data Set Trailing Padding right after the pixels
    ds.save_as(path)


@pytest.mark.parametrize("damage,message", [
    (_short_pixel_data_followed_by_an_element, "pixel data is .* bytes"),
    (lambda p: _edit(p, PixelSpacing=[-0.5, 0.5]), "PixelSpacing"),
    (lambda p: _edit(p, PixelSpacing=[0, 0.5]), "PixelSpacing"),
    (lambda p: _edit(p, PixelSpacing=[1000, 1000]), "PixelSpacing"),
    (lambda p: _edit(p, PixelSpacing=["nan", "0.5"]), "PixelSpacing"),
    (lambda p: _edit(p, PixelSpacing=["inf", "0.5"]), "PixelSpacing"),
    (lambda p: _edit(p, PixelSpacing=[0.5]), "PixelSpacing"),
    (lambda p: _edit(p, ImagePositionPatient=[1e30, 0, 0]), "ImagePositionPatient"),
    (lambda p: _edit(p, ImageOrientationPatient=[1, 0, 0, 0, 1, "nan"]), "ImageOrientationPatient"),
    (lambda p: _edit(p, Rows=0), "Rows"),
    (lambda p: _edit(p, Columns=0), "Columns"),
    (lambda p: _edit(p, BitsAllocated=12), "Bits Allocated"),
    (lambda p: _edit(p, BitsStored=17), "BitsStored"),
    (lambda p: _edit(p, PixelRepresentation=2), "PixelRepresentation"),
    (lambda p: _edit(p, SamplesPerPixel=3), "grayscale"),
    (lambda p: _edit(p, RescaleSlope="nan"), "RescaleSlope"),
    (lambda p: _edit(p, RescaleSlope=0), "Rescale Slope is 0"),
    (lambda p: _edit(p, NumberOfFrames=1000000), "NumberOfFrames"),
])
def test_every_pixel_format_and_geometry_field_is_checked_before_reading(tmp_path, damage, message):
    truth = phantom(plane="axial", shape=(20, 20, 6))
    paths = write_series(truth, tmp_path)
    damage(paths[2])
    report = scan_folder(tmp_path)
    assert [os.path.basename(p.path) for p in report.problems] == [paths[2].name]
    assert report.problems[0].message and __import__("re").search(message, report.problems[0].message)
    (plan,) = plan_volumes(report.series[0])  # the damaged slice is missing, not read wrongly
    with pytest.raises(MskaiError, match="not equally spaced"):
        read_volume(plan)


def test_unsigned_and_signed_files_in_one_series_keep_every_value(tmp_path):
    values = np.zeros((16, 16, 4))
    values[:, :, :2] = np.linspace(-1000, 1000, values[:, :, :2].size).reshape(values[:, :, :2].shape)
    values[:, :, 2:] = np.linspace(30000, 60000, values[:, :, 2:].size).reshape(values[:, :, 2:].shape)
    truth = phantom(plane="axial", shape=(16, 16, 4))
    truth.array = np.rint(values)
    paths = write_series(truth, tmp_path)  # written as int16: the upper half does not fit
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        stored = np.rint(truth.array[:, :, k].T)
        dtype = np.int16 if k < 2 else np.uint16
        ds.PixelRepresentation = 1 if k < 2 else 0
        ds.PixelData = stored.astype(dtype).tobytes()
        ds.save_as(p)
    volume = load_series(scan_folder(tmp_path).series[0])[0]
    assert volume.array.dtype == np.int32
    np.testing.assert_array_equal(volume.array, truth.array)


def test_a_header_declaring_a_huge_compressed_image_is_refused_before_allocation(tmp_path):
    paths = write_series(phantom(plane="axial", shape=(16, 16, 4)), tmp_path, transfer_syntax="rle")
    for p in paths:
        _edit(p, Rows=65535, Columns=65535)
    with pytest.raises(MskaiError, match="GiB"):
        load_series(scan_folder(tmp_path).series[0])


def test_a_database_series_row_without_images_is_reported_and_the_rest_still_works(tmp_path):
    truth = phantom()
    write_series(truth, tmp_path / "dicom")
    index_folder(tmp_path / "dicom", tmp_path / "db")
    con = sqlite3.connect(tmp_path / "db" / "ctkDICOM.sql")
    study = con.execute("SELECT StudyInstanceUID FROM Studies").fetchone()[0]
    con.execute("INSERT INTO Series (SeriesInstanceUID, StudyInstanceUID, SeriesNumber, InsertTimestamp) "
                "VALUES ('1.2.3.4', ?, 0, 'now')", (study,))
    con.commit()
    con.close()
    report = scan_source(tmp_path / "db")
    assert len(report.series) == 1 and "lists no images" in report.problems[0].message
    np.testing.assert_array_equal(load_series(report.series[0])[0].array, truth.array)
    listing = run_mskai("dicom", "ls", tmp_path / "db")
    assert "lists no images" in listing.stderr
    run_mskai("dicom", "convert", tmp_path / "db", tmp_path / "out.nrrd", "--series", "1")
    assert (tmp_path / "out.nrrd").is_file()


def test_concurrent_index_runs_into_one_new_database_lose_nothing(tmp_path):
    folders = []
    for n in range(4):
        write_series(phantom(plane="axial", shape=(16, 16, 5), seed=n), tmp_path / f"in{n}",
                     patient=(f"P^{n}", f"ID-{n}"))
        folders.append(tmp_path / f"in{n}")
    mskai = os.path.join(os.path.dirname(sys.executable), "mskai")
    runs = [subprocess.Popen([mskai, "dicom", "index", str(f), str(tmp_path / "db")], stderr=subprocess.PIPE,
                             text=True) for f in folders]
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, errors
    with DicomDatabase(tmp_path / "db") as db:
        assert len(db.patients()) == 4 and len(db.all_series()) == 4
    assert not [p for p in (tmp_path / "db").iterdir() if p.name != "ctkDICOM.sql"]


def test_a_damaged_header_value_is_that_files_problem_in_scan_and_index(tmp_path):
    truth = phantom(plane="axial", shape=(16, 16, 5))
    paths = write_series(truth, tmp_path / "in")
    data = paths[0].read_bytes()
    assert b"\x10\x00\x10\x00PN" in data  # Patient Name, explicit VR little endian
    paths[0].write_bytes(data.replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x10\x00BN"))  # an unknown VR
    report = scan_folder(tmp_path / "in")
    assert [os.path.basename(p.path) for p in report.problems] == [paths[0].name]
    report = index_folder(tmp_path / "in", tmp_path / "db")
    assert [os.path.basename(p.path) for p in report.problems] == [paths[0].name]
    with DicomDatabase(tmp_path / "db") as db:
        assert len(db.files(db.all_series()[0]["SeriesInstanceUID"])) == len(paths) - 1
