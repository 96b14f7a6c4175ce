"""De-identification: PS3.15 basic profile at every level; no original identifier survives in any byte or name."""

import re
import sys
import time
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mskai import MskaiError
from mskai.dicom import load_series, scan_folder
from mskai.dicom.anonymise import MAX_SEQUENCE_DEPTH, PROFILE, _output_path, anonymise_folder
from mskai.outputs import OUTPUT_MARKER
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom

NAME = "DOE^JANE^Q"
IDENTIFIERS = {
    "PatientName": NAME,
    "PatientID": "MRN4711815",
    "PatientBirthDate": "19650412",
    "InstitutionName": "St Example Hospital",
    "InstitutionAddress": "12 Lime Street Springfield",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "AccessionNumber": "ACC99887766",
    "OtherPatientIDs": "OTHERID5544",
    "StudyID": "STUDY90210",
    "StationName": "MRSCANNER7",
    "OperatorsName": "NURSE^RATCHED",
    "PatientAddress": "742 Evergreen Terrace",
}
# Free text that names the patient, in attributes the profile removes, dummies or does not list.
FREE_TEXT = {
    "StudyDescription": "Knee MRI DOE^JANE^Q",
    "SeriesDescription": "T2 SAG Jane Doe",
    "ImageComments": "DOE JANE left knee",
    "ProtocolName": "KNEE JANE DOE",
}
UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


def _item(**values):
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _plant(ds, other_sop_uid):
    """Put the patient's name everywhere a careless tool would leave it."""
    for keyword, value in {**IDENTIFIERS, **FREE_TEXT}.items():
        setattr(ds, keyword, value)
    ds.RequestAttributesSequence = Sequence([_item(RequestedProcedureDescription="MRI for DOE JANE")])
    ds.ProcedureCodeSequence = Sequence([_item(CodeValue="KNEE1", CodingSchemeDesignator="99LOCAL",
                                               CodeMeaning="Knee MRI of Jane Doe")])
    ds.ContentSequence = Sequence([_item(ValueType="TEXT", TextValue="Jane Doe reports pain")])
    ds.ReferencedImageSequence = Sequence([_item(ReferencedSOPClassUID=ds.SOPClassUID,
                                                 ReferencedSOPInstanceUID=other_sop_uid, PersonName=NAME)])
    ds.file_meta.SourceApplicationEntityTitle = "DOE JANE"
    ds.file_meta.SendingApplicationEntityTitle = "DOE JANE"
    block = ds.private_block(0x0029, "ACME MR 1.0", create=True)
    block.add_new(0x01, "LO", "DOE JANE private copy")


def _identifying_series(folder, echoes=2, multiframe=False):
    volumes = [phantom(plane="sagittal", seed=s) for s in range(echoes)]
    paths = write_series(volumes, folder, echo_times=[10.0 * (e + 1) for e in range(echoes)],
                         patient=(IDENTIFIERS["PatientName"], IDENTIFIERS["PatientID"]), multiframe=multiframe)
    sop_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
    for n, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        _plant(ds, sop_uids[(n + 1) % len(paths)])
        ds.BurnedInAnnotation = "NO"
        ds.save_as(p)
    return volumes, paths


def _variants(secret):
    return {secret, secret.replace("^", " "), secret.upper(), secret.lower(), secret.title()}


