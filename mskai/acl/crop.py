"""The in-plane square the ACL network sees: centred on the knee (the foreground centroid of the central slices)
or, with ``joint_crop``, on the intercondylar notch found from the bone model's femur and tibia; and the
resampling matrices from the input rows and columns onto the network's pixels and back.

Coordinates are those of the layout (``lay``: preprocess's _Layout): slices L->R, rows S->I, columns A->P; ``config`` is
the AclPreprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mskai import MskaiError
from mskai.acl.slices import _window
from mskai.segment.labels import BONE_VALUES
from mskai.volume import Volume


FEMUR, TIBIA = BONE_VALUES["femur"], BONE_VALUES["tibia"]  # the bone model's labels
CONDYLE_MM = 25.0  # the distal femur (condyles) and ...
PLATEAU_MM = 15.0  # ... the proximal tibia that locate the notch
BONE_GAP_MM = 20.0  # femur's lowest point may lie at most this far below the tibial plateau (else labels are wrong)


@dataclass
class _Crop:
    """Where the network looks, in layout coordinates: the centre slice and the K slices around it, the centre
    row and column of the square, its side in mm, and what it is centred on."""

    centre_slice: int
    central: np.ndarray
    ch: float
    cw: float
    side: float
    source: str


def _knee_crop(lay, config, threshold: float, notes: dict) -> _Crop:
    """The plain crop: the K slices centred on the slice with the widest foreground (above ``threshold``, raw
    units), the ``field_mm`` square centred on their foreground centroid, or the whole slice (field_mm None)."""
    n, h0, w0 = lay.layout.shape
    sp_h, sp_w = lay.spacing
    area = np.count_nonzero(lay.canonical > threshold, axis=(1, 2)).astype(np.float64)
    smooth = np.convolve(np.pad(area, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    widest = int(np.argmax(smooth))
    notes["widest_slice"] = lay.to_input(widest)
    central = _window(n, config.depth, widest)
    fg = lay.layout[np.unique(central)] > threshold
    total = fg.sum()
    if total:
        ch = float((fg.sum(axis=(0, 2)) * np.arange(h0)).sum() / total)
        cw = float((fg.sum(axis=(0, 1)) * np.arange(w0)).sum() / total)
        source = "knee centre (foreground centroid)"
    else:
        ch, cw, source = (h0 - 1) / 2, (w0 - 1) / 2, "slice centre (no foreground found)"
    side = config.field_mm
    if side is None:
        side = max(h0 * sp_h, w0 * sp_w)
        ch, cw, source = (h0 - 1) / 2, (w0 - 1) / 2, "whole slice"
    return _Crop(widest, central, ch, cw, side, source)


def _centre_on_notch(crop: _Crop, lay, volume: Volume, config, bone_segmenter,
                     notes: dict) -> _Crop:
    """The ``joint_crop_mm`` square and the K slices centred on the intercondylar notch of the bone model's labels;
    ``crop`` as it is (with a note why) when they hold no femur or tibia."""
    if bone_segmenter is None:
        raise MskaiError("this model crops around the knee joint and needs the bone model (bone_segmenter)")
    labels = bone_segmenter(volume)
    array = getattr(labels, "array", labels)
    if np.shape(array) != tuple(volume.shape) or (
            isinstance(labels, Volume) and not np.allclose(labels.affine_lps, volume.affine_lps, atol=1e-3)):
        raise MskaiError("the bone model's labels are not on the input volume's grid")
    found = _notch(lay.layout_of(np.asarray(array)), lay.spacing[0])
    if isinstance(found, str):
        notes["joint_crop"] = f"{found}: plain crop around the knee centre instead"
        return crop
    n = lay.layout.shape[0]
    ns, ch, cw = found
    centre_slice = int(np.clip(round(ns), 0, n - 1))
    notes["joint_crop"] = "centred on the intercondylar notch"
    notes["notch_lps_mm"] = lay.to_lps(ns, ch, cw)
    notes["notch_slice"] = lay.to_input(centre_slice)
    return _Crop(centre_slice, _window(n, config.depth, centre_slice), ch, cw, config.joint_crop_mm,
                 "intercondylar notch (bone model)")


def _resampling(crop: _Crop, lay, size: int, notes: dict):
    """(down_h, down_w, up_h, up_w): the crop's rows and columns onto ``size`` network pixels (float32,
    ``_down_matrix``) and back onto the layout's (``_up_matrix``)."""
    _, h0, w0 = lay.layout.shape
    sp_h, sp_w = lay.spacing
    side = crop.side
    len_h, len_w = side / sp_h, side / sp_w
    start_h, start_w = crop.ch + 0.5 - len_h / 2, crop.cw + 0.5 - len_w / 2
    down_h = _down_matrix(h0, start_h, len_h, size).astype(np.float32)
    down_w = _down_matrix(w0, start_w, len_w, size).astype(np.float32)
    notes["crop"] = {"source": crop.source, "side_mm": round(float(side), 2),
                     "centre_lps_mm": lay.to_lps(crop.centre_slice, crop.ch, crop.cw),
                     "output_pixel_mm": round(float(side) / size, 4)}
    return down_h, down_w, _up_matrix(h0, start_h, len_h, size), _up_matrix(w0, start_w, len_w, size)


