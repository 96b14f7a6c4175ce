"""Slicer's DICOM database (CTK ``ctkDICOM.sql``, schema 0.8.1): read it, and index folders into it."""

from __future__ import annotations

import datetime
import os
import sqlite3
import tempfile
from collections import defaultdict
from pathlib import Path

from mskai import MskaiError
from mskai.dicom.scan import (FileProblem, ScanReport, Series, group_by, identity, iter_files, mixed_identity,
                              read_header, scan_files)

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
        return self.checked_files(series_uid)[0]

    def checked_files(self, series_uid) -> tuple[list[str], list[FileProblem]]:
        """(paths, problems) of a series' image rows: a relative file name that leads out of the database folder
        (``../../etc/passwd``) is a problem, not a path; absolute paths (files linked, not copied, into the
        database) are kept as Slicer keeps them."""
        rows = self._query("SELECT Filename FROM Images WHERE SeriesInstanceUID = ? ORDER BY Filename", (series_uid,))
        inside = os.path.realpath(self.folder)
        paths, problems = [], []
        for name in (r["Filename"] for r in rows if r["Filename"]):
            if os.path.isabs(name):
                paths.append(name)
                continue
            path = str(self.folder / name)
            if os.path.commonpath([inside, os.path.realpath(path)]) != inside:
                problems.append(FileProblem(path, "its relative file name leads out of the database folder; not read"))
            else:
                paths.append(path)
        return paths, problems

    def files_for_instances(self, sop_instance_uids) -> list[str]:
        """Absolute paths of the files holding the given SOP Instance UIDs; MskaiError naming how many are missing."""
        uids = list(dict.fromkeys(sop_instance_uids))
        paths = []
        for start in range(0, len(uids), 500):  # SQLite caps the number of query parameters
            chunk = uids[start:start + 500]
            rows = self._query(f"SELECT Filename FROM Images WHERE SOPInstanceUID IN ({','.join('?' * len(chunk))})",
                               chunk)
            paths += [r["Filename"] if os.path.isabs(r["Filename"]) else str(self.folder / r["Filename"])
                      for r in rows if r["Filename"]]
        if len(paths) != len(uids):
            raise MskaiError(f"{len(uids) - len(paths)} of {len(uids)} images are not in the DICOM database {self.file}")
        return paths

    def scan(self, series_uids=None) -> ScanReport:
        """Read the headers of the files of the given series (all series by default).

        Series rows without images, and files that cannot be used (missing, not regular files, unreadable,
        outside the database folder), are reported as problems; a series is read from the files that can be (a
        missing slice shows as a gap). A series none of whose files can be used is kept in the report as unusable
        (``Series.unreadable`` says why), so that a batch records it as failed instead of dropping it.
        """
        rows = {s["SeriesInstanceUID"]: s for s in self.all_series()}
        uids = series_uids or list(rows)
        report = ScanReport()
        for n, uid in enumerate(uids, 1):
            paths, problems = self.checked_files(uid)
            if not paths and not problems:
                if series_uids:
                    raise MskaiError(f"Series {uid} has no images in the database {self.file}")
                report.problems.append(FileProblem(f"{self.file} (series row {n})", "lists no images; skipped"))
                continue
            listed, before = len(paths) + len(problems), len(report.problems)
            scan_files(paths, report)
            problems += report.problems[before:]
            report.problems[before:] = problems
            if problems and not any(s.uid == uid for s in report.series):
                self._mark_unreadable(report, uid, rows.get(uid, {}), problems, listed)
        report.series.sort(key=lambda s: (s.patient_id, s.study_date, s.study_uid, s.number or 0, s.uid))
        return report

    def _mark_unreadable(self, report: ScanReport, uid: str, row: dict, problems: list, listed: int):
        """No file of the series could be read: the database row says what the series was."""
        patient = next((p for p in self.patients() if p["UID"] == row.get("PatientsUID")), {})
        first = problems[0]
        report.series.append(Series(
            uid=uid, modality=row.get("Modality") or "", description=row.get("SeriesDescription") or "",
            number=row.get("SeriesNumber"), study_uid=row.get("StudyInstanceUID") or "",
            patient_name=patient.get("PatientsName") or "", patient_id=patient.get("PatientID") or "",
            unreadable=f"none of the {listed} files the database lists for it can be used (the first: "
                       f"{first.message}; `mskai dicom ls` names the files)"))


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def create_database(path) -> Path:
    """Create an empty CTK DICOM database; an existing file is left untouched and must match the schema.

    Safe when several processes create the same database at once: each builds its own temporary file and
    links it into place only if no database is there yet (a hard link never replaces a file).
    """
    file = database_file(path)
    if not file.exists():
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".part", dir=file.parent)
            os.close(fd)
        except OSError as exc:
            raise MskaiError(f"Cannot create the DICOM database {file}: {exc.strerror}") from None
        try:
            con = sqlite3.connect(tmp)
            try:
                con.executescript(_SCHEMA)
                con.execute("INSERT INTO SchemaInfo VALUES (?)", (SCHEMA_VERSION,))
                con.commit()
            finally:
                con.close()
            os.link(tmp, file)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except (OSError, sqlite3.Error) as exc:
            raise MskaiError(f"Cannot create the DICOM database {file}: {exc}") from None
        finally:
            os.remove(tmp)
    DicomDatabase(file).close()  # raises on a foreign schema
    return file


