"""De-identify DICOM files (PS3.15 Basic Application Level Confidentiality Profile, via dicognito).

dicognito replaces names, IDs, dates, addresses and institutions with consistent fake values and
remaps every UID consistently across all files of one run; on top of it, private tags, curves and
overlays are removed, the de-identification attributes are set, and files with burned-in
annotation are refused. Output filenames are built from the new UIDs only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mskai import MskaiError
from mskai.dicom.scan import FileProblem, iter_files
from mskai.io import atomic_output

BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
# Elements the basic profile removes that dicognito leaves: free text that may name people.
_REMOVE = (
    "AdditionalPatientHistory", "PatientComments", "ImageComments", "StudyComments", "RequestedProcedureComments",
    "InterpretationText", "TextComments", "DerivationDescription", "ContrastBolusAgent", "ProtocolName",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription", "StationName", "DeviceSerialNumber",
    "PatientAddress", "OtherPatientIDsSequence", "OtherPatientNames", "PatientTelephoneNumbers",
    "MilitaryRank", "EthnicGroup", "Occupation", "PatientReligiousPreference", "MedicalRecordLocator",
    "ReferencedPatientSequence", "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
)


@dataclass
class AnonymiseReport:
    written: list[Path] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)


def _strip(ds: Dataset):
    ds.remove_private_tags()
    for keyword in _REMOVE:
        if keyword in ds:
            delattr(ds, keyword)
    for tag in list(ds.keys()):
        if tag.group & 0xFF00 in (0x5000, 0x6000):  # curves, overlays (may hold text)
            del ds[tag]
    for elem in ds.iterall():
        if elem.VR == "SQ":
            for item in elem.value:
                item.remove_private_tags()


def _mark(ds: Dataset):
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 Basic Profile; mskai; dicognito"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])


def anonymise_dataset(ds: Dataset, anonymizer: Anonymizer) -> Dataset:
    """De-identify one dataset in place (and its file meta UIDs) and return it."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise MskaiError("pixels carry burned-in annotation (Burned In Annotation = YES); not de-identified")
    anonymizer.anonymize(ds)
    _strip(ds)
    _mark(ds)
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def anonymise_folder(source, destination, seed: str | None = None) -> AnonymiseReport:
    """Write de-identified copies of every DICOM file below ``source`` into ``destination``.

    seed: a secret that makes the fake values and UID mapping repeatable across runs (random if None).
    Files are written as <destination>/<new series UID>/<new SOP instance UID>.dcm.
    """
    destination = Path(destination)
    if Path(source).resolve() == destination.resolve():
        raise MskaiError("Refusing to anonymise a folder onto itself: give another output folder")
    anonymizer = Anonymizer(seed=seed)
    report = AnonymiseReport()
    for path in iter_files(source):
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            report.problems.append(FileProblem(path, f"not a readable DICOM file ({exc.__class__.__name__})"))
            continue
        try:
            anonymise_dataset(ds, anonymizer)
        except MskaiError as exc:
            report.problems.append(FileProblem(path, str(exc)))
            continue
        out = destination / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        with atomic_output(out) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        report.written.append(out)
    return report
