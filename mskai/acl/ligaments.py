"""Segment the cruciate ligaments and the bones around them on a sagittal knee series, slice by slice.

Each sagittal slice (the input axis nearest left-right) is resampled in its own plane onto a ``SIZE`` x ``SIZE``
grid of ``IN_PLANE_MM`` pixels, rows running superior to inferior and columns anterior to posterior whatever the
acquisition's orientation, with its ``CONTEXT`` neighbours either side as extra channels (2.5D). A 2D network
(a MONAI UNet in a model package of task ``knee-ligaments``) labels femur, tibia, ACL and PCL; its probabilities
are resampled back onto each slice's voxels. Training: ``mskai.training.ligaments``.

The network learned on 3-4.5 mm slices. A thin-slice series (a 3D DESS or PD SPACE of 0.5-1 mm) is read as such:
thin slices averaged into slabs of about ``SLAB_MM``, the network run on every ``step``-th slab with slabs
``step`` apart as its neighbours, and its probabilities interpolated across the slices between (``slab_step``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mskai import MskaiError
from mskai.segment.labels import Label
from mskai.volume import Volume

IN_PLANE_MM, SIZE, CONTEXT = 0.625, 256, 1
SLAB_MM = 3.5  # about the slice thickness the network was trained on
INTENSITY = {"method": "percentile", "lower": 0.5, "upper": 99.5, "clip": [-0.5, 1.5]}  # what ``normalised`` does
# SNOMED CT has its own concepts for the cruciate ligaments, but their codes could not be checked offline here:
# they are coded as Ligament (52082005, DICOM PS3.16) and named; femur and tibia as in the bone table.
LIGAMENT_TABLE = (
    Label(1, "femur", (0.87, 0.51, 0.37), "71341001", "Femur"),
    Label(2, "tibia", (0.89, 0.81, 0.34), "12611008", "Tibia"),
    Label(3, "acl", (0.93, 0.30, 0.30), "52082005", "Ligament"),
    Label(4, "pcl", (0.30, 0.55, 0.95), "52082005", "Ligament"),
)
LIGAMENT_VALUES = {label.name: label.value for label in LIGAMENT_TABLE}


def slice_axis(volume: Volume) -> int:
    """The input axis that runs across sagittal slices (nearest LPS x); refused when the series is not sagittal:
    no axis within 45 degrees of left-right, or that axis lies in the plane of thicker slices (axial, coronal)."""
    directions = volume.directions_lps
    axis = int(np.argmax(np.abs(directions[0])))
    if abs(directions[0, axis]) < 0.7:
        raise MskaiError("the series is not sagittal: no slice axis within 45 degrees of left-right")
    if 1.5 * volume.spacing[axis] < volume.spacing.max():
        raise MskaiError(f"the series is not sagittal: its slices are {volume.spacing.max():.1f} mm apart along "
                         f"another axis than left-right")
    return axis


def _plane_axes(volume: Volume, axis: int):
    """Unit LPS vectors of the slice plane's columns (anterior) and rows (superior), orthonormal, in the plane."""
    normal = volume.directions_lps[:, axis]
    normal = normal / np.linalg.norm(normal)
    anterior = np.array([0.0, -1.0, 0.0]) - normal * -normal[1]
    anterior /= np.linalg.norm(anterior)
    superior = np.cross(normal, anterior)
    superior *= np.sign(superior[2]) or 1.0
    return anterior, superior


@dataclass(frozen=True)
class SliceGrid:
    """Where the network's SIZE x SIZE pixels lie on each of the ``n`` slices across ``axis``: the same voxel
    coordinates ``points`` (2, SIZE, SIZE) along the two in-plane axes on every slice (in the slice's own plane)."""

    axis: int
    n: int
    points: np.ndarray

    def __len__(self):
        return self.n

    def sample(self, array: np.ndarray, order: int) -> np.ndarray:
        """n x SIZE x SIZE: ``array`` (on the volume grid) on every slice's grid; zero outside the volume."""
        before = (slice(None),) * self.axis
        return np.stack([ndimage.map_coordinates(array[before + (k,)], self.points, order=order, mode="constant",
                                                 cval=0) for k in range(self.n)])


def _slice_grid(volume: Volume, axis: int, centre_mm: np.ndarray, anterior, superior, scale=1.0, angle=0.0,
                size=SIZE) -> SliceGrid:
    """The in-plane grid: row r runs inferior, column c posterior, centred on ``centre_mm`` projected into each
    slice; ``scale`` / ``angle`` (radians) rotate and zoom it (training augmentation)."""
    inv = np.linalg.inv(volume.affine_lps)
    centre_ijk = inv[:3, :3] @ centre_mm + inv[:3, 3]
    centre = volume.affine_lps[:3, :3] @ centre_ijk + volume.affine_lps[:3, 3]
    c, s = np.cos(angle), np.sin(angle)
    down, back = -(c * superior + s * anterior), -(-s * superior + c * anterior)
    offsets = (np.arange(size) - (size - 1) / 2) * IN_PLANE_MM * scale
    lps = centre + offsets[:, None, None] * down + offsets[None, :, None] * back
    ijk = lps @ inv[:3, :3].T + inv[:3, 3]  # the slice axis' coordinate is dropped: each slice's own plane
    return SliceGrid(axis, volume.shape[axis], np.moveaxis(ijk[..., [a for a in range(3) if a != axis]], -1, 0))


