"""One path from a Volume to the model's grid and back, shared by training and inference.

canonical: voxel axes permuted/flipped to the closest of R, A, S (no interpolation);
model grid: the canonical grid resampled (trilinear) to the model's spacing;
intensities: clipped to percentiles and scaled to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from mskai import MskaiError
from mskai.volume import Volume

MIN_VOXELS_PER_AXIS = 8
MAX_VOXELS = 1_500_000_000


@dataclass
class CanonicalGrid:
    """How an input volume maps onto the model grid."""

    ornt: np.ndarray  # nibabel orientation: input axis -> canonical axis, flip
    input_shape: tuple
    canonical_shape: tuple
    canonical_spacing: np.ndarray
    model_shape: tuple
    canonical_affine_ras: np.ndarray

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(array, self.ornt)

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        inverse = np.zeros_like(self.ornt)
        for axis, (target, flip) in enumerate(self.ornt):
            inverse[int(target)] = (axis, flip)
        return nib.orientations.apply_orientation(array, inverse)


def check_input(volume: Volume):
    """Refuse volumes a model cannot use, with the reason."""
    if volume.array.ndim != 3 or min(volume.shape) < MIN_VOXELS_PER_AXIS:
        raise MskaiError(f"Volume {volume.shape} is too small: each axis needs at least {MIN_VOXELS_PER_AXIS} voxels")
    if math.prod(volume.shape) > MAX_VOXELS:
        raise MskaiError(f"Volume {volume.shape} is too large ({math.prod(volume.shape) / 1e6:.0f} M voxels; "
                         f"limit {MAX_VOXELS / 1e6:.0f} M): crop it or use a slab")
    if not np.all((volume.spacing > 1e-3) & (volume.spacing < 1000)):
        raise MskaiError(f"Voxel size {np.round(volume.spacing, 4).tolist()} mm is outside 0.001-1000 mm")
    if volume.array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise MskaiError(f"Volume has {bad} NaN/infinite voxels; fix or mask them before segmenting")


def model_grid_shape(shape, spacing, target_spacing) -> tuple:
    """Voxels per axis when ``shape`` voxels of ``spacing`` mm are resampled to ``target_spacing`` mm."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing))


def canonical_grid(volume: Volume, spacing_mm) -> CanonicalGrid:
    ornt = nib.orientations.io_orientation(volume.affine_ras)
    order = ornt[:, 0].astype(int)
    canonical_shape = tuple(int(volume.shape[i]) for i in np.argsort(order))
    canonical_spacing = volume.spacing[np.argsort(order)]
    model_shape = model_grid_shape(canonical_shape, canonical_spacing, spacing_mm)
    affine = volume.affine_ras @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    return CanonicalGrid(ornt, tuple(volume.shape), canonical_shape, canonical_spacing, model_shape, affine)


def intensity_window(array, method: dict) -> tuple:
    """(low, high) intensities a model package's normalisation maps to 0 and 1 (from a strided sample)."""
    if method["method"] != "percentile":
        raise MskaiError(f"Unknown intensity normalisation {method['method']!r}")
    step = max(1, int(np.ceil((np.size(array) / 2_000_000) ** (1 / 3))))
    sample = np.asarray(array)[::step, ::step, ::step]  # a strided view: no full-size copy
    lo, hi = np.percentile(sample, [method.get("lower", 0.5), method.get("upper", 99.5)])
    if hi <= lo:
        raise MskaiError("Volume has (almost) constant intensity: nothing to segment")
    return float(lo), float(hi)


def _scale(t: torch.Tensor, window) -> torch.Tensor:
    lo, hi = window
    return t.sub_(lo).div_(hi - lo).clamp_(0.0, 1.0)


def normalise(array, method: dict) -> np.ndarray:
    """Intensity normalisation named in a model package: ``{"method": "percentile", "lower": 0.5, "upper": 99.5}``."""
    out = np.array(array, dtype=np.float32)  # one copy; everything after works in place
    return _scale(torch.from_numpy(out), intensity_window(out, method)).numpy()


def resample(array: np.ndarray, shape, mode: str = "trilinear") -> torch.Tensor:
    """Resample a 3D array (or C x 3D) to ``shape`` (same physical extent, voxel centres aligned)."""
    t = torch.as_tensor(np.ascontiguousarray(array))
    t = t[None, None] if t.ndim == 3 else t[None]
    if tuple(t.shape[2:]) == tuple(shape):
        return t[0]
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(t.float(), size=tuple(shape), mode=mode, **kwargs)[0]


def to_model_grid(volume: Volume, spacing_mm, intensity: dict):
    """(1 x D x H x W tensor on the model grid, CanonicalGrid)."""
    check_input(volume)
    grid = canonical_grid(volume, spacing_mm)
    return model_image(grid.to_canonical(volume.array), grid.model_shape, intensity)[None], grid


