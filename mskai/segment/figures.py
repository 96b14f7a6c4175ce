"""Pictures of what users see: a label map over its image in three planes (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mskai.segment.labels import BONES
from mskai.volume import Volume


def _canonical(volume: Volume):
    """Array permuted and flipped to the closest R, A, S axes (no interpolation) and its voxel size."""
    ornt = nib.orientations.io_orientation(volume.affine_ras)
    array = nib.orientations.apply_orientation(np.asarray(volume.array), ornt)
    return array, volume.spacing[np.argsort(ornt[:, 0].astype(int))]


def three_planes_png(image: Volume, labels: Volume, path, title: str):
    """Sagittal, coronal and axial slices through the labelled bones' centre, bones coloured by the label table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    picture, spacing = _canonical(image)
    bones, _ = _canonical(labels)
    centre = np.argwhere(bones > 0).mean(axis=0).round().astype(int) if bones.any() else np.array(bones.shape) // 2
    cmap = ListedColormap([(0, 0, 0, 0)] + [(*b.color, 1.0) for b in BONES])
    low, high = np.percentile(picture, [1, 99.5])
    views = [("sagittal", 0, (1, 2)), ("coronal", 1, (0, 2)), ("axial", 2, (0, 1))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    for ax, (name, axis, (u, v)) in zip(axes, views):
        index = [slice(None)] * 3
        index[axis] = int(centre[axis])
        ax.imshow(picture[tuple(index)].T, cmap="gray", origin="lower", vmin=low, vmax=high,
                  aspect=spacing[v] / spacing[u])
        ax.imshow(np.ma.masked_equal(bones[tuple(index)].T, 0), cmap=cmap, vmin=0, vmax=len(BONES), alpha=0.45,
                  origin="lower", interpolation="nearest", aspect=spacing[v] / spacing[u])
        ax.set_title(name), ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=b.color) for b in BONES]
    fig.legend(handles, [b.name for b in BONES], loc="lower center", ncol=len(BONES))
    fig.suptitle(title)
    fig.savefig(Path(path), dpi=80)
    plt.close(fig)