def test_no_identifier_survives_in_any_byte_or_filename(tmp_path):
    volumes, paths = _identifying_series(tmp_path / "in")
    original = pydicom.dcmread(paths[0])
    secrets = list(IDENTIFIERS.values()) + ["DOE JANE", "JANE DOE", original.StudyInstanceUID,
                                            original.SeriesInstanceUID, original.FrameOfReferenceUID]
    secrets += [pydicom.dcmread(p).SOPInstanceUID for p in paths]
    report = anonymise_folder(tmp_path / "in", tmp_path / "out", seed="test-secret")
    assert report.problems == [] and report.warnings == [] and len(report.written) == len(paths)
    for out in (tmp_path / "out").rglob("*"):
        for secret in secrets:
            assert secret not in str(out.relative_to(tmp_path)), f"{secret} in a filename"
        if out.is_file():
            data = out.read_bytes()
            for secret in secrets:
                for variant in _variants(secret):
                    assert variant.encode() not in data, f"{variant!r} found in {out.name}"
    ds = pydicom.dcmread(report.written[0])
    assert ds.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
    assert not any(elem.tag.is_private for elem in ds)
    for keyword in ("StudyDescription", "SeriesDescription", "ImageComments", "RequestAttributesSequence"):
        assert keyword not in ds
    assert ds.ProcedureCodeSequence[0].CodeMeaning == "Knee MRI of *** ***"  # not in the table: masked
    assert ds.ContentSequence == Sequence([Dataset()])  # D on a sequence: one empty item
    assert set(ds.file_meta.keys()) <= {tag_for_keyword(k) for k in (
        "FileMetaInformationGroupLength", "FileMetaInformationVersion", "MediaStorageSOPClassUID",
        "MediaStorageSOPInstanceUID", "TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName")}
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_profile_table_is_complete_and_each_action_class_is_applied(tmp_path):
    assert len(PROFILE) > 600 and set(PROFILE.values()) == {"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D",
                                                            "X/Z/U*"}
    _, paths = _identifying_series(tmp_path / "in", echoes=1)
    before = pydicom.dcmread(paths[0])
    before.PatientSex, before.PatientAge, before.StudyDate, before.StudyTime = "F", "059Y", "20240105", "101500"
    before.AcquisitionDate, before.SeriesDate, before.ContentDate = "20240105", "20240105", "20240105"
    before.DeviceSerialNumber, before.AdditionalPatientHistory = "SN123456", "history of DOE"
    before.RequestedProcedureDescription = "Knee"
    before.save_as(paths[0])
    report = anonymise_folder(tmp_path / "in", tmp_path / "out")
    after = pydicom.dcmread(report.written[0])
    sample = {  # keyword: (action in Table E.1-1, check on the output)
        "StudyDescription": ("X", lambda v: v is None), "PatientAge": ("X", lambda v: v is None),
        "AdditionalPatientHistory": ("X", lambda v: v is None),
        "RequestAttributesSequence": ("X", lambda v: v is None),
        "PatientSex": ("Z", lambda v: v == ""), "StudyTime": ("Z", lambda v: v in ("", "000000.00")),
        "StudyDate": ("Z", lambda v: v in ("", "00010101")), "PatientName": ("Z", lambda v: v != NAME),
        "ContentSequence": ("D", lambda v: v == Sequence([Dataset()])),
        "StudyInstanceUID": ("U", lambda v: v != before.StudyInstanceUID and UID_RE.fullmatch(v)),
        "FrameOfReferenceUID": ("U", lambda v: v != before.FrameOfReferenceUID and UID_RE.fullmatch(v)),
        "ContentDate": ("Z/D", lambda v: v == "00010101"),
        "AcquisitionDate": ("X/Z", lambda v: v in (None, "", "00010101")),
        "RequestedProcedureDescription": ("X/Z", lambda v: not v),
        "ProtocolName": ("X/D", lambda v: v == "ANONYMIZED"),
        "SeriesDate": ("X/D", lambda v: v in (None, "00010101")),
        "InstitutionName": ("X/Z/D", lambda v: v and v != IDENTIFIERS["InstitutionName"]),
        "DeviceSerialNumber": ("X/Z/D", lambda v: v != "SN123456"),
        "ReferencedImageSequence": ("X/Z/U*", lambda v: len(v) == 1),
    }
    for keyword, (action, check) in sample.items():
        assert PROFILE[tag_for_keyword(keyword)] == action, keyword
        assert check(after.get(keyword)), f"{keyword}: {after.get(keyword)!r}"
    nested = after.ReferencedImageSequence[0]
    assert nested.ReferencedSOPInstanceUID != before.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert str(nested.PersonName) not in ("", NAME)  # D at a nested level: a consistent pseudonym


def test_uids_are_remapped_consistently_and_volumes_survive(tmp_path):
    volumes, _ = _identifying_series(tmp_path / "in")
    anonymise_folder(tmp_path / "in", tmp_path / "out")
    report = scan_folder(tmp_path / "out")
    assert len(report.series) == 1  # every file still in one series with one study
    assert len({pydicom.dcmread(f).StudyInstanceUID for f in report.series[0].files}) == 1
    loaded = load_series(report.series[0])
    assert [v.label for v in loaded] == ["echo 10 ms", "echo 20 ms"]
    for got, truth in zip(loaded, volumes):
        np.testing.assert_array_equal(got.array, truth.array)
        np.testing.assert_allclose(got.affine_lps, truth.affine_lps, atol=1e-4)


