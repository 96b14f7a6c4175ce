"""Intensities of the ACL network input: the body/air (foreground) threshold, the mapping to [0, 1] (percentile
window or Nyul-Udupa histogram standardisation, with its training-set landmarks) and the K-means channel;
``config`` is the AclPreprocessing."""

from __future__ import annotations

import numpy as np

from mskai import MskaiError
from mskai.volume import Volume

HIST_PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)  # Nyul-Udupa landmarks (foreground percentiles)
PERCENTILE_WINDOW = (1.0, 99.0)
SAMPLE_VOXELS = 2_000_000  # intensity statistics come from a strided sample of about this many voxels
KMEANS_SAMPLE = 20_000


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

    def __init__(self, sample, config):
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


def _filled(mask: np.ndarray) -> np.ndarray:
    """Each row (last axis) filled between its leftmost and rightmost True."""
    left = np.logical_or.accumulate(mask, axis=-1)
    right = np.logical_or.accumulate(mask[..., ::-1], axis=-1)[..., ::-1]
    return left & right


def _kmeans_channel(image: np.ndarray, fg: np.ndarray, config, notes: dict) -> np.ndarray:
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