# The header values an index row is made of: all read while the file is checked, so a damaged value
# makes that file a reported problem instead of stopping the run half-way.
_INDEXED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientName", "PatientID",
            "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge", "PatientComments", "StudyID",
            "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "Modality", "InstitutionName",
            "ReferringPhysicianName", "PerformingPhysicianName", "SeriesNumber", "SeriesDate", "SeriesTime",
            "SeriesDescription", "BodyPartExamined", "FrameOfReferenceUID", "AcquisitionNumber",
            "ContrastBolusAgent", "ScanningSequence", "EchoNumbers", "TemporalPositionIdentifier")


def _texts(ds) -> dict:
    """The _INDEXED values of a header as text (None when absent or empty)."""
    texts = {}
    for keyword in _INDEXED:
        value = ds.get(keyword)
        texts[keyword] = None if value in (None, "") else str(value)
    return texts


def _refuse_mixed(rows, con, report: ScanReport) -> list:
    """The rows that can be indexed without attaching files to another patient's series or study.

    Left out (and reported), all files of: a series whose files disagree on patient, study, frame of
    reference or modality; a series already in the database under another patient or study; a series whose
    study holds other patients' files, here or in the database.
    """
    in_db = {uid: ((pid or "", name or ""), study) for uid, pid, name, study in con.execute(
        "SELECT SeriesInstanceUID, PatientID, PatientsName, StudyInstanceUID FROM Series "
        "JOIN Studies USING (StudyInstanceUID) JOIN Patients ON Patients.UID = Studies.PatientsUID")}
    study_patients = defaultdict(set)
    for study, pid, name in con.execute(
            "SELECT StudyInstanceUID, PatientID, PatientsName FROM Studies JOIN Patients ON Patients.UID = PatientsUID"):
        study_patients[study].add((pid or "", name or ""))
    for _, _, (patient, (study,), *_) in rows:
        study_patients[study].add(patient)
    kept = []
    for uid, items in group_by(rows, lambda r: r[1]["SeriesInstanceUID"]).items():
        identities = {file_identity for _, _, file_identity in items}
        patient, (study,), *_ = next(iter(identities))
        problem = mixed_identity(identities)
        if not problem and uid in in_db and in_db[uid] != (patient, study):
            problem = "its UID is already in the database for another patient or study"
        if not problem and len(study_patients[study]) > 1:
            problem = "its Study Instance UID is shared by several patients"
        if problem:
            report.problems.extend(FileProblem(path, f"not indexed: series {problem}") for path, *_ in items)
        else:
            kept.extend(items)
    return kept


