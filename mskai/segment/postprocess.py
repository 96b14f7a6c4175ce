"""Clean a label map per bone, in 3D: islands, connected components, holes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from mskai import check_range

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass
class Cleanup:
    """How one label is cleaned.

    min_island_fraction: remove components smaller than this fraction of the label's volume (the seed's 1 %).
    max_components: keep at most this many of the largest components (2 covers scans of both legs); 0 keeps all.
    min_extra_fraction: a component beyond the largest is kept only if it is at least this fraction of the
        largest (the same bone of the other leg is about as large; a stray blob is not).
    min_volume_ml: remove components smaller than this, even a label's only one (a stray "pelvis" in a knee).
    fill_holes: fill enclosed background cavities.
    """

    min_island_fraction: float = 0.01
    max_components: int = 2
    min_extra_fraction: float = 0.25
    min_volume_ml: float = 1.0
    fill_holes: bool = True

    def __post_init__(self):
        check_range("min island fraction", self.min_island_fraction, 0, 1)
        check_range("max components", self.max_components, 0, 1000, integer=True)
        check_range("min extra fraction", self.min_extra_fraction, 0, 1)
        check_range("min volume (mL)", self.min_volume_ml, 0, 1e6)


@dataclass
class PostprocessOptions:
    default: Cleanup = field(default_factory=Cleanup)
    per_label: dict = field(default_factory=dict)  # label value -> Cleanup
    enabled: bool = True

    def for_label(self, value: int) -> Cleanup:
        return self.per_label.get(value, self.default)

    @classmethod
    def from_settings(cls, enabled=True, **kwargs):
        """Options with the default Cleanup's fields overridden by keyword (e.g. max_components=1)."""
        return cls(default=replace(Cleanup(), **{k: v for k, v in kwargs.items() if v is not None}), enabled=enabled)


def clean_labels(labels: np.ndarray, values, options: PostprocessOptions | None = None,
                 voxel_ml: float = 0.0, in_place: bool = False) -> np.ndarray:
    """A cleaned copy of ``labels`` (any integer dtype), or ``labels`` itself cleaned when in_place.

    Voxels removed from a bone become background. voxel_ml: the volume of one voxel in mL, for
    ``min_volume_ml`` (0 leaves that rule out).
    """
    options = options or PostprocessOptions()
    out = labels if in_place else labels.copy()
    if not options.enabled:
        return out
    boxes = ndimage.find_objects(out)
    for value in values:
        if value > len(boxes) or boxes[value - 1] is None:
            continue
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in boxes[value - 1])
        region = out[box]
        _clean_one(region, value, options.for_label(value), voxel_ml)
    return out


def _shifted(d: int, n: int) -> slice:
    """Indices i + d for the i where both i and i + d lie in 0..n-1."""
    return slice(max(0, d), n + min(0, d))


def _chunk_pieces(block: np.ndarray, value: int):
    """(local piece numbers, count) of one chunk; both passes over a chunk must number pieces alike."""
    return ndimage.label(block == value, structure=_FULL)


def _pieces(region: np.ndarray, value: int, chunk: int):
    """The 26-connected pieces of ``region == value``, found chunk by chunk along the last axis.

    Returns (piece of each chunk's local component, as one array over all chunks; voxels per piece;
    box per piece as (lower corner, upper corner); components per chunk). Memory stays at one chunk's
    worth of labels.
    """
    sizes, lower, upper, links, last_plane, counts = [], [], [], [], None, []
    for start in range(0, region.shape[2], chunk):
        local, n = _chunk_pieces(region[:, :, start:start + chunk], value)
        offset = len(sizes)
        counts.append(n)
        sizes.extend(np.bincount(local.ravel(), minlength=n + 1)[1:])
        for box in ndimage.find_objects(local):
            lower.append([box[0].start, box[1].start, box[2].start + start])
            upper.append([box[0].stop, box[1].stop, box[2].stop + start])
        if last_plane is not None:  # pieces touching across the chunk border (26-neighbours)
            first = np.where(local[:, :, 0] > 0, local[:, :, 0] + offset, 0)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a = last_plane[_shifted(di, first.shape[0]), _shifted(dj, first.shape[1])]
                    b = first[_shifted(-di, first.shape[0]), _shifted(-dj, first.shape[1])]
                    touching = (a > 0) & (b > 0)
                    links.append(np.stack([a[touching], b[touching]], axis=1))
        last_plane = np.where(local[:, :, -1] > 0, local[:, :, -1] + offset, 0)
    n = len(sizes)
    links = np.unique(np.concatenate(links), axis=0) if links else np.zeros((0, 2), dtype=int)
    graph = csr_matrix((np.ones(len(links)), (links[:, 0] - 1, links[:, 1] - 1)), shape=(n, n))
    _, piece = connected_components(graph, directed=False)
    count = piece.max() + 1 if n else 0
    lower_box = np.full((count, 3), np.iinfo(np.int64).max)
    upper_box = np.zeros((count, 3), dtype=np.int64)
    np.minimum.at(lower_box, piece, np.asarray(lower, dtype=np.int64).reshape(-1, 3))
    np.maximum.at(upper_box, piece, np.asarray(upper, dtype=np.int64).reshape(-1, 3))
    return piece, np.bincount(piece, weights=sizes, minlength=count), list(zip(lower_box, upper_box)), counts


def _clean_one(region: np.ndarray, value: int, rule: Cleanup, voxel_ml: float, chunk: int = 32):
    piece, sizes, boxes, counts = _pieces(region, value, chunk)
    drop = sizes * voxel_ml < rule.min_volume_ml if voxel_ml else np.zeros(len(sizes), dtype=bool)
    if len(sizes) > 1:
        drop |= sizes < rule.min_island_fraction * sizes.sum()
        drop |= sizes < rule.min_extra_fraction * sizes.max()
        if rule.max_components:
            drop[np.argsort(sizes)[::-1][rule.max_components:]] = True
    offsets = np.cumsum([0] + counts)
    for start, offset, n in zip(range(0, region.shape[2], chunk), offsets, counts):
        lookup = np.concatenate([[False], drop[piece[offset:offset + n]]])
        if lookup.any():  # label this chunk again (the same local numbering) to remove what is dropped
            block = region[:, :, start:start + chunk]
            block[lookup[_chunk_pieces(block, value)[0]]] = 0
    if rule.fill_holes:  # each kept piece in its own box: small arrays even when pieces lie far apart
        for (lo, hi), dropped in zip(boxes, drop):
            if not dropped:
                box = tuple(slice(max(0, a - 1), b + 1) for a, b in zip(lo, hi))
                _fill_holes(region[box], region[box] == value, value)


def _fill_holes(region: np.ndarray, mask: np.ndarray, value: int):
    """Holes: background pieces (6-connected, the complement of 26-connected bone) not touching the box border."""
    background, _ = ndimage.label(~mask)
    outside = np.unique(np.concatenate([face.ravel() for axis in range(3)
                                        for face in (np.take(background, 0, axis), np.take(background, -1, axis))]))
    is_hole = np.ones(background.max() + 1, dtype=bool)
    is_hole[outside] = False
    is_hole[0] = False
    region[is_hole[background] & (region == 0)] = value
