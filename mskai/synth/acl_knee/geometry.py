"""Geometry shared by the knee model and the renderer: voxel boxes, Bezier paths, bands (ligaments, tendons,
the fibula) and distance maps."""

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


def _rotation(axis, degrees) -> np.ndarray:
    from mskai.synth.phantom import rotation

    return rotation(axis, degrees)


def _box(lo_mm, hi_mm, spacing, shape):
    """Voxel slices covering the mm box [lo, hi] (clipped to the grid), or None when empty."""
    lo = np.maximum(np.floor(np.asarray(lo_mm) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(np.asarray(hi_mm) / spacing).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _box_points(box, spacing) -> torch.Tensor:
    """mm coordinates (nx, ny, nz, 3) of the voxels of a box."""
    axes = [torch.arange(s.start, s.stop, dtype=torch.float32) * float(d) for s, d in zip(box, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _bezier(points, n=24) -> np.ndarray:
    """n points along the Bezier curve of the control points (rows)."""
    t = np.linspace(0, 1, n)[:, None, None]
    layer = np.broadcast_to(np.asarray(points, dtype=float), (n, len(points), 3))
    while layer.shape[1] > 1:  # de Casteljau
        layer = (1 - t) * layer[:, :-1] + t * layer[:, 1:]
    return layer[:, 0]


@dataclass
class Band:
    """A ligament or tendon: a polyline path with elliptical cross-sections (semi-axes per path node).

    ``half_n``: semi-axis in the sagittal plane across the path (thickness); ``half_b``: across it, roughly
    left-right (width). ``edge_mm``: width of the soft border.
    """

    path: np.ndarray
    half_n: np.ndarray
    half_b: np.ndarray
    edge_mm: float = 0.6

    def bounds(self, margin=3.0):
        reach = float(max(self.half_n.max(), self.half_b.max())) + margin
        return self.path.min(0) - reach, self.path.max(0) + reach

    def coordinates(self, points: torch.Tensor):
        """At points (..., 3): s along the path (0..1), u and v across it (in half_n, half_b), the normalised
        radius r (1 on the surface) and the smaller semi-axis there (mm)."""
        shape = points.shape[:-1]
        p = points.reshape(-1, 3)
        path = torch.as_tensor(self.path, dtype=torch.float32)
        a, b = path[:-1], path[1:]
        ab = b - a
        length = torch.linalg.norm(ab, dim=1).clamp(min=1e-6)
        tangent = ab / length[:, None]
        lr = torch.tensor([1.0, 0.0, 0.0])
        normal = torch.linalg.cross(tangent, lr.expand_as(tangent))
        normal = normal / torch.linalg.norm(normal, dim=1, keepdim=True).clamp(min=1e-6)
        binormal = torch.linalg.cross(tangent, normal)
        t = (((p[:, None, :] - a[None]) * ab[None]).sum(-1) / (length**2)[None]).clamp(0, 1)
        closest = a[None] + t[..., None] * ab[None]
        k = ((p[:, None, :] - closest) ** 2).sum(-1).argmin(1)
        rows = torch.arange(len(p))
        tk, d = t[rows, k], p - closest[rows, k]
        cum = torch.cat([torch.zeros(1), torch.cumsum(length, 0)])
        s = (cum[k] + tk * length[k]) / cum[-1]
        nodes = torch.linspace(0, 1, len(self.path))
        half_n = _interp(s, nodes, torch.as_tensor(self.half_n, dtype=torch.float32))
        half_b = _interp(s, nodes, torch.as_tensor(self.half_b, dtype=torch.float32))
        u = (d * normal[k]).sum(-1) / half_n
        v = (d * binormal[k]).sum(-1) / half_b
        e = (d * tangent[k]).sum(-1) / 1.0  # beyond the ends: rounded caps of 1 mm
        r = torch.sqrt(u**2 + v**2 + e**2)
        return (s.reshape(shape), u.reshape(shape), v.reshape(shape), r.reshape(shape),
                torch.minimum(half_n, half_b).reshape(shape))

    def occupancy(self, points: torch.Tensor):
        s, u, v, r, small = self.coordinates(points)
        alpha = (0.5 + (1 - r) * small / self.edge_mm).clamp(0, 1)
        return alpha, s, u, v, r


def _interp(x, xp, fp):
    idx = torch.clamp(torch.searchsorted(xp, x.contiguous()), 1, len(xp) - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    w = ((x - x0) / (x1 - x0).clamp(min=1e-9)).clamp(0, 1)
    return fp[idx - 1] * (1 - w) + fp[idx] * w


def _edt(mask, sp, step=1):
    """Distance (mm) to ``mask``, computed on every ``step``-th voxel and expanded back (nearest)."""
    if step == 1:
        return ndimage.distance_transform_edt(~mask, sampling=sp).astype(np.float32)
    coarse = ndimage.distance_transform_edt(~mask[::step, ::step, ::step], sampling=np.asarray(sp) * step)
    idx = [np.minimum(np.arange(n) // step, c - 1) for n, c in zip(mask.shape, coarse.shape)]
    return coarse[np.ix_(*idx)].astype(np.float32)


def _edt_near(mask, sp, margin_mm):
    """Distance (mm) to ``mask`` within ``margin_mm`` of its bounding box; beyond: at least the margin."""
    out = np.full(mask.shape, float(margin_mm) + 1, dtype=np.float32)
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found:
        return out
    box = tuple(slice(max(s.start - int(margin_mm / d) - 1, 0), s.stop + int(margin_mm / d) + 1)
                for s, d in zip(found[0], sp))
    out[box] = np.minimum(_edt(mask[box], sp), float(margin_mm) + 1)
    return out