def index_folder(folder, database, timeout_s: float = 30.0) -> ScanReport:
    """Add the DICOM files of a folder tree to a Slicer DICOM database (created if missing), in place.

    Like Slicer's "Import" without copying: files stay where they are and are referenced by path
    (relative when inside the database folder). Returns a report naming the files that were skipped,
    among them every file of a series that mixes patients, studies, frames of reference or modalities.
    timeout_s: how long to wait for another writer (Slicer, a second index run) to finish.
    """
    file = create_database(database)
    report = ScanReport()
    rows = []
    for path in iter_files(folder):
        try:
            ds = read_header(path)
            texts, file_identity = _texts(ds), identity(ds)
            missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID") if not texts[k]]
            if missing:
                raise MskaiError(f"no {' or '.join(missing)}")
        except MskaiError as exc:
            report.problems.append(FileProblem(path, str(exc)))
            continue
        except Exception as exc:  # a damaged value in the header
            report.problems.append(FileProblem(path, f"unreadable header ({exc.__class__.__name__})"))
            continue
        rows.append((path, texts, file_identity))
    try:
        con = sqlite3.connect(file, timeout=timeout_s)
        with con:
            con.execute("BEGIN IMMEDIATE")
            for path, texts, _ in _refuse_mixed(rows, con, report):
                _insert(con, file.parent, path, texts)
        con.close()
    except sqlite3.Error as exc:
        raise _sqlite_error(file, exc) from None
    return report


def _insert(con, db_folder: Path, path: str, v: dict):
    now = _now()
    name, pid = v["PatientName"] or "", v["PatientID"] or ""
    row = con.execute("SELECT UID FROM Patients WHERE PatientsName = ? AND PatientID = ?", (name, pid)).fetchone()
    if row:
        patient_uid = row[0]
    else:
        patient_uid = con.execute(
            "INSERT INTO Patients (PatientsName, PatientID, PatientsBirthDate, PatientsBirthTime, PatientsSex, "
            "PatientsAge, PatientsComments, InsertTimestamp) VALUES (?,?,?,?,?,?,?,?)",
            (name, pid, v["PatientBirthDate"], v["PatientBirthTime"], v["PatientSex"],
             v["PatientAge"], v["PatientComments"], now),
        ).lastrowid
    con.execute(
        "INSERT OR IGNORE INTO Studies (StudyInstanceUID, PatientsUID, StudyID, StudyDate, StudyTime, StudyDescription, "
        "AccessionNumber, ModalitiesInStudy, InstitutionName, ReferringPhysician, PerformingPhysiciansName, "
        "InsertTimestamp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (v["StudyInstanceUID"], patient_uid, v["StudyID"], v["StudyDate"], v["StudyTime"],
         v["StudyDescription"], v["AccessionNumber"], v["Modality"],
         v["InstitutionName"], v["ReferringPhysicianName"], v["PerformingPhysicianName"], now),
    )
    con.execute(
        "INSERT OR IGNORE INTO Series (SeriesInstanceUID, StudyInstanceUID, SeriesNumber, SeriesDate, SeriesTime, "
        "SeriesDescription, Modality, BodyPartExamined, FrameOfReferenceUID, AcquisitionNumber, ContrastAgent, "
        "ScanningSequence, EchoNumber, TemporalPosition, InsertTimestamp) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (v["SeriesInstanceUID"], v["StudyInstanceUID"], v["SeriesNumber"], v["SeriesDate"],
         v["SeriesTime"], v["SeriesDescription"], v["Modality"], v["BodyPartExamined"],
         v["FrameOfReferenceUID"], v["AcquisitionNumber"], v["ContrastBolusAgent"],
         v["ScanningSequence"], v["EchoNumbers"], v["TemporalPositionIdentifier"], now),
    )
    abs_path = Path(path).resolve()
    try:
        stored = abs_path.relative_to(db_folder.resolve()).as_posix()
    except ValueError:
        stored = str(abs_path)
    con.execute(
        "INSERT OR REPLACE INTO Images (SOPInstanceUID, Filename, SeriesInstanceUID, InsertTimestamp) VALUES (?,?,?,?)",
        (v["SOPInstanceUID"], stored, v["SeriesInstanceUID"], now),
    )
    con.execute("INSERT OR IGNORE INTO Directories (Dirname) VALUES (?)", (str(abs_path.parent),))
