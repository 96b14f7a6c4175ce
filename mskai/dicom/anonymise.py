"""De-identify DICOM files by the PS3.15 Basic Application Level Confidentiality Profile.

Every attribute of the profile's Table E.1-1 (as shipped by the ``dicom-anonymizer`` package) gets its
action at every nesting level: X remove, Z empty, D dummy, U new UID; the combined codes take the form that
keeps any IOD valid (X/Z -> Z, X/D, X/Z/D and Z/D -> D, X/Z/U* -> kept with its contents de-identified).
Z and D allow a dummy value: where dicognito replaced a name, ID or institution with a consistent
pseudonym, that pseudonym is the dummy; dicognito also remaps every UID consistently across one run.
Dates the profile lists are emptied or set to a dummy, never kept shifted.
On top: private attributes, curves and overlays removed; the file meta rebuilt from the new UIDs; the
original names and IDs masked in any text kept (code meanings, retained descriptors); files nested too
deeply, without UIDs, or with burned-in annotation refused. Output filenames come from the new UIDs only.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from dicomanonymizer import simpledicomanonymizer as kitware
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag

from mskai import MskaiError
from mskai.dicom.scan import PIXEL_TAGS, FileProblem, iter_files
from mskai.outputs import atomic_output, output_folder

PROFILE_EDITION = "dicomfields_2026c"  # DICOM 2026c Table E.1-1
_CODES = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
          "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
# Tag -> action code. The table's three tag ranges (curves 50xx, overlay data and comments 60xx) are
# covered by removing groups 50xx and 60xx whole.
PROFILE = {Tag(tag): code for key, code in _CODES.items()
           for tag in dicom_anonymization_database_selector(PROFILE_EDITION)[key] if len(tag) == 2}
_EMPTY, _DUMMY = {"Z", "X/Z"}, {"D", "Z/D", "X/D", "X/Z/D", "U"}
_DATE_VRS = ("DA", "DT", "TM")
_TEXT_VRS = ("AE", "LO", "LT", "SH", "ST", "UC", "UT")
# Kept (with the original names and IDs masked) by retain_descriptors: the Clean Descriptors Option.
DESCRIPTORS = ("StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
               "RequestedProcedureDescription")
MAX_SEQUENCE_DEPTH = 32
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_MASK = "***"


class _DatesToProfile:
    """dicognito handler that leaves dates and times to the profile table instead of shifting them."""

    def __call__(self, dataset, elem) -> bool:
        return elem.VR in ("DA", "DT")  # dicognito shifts a TM only with its DA

    def describe_actions(self):
        yield "Leave DA and DT elements to the PS3.15 table"


def new_anonymizer(seed: str | None = None) -> Anonymizer:
    """One dicognito Anonymizer per run: consistent pseudonyms and UIDs; dates left to the table."""
    anonymizer = Anonymizer(seed=seed)
    anonymizer.add_element_handler(_DatesToProfile())
    return anonymizer


@dataclass
class AnonymiseReport:
    written: list[Path] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)  # files not written
    warnings: list[FileProblem] = field(default_factory=list)  # files written that need a human look


def _check(ds: Dataset):
    """Refuse, before any work, a dataset nested too deeply, without UIDs, or with burned-in annotation."""
    stack = [(ds, 0)]
    while stack:
        item, depth = stack.pop()
        for elem in item:
            if elem.VR == "SQ":
                if depth >= MAX_SEQUENCE_DEPTH:
                    raise MskaiError(f"sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep; not de-identified")
                stack.extend((child, depth + 1) for child in elem.value)
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(keyword):
            raise MskaiError(f"no {keyword}; not de-identified")
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise MskaiError("pixels carry burned-in annotation (Burned In Annotation = YES); not de-identified")


def burned_in_warning(ds: Dataset) -> str | None:
    """A warning for an image whose Burned In Annotation is not explicitly NO."""
    if any(tag in ds for tag in PIXEL_TAGS) and str(ds.get("BurnedInAnnotation", "")).strip().upper() != "NO":
        return "Burned In Annotation is not NO (unknown): check the pixels for burned-in names before sharing"
    return None


def _values(elem) -> list:
    return list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]


def _identifiers(before: dict, pseudonyms: set) -> re.Pattern | None:
    """A pattern for the original names (each part), IDs and addresses dicognito replaced, and the dates.

    Parts shorter than 3 characters (a middle initial) are left: masking them would erase ordinary text.
    """
    tokens = set()
    for key, (elem, old) in before.items():
        if (key in pseudonyms and elem.VR != "UI") or elem.VR in ("DA", "DT"):
            for value in old:
                text = str(value).strip()
                tokens.update(re.split(r"[\^=\s,]+", text) if elem.VR == "PN" else [text])
    tokens = sorted((t for t in tokens if len(t) >= 3), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens)), re.IGNORECASE) if tokens else None


def _safe_private(ds: Dataset) -> set:
    """Private tags (with their creators) that the dataset's Private Data Element Characteristics call safe."""
    safe = set()
    for item in ds.get("PrivateDataElementCharacteristicsSequence", []):
        status = str(item.get("BlockIdentifyingInformationStatus", "")).upper()
        if status == "SAFE":
            offsets = range(256)
        elif status == "MIXED" and "NonidentifyingPrivateElements" in item:
            offsets = _values(item["NonidentifyingPrivateElements"])
        else:
            continue
        try:
            block = ds.private_block(item.PrivateGroupReference, str(item.PrivateCreatorReference))
        except (AttributeError, KeyError, ValueError, TypeError):
            continue
        if offsets:
            safe.add(Tag(block.group, block.block_start >> 8))
            safe.update(block.get_tag(int(o)) for o in offsets)
    return safe


