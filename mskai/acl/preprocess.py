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
axes only (``mskai.segment.preprocess.canonical_grid``), and ``Prepared.cam_to_input`` maps a map on the
network's grid exactly back onto the input voxels through the same steps.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from mskai import MskaiError, check_range
from mskai.acl.series import MIN_SLICES
from mskai.dicom.plane import volume_plane
from mskai.segment.labels import BONE_VALUES
from mskai.volume import Volume

HIST_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)  # Nyul-Udupa landmarks (foreground percentiles)
PERCENTILE_WINDOW = (1.0, 99.0)
MIN_INPLANE = 32  # pixels per in-plane axis
MAX_VOXELS = 300_000_000  # a 1024-slice 512x512 series is 268 M
SAMPLE_VOXELS = 2_000_000  # intensity statistics come from a strided sample of about this many voxels
KMEANS_SAMPLE = 20_000
NMF_MAX_ITER = 100  # the fit error changes < 1 % of itself from 100 to 200 iterations
FEMUR, TIBIA = BONE_VALUES["femur"], BONE_VALUES["tibia"]  # the bone model's labels
CONDYLE_MM = 25.0  # the distal femur (condyles) and ...
PLATEAU_MM = 15.0  # ... the proximal tibia that locate the notch
BONE_GAP_MM = 20.0  # femur's lowest point may lie at most this far below the tibial plateau (else labels are wrong)
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
    from mskai.segment.preprocess import check_input

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


# --- intensity -----------------------------------------------------------------------------------------


