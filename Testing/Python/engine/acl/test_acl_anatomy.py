"""The ACL read from anatomy end to end: the ligament segmentation written beside the report, the tear signs and
their grade in report.json, "indeterminate" with its reason when the anatomy cannot be read, and the signs measured
again on a corrected segmentation (`mskai acl-signs`)."""

import json

import numpy as np
import pytest

from conftest import make_acl_package, run_mskai, torn_knee_with_packages
from mskai import MskaiError
from mskai.acl import GRADES
from mskai.models.package import load_package
from mskai.volume import Volume
from mskai.volume_files import write_volume


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    """A synthetic knee with a complete rupture (a test subject), its truth written as the radiologist's corrected
    ligaments.seg.nrrd, and an ACL package that reads anatomy with a ligament package."""
    folder = tmp_path_factory.mktemp("anatomy")
    volume, _, acl = torn_knee_with_packages(folder)
    write_volume(volume, folder / "knee.nrrd")
    return folder, acl


def test_classify_writes_the_ligaments_and_says_indeterminate_when_they_are_not_found(knee):
    folder, acl = knee
    result = run_mskai("classify", folder / "knee.nrrd", "-o", folder / "out", "--model", acl)
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["files"]["ligaments"] == "ligaments.seg.nrrd" and (folder / "out" / "ligaments.seg.nrrd").is_file()
    # a ligament network that finds nothing: no grade, the reason, the image classifier kept apart
    assert report["predicted"] == "indeterminate" and "posterior cruciate" in report["indeterminate_reason"]
    assert report["anatomy"]["signs"] is None and set(report["cnn"]["probabilities"]) == set(GRADES)
    assert "indeterminate" in result.stdout and "anatomy" in report["timings_s"]


def test_a_corrected_segmentation_is_graded_from_its_signs(knee, tmp_path):
    folder, acl = knee
    result = run_mskai("acl-signs", folder / "knee.nrrd", folder / "corrected.seg.nrrd", "--model", acl,
                       "--json", tmp_path / "signs.json")
    anatomy = json.loads((tmp_path / "signs.json").read_text())
    assert anatomy["grade"] == "complete rupture" and anatomy["p_torn"] > 0.9  # a gap: torn, by this grader
    assert anatomy["signs"]["gap_mm"] >= 4 and "gap_mm" in result.stdout
    line = np.array(anatomy["landmarks"]["blumensaat_line_lps"])
    assert line.shape == (2, 3) and 10 < np.linalg.norm(line[1] - line[0]) < 60  # the notch roof, in mm


def test_a_segmentation_on_another_grid_or_a_package_without_anatomy_is_refused(knee, tmp_path):
    from mskai.acl.anatomy import reread_anatomy
    from mskai.volume_files import read_volume_file

    folder, acl = knee
    image = read_volume_file(folder / "knee.nrrd")
    shifted = image.affine_lps.copy()
    shifted[0, 3] += 5.0  # 5 mm to the left: another grid
    moved = Volume(image.array, shifted)
    with pytest.raises(MskaiError, match="not on the image's grid"):
        reread_anatomy(folder / "corrected.seg.nrrd", moved, load_package(acl))
    plain = make_acl_package(tmp_path / "plain")
    with pytest.raises(MskaiError, match="reads no anatomy"):
        reread_anatomy(folder / "corrected.seg.nrrd", image, load_package(plain))
    broken = make_acl_package(tmp_path / "broken", anatomy={"ligament_model": "x", "grader": {"features": []}})
    result = run_mskai("classify", folder / "knee.nrrd", "-o", tmp_path / "out", "--model", broken, ok=False)
    assert result.returncode != 0 and "grader is malformed" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "report.json").exists()


def test_the_shipped_model_gives_no_grade_on_a_sagittal_hip_or_a_phantom(tmp_path):
    """Non-knee sagittal volumes the network was never shown: a hip (bones of a hip CT person drawn as an MR-like
    image, 3.5 mm sagittal slices) and the MR phantom. The bundled 0.4.0 says indeterminate, with the reason."""
    from scipy import ndimage

    from mskai.acl.run import classify_to_folder
    from mskai.synth.hip_ct import hip_ct_subjects, load_hip_ct
    from mskai.synth.phantom import phantom

    labels, affine = load_hip_ct(hip_ct_subjects()[0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    step = max(1, int(round(3.5 / spacing[0])))
    body = ndimage.binary_dilation(labels > 0, iterations=15)
    image = np.where(body, 350.0, 20.0) + np.where(labels > 0, 630.0, 0.0)
    image = ndimage.gaussian_filter(image, 1.0) + np.random.default_rng(0).normal(0, 25, image.shape)
    image = ndimage.uniform_filter1d(image, step, axis=0)[::step]
    hip = Volume(image.astype(np.int16), np.diag([-spacing[0] * step, -spacing[1], spacing[2], 1.0]))
    write_volume(hip, tmp_path / "hip.nrrd")
    write_volume(phantom(shape=(256, 256, 40), spacing=(0.6, 0.6, 3.5)), tmp_path / "phantom.nrrd")
    for name in ("hip", "phantom"):
        report = classify_to_folder(tmp_path / f"{name}.nrrd", tmp_path / name)
        assert report["model"]["version"] == "0.4.0" and report["predicted"] == "indeterminate", name
        assert report["indeterminate_reason"] and report["anatomy"]["p_torn"] is None
