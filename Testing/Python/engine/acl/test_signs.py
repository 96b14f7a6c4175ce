"""Tear signs from a knee segmentation, and the grade (or "indeterminate") a small model gives from them."""

import numpy as np
import pytest

from mskai import MskaiError
from mskai.acl import GRADES
from mskai.acl.grading import FEATURES, check_grader, grade_from_signs
from mskai.acl.signs import SIGN_NAMES, SignsUnavailable, frame_to_lps, tear_signs
from mskai.synth.acl_knee import acl_shape_subjects, synthetic_acl_knee


@pytest.fixture(scope="module")
def knees():
    """One synthetic knee (a test subject) with a healthy and with a completely ruptured ACL: the same subject,
    pose, contrast and slices (the generator's split random stream), only the ligament and its fluid differ."""
    subjects = acl_shape_subjects("test")[:1]
    return {grade: synthetic_acl_knee(grade, np.random.default_rng(11), subjects=subjects, with_masks=True)
            for grade in (0, 3)}


def test_a_healthy_acl_is_continuous_and_a_ruptured_one_is_not(knees):
    signs = {}
    for grade, (volume, masks) in knees.items():
        result = tear_signs(masks, volume.affine_lps, volume.array)
        assert set(result["signs"]) == set(SIGN_NAMES)
        signs[grade] = result["signs"]
    healthy, torn = signs[0], signs[3]
    assert healthy["coverage"] > 0.9 and healthy["gap_mm"] <= 2 and healthy["acl_largest_share"] > 0.95
    assert torn["gap_mm"] >= 4 and torn["coverage"] < healthy["coverage"] - 0.15
    assert torn["acl_volume_ml"] < healthy["acl_volume_ml"] and torn["length_to_footprints"] < 1.0
    assert 0.7 < healthy["length_to_footprints"] < 1.8 and 25 < healthy["angle_to_plateau_deg"] < 75
    assert healthy["pcl_volume_ml"] == pytest.approx(torn["pcl_volume_ml"], rel=0.05)  # the same PCL


def test_landmarks_lie_in_the_notch_in_patient_coordinates(knees):
    volume, masks = knees[0]
    landmarks = tear_signs(masks, volume.affine_lps)["landmarks"]
    femoral, tibial = frame_to_lps(landmarks["frame"], [landmarks["acl_femur"], landmarks["acl_tibia"]])
    blumensaat = frame_to_lps(landmarks["frame"], landmarks["blumensaat"])

    def near(mask, point, mm):
        ijk = np.argwhere(mask)
        lps = ijk @ volume.affine_lps[:3, :3].T + volume.affine_lps[:3, 3]
        return np.linalg.norm(lps - point, axis=1).min() <= mm

    assert near(masks["femur"], femoral, 6) and near(masks["tibia"], tibial, 6)  # footprints on their bones
    assert femoral[2] > tibial[2] and femoral[1] > tibial[1]  # the ACL runs down and forwards (LPS: -y anterior)
    assert all(near(masks["femur"], p, 6) for p in blumensaat)  # the roof line runs along the femur


def test_no_pcl_or_no_notch_gives_no_signs_but_a_reason(knees):
    volume, masks = knees[0]
    with pytest.raises(SignsUnavailable, match="posterior cruciate"):
        tear_signs({**masks, "pcl": np.zeros_like(masks["pcl"])}, volume.affine_lps)
    flat = np.zeros_like(masks["femur"])
    flat[:, :, : flat.shape[2] // 2] = masks["femur"].any(2, keepdims=True)  # a femur with no notch at all
    with pytest.raises(SignsUnavailable):
        tear_signs({**masks, "femur": flat, "tibia": np.roll(flat, 40, axis=1)}, volume.affine_lps)


def _grader(weights=None):
    n = len(FEATURES)
    w = np.zeros((len(GRADES), n)) if weights is None else weights
    return {"features": list(FEATURES), "mean": [0.0] * n, "scale": [1.0] * n, "weights": w.tolist(),
            "bias": [0.0] * len(GRADES)}


def test_grade_from_signs_probabilities_torn_and_indeterminate():
    weights = np.zeros((len(GRADES), len(FEATURES)))
    weights[3, FEATURES.index("gap_mm")] = 1.0  # a long gap: complete rupture
    signs = dict.fromkeys(FEATURES, 0.0) | {"signal_to_pcl": 1.0}
    quiet = grade_from_signs(signs | {"gap_mm": 0.0}, _grader(weights))
    assert quiet["indeterminate"] is None and sum(quiet["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    gap = grade_from_signs(signs | {"gap_mm": 5.0}, _grader(weights))
    assert gap["grade"] == "complete rupture" and gap["p_torn"] > 0.9 > quiet["p_torn"]
    far = grade_from_signs(signs | {"coverage": 40.0}, _grader(weights))  # 40 standard deviations out
    assert far["grade"] is None and "coverage" in far["indeterminate"]


def test_the_operating_point_decides_torn_and_the_grade_stays_on_its_side():
    weights = np.zeros((len(GRADES), len(FEATURES)))
    weights[3, FEATURES.index("gap_mm")] = 1.0
    signs = dict.fromkeys(FEATURES, 0.0) | {"signal_to_pcl": 1.0, "gap_mm": 2.0}  # P(torn) 0.81
    assert grade_from_signs(signs, _grader(weights))["grade"] == "complete rupture"
    strict = grade_from_signs(signs, _grader(weights) | {"threshold": 0.9})
    assert strict["threshold"] == 0.9 and strict["p_torn"] < 0.9 and strict["grade"] == "healthy"


def test_the_operating_point_is_the_most_sensitive_one_that_keeps_the_specificity():
    from mskai.training.acl_signs import choose_threshold

    weights = np.zeros((len(GRADES), len(FEATURES)))
    weights[3, FEATURES.index("gap_mm")] = 1.0
    base = dict.fromkeys(FEATURES, 0.0) | {"signal_to_pcl": 1.0}
    gaps = {0: [0.0, 0.5, 1.0, 1.5, 3.0], 3: [1.2, 2.0, 4.0, 5.0, 6.0]}  # one intact knee with a long "gap"
    rows = [{"grade": g, "signs": base | {"gap_mm": v}} for g, values in gaps.items() for v in values]
    rows.append({"grade": 3, "reason": "no notch"})  # unavailable signs are left out
    grader = _grader(weights)
    threshold = choose_threshold(rows, grader, min_specificity=0.8)
    p = {v: grade_from_signs(base | {"gap_mm": v}, grader)["p_torn"] for v in (1.5, 2.0, 3.0)}
    assert p[1.5] < threshold <= p[2.0]  # 4 of 5 intact below it, 4 of 5 torn at or above it
    assert choose_threshold(rows, grader, min_specificity=1.0) > p[3.0]


def test_a_malformed_grader_is_refused():
    good = _grader()
    check_grader(good)
    for broken in ({**good, "features": good["features"][::-1]}, {**good, "scale": [0.0] * len(FEATURES)},
                   {**good, "weights": [[1.0]]}, {k: v for k, v in good.items() if k != "bias"},
                   {**good, "threshold": 1.5}):
        with pytest.raises(MskaiError, match="grader is malformed"):
            check_grader(broken)


def test_knees_measured_in_worker_processes_are_the_knees_measured_in_one():
    from mskai.training.acl_signs import measure_cases

    one = measure_cases(2, "val", 9)
    two = measure_cases(2, "val", 9, workers=2)
    assert [r["grade"] for r in one] == [0, 1] and one == two