def _sample(array) -> np.ndarray:
    """A deterministic strided sample (about SAMPLE_VOXELS voxels) as float32."""
    step = max(1, int(np.ceil((array.size / SAMPLE_VOXELS) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float32).ravel()


def _otsu(values) -> float:
    """Otsu's threshold (skimage, 256 bins): values above it are foreground.

    skimage returns the centre of the lower class's last bin, so that bin's upper half would count as
    foreground; the bin's upper edge is the split Otsu actually chose (it matters when classes are separated).
    """
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float32).ravel()
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    lo, hi = float(values.min()), float(values.max())
    return float(threshold_otsu(values, nbins=256)) + (hi - lo) / 512


def foreground_threshold(values) -> float:
    """The body/air threshold: Otsu on log intensities, so a small very bright class (a joint effusion, vessels)
    cannot pull the split up to "fluid against the rest of the knee" as it does on linear intensities."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    low = values.min()
    return float(np.expm1(_otsu(np.log1p(values - low)))) + low


def _landmarks(sample) -> np.ndarray:
    """The HIST_PERCENTILES of the sample's Otsu foreground, strictly increasing."""
    fg = sample[sample > foreground_threshold(sample)]
    if fg.size < 100:
        fg = sample
    lm = np.percentile(fg.astype(np.float64), HIST_PERCENTILES)
    span = lm[-1] - lm[0]
    if not span > 0:
        raise MskaiError("the volume has (almost) constant intensity: nothing to classify")
    return lm + np.arange(len(lm)) * span * 1e-6  # ties (quantised values) would make the mapping ambiguous


def fit_histogram_landmarks(volumes) -> list:
    """Nyul-Udupa standard landmarks from training volumes (Volumes or 3D arrays).

    Each volume's foreground percentiles (HIST_PERCENTILES) are scaled so p1 -> 0 and p99 -> 1; the landmarks
    are their mean. Store the list in ``AclPreprocessing(intensity="histogram", landmarks=...)``.
    """
    scaled = []
    for v in volumes:
        lm = _landmarks(_sample(np.asarray(v.array if isinstance(v, Volume) else v)))
        scaled.append((lm - lm[0]) / (lm[-1] - lm[0]))
    if not scaled:
        raise MskaiError("histogram landmarks need at least one training volume")
    mean = np.mean(scaled, axis=0)
    mean = mean + np.arange(len(mean)) * 1e-9  # strictly increasing
    return [float(round(x, 9)) for x in mean]


class _Intensity:
    """The volume's intensity mapping to [0, 1] (percentile window or Nyul-Udupa landmarks)."""

    def __init__(self, sample, config: AclPreprocessing):
        self.config = config
        if config.intensity == "percentile":
            lo, hi = np.percentile(sample.astype(np.float64), PERCENTILE_WINDOW)
            if not hi > lo:
                raise MskaiError("the volume has (almost) constant intensity: nothing to classify")
            self.lo, self.scale = float(lo), float(1.0 / (hi - lo))
            self.note = f"percentile p{PERCENTILE_WINDOW[0]:g}-p{PERCENTILE_WINDOW[1]:g} window {lo:.4g}..{hi:.4g}"
        else:
            self.own = _landmarks(sample)
            self.target = np.asarray(config.landmarks, dtype=np.float64)
            self.note = "histogram standardisation (Nyul-Udupa) to the package's landmarks"

    def __call__(self, array) -> np.ndarray:
        a = np.asarray(array, dtype=np.float32)
        if self.config.intensity == "percentile":
            a = a - np.float32(self.lo)
            a *= np.float32(self.scale)
            return np.clip(a, 0, 1, out=a)
        t = self.target
        out = np.interp(a, self.own, (t - t[0]) / (t[-1] - t[0])).astype(np.float32)  # clamps outside to 0 / 1
        return out


# --- in-plane resampling -------------------------------------------------------------------------------


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


def _filled(mask: np.ndarray) -> np.ndarray:
    """Each row (last axis) filled between its leftmost and rightmost True."""
    left = np.logical_or.accumulate(mask, axis=-1)
    right = np.logical_or.accumulate(mask[..., ::-1], axis=-1)[..., ::-1]
    return left & right


def _window(n: int, k: int, centre: int) -> np.ndarray:
    """k slice indices centred on ``centre``; fewer than k slices: all of them, edges repeated."""
    if n >= k:
        start = int(np.clip(centre - k // 2, 0, n - k))
        return np.arange(start, start + k)
    before = (k - n) // 2
    return np.concatenate([np.zeros(before, int), np.arange(n), np.full(k - n - before, n - 1)])


# --- the pieces of prepare ----------------------------------------------------------------------------


def _kmeans_channel(image: np.ndarray, fg: np.ndarray, config: AclPreprocessing, notes: dict) -> np.ndarray:
    """Foreground pixels whose intensity cluster (sorted, 0 = darkest) lies in config.kmeans_keep."""
    values = image[fg]
    if values.size == 0:
        notes["kmeans"] = "no foreground: empty channel"
        return np.zeros_like(image)
    sample = values[:: max(1, values.size // KMEANS_SAMPLE)]
    distinct = np.unique(sample)
    if distinct.size <= config.kmeans_clusters:
        centres = distinct.astype(np.float64)  # every value its own cluster
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=config.kmeans_clusters, n_init=3, random_state=0).fit(sample[:, None].astype(np.float64))
        centres = np.sort(km.cluster_centers_.ravel())
    rank = np.searchsorted((centres[1:] + centres[:-1]) / 2, image, side="left")  # nearest centre
    lo, hi = config.kmeans_keep
    notes["kmeans"] = (f"clusters {lo}-{hi} of {len(centres)} (intensity {centres[lo] if lo < len(centres) else 1:.3f}"
                       f"..{centres[min(hi, len(centres) - 1)]:.3f}) of the foreground")
    return (fg & (rank >= lo) & (rank <= hi)).astype(np.float32)


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


def prepare(volume: Volume, config: AclPreprocessing, bone_segmenter=None) -> Prepared:
    """The network input of one sagittal volume (see the module docstring), deterministic.

    bone_segmenter: Volume -> label Volume on the same grid (femur 2, tibia 1); needed with ``joint_crop``.
    """
    from mskai.segment.preprocess import canonical_grid

    if not isinstance(config, AclPreprocessing):
        raise MskaiError("prepare needs an AclPreprocessing")
    check_sagittal(volume)
    grid = canonical_grid(volume, (1.0, 1.0, 1.0))
    slice_axis = int(np.nonzero(grid.ornt[:, 0] == 0)[0][0])
    can = grid.to_canonical(volume.array)  # a view: R, A, S
    layout = can.transpose(0, 2, 1)[:, ::-1, ::-1]  # slices L->R, rows S->I, columns A->P (a view)
    n, h0, w0 = layout.shape
    sp_h, sp_w = float(grid.canonical_spacing[2]), float(grid.canonical_spacing[1])
    k = config.depth
    notes = {"slices": config.slices, "depth": k, "input_slices_total": int(n), "slice_axis": slice_axis}

    def to_input(c):
        return int(n - 1 - c) if grid.ornt[slice_axis, 1] < 0 else int(c)

    def to_lps(s, r, c):
        ras = grid.canonical_affine_ras @ np.array([s, w0 - 1 - c, h0 - 1 - r, 1.0])
        return [round(float(x), 1) for x in (-ras[0], -ras[1], ras[2])]

    # intensity statistics and the foreground threshold from one strided sample of the whole volume
    sample = _sample(can)
    intensity = _Intensity(sample, config)
    notes["intensity"] = intensity.note
    threshold = foreground_threshold(sample)  # raw units; the same threshold after the (monotonic) mapping is intensity(t)
    threshold_norm = float(intensity(np.array([threshold]))[0])

    area = np.count_nonzero(can > threshold, axis=(1, 2)).astype(np.float64)
    smooth = np.convolve(np.pad(area, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    widest = int(np.argmax(smooth))
    notes["widest_slice"] = to_input(widest)
    centre_slice = widest
    central = _window(n, k, centre_slice)
    fg = layout[np.unique(central)] > threshold
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

    if config.joint_crop:
        if bone_segmenter is None:
            raise MskaiError("this model crops around the knee joint and needs the bone model (bone_segmenter)")
        labels = bone_segmenter(volume)
        array = getattr(labels, "array", labels)
        if np.shape(array) != tuple(volume.shape) or (
                isinstance(labels, Volume) and not np.allclose(labels.affine_lps, volume.affine_lps, atol=1e-3)):
            raise MskaiError("the bone model's labels are not on the input volume's grid")
        found = _notch(grid.to_canonical(np.asarray(array)).transpose(0, 2, 1)[:, ::-1, ::-1], sp_h)
        if isinstance(found, str):
            notes["joint_crop"] = f"{found}: plain crop around the knee centre instead"
        else:
            ns, ch, cw = found
            centre_slice = int(np.clip(round(ns), 0, n - 1))
            side, source = config.joint_crop_mm, "intercondylar notch (bone model)"
            notes["joint_crop"] = "centred on the intercondylar notch"
            notes["notch_lps_mm"] = to_lps(ns, ch, cw)
            notes["notch_slice"] = to_input(centre_slice)
            central = _window(n, k, centre_slice)

    len_h, len_w = side / sp_h, side / sp_w
    start_h, start_w = ch + 0.5 - len_h / 2, cw + 0.5 - len_w / 2
    size = config.size
    down_h = _down_matrix(h0, start_h, len_h, size).astype(np.float32)
    down_w = _down_matrix(w0, start_w, len_w, size).astype(np.float32)
    notes["crop"] = {"source": source, "side_mm": round(float(side), 2), "centre_lps_mm": to_lps(centre_slice, ch, cw),
                     "output_pixel_mm": round(float(side) / size, 4)}

    rows = central if config.slices == "central" else _window(n, max(n, k), n // 2)
    stack = down_h @ intensity(layout[rows]) @ down_w.T  # (rows, size, size)
    if config.foreground_mask:
        mask = _filled(stack > threshold_norm)
        stack *= mask
        notes["foreground_fraction"] = round(float(mask.mean()), 4)
    if config.slices == "central":
        image, weights = stack, np.eye(k)
        notes["input_slices"] = [to_input(c) for c in rows]
    else:
        image, weights = _nmf(stack, k, notes)
        notes["input_slices"] = f"all {n} slices reduced to {k} NMF basis images"
    channels = [image.astype(np.float32)]
    if config.kmeans_channel:
        fg_out = _filled(image > (threshold_norm if config.slices == "central" else foreground_threshold(image)))
        channels.append(_kmeans_channel(image, fg_out, config, notes))
    out = np.ascontiguousarray(np.stack(channels), dtype=np.float32)
    return Prepared(out, notes, np.array([to_input(c) for c in rows]), np.asarray(weights, dtype=np.float64),
                    slice_axis, grid, _up_matrix(h0, start_h, len_h, size), _up_matrix(w0, start_w, len_w, size),
                    np.asarray(rows))
