"""An ACL grade from the tear signs (``mskai.acl.signs``): a small multinomial logistic model stored as plain JSON
numbers in the model package (fitted by ``mskai.training.acl_signs``), and the rules that say "indeterminate".

The model reads standardised signs; P(torn) is P(partial) + P(complete), as MRNet counts partial tears as tears.
A knee is called torn when P(torn) reaches the grader's ``threshold`` (the operating point chosen on validation
knees; 0.5 when the grader names none), and its grade is the likeliest grade on that side.
Signs far outside the range the model was fitted on (``MAX_Z``), or signs that could not be measured, give no
grade: the report says "indeterminate" and why.
"""

from __future__ import annotations

import numpy as np

from mskai import MskaiError
from mskai.acl import GRADES

FEATURES = ("acl_to_pcl_volume", "acl_largest_share", "coverage", "gap_mm", "length_to_footprints",
            "angle_to_blumensaat_deg", "angle_to_plateau_deg", "log_signal_to_pcl", "notch_fill", "acl_pieces")
MAX_Z = 6.0  # a sign this many standard deviations from the fitted knees' mean is outside what the model knows
DEFAULT_THRESHOLD = 0.5  # the operating point of a grader that names none


def threshold_of(grader: dict) -> float:
    """The P(torn) from which the grader calls a knee torn."""
    return float(grader.get("threshold", DEFAULT_THRESHOLD))


def feature_vector(signs: dict) -> np.ndarray:
    """The model's inputs from a signs dict (``log_signal_to_pcl`` derived; a missing signal counts as 1)."""
    values = dict(signs)
    values["log_signal_to_pcl"] = float(np.log(max(values.get("signal_to_pcl", 1.0), 1e-3)))
    return np.array([float(values[name]) for name in FEATURES])


def check_grader(grader: dict, where: str = "the model package") -> dict:
    """``grader`` if it is a well-formed signs model (features, mean, scale, weights, bias), else MskaiError."""
    try:
        n, k = len(FEATURES), len(GRADES)
        ok = (list(grader["features"]) == list(FEATURES) and np.shape(grader["mean"]) == (n,)
              and np.shape(grader["scale"]) == (n,) and np.shape(grader["weights"]) == (k, n)
              and np.shape(grader["bias"]) == (k,) and np.all(np.isfinite(grader["weights"]))
              and np.all(np.asarray(grader["scale"], dtype=float) > 0)
              and 0.0 < threshold_of(grader) < 1.0)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise MskaiError(f"{where}: the tear-sign grader is malformed (features {', '.join(FEATURES)} expected)")
    return grader


def grade_from_signs(signs: dict, grader: dict) -> dict:
    """{"probabilities": per grade, "p_torn", "threshold", "grade", "indeterminate": reason or None, "outside": signs
    out of range} from measured signs."""
    x = feature_vector(signs)
    z = (x - np.asarray(grader["mean"], dtype=float)) / np.asarray(grader["scale"], dtype=float)
    logits = np.asarray(grader["weights"], dtype=float) @ z + np.asarray(grader["bias"], dtype=float)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    outside = [name for name, value in zip(FEATURES, z) if abs(value) > MAX_Z]
    reason = (f"signs outside the range the grader knows: {', '.join(outside)}" if outside else None)
    threshold = threshold_of(grader)
    p_torn = float(p[2:].sum())
    side = slice(2, None) if p_torn >= threshold else slice(0, 2)
    grade = GRADES[side.start + int(np.argmax(p[side]))]
    return {"probabilities": {g: round(float(v), 4) for g, v in zip(GRADES, p)}, "p_torn": round(p_torn, 4),
            "threshold": threshold, "grade": None if reason else grade, "indeterminate": reason, "outside": outside}
