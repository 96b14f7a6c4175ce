"""The case library (mskai.cases) and the model defaults it feeds (registry): real files, real DICOM identifiers."""

import json
import zipfile

import numpy as np
import pydicom
import pytest

from conftest import make_package, run_mskai
from mskai import MskaiError
from mskai.cases import CaseLibrary
from mskai.volume import Volume
from mskai.volume_files import read_volume_file, write_volume

BONE_VALUES = [1, 2, 3, 4, 5, 6]


def _image(seed=0, shape=(20, 18, 12)):
    rng = np.random.default_rng(seed)
    affine = np.array([[0.9, 0, 0, -40.0], [0, 0.9, 0.1, 12.5], [0, 0, 3.0, 70.0], [0, 0, 0, 1]])
    return Volume(rng.integers(0, 900, shape).astype(np.int16), affine)


def _labels(image, value=2, box=(slice(4, 12), slice(3, 10), slice(2, 8))):
    array = np.zeros(image.shape, np.uint8)
    array[box] = value
    return Volume(array, image.affine_lps.copy())


def test_a_case_keeps_its_geometry_and_saving_the_same_image_again_replaces_it(tmp_path):
    library = CaseLibrary(tmp_path / "lib")
    image = _image()
    draft = _labels(image)
    corrected = _labels(image)
    corrected.array[4:6] = 0  # the radiologist removed two slabs of femur...
    corrected.array[0, 0, 0] = 1  # ...and painted one voxel of tibia
    case = library.add(image, corrected, BONE_VALUES, model="mskai-bones-demo@0.3.0", draft=draft)
    back_image, back_labels = case.image(), case.labels()
    assert np.array_equal(back_image.array, image.array) and back_image.array.dtype == image.array.dtype
    assert np.allclose(back_image.affine_lps, image.affine_lps) and np.allclose(back_labels.affine_lps, image.affine_lps)
    assert np.array_equal(back_labels.array, corrected.array)
    assert case.record["changed_voxels"]["2"] == 2 * 7 * 6 and case.record["changed_voxels"]["1"] == 1
    assert case.record["bone_voxels"]["2"] == 6 * 7 * 6 and case.record["model"] == "mskai-bones-demo@0.3.0"
    again = library.add(image, draft, BONE_VALUES)
    assert again.id == case.id
    cases, problems = library.cases()
    assert [c.id for c in cases] == [case.id] and not problems
    assert np.array_equal(cases[0].labels().array, draft.array) and cases[0].record["changed_voxels"] is None
    other = library.add(_image(seed=1), draft, BONE_VALUES)
    assert other.id != case.id and len(library.cases()[0]) == 2
    assert not [p for p in (tmp_path / "lib").iterdir() if p.name.startswith(".") and p.name != ".library-key"]


def test_another_library_gives_the_same_image_another_id(tmp_path):
    image = _image()
    assert CaseLibrary(tmp_path / "a").case_id(image) != CaseLibrary(tmp_path / "b").case_id(image)


@pytest.mark.parametrize("problem", ["grid", "values", "model"])
def test_a_bad_case_is_refused_before_anything_is_written(tmp_path, problem):
    library = CaseLibrary(tmp_path / "lib")
    image = _image()
    labels, model = _labels(image), None
    if problem == "grid":
        shifted = labels.affine_lps.copy()
        shifted[0, 3] += 5.0
        labels = Volume(labels.array, shifted)
    elif problem == "values":
        labels.array[0, 0, 0] = 9
    else:
        model = "../../etc@1"
    with pytest.raises(MskaiError):
        library.add(image, labels, BONE_VALUES, model=model)
    assert not [p for p in (tmp_path / "lib").glob("case-*")]


def test_damaged_cases_are_reported_by_name_and_skipped(tmp_path):
    library = CaseLibrary(tmp_path / "lib")
    good = library.add(_image(0), _labels(_image(0)), BONE_VALUES)
    bad = library.add(_image(1), _labels(_image(1)), BONE_VALUES)
    worse = library.add(_image(2), _labels(_image(2)), BONE_VALUES)
    (bad.folder / "labels.nrrd").unlink()
    (worse.folder / "case.json").write_text("{not json")
    (tmp_path / "lib" / "notes").mkdir()
    cases, problems = library.cases()
    assert [c.id for c in cases] == [good.id]
    assert sorted(p.split(":")[0] for p in problems) == sorted([bad.id, worse.id, "notes"])
    assert any("labels.nrrd is missing" in p for p in problems)


