"""Gaussian-weighted sliding-window inference over a whole image, for any function that maps a batch of windows to
logits (an ONNX Runtime session or a torch network): the same windows and weights as MONAI's
``sliding_window_inference(mode="gaussian")`` with its default sigma, without importing MONAI to run a model."""

from __future__ import annotations

import itertools

import numpy as np

SIGMA_SCALE = 0.125  # sigma of the window weights, as a fraction of the window edge
MIN_WEIGHT = 1e-3  # the weights' floor: window borders still count a little


def window_weights(roi) -> np.ndarray:
    """A separable Gaussian over one window, peak 1, floored at MIN_WEIGHT (float32, shape ``roi``)."""
    weights = np.ones((), dtype=np.float64)
    for n in roi:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        weights = np.multiply.outer(weights, np.exp(-(x**2) / (2 * (SIGMA_SCALE * n) ** 2)))
    return np.maximum(weights, max(weights.min(), MIN_WEIGHT)).astype(np.float32)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis: every ``int(roi * (1 - overlap))`` voxels, the last one flush with the end."""
    if size <= roi:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    n = next(i for i in range(size) if i * step + roi >= size) + 1
    return [min(i * step, size - roi) for i in range(n)]


def count_windows(shape, roi, overlap) -> int:
    return int(np.prod([len(window_starts(s, r, overlap)) for s, r in zip(shape, roi)]))


def sliding_windows(run, image: np.ndarray, roi, n_classes: int, overlap: float = 0.25, batch: int = 2,
                    on_batch=None) -> np.ndarray:
    """Logits (n_classes x spatial, float32) of ``image`` (channels x spatial, float32) by Gaussian-weighted
    windows of ``roi`` voxels: ``run(windows)`` maps B x channels x roi to B x n_classes x roi (numpy).
    An image smaller than a window is padded with zeros on both sides. ``on_batch(windows_done)`` after each batch
    (raise in it to stop)."""
    spatial = image.shape[1:]
    pad = [max(0, r - s) for s, r in zip(spatial, roi)]
    if any(pad):
        image = np.pad(image, [(0, 0)] + [(p // 2, p - p // 2) for p in pad])
    size = image.shape[1:]
    weights = window_weights(roi)
    logits = np.zeros((n_classes, *size), dtype=np.float32)
    total = np.zeros(size, dtype=np.float32)
    corners = list(itertools.product(*(window_starts(s, r, overlap) for s, r in zip(size, roi))))
    for first in range(0, len(corners), batch):
        chunk = corners[first:first + batch]
        boxes = [tuple(slice(c, c + r) for c, r in zip(corner, roi)) for corner in chunk]
        out = run(np.ascontiguousarray(np.stack([image[(slice(None), *box)] for box in boxes])))
        for box, window in zip(boxes, out):
            logits[(slice(None), *box)] += window * weights
            total[box] += weights
        if on_batch:
            on_batch(first + len(chunk))
    logits /= total
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pad, spatial))
    return logits[(slice(None), *crop)]
