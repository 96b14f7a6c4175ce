"""Which sagittal slices the ACL network sees: K slices around a centre (edges repeated when there are fewer),
or all slices reduced to K NMF basis images."""

from __future__ import annotations

import warnings

import numpy as np

NMF_MAX_ITER = 100  # the fit error changes < 1 % of itself from 100 to 200 iterations


def _window(n: int, k: int, centre: int) -> np.ndarray:
    """k slice indices centred on ``centre``; fewer than k slices: all of them, edges repeated."""
    if n >= k:
        start = int(np.clip(centre - k // 2, 0, n - k))
        return np.arange(start, start + k)
    before = (k - n) // 2
    return np.concatenate([np.zeros(before, int), np.arange(n), np.full(k - n - before, n - 1)])


def _nmf(stack: np.ndarray, k: int, notes: dict):
    """(K basis images scaled to maximum 1, (rows, K) coefficients for the scaled bases)."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    v = stack.reshape(stack.shape[0], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = NMF(n_components=k, init="nndsvd", max_iter=NMF_MAX_ITER, random_state=0)
        w = model.fit_transform(v)
    h = model.components_
    peak = h.max(axis=1)
    scale = np.where(peak > 0, peak, 1.0)
    bases = (h / scale[:, None]).astype(np.float32).reshape((k,) + stack.shape[1:])
    w = w * scale[None, :]
    norm = float(np.linalg.norm(v))
    notes["nmf_relative_error"] = round(float(np.linalg.norm(v - w @ bases.reshape(k, -1))) / norm, 4) if norm else 0.0
    notes["nmf_iterations"] = int(model.n_iter_)
    return bases, w
