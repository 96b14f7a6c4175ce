"""Slicer's DICOM database (CTK ``ctkDICOM.sql``, schema 0.8.1): read it, and index folders into it."""

from __future__ import annotations

import datetime
import os
import sqlite3
from pathlib import Path

from mskai import MskaiError
from mskai.dicom.scan import FileProblem, ScanReport, iter_files, read_header, scan_files

DATABASE_FILENAME = "ctkDICOM.sql"
SCHEMA_VERSION = "0.8.1"

# The tables and columns of CTK's Libs/DICOM/Core/Resources/dicom-schema.sql (0.8.1), which Slicer opens.
_SCHEMA = """
CREATE TABLE SchemaInfo (Version VARCHAR(1024) NOT NULL);
CREATE TABLE Images (
  SOPInstanceUID VARCHAR(64) NOT NULL, Filename VARCHAR(1024) NULL, URL VARCHAR(2048) NULL,
  SeriesInstanceUID VARCHAR(64) NOT NULL, InsertTimestamp VARCHAR(20) NOT NULL,
  DisplayedFieldsUpdatedTimestamp DATETIME NULL, PRIMARY KEY (SOPInstanceUID));
CREATE TABLE Patients (
  UID INTEGER PRIMARY KEY AUTOINCREMENT, PatientsName VARCHAR(255) NULL, PatientID VARCHAR(255) NULL,
  PatientsBirthDate DATE NULL, PatientsBirthTime TIME NULL, PatientsSex VARCHAR(1) NULL,
  PatientsAge VARCHAR(10) NULL, PatientsComments VARCHAR(255) NULL, InsertTimestamp VARCHAR(20) NOT NULL,
  DisplayedPatientsName VARCHAR(255) NULL, DisplayedNumberOfStudies INT NULL, DisplayedLastStudyDate DATE NULL,
  DisplayedFieldsUpdatedTimestamp DATETIME NULL, Connections VARCHAR(2048) NULL);
CREATE TABLE Studies (
  StudyInstanceUID VARCHAR(64) NOT NULL, PatientsUID INT NOT NULL, StudyID VARCHAR(255) NULL,
  StudyDate DATE NULL, StudyTime VARCHAR(20) NULL, StudyDescription VARCHAR(255) NULL,
  AccessionNumber VARCHAR(255) NULL, ModalitiesInStudy VARCHAR(255) NULL, InstitutionName VARCHAR(255) NULL,
  ReferringPhysician VARCHAR(255) NULL, PerformingPhysiciansName VARCHAR(255) NULL,
  InsertTimestamp VARCHAR(20) NOT NULL, DisplayedNumberOfSeries INT NULL,
  DisplayedFieldsUpdatedTimestamp DATETIME NULL, PRIMARY KEY (StudyInstanceUID));
CREATE TABLE Series (
  SeriesInstanceUID VARCHAR(64) NOT NULL, StudyInstanceUID VARCHAR(64) NOT NULL, SeriesNumber INT NULL,
  SeriesDate DATE NULL, SeriesTime VARCHAR(20) NULL, SeriesDescription VARCHAR(255) NULL,
  Modality VARCHAR(20) NULL, BodyPartExamined VARCHAR(255) NULL, FrameOfReferenceUID VARCHAR(64) NULL,
  AcquisitionNumber INT NULL, ContrastAgent VARCHAR(255) NULL, ScanningSequence VARCHAR(45) NULL,
  EchoNumber INT NULL, TemporalPosition INT NULL, InsertTimestamp VARCHAR(20) NOT NULL,
  DisplayedCount INT NULL, DisplayedSize VARCHAR(20) NULL, DisplayedNumberOfFrames INT NULL,
  DisplayedFieldsUpdatedTimestamp DATETIME NULL, PRIMARY KEY (SeriesInstanceUID));
CREATE INDEX ImagesFilenameIndex ON Images (Filename);
CREATE INDEX ImagesSeriesIndex ON Images (SeriesInstanceUID);
CREATE INDEX SeriesStudyIndex ON Series (StudyInstanceUID);
CREATE INDEX StudiesPatientIndex ON Studies (PatientsUID);
CREATE TABLE Directories (Dirname VARCHAR(1024), PRIMARY KEY (Dirname));
CREATE TABLE ColumnDisplayProperties (
  TableName VARCHAR(64) NOT NULL, FieldName VARCHAR(64) NOT NULL, DisplayedName VARCHAR(255) NULL,
  Visibility INT NULL DEFAULT 1, Weight INT NULL, Format VARCHAR(255) NULL, PRIMARY KEY (TableName, FieldName));
CREATE TABLE DisplayedFieldGeneratorRules (
  Name VARCHAR(64) NOT NULL, Enabled INT NULL DEFAULT 1, Options VARCHAR(255) NULL, PRIMARY KEY (Name));
"""