def percentiles(array, qs) -> np.ndarray:
    """``np.percentile(array, qs)`` (linear), from a histogram for integer images (several times faster)."""
    array = np.asarray(array)
    if array.dtype.kind not in "iu" or array.dtype.itemsize > 2:
        return np.percentile(array, qs)
    low = int(array.min())
    cumulative = np.cumsum(np.bincount((array.ravel() - low).astype(np.intp) if low else array.ravel()))
    rank = np.asarray(qs, dtype=float) / 100 * (array.size - 1)  # 0-based ranks in the sorted values
    below, above = (np.searchsorted(cumulative, r, side="right") + low for r in (np.floor(rank), np.ceil(rank)))
    return below + (rank - np.floor(rank)) * (above - below)


def normalised(array: np.ndarray) -> np.ndarray:
    """Intensities scaled by the 0.5 and 99.5 percentiles to about [0, 1], clipped to [-0.5, 1.5] (float32)."""
    lo, hi = percentiles(array, (INTENSITY["lower"], INTENSITY["upper"]))
    return ((np.asarray(array, dtype=np.float32) - lo) / max(hi - lo, 1e-6)).clip(*INTENSITY["clip"])


def input_section() -> dict:
    """The ``input`` a ligament package is trained for: what ``slice_stack`` feeds its network."""
    return {"modality": "MR", "plane": "sagittal", "in_plane_mm": IN_PLANE_MM, "size": SIZE, "context_slices": CONTEXT,
            "intensity": INTENSITY}


def check_input(package):
    """MskaiError unless ``package`` was trained on the slices this code makes (size, pixel, context, intensity)."""
    given = package.metadata.get("input", {})
    wrong = [key for key, value in input_section().items() if given.get(key) != value]
    if wrong:
        raise MskaiError(f"{package.source}: this ligament model was trained on other input ({', '.join(wrong)} "
                         f"differ from this version of mskai's)")


def slab_step(volume: Volume, axis: int) -> int:
    """Slices per slab: 1 for slices of 2.4 mm or more, e.g. 5 for 0.7 mm slices."""
    return max(1, int(round(SLAB_MM / float(volume.spacing[axis]))))


def slab_centres(n: int, step: int) -> np.ndarray:
    """The slices the network reads: every ``step``-th, and the last."""
    return np.unique(np.r_[np.arange(0, n, step), n - 1])


def slice_stack(volume: Volume, centre_mm=None, scale=1.0, angle=0.0, shift_mm=(0.0, 0.0, 0.0), step: int = 1):
    """(images m x (2 CONTEXT + 1) x SIZE x SIZE float32, the slices' SliceGrid, slice axis) of the
    sagittal slices of ``volume``, neighbours as channels (edges repeated). ``step`` > 1: the slab of ``step``
    slices around each of ``slab_centres``, its neighbours the slabs ``step`` slices away (the grid: every slice)."""
    axis = slice_axis(volume)
    centre = (volume.ijk_to_lps((np.array(volume.shape) - 1) / 2)[0] if centre_mm is None
              else np.asarray(centre_mm, dtype=float)) + np.asarray(shift_mm)
    anterior, superior = _plane_axes(volume, axis)
    image = normalised(volume.array)
    n = volume.shape[axis]
    grid = _slice_grid(volume, axis, centre, anterior, superior, scale, angle)
    planes = grid.sample(image, order=1)
    if step > 1:
        planes = ndimage.uniform_filter1d(planes, step, axis=0, mode="nearest")
    centres = slab_centres(n, step)
    index = np.clip(centres[:, None] + step * np.arange(-CONTEXT, CONTEXT + 1)[None], 0, n - 1)
    return planes[index].astype(np.float32), grid, axis