def _apply_profile(ds: Dataset, pseudonyms: set, options: dict):
    """Apply Table E.1-1 to one dataset level and, recursively, to the items of what is kept."""
    safe = _safe_private(ds) if options["retain_safe_private"] else set()
    for elem in list(ds):
        tag = elem.tag
        action = "K" if options["retain_descriptors"] and elem.keyword in DESCRIPTORS else PROFILE.get(tag, "K")
        if (tag.is_private and tag not in safe) or tag.group >> 8 in (0x50, 0x60) or action == "X":
            del ds[tag]
            continue
        pseudonym = id(elem) in pseudonyms and elem.VR not in _DATE_VRS  # a shifted date is no dummy
        if (action in _EMPTY or action in _DUMMY) and not elem.is_empty and not pseudonym:
            if elem.VR == "SQ":
                elem.value = Sequence([Dataset()] if action in _DUMMY else [])
            else:
                (kitware.replace if action in _DUMMY else kitware.empty)(ds, tag)
        if elem.VR == "SQ":
            for item in elem.value:
                _apply_profile(item, pseudonyms, options)


def _mask(ds: Dataset, identifiers: re.Pattern):
    """Mask the original identifiers in every text value (before the profile sets its own dummies)."""
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and not elem.is_empty:
            masked = [identifiers.sub(_MASK, str(v)) for v in _values(elem)]
            elem.value = masked if isinstance(elem.value, MultiValue) else masked[0]


def _mark(ds: Dataset, options: dict):
    chosen = [codes.DCM.BasicApplicationConfidentialityProfile]
    chosen += [codes.DCM.CleanDescriptorsOption] if options["retain_descriptors"] else []
    chosen += [codes.DCM.RetainSafePrivateOption] if options["retain_safe_private"] else []
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"PS3.15 E.1-1 ({PROFILE_EDITION[-5:]}); mskai; dicognito pseudonyms"
    items = []
    for code in chosen:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)


