"""Anatomical plausibility of a bone label map, without a reference: checks a radiologist makes at a glance.

Coordinates are patient LPS millimetres (from the label map's affine): superior is +S, anterior is -P.
Each check returns ``{"check", "passed", "detail"}``; ``passed`` is None when the check does not apply
(a bone it needs is absent).
"""

from __future__ import annotations

import numpy as np

from mskai.segment.labels import BONE_VALUES
from mskai.segment.postprocess import chunked_pieces
from mskai.volume import Volume

KNEE_FOV_MAX_MM = 350.0  # a field of view up to this tall around a knee cannot hold a hip bone
MAX_STRAY_ML = 1.0
MAX_WRONG_SIDE_FRACTION = 0.01
# below the femoral head's top: the ischium reaches 72-93 mm below it in the 4 real pelves, the lesser trochanter
# lies about 90-100 mm below it; 130 mm leaves room for posture and slice thickness
LESSER_TROCHANTER_MM = 130.0


def _points(labels: Volume, value: int) -> np.ndarray:
    """LPS coordinates (mm) of a label's voxel centres."""
    return labels.ijk_to_lps(np.argwhere(np.asarray(labels.array) == value))


def _legs(femur: np.ndarray, tibia: np.ndarray) -> float | None:
    """The L coordinate between two legs, or None when the scan shows one leg.

    Two legs: the bones' L coordinates split into two groups more than 60 mm apart (knees are ~150 mm apart).
    """
    x = np.concatenate([femur[:, 0], tibia[:, 0]])
    if len(x) < 2:
        return None
    lo, hi = np.percentile(x, [5, 95])
    middle = (lo + hi) / 2
    left, right = x[x > middle], x[x <= middle]
    if len(left) and len(right) and np.median(left) - np.median(right) > 60:
        return float(middle)
    return None


def _pieces(labels: np.ndarray, value: int) -> int:
    """26-connected pieces of one label; the pieces touching the field of view's border count as one, since the
    border may cut one bone into several (the two condyles below the notch's roof). Found chunk by chunk, as the
    clean-up does, so a whole-limb map needs no full-size array of component numbers."""
    _, _, boxes, _ = chunked_pieces(labels, value)
    on_border = sum(bool((lo == 0).any() or (hi == labels.shape).any()) for lo, hi in boxes)
    return len(boxes) - on_border + (1 if on_border else 0)


def plausibility(labels: Volume) -> list[dict]:
    """Run every check on a bone label map (values of the project's label table)."""
    voxel_ml = float(abs(np.linalg.det(labels.affine_lps[:3, :3]))) / 1000.0
    points = {name: _points(labels, value) for name, value in BONE_VALUES.items()}
    corners = labels.ijk_to_lps(np.array(np.meshgrid(*[[0, n - 1] for n in labels.shape], indexing="ij")).reshape(3, -1).T)
    height = float(np.ptp(corners[:, 2]))
    femur, tibia, patella, pelvis = points["femur"], points["tibia"], points["patella"], points["pelvis"]
    split = _legs(femur, tibia)
    legs = [lambda p: np.ones(len(p), bool)] if split is None else [lambda p: p[:, 0] > split,
                                                                      lambda p: p[:, 0] <= split]
    checks = []

    knee = len(tibia) > 0 and height <= KNEE_FOV_MAX_MM
    pelvis_ml = len(pelvis) * voxel_ml
    checks.append({"check": "no hip bone in a knee field of view",
                   "passed": (pelvis_ml <= MAX_STRAY_ML) if knee else None,
                   "detail": f"hip bone {pelvis_ml:.1f} mL in a {height:.0f} mm tall field of view with a tibia"})

    head_top = None
    if len(pelvis) and len(femur):  # the femoral head is in view when the femur ends inside the field of view
        top = float(femur[:, 2].max())
        head_top = top if top < corners[:, 2].max() - 5 else None
    low = float((pelvis[:, 2] < head_top - LESSER_TROCHANTER_MM).mean()) if head_top is not None else 0.0
    checks.append({"check": "no hip bone below the lesser trochanter",
                   "passed": (low <= MAX_WRONG_SIDE_FRACTION) if head_top is not None else None,
                   "detail": f"{100 * low:.1f} % of the hip bone more than {LESSER_TROCHANTER_MM:.0f} mm below the "
                             "femoral head's top" if head_top is not None else "no femoral head in view"})

    for bone, other, word in ((tibia, femur, "tibia above the femur's centre"),
                              (femur, tibia, "femur below the tibia's centre")):
        fractions = []
        for leg in legs:
            b, o = bone[leg(bone)], other[leg(other)]
            if len(b) and len(o):
                centre = o[:, 2].mean()
                wrong = b[:, 2] > centre if word.startswith("tibia") else b[:, 2] < centre
                fractions.append(float(wrong.mean()))
        checks.append({"check": f"no {word}",
                       "passed": (max(fractions) <= MAX_WRONG_SIDE_FRACTION) if fractions else None,
                       "detail": f"{100 * max(fractions, default=0):.1f} % of the voxels"})

    n_legs = len(legs)
    pieces = {name: _pieces(np.asarray(labels.array), value) for name, value in BONE_VALUES.items() if len(points[name])}
    too_many = {name: n for name, n in pieces.items() if n > (2 if name == "pelvis" else n_legs)}
    checks.append({"check": "each bone one piece per leg", "passed": not too_many if pieces else None,
                   "detail": ", ".join(f"{name} {n}" for name, n in pieces.items()) + f" pieces; {n_legs} leg(s)"})

    anterior = None
    if len(patella) and len(femur):
        near = femur[np.abs(femur[:, 2] - patella[:, 2].mean()) < 50]
        if len(near):
            anterior = float(near[:, 1].mean() - patella[:, 1].mean())  # LPS: anterior is -P
    checks.append({"check": "patella anterior to the femur", "passed": (anterior > 0) if anterior is not None else None,
                   "detail": "no patella and femur at one level" if anterior is None
                   else f"patella {anterior:.1f} mm anterior of the femur at its level"})
    return checks


def solidity(labels: Volume, value: int, max_points: int = 200_000) -> float | None:
    """A bone's volume over its convex hull's (None when absent): holes in the marrow and bone label leaking into
    the soft tissue beside it (the popliteal fossa) lower it; compare with the same bone of reference masks."""
    from scipy.spatial import ConvexHull, QhullError

    points = _points(labels, value)
    if len(points) < 10:
        return None
    sample = points[:: max(1, len(points) // max_points)]
    try:
        hull = ConvexHull(sample).volume
    except QhullError:  # flat or degenerate
        return None
    return round(float(len(points) * abs(np.linalg.det(labels.affine_lps[:3, :3])) / hull), 3)


def passed(checks: list[dict]) -> bool:
    """True when no applicable check failed."""
    return all(c["passed"] is not False for c in checks)
