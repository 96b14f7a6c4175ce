"""De-identification: no original identifier survives anywhere in the written files or their names."""

import numpy as np
import pydicom
import pytest

from mskai.dicom import load_series, scan_folder
from mskai.dicom.anonymise import anonymise_folder
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom

IDENTIFIERS = {
    "PatientName": "DOE^JANE^Q",
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


def _identifying_series(folder, echoes=2):
    volumes = [phantom(plane="sagittal", seed=s) for s in range(echoes)]
    paths = write_series(volumes, folder, echo_times=[10.0 * (e + 1) for e in range(echoes)],
                         patient=(IDENTIFIERS["PatientName"], IDENTIFIERS["PatientID"]))
    for p in paths:
        ds = pydicom.dcmread(p)
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        block = ds.private_block(0x0029, "ACME MR 1.0", create=True)
        block.add_new(0x01, "LO", "DOE JANE private copy")
        ds.save_as(p)
    return volumes, paths


def test_no_identifier_survives_in_any_byte_or_filename(tmp_path):
    volumes, paths = _identifying_series(tmp_path / "in")
    original = pydicom.dcmread(paths[0])
    secrets = list(IDENTIFIERS.values()) + ["DOE JANE", original.StudyInstanceUID, original.SeriesInstanceUID,
                                            original.SOPInstanceUID, original.FrameOfReferenceUID]
    report = anonymise_folder(tmp_path / "in", tmp_path / "out", seed="test-secret")
    assert report.problems == [] and len(report.written) == len(paths)
    for out in (tmp_path / "out").rglob("*"):
        for secret in secrets:
            assert secret not in str(out.relative_to(tmp_path)), f"{secret} in a filename"
        if out.is_file():
            data = out.read_bytes()
            for secret in secrets:
                for variant in {secret, secret.replace("^", " "), secret.upper()}:
                    assert variant.encode() not in data, f"{variant!r} found in {out.name}"
    ds = pydicom.dcmread(report.written[0])
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert not any(elem.tag.is_private for elem in ds)


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


def test_same_seed_gives_same_mapping(tmp_path):
    _identifying_series(tmp_path / "in")
    first = anonymise_folder(tmp_path / "in", tmp_path / "a", seed="s")
    second = anonymise_folder(tmp_path / "in", tmp_path / "b", seed="s")
    assert sorted(p.relative_to(tmp_path / "a") for p in first.written) == \
        sorted(p.relative_to(tmp_path / "b") for p in second.written)


def test_burned_in_annotation_is_refused_and_reported(tmp_path):
    _, paths = _identifying_series(tmp_path / "in", echoes=1)
    ds = pydicom.dcmread(paths[0])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(paths[0])
    report = anonymise_folder(tmp_path / "in", tmp_path / "out")
    assert [p.path for p in report.problems] == [str(paths[0])]
    assert "burned-in" in report.problems[0].message
    assert len(report.written) == len(paths) - 1


def test_refuses_to_write_onto_its_source(tmp_path):
    _identifying_series(tmp_path / "in", echoes=1)
    with pytest.raises(Exception, match="onto itself"):
        anonymise_folder(tmp_path / "in", tmp_path / "in")
