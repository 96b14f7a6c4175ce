"""Subject-level stratified splits of ACL cases, and class weights for balancing."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import numpy as np

from mskai import MskaiError

if TYPE_CHECKING:
    from mskai.training.acl_data.case import AclCase

SPLIT_NAMES = ("train", "val", "test")


def _fractions(fractions) -> dict:
    if isinstance(fractions, dict):
        names, values = list(fractions), list(fractions.values())
    else:
        values = list(fractions)
        names = list(SPLIT_NAMES[:len(values)]) if len(values) <= 3 else [f"part{n}" for n in range(len(values))]
    ok = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values)
    if not ok or abs(sum(values) - 1.0) > 1e-6 or len(set(names)) != len(names):
        raise MskaiError(f"split fractions must be numbers from 0 to 1 that add up to 1, not {fractions!r}")
    return dict(zip(names, (float(v) for v in values)))


def stratified_subject_split(cases, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, list[AclCase]]:
    """Split cases into parts by subject (all cases of a subject in one part), stratified by label.

    fractions: a sequence (parts named train, val, test) or a {name: fraction} dict; they add up to 1.
    Each subject is stratified by its most severe label. Within a stratum, subjects (shuffled with ``seed``,
    larger ones first) go one by one to the part furthest below its share of that stratum's cases, so every
    label is spread in proportion as far as whole subjects allow. Deterministic for a given seed and case list;
    each part keeps the input order.
    """
    shares = _fractions(fractions)
    cases = list(cases)
    by_subject: dict[str, list[int]] = {}
    for n, case in enumerate(cases):
        by_subject.setdefault(case.subject, []).append(n)
    strata: dict[int, list[str]] = {}
    for subject in sorted(by_subject):
        strata.setdefault(max(cases[n].label for n in by_subject[subject]), []).append(subject)
    rng = random.Random(seed)
    names = list(shares)
    part_of: dict[str, str] = {}
    for label in sorted(strata):
        subjects = strata[label]
        rng.shuffle(subjects)
        subjects.sort(key=lambda s: -len(by_subject[s]))  # stable: shuffled order among equal sizes
        total = sum(len(by_subject[s]) for s in subjects)
        filled = dict.fromkeys(names, 0)
        for subject in subjects:
            best = max(names, key=lambda p: (shares[p] * total - filled[p], shares[p], -names.index(p)))
            part_of[subject] = best
            filled[best] += len(by_subject[subject])
    return {name: [c for c in cases if part_of[c.subject] == name] for name in names}


def class_weights(labels, n_classes: int) -> np.ndarray:
    """Per-class weights (loss weights, or sampling weights per case): inverse class frequency, normalised so the
    mean weight per case is 1.

    w[c] = N / (K * n_c) over the K classes present (scikit-learn's "balanced"); absent classes get 0
    (no case carries them, e.g. KneeMRI's empty "minor strain").
    """
    labels = np.asarray(labels, dtype=int)
    if labels.size == 0:
        raise MskaiError("no cases to weigh")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise MskaiError(f"labels must lie in 0-{n_classes - 1}")
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = labels.size / (present.sum() * counts[present])
    return weights
