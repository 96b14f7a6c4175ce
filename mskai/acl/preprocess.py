"""From a sagittal knee Volume to the ACL network's input, and from the network's Grad-CAM back onto the input.

Every step is a switch of ``AclPreprocessing``, stored in the model package (``to_json``), so training and
inference run the same code with the same settings.

Layout of the network input ``Prepared.image``: float32 ``(C, K, H, W)``, ``H == W == size``:
  channel 0 the normalised image in [0, 1]; channel 1 (only with ``kmeans_channel``) the binary K-means mask;
  K sagittal slices ordered from the patient's left to right (canonical RAS axis 0, whatever the series' own
  slice order); rows from superior (row 0) to inferior, columns from anterior (column 0) to posterior: the
  radiologist's sagittal view and the usual DICOM sagittal pixel layout, so MRNet-like data looks the same.
  The in-plane grid is square with isotropic pixels (``side_mm / size``) centred on the knee (or the notch).

No interpolation across slices: the acquired (oblique) slices are reordered and flipped to the nearest RAS
axes only (``mskai.grid.canonical_grid``), and ``Prepared.cam_to_input`` maps a map on the
network's grid exactly back onto the input voxels through the same steps.

The steps live in their own modules: ``mskai.acl.intensity`` (foreground threshold, intensity mapping, K-means
channel), ``mskai.acl.slices`` (central window, NMF) and ``mskai.acl.crop`` (the in-plane square, joint crop);
``prepare`` runs them in order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from mskai import MskaiError, check_range
from mskai.acl.crop import _centre_on_notch, _knee_crop, _resampling
from mskai.acl.intensity import HIST_PERCENTILES, _filled, _Intensity, _kmeans_channel, _sample, foreground_threshold
from mskai.acl.series import MIN_SLICES
from mskai.acl.slices import _nmf, _window
from mskai.dicom.plane import volume_plane
from mskai.volume import Volume

MIN_INPLANE = 32  # pixels per in-plane axis
MAX_VOXELS = 300_000_000  # a 1024-slice 512x512 series is 268 M
# What knee MR examinations have (mm), generously: finer or coarser pixels, thicker slices, smaller fields of view
# than a knee, or fields wider than a body are header errors or other objects.
KNEE_LIMITS_MM = {"pixel": (0.05, 3.0), "slice": (0.1, 10.0), "field": (16.0, 600.0), "cover": (4.0, 600.0)}
MIN_NEIGHBOUR_CORRELATION = 0.3


@dataclass
class AclPreprocessing:
    """The preprocessing switches of an ACL model package (``to_json`` / ``from_json`` in its metadata).

    intensity: "percentile" (clip p1..p99 of the volume to [0, 1]) or "histogram" (Nyul-Udupa: the volume's
        foreground percentiles HIST_PERCENTILES mapped piecewise-linearly onto ``landmarks``, learned on the
        training set with ``fit_histogram_landmarks``; result in [0, 1]).
    slices: "central" (the ``depth`` slices centred on the slice with the widest foreground) or "nmf" (all
        slices reduced to ``depth`` NMF basis images, each scaled to maximum 1).
    depth: K, slices the network sees. size: output pixels per side. field_mm: side of the square in-plane
        field cropped around the knee centre (None: a square just holding the whole slice, centred on it).
    foreground_mask: multiply by the Otsu foreground with each row filled between its outermost pixels.
    kmeans_channel: add a binary channel: foreground pixels whose intensity falls in the ``kmeans_keep``
        (first, last; 0 = darkest) of ``kmeans_clusters`` K-means intensity clusters.
    joint_crop: centre the ``joint_crop_mm`` square and the K slices on the intercondylar notch found from the
        bone model's femur and tibia (needs ``bone_segmenter``; falls back to the plain crop when they are missing).
    """

    intensity: str = "percentile"
    landmarks: list | None = None
    slices: str = "central"
    depth: int = 16
    size: int = 128
    field_mm: float | None = 160.0
    foreground_mask: bool = False
    kmeans_channel: bool = False
    kmeans_clusters: int = 20
    kmeans_keep: tuple = (0, 3)
    joint_crop: bool = False
    joint_crop_mm: float = 100.0

    def __post_init__(self):
        if self.intensity not in ("percentile", "histogram"):
            raise MskaiError(f"intensity must be percentile or histogram, not {self.intensity!r}")
        if self.intensity == "histogram":
            lm = self.landmarks
            ok = isinstance(lm, (list, tuple)) and len(lm) == len(HIST_PERCENTILES) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in lm)
            if not ok or not all(b > a for a, b in zip(lm, lm[1:])):
                raise MskaiError(f"histogram standardisation needs {len(HIST_PERCENTILES)} increasing finite "
                                 "landmarks (fit_histogram_landmarks on the training volumes)")
            self.landmarks = [float(v) for v in lm]
        elif self.landmarks is not None:
            raise MskaiError("landmarks are only used with intensity 'histogram'")
        if self.slices not in ("central", "nmf"):
            raise MskaiError(f"slices must be central or nmf, not {self.slices!r}")
        check_range("depth", self.depth, 1, 128, integer=True)
        check_range("size", self.size, 16, 1024, integer=True)
        if self.field_mm is not None:
            check_range("field_mm", self.field_mm, 10, 1000)
        for name in ("foreground_mask", "kmeans_channel", "joint_crop"):
            if not isinstance(getattr(self, name), bool):
                raise MskaiError(f"{name} must be true or false, not {getattr(self, name)!r}")
        check_range("kmeans_clusters", self.kmeans_clusters, 2, 256, integer=True)
        keep = self.kmeans_keep
        if (not isinstance(keep, (list, tuple)) or len(keep) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in keep)
                or not 0 <= keep[0] <= keep[1] < self.kmeans_clusters):
            raise MskaiError(f"kmeans_keep must be two cluster numbers 0 <= first <= last < {self.kmeans_clusters}, "
                             f"not {keep!r}")
        self.kmeans_keep = (int(keep[0]), int(keep[1]))
        check_range("joint_crop_mm", self.joint_crop_mm, 10, 1000)
        self.depth, self.size, self.kmeans_clusters = int(self.depth), int(self.size), int(self.kmeans_clusters)

    @property
    def channels(self) -> int:
        return 1 + int(self.kmeans_channel)

    def to_json(self) -> dict:
        out = asdict(self)
        out["kmeans_keep"] = list(self.kmeans_keep)
        return out

    @classmethod
    def from_json(cls, data) -> "AclPreprocessing":
        """Validated settings from a package's metadata; unknown keys are refused (a newer format, or a typo)."""
        if not isinstance(data, dict):
            raise MskaiError("ACL preprocessing settings must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MskaiError(f"unknown ACL preprocessing setting(s): {', '.join(map(str, unknown))}")
        values = dict(data)
        if isinstance(values.get("kmeans_keep"), list):
            values["kmeans_keep"] = tuple(values["kmeans_keep"])
        return cls(**values)


@dataclass
class Prepared:
    """The network input and the way back to the input grid.

    image: float32 (C, K, size, size), see the module docstring for the layout.
    notes: what was done (slices, crop, notch, intensity window ...) for the report; no patient data.
    input_slices: per row of ``weights``, the input slice index (along ``slice_axis`` of the input array) it is.
    weights: (rows, K) how much each network slice contributes to each input slice (identity rows for
        "central"; the NMF coefficients, scaled to the normalised basis images, for "nmf").
    """

    image: np.ndarray
    notes: dict
    input_slices: np.ndarray
    weights: np.ndarray
    slice_axis: int
    _grid: object = field(repr=False, default=None)
    _up_rows: np.ndarray = field(repr=False, default=None)  # (H0, size): output rows -> layout rows
    _up_cols: np.ndarray = field(repr=False, default=None)  # (W0, size)
    _rows: np.ndarray = field(repr=False, default=None)  # canonical slice index per weights row

    def _slice_maps(self, cam):
        """(canonical slices, their maps (n, size, size)): each input slice's map is the weights' average of the
        network slices' maps; rows that repeat one slice (padding) are averaged."""
        cam = np.asarray(cam, dtype=np.float64)
        k, size = self.image.shape[1], self.image.shape[2]
        if cam.shape != (k, size, size):
            raise MskaiError(f"a CAM of shape {cam.shape} does not fit the network input ({k}, {size}, {size})")
        total = self.weights.sum(axis=1, keepdims=True)
        norm = np.divide(self.weights, total, out=np.zeros_like(self.weights), where=total > 0)
        slices, inverse = np.unique(self._rows, return_inverse=True)
        merge = np.zeros((len(slices), len(self._rows)))
        merge[inverse, np.arange(len(self._rows))] = 1.0
        merge /= merge.sum(axis=1, keepdims=True)
        return slices, ((merge @ norm) @ cam.reshape(k, -1)).reshape(len(slices), size, size)

    def cam_to_input(self, cam: np.ndarray) -> np.ndarray:
        """A (K, size, size) map on the network input -> float32 array of the input volume's shape.

        Bilinear in-plane, exact slice correspondence (no interpolation across slices); 0 outside the crop
        and on slices the network did not see ("central"); "nmf": slice s gets sum_k W[s,k] cam_k / sum_k W[s,k].
        """
        slices, maps = self._slice_maps(cam)
        n = self._grid.canonical_shape[0]
        layout = np.zeros((n, self._up_rows.shape[0], self._up_cols.shape[0]), dtype=np.float32)
        layout[slices] = self._up_rows @ maps @ self._up_cols.T
        canonical = layout[:, ::-1, ::-1].transpose(0, 2, 1)  # rows S (top = superior), cols A -> R, A, S
        return np.ascontiguousarray(self._grid.from_canonical(canonical))

    def key_slice(self, cam: np.ndarray) -> int:
        """The input slice index (along ``slice_axis``, the third axis for DICOM series) with the most evidence:
        the largest sum of ``cam_to_input(cam)`` over the slice (the first of equals, in canonical order)."""
        slices, maps = self._slice_maps(cam)
        totals = np.einsum("shw,h,w->s", maps, self._up_rows.sum(axis=0), self._up_cols.sum(axis=0))
        return self._input_index(int(slices[int(np.argmax(totals))]))

    def _input_index(self, c):
        n = self._grid.canonical_shape[0]
        flip = self._grid.ornt[self.slice_axis, 1] < 0
        return (n - 1 - c) if flip else c


# --- checks --------------------------------------------------------------------------------------------


def check_sagittal(volume: Volume, min_slices: int = MIN_SLICES) -> None:
    """Refuse what the ACL classifier cannot read, with the reason: not 3D, not sagittal, too few slices,
    too small in-plane, too large, voxel sizes or fields of view no knee examination has, NaN voxels.

    The plane and the slice axis come from the geometry (``volume_plane``), not from the order of the array axes.
    min_slices: fewest sagittal slices accepted (default 8: fewer cannot cover the notch; a series with fewer
        than the model's depth is padded by repeating its edge slices).
    """
    from mskai.grid import check_input

    array = volume.array
    if array.ndim != 3:
        raise MskaiError(f"the ACL classifier reads one 3D volume; this one has shape {tuple(array.shape)} "
                         "(several echoes or time points: pick one)")
    plane, axis = volume_plane(volume.affine_lps)
    if plane.name != "sagittal":
        raise MskaiError(f"the ACL classifier reads sagittal slices; this series is {plane} "
                         "(choose the sagittal series of the study)")
    n = volume.shape[axis]
    rows, columns = (volume.shape[a] for a in range(3) if a != axis)
    if n < min_slices:
        raise MskaiError(f"the ACL classifier needs at least {min_slices} sagittal slices; this series has {n}")
    if min(rows, columns) < MIN_INPLANE:
        raise MskaiError(f"slices of {rows}x{columns} pixels are too small (at least {MIN_INPLANE} per side)")
    if math.prod(volume.shape) > MAX_VOXELS:
        raise MskaiError(f"volume {volume.shape} is too large for the ACL classifier "
                         f"({math.prod(volume.shape) / 1e6:.0f} M voxels; limit {MAX_VOXELS / 1e6:.0f} M)")
    check_knee_geometry(volume, axis)
    check_input(volume)


def check_knee_geometry(volume: Volume, axis: int):
    """Refuse voxel sizes and fields of view that no knee examination has (KNEE_LIMITS_MM): a header error or a
    volume of something else, which the classifier would grade all the same."""
    spacing = volume.spacing
    pixels = [float(spacing[a]) for a in range(3) if a != axis]
    sides = [float(volume.shape[a] * spacing[a]) for a in range(3) if a != axis]
    cover = float(volume.shape[axis] * spacing[axis])
    limits = KNEE_LIMITS_MM
    checks = [("in-plane pixels", pixels, limits["pixel"]), ("slice spacing", [float(spacing[axis])], limits["slice"]),
              ("in-plane field of view", sides, limits["field"]), ("coverage across the slices", [cover],
                                                                    limits["cover"])]
    for what, values, (low, high) in checks:
        bad = [v for v in values if not low <= v <= high]
        if bad:
            raise MskaiError(f"{what} of {bad[0]:.4g} mm is outside the {low:g}-{high:g} mm of any knee MR "
                             "examination: a damaged header, or not a knee series")


def check_structure(volume: Volume):
    """Refuse voxels without spatial structure, before a model grades them: neighbouring pixels of an MR image
    are alike (correlation about 0.9 in knees), those of noise are not (about 0)."""
    axis = volume_plane(volume.affine_lps)[1]
    middle = np.take(volume.array, volume.shape[axis] // 2, axis=axis).astype(np.float64)
    step = max(1, min(middle.shape) // 256)
    middle = middle[::step, ::step]
    a, b = middle[:, :-1].ravel(), middle[:, 1:].ravel()
    if a.std() == 0 or b.std() == 0:
        raise MskaiError("the middle slice has constant intensity: not an image of a knee")
    correlation = float(np.corrcoef(a, b)[0, 1])
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        raise MskaiError(f"neighbouring pixels are unrelated (correlation {correlation:.2f}; MR images have about "
                         f"0.9): the volume looks like noise, not a knee series")


# --- prepare -------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """The input on the canonical grid (R, A, S) and in the network's layout: slices L->R, rows S->I, columns A->P
    (both views of the input array)."""

    grid: object
    slice_axis: int
    canonical: np.ndarray
    layout: np.ndarray

    @classmethod
    def of(cls, volume: Volume) -> "_Layout":
        from mskai.grid import canonical_grid

        grid = canonical_grid(volume, (1.0, 1.0, 1.0))
        slice_axis = int(np.nonzero(grid.ornt[:, 0] == 0)[0][0])
        can = grid.to_canonical(volume.array)  # a view: R, A, S
        return cls(grid, slice_axis, can, can.transpose(0, 2, 1)[:, ::-1, ::-1])

    def layout_of(self, array) -> np.ndarray:
        """An array on the input grid (bone labels) in layout order."""
        return self.grid.to_canonical(array).transpose(0, 2, 1)[:, ::-1, ::-1]

    @property
    def spacing(self) -> tuple:
        """(row, column) spacing in mm."""
        return float(self.grid.canonical_spacing[2]), float(self.grid.canonical_spacing[1])

    def to_input(self, c) -> int:
        """Layout slice -> input slice index along ``slice_axis``."""
        n = self.layout.shape[0]
        return int(n - 1 - c) if self.grid.ornt[self.slice_axis, 1] < 0 else int(c)

    def to_lps(self, s, r, c) -> list:
        """Layout (slice, row, column) -> patient LPS mm, rounded to 0.1 mm."""
        _, h0, w0 = self.layout.shape
        ras = self.grid.canonical_affine_ras @ np.array([s, w0 - 1 - c, h0 - 1 - r, 1.0])
        return [round(float(x), 1) for x in (-ras[0], -ras[1], ras[2])]


def _network_slices(stack: np.ndarray, rows, lay: _Layout, config: AclPreprocessing, notes: dict):
    """(image (K, size, size), weights (rows, K)): the central slices as they are, or the NMF basis images."""
    k = config.depth
    if config.slices == "central":
        notes["input_slices"] = [lay.to_input(c) for c in rows]
        return stack, np.eye(k)
    image, weights = _nmf(stack, k, notes)
    notes["input_slices"] = f"all {lay.layout.shape[0]} slices reduced to {k} NMF basis images"
    return image, weights


def prepare(volume: Volume, config: AclPreprocessing, bone_segmenter=None) -> Prepared:
    """The network input of one sagittal volume (see the module docstring), deterministic.

    bone_segmenter: Volume -> label Volume on the same grid (femur 2, tibia 1); needed with ``joint_crop``.
    """
    if not isinstance(config, AclPreprocessing):
        raise MskaiError("prepare needs an AclPreprocessing")
    check_sagittal(volume)
    lay = _Layout.of(volume)
    n, k = lay.layout.shape[0], config.depth
    notes = {"slices": config.slices, "depth": k, "input_slices_total": int(n), "slice_axis": lay.slice_axis}

    # intensity statistics and the foreground threshold from one strided sample of the whole volume
    sample = _sample(lay.canonical)
    intensity = _Intensity(sample, config)
    notes["intensity"] = intensity.note
    threshold = foreground_threshold(sample)  # raw units; the same threshold after the (monotonic) mapping is intensity(t)
    threshold_norm = float(intensity(np.array([threshold]))[0])

    crop = _knee_crop(lay, config, threshold, notes)
    if config.joint_crop:
        crop = _centre_on_notch(crop, lay, volume, config, bone_segmenter, notes)
    down_h, down_w, up_h, up_w = _resampling(crop, lay, config.size, notes)

    rows = crop.central if config.slices == "central" else _window(n, max(n, k), n // 2)
    stack = down_h @ intensity(lay.layout[rows]) @ down_w.T  # (rows, size, size)
    if config.foreground_mask:
        mask = _filled(stack > threshold_norm)
        stack *= mask
        notes["foreground_fraction"] = round(float(mask.mean()), 4)
    image, weights = _network_slices(stack, rows, lay, config, notes)
    channels = [image.astype(np.float32)]
    if config.kmeans_channel:
        fg_out = _filled(image > (threshold_norm if config.slices == "central" else foreground_threshold(image)))
        channels.append(_kmeans_channel(image, fg_out, config, notes))
    out = np.ascontiguousarray(np.stack(channels), dtype=np.float32)
    return Prepared(out, notes, np.array([lay.to_input(c) for c in rows]), np.asarray(weights, dtype=np.float64),
                    lay.slice_axis, lay.grid, up_h, up_w, np.asarray(rows))