def _down_matrix(n_in: int, start: float, length: float, size: int) -> np.ndarray:
    """(size, n_in) weights: output pixel u covers input coordinates [start + u L/size, start + (u+1) L/size)
    (pixel r covers [r, r+1)). Triangle (linear) kernel widened to the scale when shrinking (anti-aliased);
    positions outside the image weigh in as zeros (zero padding)."""
    scale = length / size
    support = max(1.0, scale)
    x = start + (np.arange(size) + 0.5) * scale - 0.5  # index coordinate of each output centre
    first = int(np.floor(x.min() - support))
    r = np.arange(first, int(np.ceil(x.max() + support)) + 1)
    w = np.clip(1.0 - np.abs(r[None, :] - x[:, None]) / support, 0.0, None)
    w /= w.sum(axis=1, keepdims=True)
    out = np.zeros((size, n_in))
    inside = (r >= 0) & (r < n_in)
    out[:, r[inside]] = w[:, inside]
    return out


def _up_matrix(n_in: int, start: float, length: float, size: int) -> np.ndarray:
    """(n_in, size) bilinear weights from the output grid back to input pixels; rows outside the crop are 0."""
    c = np.arange(n_in) + 0.5
    inside = (c >= start) & (c < start + length)
    y = np.clip((c - start) * size / length - 0.5, 0, size - 1)
    lo = np.floor(y).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    w = y - lo
    out = np.zeros((n_in, size))
    rows = np.arange(n_in)
    np.add.at(out, (rows, lo), 1.0 - w)
    np.add.at(out, (rows, hi), w)
    out[~inside] = 0.0
    return out


def _notch(labels: np.ndarray, spacing_h: float):
    """(slice, row, column) of the intercondylar notch in layout coordinates, or a reason string.

    labels: the bone labels in layout order (slices L->R, rows S->I, columns A->P).
    Row: midway between the femur's lowest points and the tibial plateau. Slice: middle of the condyles'
    left-right extent. Column: middle of the antero-posterior extent of condyles and plateau.
    Extremes are 0.5 / 99.5 percentiles, so stray voxels do not move them.
    """
    femur, tibia = np.nonzero(labels == FEMUR), np.nonzero(labels == TIBIA)
    missing = [name for name, idx in (("femur", femur), ("tibia", tibia)) if idx[0].size == 0]
    if missing:
        return f"the bone model found no {' or '.join(missing)}"
    femur_low = np.percentile(femur[1], 99.5)  # rows grow towards inferior
    tibia_top = np.percentile(tibia[1], 0.5)
    if (femur_low - tibia_top) * spacing_h > BONE_GAP_MM:
        return "femur and tibia labels overlap implausibly (femur far below the tibial plateau)"
    condyles = femur[1] >= femur_low - CONDYLE_MM / spacing_h
    plateau = tibia[1] <= tibia_top + PLATEAU_MM / spacing_h
    s = np.percentile(femur[0][condyles], [0.5, 99.5]).mean()
    w = np.percentile(np.concatenate([femur[2][condyles], tibia[2][plateau]]), [0.5, 99.5]).mean()
    return float(s), float((femur_low + tibia_top) / 2), float(w)
