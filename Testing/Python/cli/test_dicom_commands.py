"""The `mskai` console script, volume files, atomic outputs, privacy of listings and files."""

import json
import os

import nibabel as nib
import nrrd
import numpy as np
import pytest

from conftest import run_mskai
from mskai import MskaiError
from mskai.dicom import index_folder, load_series, scan_folder
from mskai.outputs import atomic_output
from mskai.volume_files import read_volume_file, write_volume
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom

def test_ls_and_convert_the_shared_knee_series(knee_dicom, tmp_path, sitk_series):
    out = run_mskai("dicom", "ls", knee_dicom).stdout
    assert "sagittal" in out and "256x256x24" in out and "8 volume(s)" in out and "192 files" in out
    listing = json.loads(run_mskai("dicom", "ls", knee_dicom, "--json").stdout)
    (series,) = listing["series"]
    assert series["modality"] == "MR" and len(series["volumes"]) == 8

    run_mskai("dicom", "convert", knee_dicom, tmp_path / "knee.nii.gz", "--volume", "1")
    run_mskai("dicom", "convert", knee_dicom, tmp_path / "knee.nrrd")
    assert sorted(p.name for p in tmp_path.glob("knee_v*.nrrd")) == [f"knee_v{n}.nrrd" for n in range(1, 9)]

    echo1 = load_series(scan_folder(knee_dicom).series[0])[0]
    nifti = nib.load(tmp_path / "knee.nii.gz")
    np.testing.assert_allclose(nifti.affine, echo1.affine_ras, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(nifti.dataobj), echo1.array)
    data, header = nrrd.read(str(tmp_path / "knee_v1.nrrd"))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(np.asarray(header["space directions"]).T, echo1.affine_lps[:3, :3], atol=1e-6)
    np.testing.assert_allclose(header["space origin"], echo1.origin_lps, atol=1e-6)
    np.testing.assert_array_equal(data, echo1.array)


def test_ls_on_a_database_hides_identifiers_unless_asked(tmp_path):
    write_series(phantom(), tmp_path / "in", patient=("DOE^JANE", "MRN-777"), description="SAG PD for DOE")
    index_folder(tmp_path / "in", tmp_path / "db")
    plain = run_mskai("dicom", "ls", tmp_path / "db").stdout
    assert "DOE" not in plain and "MRN-777" not in plain and "SAG PD" not in plain and "SYNTHETIC study" not in plain
    assert "Patient 1" in plain and "Study 1" in plain and "sagittal" in plain
    listed = run_mskai("dicom", "ls", tmp_path / "db", "--json").stdout
    assert "DOE" not in listed and "SAG PD" not in listed and "SYNTHETIC study" not in listed
    shown = run_mskai("dicom", "ls", tmp_path / "db", "--show-identifiers").stdout
    assert "DOE^JANE" in shown and "MRN-777" in shown and "SAG PD for DOE" in shown and "SYNTHETIC study" in shown


def test_convert_from_database_by_uid(tmp_path):
    truth = phantom(plane="coronal")
    write_series(truth, tmp_path / "in", series_uid="1.2.826.0.1.3680043.2.1125.42", description="COR")
    write_series(phantom(), tmp_path / "in2")
    index_folder(tmp_path / "in", tmp_path / "db")
    index_folder(tmp_path / "in2", tmp_path / "db")
    failed = run_mskai("dicom", "convert", tmp_path / "db", tmp_path / "x.nrrd", ok=False)
    assert failed.returncode == 1 and "2 image series" in failed.stderr and "--series" in failed.stderr
    run_mskai("dicom", "convert", tmp_path / "db", tmp_path / "x.nrrd", "--series", "1.2.826.0.1.3680043.2.1125.42")
    volume = read_volume_file(tmp_path / "x.nrrd")
    np.testing.assert_array_equal(volume.array, truth.array)
    np.testing.assert_allclose(volume.affine_lps, truth.affine_lps, atol=1e-4)


def test_cli_errors_are_one_clear_line(tmp_path):
    result = run_mskai("dicom", "ls", tmp_path, ok=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"mskai: error: No DICOM series found in {tmp_path}"
    paths = write_series(phantom(shape=(16, 16, 6)), tmp_path / "gap")
    paths[2].unlink()
    result = run_mskai("dicom", "convert", tmp_path / "gap", tmp_path / "o.nrrd", ok=False)
    assert result.returncode == 1 and "not equally spaced" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.nrrd")) and not list(tmp_path.glob(".*part*"))
    run_mskai("dicom", "convert", tmp_path / "gap", tmp_path / "o.nrrd", "--resample")
    assert read_volume_file(tmp_path / "o.nrrd").shape == (16, 16, 6)


def test_mixed_sizes_in_one_series_are_named_and_the_gap_is_refused(tmp_path):
    from pydicom.uid import generate_uid

    uid, study = generate_uid(), generate_uid()
    truth = phantom(shape=(32, 32, 8), spacing=(1, 1, 2))
    paths = write_series(truth, tmp_path, series_uid=uid, study_uid=study)
    paths[3].unlink()
    odd = phantom(shape=(40, 40, 8), spacing=(1, 1, 2))
    odd_paths = write_series(odd, tmp_path / "odd", series_uid=uid, study_uid=study, first_instance=50)
    for p in odd_paths[:3] + odd_paths[4:]:
        p.unlink()  # keep only slice 3, in place of the one removed above
    listing = json.loads(run_mskai("dicom", "ls", tmp_path, "--json").stdout)
    labels = [v["label"] for v in listing["series"][0]["volumes"]]
    assert labels == ["32x32", "40x40"]
    assert "not equally spaced" in listing["series"][0]["volumes"][0]["problem"]


def test_nifti_and_nrrd_round_trip_the_geometry(tmp_path):
    truth = phantom(plane="sagittal", tilt_deg=15)
    for name in ("v.nrrd", "v.nii.gz", "v.nii"):
        write_volume(truth, tmp_path / name)
        back = read_volume_file(tmp_path / name)
        np.testing.assert_array_equal(back.array, truth.array)
        np.testing.assert_allclose(back.affine_lps, truth.affine_lps, atol=1e-5)
    # NIfTI stores RAS: L and P axes are negated relative to DICOM's LPS
    np.testing.assert_allclose(nib.load(tmp_path / "v.nii.gz").affine[:2, 3], -truth.origin_lps[:2], atol=1e-5)


def test_failed_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "result.nrrd"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == []
    with pytest.raises(MskaiError, match="use .nrrd"):
        write_volume(phantom(), tmp_path / "result.png")
    assert os.listdir(tmp_path) == []


def test_volume_files_carry_no_dicom_identifiers(tmp_path):
    write_series(phantom(), tmp_path / "in", patient=("DOE^JANE", "MRN-777"), description="SAG PD")
    (series,) = scan_folder(tmp_path / "in").series
    volume = load_series(series)[0]
    for name in ("v.nrrd", "v.nii"):
        write_volume(volume, tmp_path / name)
        data = (tmp_path / name).read_bytes()
        for secret in ("DOE", "JANE", "MRN-777", series.uid, series.study_uid):
            assert secret.encode() not in data


def test_synth_series_command_writes_a_loadable_series(tmp_path):
    run_mskai("synth", "series", tmp_path, "--plane", "coronal", "--shape", "20", "16", "5", "--syntax", "jpeg-ls")
    (series,) = scan_folder(tmp_path).series
    (volume,) = load_series(series)
    assert volume.shape == (20, 16, 5) and volume.meta["plane"] == "coronal"
