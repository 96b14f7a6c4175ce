"""The tear-sign grader: signs measured on synthetic knees of one subject split, a multinomial logistic model fitted
on the training split (scikit-learn), and its evaluation on the held-out split (AUC torn vs intact, macro F1,
specificity at the reported operating point, how often the signs are unavailable).

``segmenter``: a knee ligament package (id, path or package) whose masks {"acl", "pcl", "femur", "tibia"} are measured.
None measures the generator's own masks (the ceiling: what the signs can tell when the segmentation is perfect).
"""

from __future__ import annotations

import numpy as np

from mskai.acl import GRADES, to_binary


def _measure_one(i: int, subjects: list, seed: int, segment) -> dict:
    from mskai.acl.signs import SignsUnavailable, tear_signs
    from mskai.synth.acl_knee import synthetic_acl_knee

    grade = i % 4
    volume, truth = synthetic_acl_knee(grade, np.random.default_rng(seed * 1_000_003 + i), subjects=subjects,
                                       with_masks=True)
    masks = truth if segment is None else segment(volume)
    try:
        return {"grade": grade, "signs": tear_signs(masks, volume.affine_lps, volume.array)["signs"]}
    except SignsUnavailable as exc:
        return {"grade": grade, "reason": str(exc)}


def _segment_function(segmenter):
    from mskai.acl.ligaments import ligament_segmenter

    return ligament_segmenter(segmenter) if segmenter else None


_WORKER = {}  # the segment function of a worker process, built once by _start_worker


def _start_worker(segmenter):
    import torch

    torch.set_num_threads(1)
    _WORKER["segment"] = _segment_function(segmenter)


def _measure_in_worker(job):
    return _measure_one(*job, _WORKER["segment"])


def measure_cases(n: int, split: str, seed: int, segmenter=None, progress=None, workers: int = 1) -> list[dict]:
    """Signs of ``n`` synthetic knees (grades in turn) of one OAI subject split: {"grade", "signs" or "reason"}.

    workers > 1: that many processes (one thread each), each loading ``segmenter`` itself. The same rows, in the
    same order, either way."""
    from mskai.synth.acl_knee import acl_shape_subjects

    subjects = acl_shape_subjects(split)
    jobs = [(i, subjects, seed) for i in range(n)]

    def collect(results):
        rows = []
        for row in results:
            rows.append(row)
            if progress:
                progress(len(rows), n)
        return rows

    if workers <= 1:
        segment = _segment_function(segmenter)
        return collect(_measure_one(*job, segment) for job in jobs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                             initargs=(segmenter,)) as pool:
        return collect(pool.map(_measure_in_worker, jobs))


def fit_grader(rows: list[dict], c: float = 1.0) -> dict:
    """A grader (``mskai.acl.grading`` JSON) fitted on the rows with signs."""
    from sklearn.linear_model import LogisticRegression

    from mskai.acl.grading import FEATURES, feature_vector

    usable = [r for r in rows if "signs" in r]
    x = np.stack([feature_vector(r["signs"]) for r in usable])
    y = np.array([r["grade"] for r in usable])
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    model = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, y)
    weights = np.zeros((len(GRADES), len(FEATURES)))
    bias = np.full(len(GRADES), -30.0)  # a grade absent from the fit is never predicted
    weights[model.classes_] = model.coef_
    bias[model.classes_] = model.intercept_
    return {"features": list(FEATURES), "mean": mean.round(6).tolist(), "scale": scale.round(6).tolist(),
            "weights": weights.round(6).tolist(), "bias": bias.round(6).tolist(), "fitted_on": len(usable)}


def choose_threshold(rows: list[dict], grader: dict, min_specificity: float = 0.8) -> float:
    """The operating point on validation rows: the P(torn) threshold with the highest sensitivity among those whose
    specificity is at least ``min_specificity`` (the strictest threshold if none reaches it)."""
    from mskai.acl.grading import grade_from_signs

    scored = [(to_binary(r["grade"]), grade_from_signs(r["signs"], grader)["p_torn"]) for r in rows if "signs" in r]
    torn = np.array([t for t, _ in scored])
    p_torn = np.array([p for _, p in scored])
    if not (torn == 0).any() or not (torn == 1).any():
        raise ValueError("choosing an operating point needs torn and intact validation knees")
    best = (-1.0, 0.0, 0.99)
    for t in np.unique(np.clip(p_torn, 0.01, 0.99)):
        sensitivity, specificity = (p_torn[torn == 1] >= t).mean(), (p_torn[torn == 0] < t).mean()
        key = (sensitivity if specificity >= min_specificity else -1.0, specificity, float(t))
        best = max(best, key)
    return round(best[2], 4)


def evaluate_grader(rows: list[dict], grader: dict) -> dict:
    """Figures of the grader on held-out rows at its operating point; an unavailable or indeterminate knee counts
    as indeterminate."""
    from sklearn.metrics import f1_score, roc_auc_score

    from mskai.acl.grading import grade_from_signs, threshold_of

    threshold = threshold_of(grader)
    graded, indeterminate = [], 0
    for r in rows:
        result = grade_from_signs(r["signs"], grader) if "signs" in r else None
        if result is None or result["indeterminate"]:
            indeterminate += 1
            continue
        graded.append((r["grade"], result))
    truth = np.array([g for g, _ in graded])
    torn = np.array([to_binary(g) for g in truth])
    p_torn = np.array([res["p_torn"] for _, res in graded])
    predicted = np.array([GRADES.index(res["grade"]) for _, res in graded])
    called = p_torn >= threshold
    both = len(set(torn.tolist())) == 2
    return {"cases": len(rows), "graded": len(graded), "indeterminate": indeterminate,
            "auc_torn": round(float(roc_auc_score(torn, p_torn)), 4) if both else None,
            "macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4) if len(graded) else None,
            "accuracy_4": round(float((predicted == truth).mean()), 4) if len(graded) else None,
            "sensitivity": round(float(called[torn == 1].mean()), 4) if (torn == 1).any() else None,
            "specificity": round(float((~called[torn == 0]).mean()), 4) if (torn == 0).any() else None,
            "threshold": threshold}
