"""Slicer/CTK DICOM database: index folders into a real ctkDICOM.sql and read series back from it."""

import sqlite3

import numpy as np

from mskai.dicom import DicomDatabase, index_folder, load_series, scan_folder, scan_source
from mskai.dicom.database import SCHEMA_VERSION
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom
from pydicom.uid import generate_uid

CTK_TABLES = {"SchemaInfo", "Images", "Patients", "Studies", "Series", "Directories", "ColumnDisplayProperties",
              "DisplayedFieldGeneratorRules"}


def _two_patients(root):
    study_a = generate_uid()
    write_series(phantom(plane="sagittal"), root / "a1", patient=("DOE^JANE", "ID-A"), study_uid=study_a,
                 series_number=3, description="SAG PD")
    write_series(phantom(plane="coronal"), root / "a2", patient=("DOE^JANE", "ID-A"), study_uid=study_a,
                 series_number=4, description="COR T1")
    write_series(phantom(plane="axial"), root / "b1", patient=("ROE^RICHARD", "ID-B"), series_number=1,
                 description="AX T2")


def test_index_creates_the_ctk_schema_and_rows(tmp_path):
    _two_patients(tmp_path / "in")
    index_folder(tmp_path / "in", tmp_path / "db")
    con = sqlite3.connect(tmp_path / "db" / "ctkDICOM.sql")
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert CTK_TABLES <= tables
    assert con.execute("SELECT Version FROM SchemaInfo").fetchall() == [(SCHEMA_VERSION,)]
    assert con.execute("SELECT COUNT(*) FROM Patients").fetchone()[0] == 2
    assert con.execute("SELECT COUNT(*) FROM Studies").fetchone()[0] == 2
    assert con.execute("SELECT COUNT(*) FROM Series").fetchone()[0] == 3
    assert con.execute("SELECT COUNT(*) FROM Images").fetchone()[0] == 36
    con.close()


def test_database_navigation_patients_studies_series_files(tmp_path):
    _two_patients(tmp_path / "in")
    index_folder(tmp_path / "in", tmp_path / "db")
    index_folder(tmp_path / "in", tmp_path / "db")  # re-indexing adds nothing twice
    with DicomDatabase(tmp_path / "db" / "ctkDICOM.sql") as db:
        patients = db.patients()
        assert sorted(p["PatientID"] for p in patients) == ["ID-A", "ID-B"]
        jane = next(p for p in patients if p["PatientID"] == "ID-A")
        (study,) = db.studies(jane["UID"])
        series = db.series(study["StudyInstanceUID"])
        assert [(s["SeriesNumber"], s["SeriesDescription"]) for s in series] == [(3, "SAG PD"), (4, "COR T1")]
        files = db.files(series[0]["SeriesInstanceUID"])
        assert len(files) == 12 and all((tmp_path / "in" / "a1").as_posix() in f for f in files)


def test_series_from_the_database_equal_series_from_the_folder(tmp_path):
    _two_patients(tmp_path / "in")
    index_folder(tmp_path / "in", tmp_path / "db")
    from_db = scan_source(tmp_path / "db")
    from_folder = scan_folder(tmp_path / "in")
    assert [s.uid for s in from_db.series] == [s.uid for s in from_folder.series]
    for a, b in zip(from_db.series, from_folder.series):
        va, vb = load_series(a)[0], load_series(b)[0]
        np.testing.assert_array_equal(va.array, vb.array)
        np.testing.assert_allclose(va.affine_lps, vb.affine_lps)


def test_files_inside_the_database_folder_are_stored_relative(tmp_path):
    """Slicer copies imported files into <database>/dicom and stores their paths relative to the database."""
    truth = phantom()
    write_series(truth, tmp_path / "db" / "dicom" / "x")
    index_folder(tmp_path / "db" / "dicom", tmp_path / "db")
    con = sqlite3.connect(tmp_path / "db" / "ctkDICOM.sql")
    names = [r[0] for r in con.execute("SELECT Filename FROM Images")]
    con.close()
    assert names and all(n.startswith("dicom/x/") for n in names)
    moved = tmp_path / "moved"
    (tmp_path / "db").rename(moved)  # a database folder moved as a whole still works
    (series,) = scan_source(moved).series
    np.testing.assert_array_equal(load_series(series)[0].array, truth.array)


def test_missing_files_listed_in_the_database_are_reported(tmp_path):
    paths = write_series(phantom(), tmp_path / "in")
    index_folder(tmp_path / "in", tmp_path / "db")
    paths[0].unlink()
    report = scan_source(tmp_path / "db")
    assert [p.path for p in report.problems] == [str(paths[0].resolve())]
    assert report.problems[0].message == "file is missing"
    assert len(report.series[0].files) == len(paths) - 1