def labels_on_slices(labels: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """A label map on the volume grid sampled onto the slice grids (nearest): n x SIZE x SIZE uint8."""
    return grid.sample(labels, order=0).astype(np.uint8)


def _back_to_volume(probabilities: np.ndarray, volume: Volume, axis: int, centre, anterior, superior,
                    centres=None, chunk: int = 16) -> np.ndarray:
    """Labels on the volume grid from per-slice probabilities (m x C x SIZE x SIZE, at the slices ``centres``; all
    slices by default), linear in the plane and between the centres; outside the slice grids background.

    The grid lies alike on every slice, so each centre's probabilities are resampled onto the voxels once and the
    slices between are blended from those (both steps are linear: the same as blending first)."""
    import torch
    import torch.nn.functional as F

    shape = volume.shape
    centres = np.arange(shape[axis]) if centres is None else np.asarray(centres)
    in_plane = [a for a in range(3) if a != axis]
    inv = np.linalg.inv(volume.affine_lps)
    centre_ijk = inv[:3, :3] @ np.asarray(centre, dtype=float) + inv[:3, 3]
    offset = np.zeros((3,) + tuple(shape[a] for a in in_plane))
    offset[in_plane[0]], offset[in_plane[1]] = np.meshgrid(np.arange(shape[in_plane[0]]) - centre_ijk[in_plane[0]],
                                                           np.arange(shape[in_plane[1]]) - centre_ijk[in_plane[1]],
                                                           indexing="ij")
    d = np.tensordot(volume.affine_lps[:3, :3], offset, 1)  # mm from the grid centre, in the slice's plane
    scale = IN_PLANE_MM * (SIZE - 1) / 2  # to grid_sample's -1..1
    grid = np.stack([np.tensordot(-anterior, d, 1), np.tensordot(-superior, d, 1)], axis=-1) / scale  # columns first
    grid = torch.from_numpy(grid.astype(np.float32))[None]
    p = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))
    on_voxels = torch.cat([F.grid_sample(p[i:i + chunk], grid.expand(len(p[i:i + chunk]), -1, -1, -1),
                                         mode="bilinear", padding_mode="zeros", align_corners=True)
                           for i in range(0, len(p), chunk)])  # m x C x in-plane shape
    out = np.zeros(shape, np.uint8)
    for first in range(0, shape[axis], chunk):
        ks = np.arange(first, min(first + chunk, shape[axis]))
        right = np.minimum(np.searchsorted(centres, ks), len(centres) - 1)
        left = np.where(centres[right] > ks, np.maximum(right - 1, 0), right)
        span = (centres[right] - centres[left]).astype(np.float32)
        w = torch.from_numpy(np.where(span > 0, (ks - centres[left]) / np.maximum(span, 1), 0.0).astype(np.float32))
        blended = on_voxels[left] * (1 - w)[:, None, None, None] + on_voxels[right] * w[:, None, None, None]
        labels = blended.max(1).indices.to(torch.uint8).numpy()  # zeros outside: background (the first) wins ties
        out[tuple(ks if a == axis else slice(None) for a in range(3))] = np.moveaxis(labels, 0, axis)
    return out


def _network_runner(package, network):
    """``run(stack)`` -> probabilities: ``network`` (torch) when given, else ONNX Runtime, else the package's torch
    network."""
    import torch

    if network is None:
        from mskai.segment.runtime import onnx_runner

        run = onnx_runner(package, (SIZE, SIZE), torch.get_num_threads())
        if run is not None:
            return lambda stack: torch.softmax(torch.from_numpy(run(stack)), 1).numpy()
        network = package.build_network()
    network.eval()

    def run_torch(stack):
        with torch.inference_mode():
            return torch.softmax(network(torch.from_numpy(stack)), 1).numpy()
    return run_torch


def segment_ligaments(volume: Volume, package, network=None, batch: int = 8) -> Volume:
    """Femur, tibia, ACL and PCL (``LIGAMENT_VALUES``) on the volume's grid. network: a torch network already
    built (batch use); without one the package's network runs under ONNX Runtime where it can."""
    check_input(package)
    run = _network_runner(package, network)
    axis = slice_axis(volume)
    step = slab_step(volume, axis)
    stack, _, _ = slice_stack(volume, step=step)
    probabilities = np.concatenate([run(stack[start:start + batch]) for start in range(0, len(stack), batch)])
    centre = volume.ijk_to_lps((np.array(volume.shape) - 1) / 2)[0]
    anterior, superior = _plane_axes(volume, axis)
    labels = _back_to_volume(probabilities, volume, axis, centre, anterior, superior,
                             slab_centres(volume.shape[axis], step))
    return Volume(labels, volume.affine_lps.copy(), label="knee ligaments")


def ligament_label_map(masks: dict) -> np.ndarray:
    """The label map (``LIGAMENT_VALUES``) of bool masks by name; the ligaments last: they win where masks touch."""
    labels = np.zeros(np.shape(masks["femur"]), np.uint8)
    for name in ("femur", "tibia", "pcl", "acl"):
        labels[masks[name]] = LIGAMENT_VALUES[name]
    return labels


def ligament_masks(labels: Volume) -> dict:
    """Bool masks by name ("acl", "pcl", "femur", "tibia") of a ligament label map."""
    array = np.asarray(labels.array)
    return {name: array == value for name, value in LIGAMENT_VALUES.items()}


def ligament_segmenter(model):
    """A Volume -> masks function with the package ``model`` (id, path or package) loaded once (its network run
    as ``segment_ligaments`` runs it)."""
    from mskai.models.registry import resolve_model
    from mskai.models.tasks import KNEE_LIGAMENTS

    package = resolve_model(model, KNEE_LIGAMENTS)
    return lambda volume: ligament_masks(segment_ligaments(volume, package))