def anonymise_dataset(ds: Dataset, anonymizer: Anonymizer, *, retain_descriptors: bool = False,
                      retain_safe_private: bool = False) -> Dataset:
    """De-identify one dataset in place, its file meta rebuilt from the new UIDs, and return it.

    anonymizer: one new_anonymizer() per run, so that pseudonyms and UIDs stay consistent across files.
    retain_descriptors: keep DESCRIPTORS (original names and IDs masked) - the Clean Descriptors Option.
    retain_safe_private: keep private attributes the dataset declares safe - the Retain Safe Private Option.
    Raises MskaiError for a dataset that must not be written.
    """
    _check(ds)
    options = {"retain_descriptors": retain_descriptors, "retain_safe_private": retain_safe_private}
    before = {id(e): (e, _values(e)) for e in ds.iterall() if e.VR != "SQ" and e.tag not in PIXEL_TAGS}
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    anonymizer.anonymize(ds)
    pseudonyms = {key for key, (elem, old) in before.items() if _values(elem) != old}  # dicognito's replacements
    identifiers = _identifiers(before, pseudonyms)
    if identifiers is not None:
        _mask(ds, identifiers)
    _apply_profile(ds, pseudonyms, options)
    _mark(ds, options)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def _output_path(destination: Path, ds: Dataset) -> Path:
    """<destination>/<series UID>/<SOP UID>.dcm, refused unless both are plain UIDs."""
    names = [str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
    if not all(len(n) <= 64 and _UID.fullmatch(n) for n in names):
        raise MskaiError("a remapped UID is not a valid UID; not written")
    return destination / names[0] / f"{names[1]}.dcm"


def anonymise_folder(source, destination, seed: str | None = None, *, retain_descriptors: bool = False,
                     retain_safe_private: bool = False) -> AnonymiseReport:
    """Write de-identified copies of every DICOM file below ``source`` into ``destination``.

    seed: a secret that makes the pseudonyms and UID mapping repeatable across runs (random if None).
    retain_descriptors, retain_safe_private: profile options, see anonymise_dataset.
    Files are written as <destination>/<new series UID>/<new SOP instance UID>.dcm, into a staging folder that
    replaces ``destination`` as a whole at the end (see mskai.outputs.output_folder: it must be new, empty, or an
    earlier mskai output, apart from ``source``). A file that cannot be de-identified is reported in ``problems`` and leaves nothing
    behind; images whose Burned In Annotation is not NO are written and reported in ``warnings``.
    """
    destination = Path(destination).resolve()
    anonymizer = new_anonymizer(seed)
    report, seen = AnonymiseReport(), set()
    with output_folder(destination, "anonymise", inputs=[source]) as staging:  # the run's files replace the folder as one unit
        for path in iter_files(source):
            try:
                ds = pydicom.dcmread(path)
            except RecursionError:
                report.problems.append(FileProblem(path, "sequences nested too deeply; not de-identified"))
                continue
            except Exception as exc:
                report.problems.append(FileProblem(path, f"not a readable DICOM file ({exc.__class__.__name__})"))
                continue
            out = None
            try:
                warning = burned_in_warning(ds)
                anonymise_dataset(ds, anonymizer, retain_descriptors=retain_descriptors,
                                  retain_safe_private=retain_safe_private)
                out = _output_path(staging, ds)
                if out in seen:
                    raise MskaiError("another file has the same SOP Instance UID; not written")
                with atomic_output(out) as tmp:
                    ds.save_as(tmp, enforce_file_format=True)
            except Exception as exc:  # one damaged file is that file's problem, never the run's
                message = str(exc) if isinstance(exc, MskaiError) else f"not de-identified ({exc.__class__.__name__})"
                report.problems.append(FileProblem(path, message))
                if out is not None:
                    with contextlib.suppress(OSError):
                        out.parent.rmdir()  # only if it is empty
                continue
            report.written.append(destination / out.relative_to(staging))
            seen.add(out)
            if warning:
                report.warnings.append(FileProblem(path, warning))
    return report
