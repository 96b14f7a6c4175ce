"""Clean a label map per bone, in 3D: islands, connected components, holes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


@dataclass
class Cleanup:
    """How one label is cleaned.

    min_island_fraction: remove components smaller than this fraction of the label's volume (the seed's 1 %).
    max_components: keep at most this many of the largest components (2 covers scans of both legs); 0 keeps all.
    fill_holes: fill enclosed background cavities.
    """

    min_island_fraction: float = 0.01
    max_components: int = 2
    fill_holes: bool = True


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


def clean_labels(labels: np.ndarray, values, options: PostprocessOptions | None = None) -> np.ndarray:
    """A cleaned copy of ``labels`` (any integer dtype); voxels removed from a bone become background."""
    options = options or PostprocessOptions()
    out = labels.copy()
    if not options.enabled:
        return out
    boxes = ndimage.find_objects(out)
    for value in values:
        if value > len(boxes) or boxes[value - 1] is None:
            continue
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in boxes[value - 1])
        region = out[box]
        _clean_one(region, value, options.for_label(value))
    return out


def _clean_one(region: np.ndarray, value: int, rule: Cleanup):
    mask = region == value
    components, n = ndimage.label(mask, structure=_FULL)
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        drop = sizes < rule.min_island_fraction * sizes.sum()
        if rule.max_components:
            drop[np.argsort(sizes)[::-1][rule.max_components:]] = True
        drop[0] = False
        removed = drop[components]
        region[removed] = 0
        mask &= ~removed
    if rule.fill_holes:
        # holes: background pieces (6-connected, the complement of 26-connected bone) not touching the box border
        background, _ = ndimage.label(~mask)
        outside = np.unique(np.concatenate([face.ravel() for axis in range(3)
                                            for face in (np.take(background, 0, axis), np.take(background, -1, axis))]))
        is_hole = np.ones(background.max() + 1, dtype=bool)
        is_hole[outside] = False
        is_hole[0] = False
        region[is_hole[background] & (region == 0)] = value