def test_export_is_a_train_seg_folder_without_the_key_and_rm_removes(tmp_path):
    from mskai.training.segment_data import find_pairs

    library = CaseLibrary(tmp_path / "lib")
    ids = [library.add(_image(s), _labels(_image(s)), BONE_VALUES).id for s in range(2)]
    assert library.export(tmp_path / "cases.zip") == 2
    with zipfile.ZipFile(tmp_path / "cases.zip") as archive:
        names = sorted(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    assert names == sorted(["cases.json", *(f"images/{i}.nrrd" for i in ids), *(f"labels/{i}.nrrd" for i in ids)])
    pairs = find_pairs(tmp_path / "unzipped")
    assert sorted(p[0].name for p in pairs) == sorted(f"{i}.nrrd" for i in ids)
    library.remove(ids[0])
    assert [c.id for c in library.cases()[0]] == [ids[1]]
    with pytest.raises(MskaiError):
        library.remove("../lib")


def test_no_identifying_dicom_value_reaches_the_library_or_its_export(tmp_path, knee_dicom, monkeypatch):
    """The real series' names, ids, UIDs and dates are in none of the files, names or records the CLI writes."""
    monkeypatch.setenv("MSKAI_CASES_DIR", str(tmp_path / "cases"))
    first = sorted(knee_dicom.iterdir())[0]
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    secrets = {str(ds.get(k)) for k in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                          "SOPInstanceUID", "StudyDate", "SeriesDate", "AccessionNumber",
                                          "InstitutionName", "ReferringPhysicianName", "StudyID")
               if ds.get(k) not in (None, "")}
    secrets = {s for s in secrets if len(s) >= 4}
    assert secrets, "the shared series should carry some identifiers to look for"
    image = read_volume_file(write_volume(_knee(knee_dicom), tmp_path / "knee.nrrd"))
    labels = np.zeros(image.shape, np.uint8)
    labels[40:80, 40:80, 5:15] = 2
    write_volume(Volume(labels, image.affine_lps), tmp_path / "labels.nrrd")
    run_mskai("cases", "add", knee_dicom, tmp_path / "labels.nrrd", "--drawn-by", "mskai-bones-demo@0.3.0")
    run_mskai("cases", "export", tmp_path / "export.zip")
    listing = run_mskai("cases", "ls", "--json").stdout
    files = [p for p in (tmp_path / "cases").rglob("*") if p.is_file()] + [tmp_path / "export.zip"]
    with zipfile.ZipFile(tmp_path / "export.zip") as archive:
        blobs = [archive.read(n) for n in archive.namelist()] + [n.encode() for n in archive.namelist()]
    blobs += [p.read_bytes() for p in files] + [str(p).encode() for p in files] + [listing.encode()]
    for blob in blobs:
        unpacked = _gunzipped(blob)
        for secret in secrets:
            assert secret.encode() not in blob and secret.encode() not in unpacked, secret
    record = json.loads(listing)["cases"][0]
    assert record["shape"] == list(image.shape) and record["model"] == "mskai-bones-demo@0.3.0"


def _knee(knee_dicom):
    from mskai.dicom import plan_volumes, read_volume, scan_folder

    (series,) = scan_folder(knee_dicom).series
    return read_volume(plan_volumes(series)[0])


def _gunzipped(blob: bytes) -> bytes:
    """The NRRD payloads are gzip streams after a text header: look inside them too."""
    import gzip
    import zlib

    start = blob.find(b"\n\n")
    if start < 0:
        return b""
    try:
        return gzip.decompress(blob[start + 2:])
    except (OSError, EOFError, zlib.error):
        return b""


def test_defaults_kept_aside_and_the_shipped_version(model_dirs):
    from mskai.models.registry import default_version, find_model, set_default, shipped_version

    make_package(model_dirs / "bundled" / "test-bones", version="1.0.0")
    make_package(model_dirs / "user" / "test-bones-1.0.0+local.1", version="1.0.0+local.1",
                 local={"parent": "test-bones@1.0.0", "accepted": True})
    make_package(model_dirs / "user" / "test-bones-1.0.0+local.2", version="1.0.0+local.2",
                 local={"parent": "test-bones@1.0.0+local.1", "accepted": False})
    make_package(model_dirs / "user" / ".local-training.mskai-new-1-abc", version="9.9.9")  # a run in progress
    assert find_model("test-bones").version == "1.0.0+local.1"  # local.2 was not better: kept aside
    assert find_model("test-bones@1.0.0+local.2").version == "1.0.0+local.2"  # ...but usable by name
    assert shipped_version("test-bones") == "1.0.0"
    set_default("test-bones", "1.0.0")
    assert default_version("test-bones") == "1.0.0" and find_model("test-bones").version == "1.0.0"
    listing = run_mskai("models", "list").stdout
    assert "test-bones@1.0.0 " in listing and "(default)" in listing.split("test-bones@1.0.0 ")[1].splitlines()[0]
    assert "9.9.9" not in listing and "kept aside" in listing
    run_mskai("models", "use", "test-bones")
    assert find_model("test-bones").version == "1.0.0+local.1"
    run_mskai("models", "use", "test-bones", "--shipped")
    assert find_model("test-bones").version == "1.0.0"
    with pytest.raises(MskaiError):
        set_default("../x", "1")