def test_enhanced_multiframe_pixels_and_geometry_survive(tmp_path):
    volumes, _ = _identifying_series(tmp_path / "in", echoes=1, multiframe=True)
    report = anonymise_folder(tmp_path / "in", tmp_path / "out")
    assert report.problems == [] and len(report.written) == 1
    (got,) = load_series(scan_folder(tmp_path / "out").series[0])
    np.testing.assert_array_equal(got.array, volumes[0].array)
    np.testing.assert_allclose(got.affine_lps, volumes[0].affine_lps, atol=1e-4)


def test_same_seed_gives_same_mapping(tmp_path):
    _identifying_series(tmp_path / "in")
    first = anonymise_folder(tmp_path / "in", tmp_path / "a", seed="s")
    second = anonymise_folder(tmp_path / "in", tmp_path / "b", seed="s")
    assert sorted(p.relative_to(tmp_path / "a") for p in first.written) == \
        sorted(p.relative_to(tmp_path / "b") for p in second.written)


def test_retain_descriptors_keeps_them_with_the_name_masked(tmp_path):
    _identifying_series(tmp_path / "in", echoes=1)
    report = anonymise_folder(tmp_path / "in", tmp_path / "out", retain_descriptors=True)
    ds = pydicom.dcmread(report.written[0])
    assert ds.StudyDescription == "Knee MRI ***^***^Q"
    assert ds.SeriesDescription == "T2 SAG *** ***"
    assert ds.ProtocolName == "KNEE *** ***"
    assert "ImageComments" not in ds and "RequestAttributesSequence" not in ds  # not descriptors: removed
    assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113105"]


def test_retain_safe_private_keeps_only_what_the_file_declares_safe(tmp_path):
    _, paths = _identifying_series(tmp_path / "in", echoes=1)
    ds = pydicom.dcmread(paths[0])
    safe = ds.private_block(0x0031, "ACME SAFE", create=True)
    safe.add_new(0x01, "DS", "1.5")
    ds.PrivateDataElementCharacteristicsSequence = Sequence([_item(
        PrivateGroupReference=0x0031, PrivateCreatorReference="ACME SAFE", BlockIdentifyingInformationStatus="SAFE")])
    ds.save_as(paths[0])
    report = anonymise_folder(tmp_path / "in", tmp_path / "out", retain_safe_private=True)
    out = pydicom.dcmread(report.written[0])
    assert out.private_block(0x0031, "ACME SAFE")[0x01].value == 1.5
    with pytest.raises(KeyError):
        out.private_block(0x0029, "ACME MR 1.0")  # not declared safe: removed
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113111"]


def test_burned_in_annotation_yes_is_refused_and_unknown_is_a_warning(tmp_path):
    _, paths = _identifying_series(tmp_path / "in", echoes=1)
    for path, value in zip(paths[:2], ("YES", None)):
        ds = pydicom.dcmread(path)
        if value is None:
            del ds.BurnedInAnnotation
        else:
            ds.BurnedInAnnotation = value
        ds.save_as(path)
    report = anonymise_folder(tmp_path / "in", tmp_path / "out")
    assert [p.path for p in report.problems] == [str(paths[0])]
    assert "burned-in" in report.problems[0].message
    assert [w.path for w in report.warnings] == [str(paths[1])]
    assert "Burned In Annotation" in report.warnings[0].message
    assert len(report.written) == len(paths) - 1


def _deep_file(path, levels):
    ds = pydicom.dcmread(path)
    item = ds
    for _ in range(levels):
        inner = Dataset()
        item.ContentSequence = Sequence([inner])
        item = inner
    item.TextValue = "bottom"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20 * levels + limit)  # pydicom's writer recurses per level
    try:
        ds.save_as(path)
    finally:
        sys.setrecursionlimit(limit)


def test_deeply_nested_file_is_refused_fast_and_the_run_goes_on(tmp_path):
    _, paths = _identifying_series(tmp_path / "in", echoes=1)
    _deep_file(paths[0], 300)
    _deep_file(paths[1], MAX_SEQUENCE_DEPTH - 2)  # deep but allowed
    tracemalloc.start()
    start = time.monotonic()
    report = anonymise_folder(tmp_path / "in", tmp_path / "out")
    elapsed, (_, peak) = time.monotonic() - start, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 10 and peak < 200e6
    assert [p.path for p in report.problems] == [str(paths[0])]
    assert "nested" in report.problems[0].message
    assert len(report.written) == len(paths) - 1