def database_file(path) -> Path:
    """The ctkDICOM.sql of a database folder, or the file itself (a path ending in .sql)."""
    path = Path(path)
    return path if path.suffix == ".sql" and not path.is_dir() else path / DATABASE_FILENAME


def is_database(path) -> bool:
    p = database_file(path)
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def _sqlite_error(path, exc) -> MskaiError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return MskaiError(f"The DICOM database {path} is locked by another program (is Slicer importing into it?). "
                          "Try again when it has finished.")
    return MskaiError(f"Cannot use the DICOM database {path}: {text}")


class DicomDatabase:
    """Read access to a Slicer/CTK DICOM database; never writes to it.

    path: the database folder (holding ctkDICOM.sql) or the .sql file itself.
    """

    def __init__(self, path, timeout_s: float = 2.0):
        self.file = database_file(path)
        if not is_database(self.file):
            raise MskaiError(f"{path} is not a Slicer DICOM database (no SQLite file {DATABASE_FILENAME})")
        self.folder = self.file.parent
        try:
            self.connection = sqlite3.connect(f"{self.file.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout_s)
            self.connection.row_factory = sqlite3.Row
            version = self._schema_version()
        except sqlite3.Error as exc:
            raise _sqlite_error(self.file, exc) from None
        if version != SCHEMA_VERSION:
            raise MskaiError(
                f"{self.file} has DICOM database schema {version or 'unknown'}; mskai reads schema {SCHEMA_VERSION}. "
                "Open it once in a matching 3D Slicer to update it, or re-index the files with `mskai dicom index`."
            )

    def _schema_version(self):
        try:
            row = self.connection.execute("SELECT Version FROM SchemaInfo").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return row[0] if row else None

    def _query(self, sql, args=()):
        try:
            return [dict(r) for r in self.connection.execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            raise _sqlite_error(self.file, exc) from None

    def close(self):
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def patients(self) -> list[dict]:
        return self._query("SELECT * FROM Patients ORDER BY UID")

    def studies(self, patient_uid) -> list[dict]:
        return self._query("SELECT * FROM Studies WHERE PatientsUID = ? ORDER BY StudyDate, StudyInstanceUID",
                           (patient_uid,))

    def series(self, study_uid) -> list[dict]:
        return self._query("SELECT * FROM Series WHERE StudyInstanceUID = ? ORDER BY SeriesNumber, SeriesInstanceUID",
                           (study_uid,))

    def all_series(self) -> list[dict]:
        return self._query(
            "SELECT Series.*, Studies.PatientsUID FROM Series JOIN Studies USING (StudyInstanceUID) "
            "ORDER BY Studies.PatientsUID, Studies.StudyDate, Series.SeriesNumber, Series.SeriesInstanceUID"
        )

    def files(self, series_uid) -> list[str]:
        """Absolute paths of a series' files (CTK stores paths inside the database folder relative to it)."""
        rows = self._query("SELECT Filename FROM Images WHERE SeriesInstanceUID = ? ORDER BY Filename", (series_uid,))
        return [str(self.folder / r["Filename"]) if not os.path.isabs(r["Filename"]) else r["Filename"]
                for r in rows if r["Filename"]]

    def scan(self, series_uids=None) -> ScanReport:
        """Read the headers of the files of the given series (all series by default).

        Files listed in the database but missing on disk are reported as problems.
        """
        uids = series_uids or [s["SeriesInstanceUID"] for s in self.all_series()]
        report = ScanReport()
        for uid in uids:
            paths = self.files(uid)
            if not paths:
                raise MskaiError(f"Series {uid} is not in the database {self.file}")
            scan_files(paths, report)
        return report


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def create_database(path) -> Path:
    """Create an empty CTK DICOM database; an existing file is left untouched and must match the schema."""
    file = database_file(path)
    if file.exists():
        DicomDatabase(file).close()  # raises on foreign schema
        return file
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".part")
    con = sqlite3.connect(tmp)
    try:
        con.executescript(_SCHEMA)
        con.execute("INSERT INTO SchemaInfo VALUES (?)", (SCHEMA_VERSION,))
        con.commit()
    finally:
        con.close()
    os.replace(tmp, file)
    return file


def _text(ds, keyword):
    value = ds.get(keyword)
    return None if value in (None, "") else str(value)


def index_folder(folder, database, timeout_s: float = 2.0) -> ScanReport:
    """Add the DICOM files of a folder tree to a Slicer DICOM database (created if missing), in place.

    Like Slicer's "Import" without copying: files stay where they are and are referenced by path
    (relative when inside the database folder). Returns a report naming the files that were skipped.
    """
    file = create_database(database)
    report = ScanReport()
    rows = []
    for path in iter_files(folder):
        try:
            ds = read_header(path)
            missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID") if k not in ds]
            if missing:
                raise MskaiError(f"no {' or '.join(missing)}")
        except MskaiError as exc:
            report.problems.append(FileProblem(path, str(exc)))
            continue
        rows.append((path, ds))
    try:
        con = sqlite3.connect(file, timeout=timeout_s)
        with con:
            con.execute("BEGIN IMMEDIATE")
            for path, ds in rows:
                _insert(con, file.parent, path, ds)
        con.close()
    except sqlite3.Error as exc:
        raise _sqlite_error(file, exc) from None
    return report


def _insert(con, db_folder: Path, path: str, ds):
    now = _now()
    name, pid = _text(ds, "PatientName") or "", _text(ds, "PatientID") or ""
    row = con.execute("SELECT UID FROM Patients WHERE PatientsName = ? AND PatientID = ?", (name, pid)).fetchone()
    if row:
        patient_uid = row[0]
    else:
        patient_uid = con.execute(
            "INSERT INTO Patients (PatientsName, PatientID, PatientsBirthDate, PatientsBirthTime, PatientsSex, "
            "PatientsAge, PatientsComments, InsertTimestamp) VALUES (?,?,?,?,?,?,?,?)",
            (name, pid, _text(ds, "PatientBirthDate"), _text(ds, "PatientBirthTime"), _text(ds, "PatientSex"),
             _text(ds, "PatientAge"), _text(ds, "PatientComments"), now),
        ).lastrowid
    con.execute(
        "INSERT OR IGNORE INTO Studies (StudyInstanceUID, PatientsUID, StudyID, StudyDate, StudyTime, StudyDescription, "
        "AccessionNumber, ModalitiesInStudy, InstitutionName, ReferringPhysician, PerformingPhysiciansName, "
        "InsertTimestamp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (str(ds.StudyInstanceUID), patient_uid, _text(ds, "StudyID"), _text(ds, "StudyDate"), _text(ds, "StudyTime"),
         _text(ds, "StudyDescription"), _text(ds, "AccessionNumber"), _text(ds, "Modality"),
         _text(ds, "InstitutionName"), _text(ds, "ReferringPhysicianName"), _text(ds, "PerformingPhysicianName"), now),
    )
    con.execute(
        "INSERT OR IGNORE INTO Series (SeriesInstanceUID, StudyInstanceUID, SeriesNumber, SeriesDate, SeriesTime, "
        "SeriesDescription, Modality, BodyPartExamined, FrameOfReferenceUID, AcquisitionNumber, ContrastAgent, "
        "ScanningSequence, EchoNumber, TemporalPosition, InsertTimestamp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), _text(ds, "SeriesNumber"), _text(ds, "SeriesDate"),
         _text(ds, "SeriesTime"), _text(ds, "SeriesDescription"), _text(ds, "Modality"), _text(ds, "BodyPartExamined"),
         _text(ds, "FrameOfReferenceUID"), _text(ds, "AcquisitionNumber"), _text(ds, "ContrastBolusAgent"),
         _text(ds, "ScanningSequence"), _text(ds, "EchoNumbers"), _text(ds, "TemporalPositionIdentifier"), now),
    )
    abs_path = Path(path).resolve()
    try:
        stored = abs_path.relative_to(db_folder.resolve()).as_posix()
    except ValueError:
        stored = str(abs_path)
    con.execute(
        "INSERT OR REPLACE INTO Images (SOPInstanceUID, Filename, SeriesInstanceUID, InsertTimestamp) VALUES (?,?,?,?)",
        (str(ds.SOPInstanceUID), stored, str(ds.SeriesInstanceUID), now),
    )
    con.execute("INSERT OR IGNORE INTO Directories (Dirname) VALUES (?)", (str(abs_path.parent),))