def model_image(canonical, shape, intensity: dict, slab_voxels: int = 8_000_000) -> torch.Tensor:
    """The normalised image resampled (trilinear) to ``shape``, slab by slab: no full-size float copy.

    canonical: the input in canonical axis order (any dtype; a strided view is fine).
    """
    window = intensity_window(canonical, intensity)
    out = torch.empty(tuple(shape), dtype=torch.float32)

    def planes(first, last):
        block = np.array(canonical[:, :, first:last + 1], dtype=np.float32, order="C")
        return _scale(torch.from_numpy(block), window)[None]

    for start, stop, slab in _resampled_slabs(planes, canonical.shape, shape, slab_voxels):
        out[:, :, start:stop] = slab[0]
    return out


def _linear_weights(n_in: int, n_out: int):
    """Source indices and weights of linear interpolation from n_in to n_out samples (voxel centres aligned)."""
    x = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
    lo = x.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo, hi, (x - lo).float()


def _lerp(t: torch.Tensor, dim: int, weights) -> torch.Tensor:
    lo, hi, w = weights
    shape = [1] * t.ndim
    shape[dim] = -1
    a = t.index_select(dim, lo)
    return a.add_(t.index_select(dim, hi).sub_(a).mul_(w.view(shape)))


def _argmax_first_axis(t: torch.Tensor) -> np.ndarray:
    """argmax over the class axis as a running maximum (much faster than torch.argmax across a strided axis)."""
    best = t[0].clone()
    index = torch.zeros(t.shape[1:], dtype=torch.uint8)
    for c in range(1, t.shape[0]):
        better = t[c] > best
        index.masked_fill_(better, c)
        torch.maximum(best, t[c], out=best)
    return index.numpy()


def _resampled_slabs(planes, source_shape, shape, slab_voxels):
    """Yield (start, stop, C x shape[0] x shape[1] x (stop - start) slab) of a trilinear resampling.

    planes(first, last) gives the source's C x d x h x (last - first + 1) planes first..last as a float
    tensor. Linear along the last axis, then in-plane (trilinear with the last axis already at its output
    size, an exact identity there): the same values as one trilinear interpolation of the whole volume.
    """
    lo, hi, w = _linear_weights(source_shape[-1], shape[2])
    # a slab's cost is its output planes or the source planes they read, whichever is larger
    source_per_output_plane = int(np.prod(source_shape[:-1])) * source_shape[-1] / shape[2]
    step = max(1, int(slab_voxels // max(shape[0] * shape[1], source_per_output_plane)))
    for start in range(0, shape[2], step):
        stop = min(shape[2], start + step)
        first, last = int(lo[start]), int(hi[stop - 1])  # the source planes this slab needs, renumbered from 0
        slab = _lerp(planes(first, last), 3, (lo[start:stop] - first, hi[start:stop] - first, w[start:stop]))
        yield start, stop, F.interpolate(slab[None], size=(shape[0], shape[1], stop - start), mode="trilinear",
                                         align_corners=False)[0]


def confidence_from_probabilities(probabilities: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """Per-voxel confidence 1 - H(p) / log(C) from class probabilities (C x ...): 0 uniform, 1 one class certain.

    H is the Shannon entropy over the C classes (0 log 0 = 0). in_place: overwrite ``probabilities`` (a slab that
    is not needed afterwards) instead of allocating a per-class temporary.
    """
    n_classes = probabilities.shape[0]
    if n_classes < 2:
        return torch.ones(probabilities.shape[1:], dtype=torch.float32)
    p = probabilities if in_place else probabilities.float().clone()
    p.nan_to_num_(0.0).clamp_(0.0, 1.0)  # guards against rounding below 0 (and a broken network's NaN)
    torch.special.xlogy(p, p, out=p)  # p log p, 0 where p == 0
    entropy = p[0].neg()
    for c in range(1, n_classes):
        entropy.sub_(p[c])
    return entropy.div_(-math.log(n_classes)).add_(1.0).clamp_(0.0, 1.0)


def confidence_percent(probabilities: torch.Tensor, in_place: bool = False) -> np.ndarray:
    """``confidence_from_probabilities`` as uint8 percent (0-100, rounded), the stored form of the map."""
    return confidence_from_probabilities(probabilities, in_place).mul_(100.0).round_().to(torch.uint8).numpy()


def argmax_on_grid(probabilities: torch.Tensor, shape, slab_voxels: int = 8_000_000, out=None,
                   confidence_out=None) -> np.ndarray:
    """Label map on ``shape`` from class probabilities (C x d x h x w) on another grid of the same extent.

    Probabilities are interpolated trilinearly and the argmax taken slab by slab, so memory stays bounded.
    out: a uint8 array (or a view, e.g. the input-ordered label map seen in canonical order) to fill.
    confidence_out: None, or a uint8 array (or view) of ``shape`` to fill in the same pass with the confidence
    (``confidence_percent``) of the interpolated probabilities.
    """
    out = np.empty(shape, dtype=np.uint8) if out is None else out
    planes = lambda first, last: probabilities[:, :, :, first:last + 1].float().contiguous()  # noqa: E731
    for start, stop, slab in _resampled_slabs(planes, probabilities.shape, shape, slab_voxels):
        out[:, :, start:stop] = _argmax_first_axis(slab)
        if confidence_out is not None:
            confidence_out[:, :, start:stop] = confidence_percent(slab, in_place=True)  # the slab is done with
    return out