def test_file_without_uids_or_damaged_is_its_own_problem(tmp_path, monkeypatch):
    _, paths = _identifying_series(tmp_path / "in", echoes=1)
    for path, keyword in zip(paths, ("SeriesInstanceUID", "SOPInstanceUID")):
        ds = pydicom.dcmread(path)
        delattr(ds, keyword)
        ds.save_as(path)
    ds = pydicom.dcmread(paths[2])
    ds.AcquisitionMatrix = [1, 2, 3]
    ds.save_as(paths[2], little_endian=True, implicit_vr=False)
    element = b"\x18\x00\x10\x13US\x06\x00"  # 6 bytes relabelled as FD: not a whole number of doubles
    paths[2].write_bytes(paths[2].read_bytes().replace(element, element.replace(b"US", b"FD")))
    save_as = Dataset.save_as

    def failing_save(ds, filename, **kwargs):  # the 4th file fails halfway through writing
        save_as(ds, filename, **kwargs)
        if ds.InstanceNumber == 4:
            raise OverflowError("value too large")

    monkeypatch.setattr(Dataset, "save_as", failing_save)
    report = anonymise_folder(tmp_path / "in", tmp_path / "out")
    assert [p.path for p in report.problems] == [str(p) for p in paths[:4]]
    assert "SeriesInstanceUID" in report.problems[0].message and "SOPInstanceUID" in report.problems[1].message
    assert "BytesLengthException" in report.problems[2].message and "OverflowError" in report.problems[3].message
    assert len(report.written) == len(paths) - 4
    left = {p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != OUTPUT_MARKER}
    assert left == set(report.written)  # nothing partial left behind


def test_output_names_are_plain_uids_inside_the_destination(tmp_path):
    _, paths = _identifying_series(tmp_path / "in", echoes=1)
    ds = pydicom.dcmread(paths[0])
    ds.SeriesInstanceUID = "../../escape"
    ds.save_as(paths[0])
    report = anonymise_folder(tmp_path / "in", tmp_path / "out")
    for out in report.written:
        assert out.resolve().parent.parent == (tmp_path / "out").resolve()
        assert UID_RE.fullmatch(out.parent.name) and UID_RE.fullmatch(out.stem)
    for bad in ("../../etc", "1.2/3", "1." + "2" * 70):
        with pytest.raises(Exception, match="not a valid UID"):
            _output_path(tmp_path / "out", _item(SeriesInstanceUID="1.2", SOPInstanceUID=bad))


def test_refuses_to_write_onto_its_source(tmp_path):
    _identifying_series(tmp_path / "in", echoes=1)
    with pytest.raises(Exception, match="onto itself"):
        anonymise_folder(tmp_path / "in", tmp_path / "in")


def test_a_second_run_replaces_the_first_as_a_whole_and_other_folders_are_refused(tmp_path):
    _identifying_series(tmp_path / "in", echoes=2)
    first = anonymise_folder(tmp_path / "in", tmp_path / "out", seed="a")
    _identifying_series(tmp_path / "in2", echoes=1)
    second = anonymise_folder(tmp_path / "in2", tmp_path / "out", seed="b")
    left = {p for p in (tmp_path / "out").rglob("*.dcm")}
    assert left == set(second.written) and not left & set(first.written)  # no other patient's files beside them
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(MskaiError, match="not an earlier mskai output"):
        anonymise_folder(tmp_path / "in", tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_cli_anonymises_the_real_knee_series_and_summarises_warnings(knee_dicom, tmp_path):
    from conftest import run_mskai

    result = run_mskai("dicom", "anonymise", knee_dicom, tmp_path / "out", "--seed", "s")
    assert "Wrote 192 de-identified file(s)" in result.stdout
    assert "Warning for 192 written file(s)" in result.stderr and "... and 187 more" in result.stderr
    assert "Burned In Annotation" in result.stderr and "Traceback" not in result.stderr
    (series,) = scan_folder(tmp_path / "out").series
    assert len(load_series(series)) == 8
