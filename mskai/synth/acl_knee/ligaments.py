"""The ligaments: the ACL and PCL as bands along curved paths between their attachments, the ACL's lesion per
grade, and the fluid blobs that go with it.

A band's thickness and width along its length are drawn either from a simple parametric profile or, for
``REAL_SHARE`` of the knees, from a real ligament's: the ACLs and PCLs of the Visible Human Female (the knees of
OAI training and validation subjects) or Male (test subjects only), measured section by section and stretched at
random (``real_profiles``; CC BY 4.0, Andreassen et al. 2022, see ../shared/data/NOTICE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mskai.acl.landmarks import sagittal_normal
from mskai.synth.acl_knee.geometry import Band, _bezier, _rotation
from mskai.synth.acl_knee.tissues import CORTEX_F, KneeAnatomy


@dataclass
class Piece:
    """One continuous stretch of ligament fibres and how it looks (fractions of the way to oedema etc.)."""

    band: Band
    kind: str  # "acl" or "pcl"
    striation: float = 0.2  # contrast of the fibre bundles (towards intermediate signal)
    stripes: float = 2.0  # bundles across the thickness
    phase: float = 0.0
    oedema: float = 0.0  # fraction of oedema signal throughout
    streaks: float = 0.0  # bright streaks between fibres (strain, tears)
    cut: tuple | None = None  # (s0, s1, c, angle): fibres missing where s0<s<s1 and u cos + v sin > c


@dataclass
class Blob:
    """A soft ellipsoid of fluid / haemorrhage (notch fluid, the torn ACL's bed)."""

    centre: np.ndarray
    axes: np.ndarray  # 3x3, columns: unit axes
    radii: np.ndarray
    strength: float = 1.0  # mix towards fluid signal
    wobble: tuple = (0.0, 0.0, 0.0)  # phases of the outline's irregularity

    def bounds(self):
        reach = float(self.radii.max()) + 2.0
        return self.centre - reach, self.centre + reach


def _bone_at(anat: KneeAnatomy, points_mm) -> np.ndarray:
    idx = np.rint(np.asarray(points_mm) / anat.spacing).astype(int)
    idx = np.clip(idx, 0, np.array(anat.tissue.shape) - 1)
    return anat.tissue[idx[..., 0], idx[..., 1], idx[..., 2]] >= CORTEX_F


def _clear_path(anat, a, b, bow, half, n=24, extend=2.5):
    """A Bezier path a -> b bowed along the in-plane normal, bow increased until it clears the bones.

    The middle 70 % of the path, and its edges ``half`` mm either side, must lie outside bone; the ends are
    pushed ``extend`` mm into their bones (the footprints; only the part outside bone is drawn).
    """
    d = (b - a) / np.linalg.norm(b - a)
    normal = sagittal_normal(d)
    if normal[1] > 0:  # point it posterior (-y): the cruciates bow away from the roof
        normal = -normal
    for extra in np.concatenate([[0.0], np.arange(1.0, 12.0, 1.0)]):
        for sign in (1.0, -1.0) if extra else (1.0,):
            mid = (a + b) / 2 + normal * (bow + sign * extra)
            path = _bezier([a - d * extend, mid, b + d * extend], n)
            inner = path[int(0.15 * n):int(0.85 * n)]
            if not any(_bone_at(anat, inner + normal * o).any() for o in (0.0, half, -half)):
                return path
    return _bezier([a - d * extend, (a + b) / 2 + normal * bow, b + d * extend], n)


REAL_SHARE = 0.5  # knees whose ligaments take a real ligament's profile
PROFILE_POINTS = 24


@lru_cache(maxsize=8)
def real_profiles(kind: str, people: tuple) -> tuple:
    """((half thickness, half width) mm arrays of PROFILE_POINTS from the femoral to the tibial end), one per Visible
    Human ligament of ``kind`` ("ACL", "PCL") of ``people``; () when the surfaces are not there.

    Each ligament is voxelised, its long axis found (principal axis, pointed at the tibial cartilage), and cut into
    sections; per section the extent (3rd-97th percentile) left-right is the width and the extent across it in the
    sagittal plane the thickness.
    """
    from mskai.synth.visible_human import SIDES, VH_DIR, _axes, voxelised

    out = []
    for person in people:
        for side in SIDES:
            files = [VH_DIR / f"{person}_{side}_{name}.stl" for name in
                     (f"Ligament_{kind}", "Cartilage_TibiaLateral", "Cartilage_TibiaMedial")]
            if not all(f.is_file() for f in files):
                continue
            points = voxelised(str(files[0]))[1]
            tibia = np.concatenate([voxelised(str(f))[1] for f in files[1:]]).mean(0)
            centre = points.mean(0)
            axis = _axes(points)[:, 0]
            axis = axis if (tibia - centre) @ axis > 0 else -axis
            across = np.array([1.0, 0.0, 0.0]) - axis * axis[0]  # the frames' x runs left-right
            across /= np.linalg.norm(across)
            t, b, n = ((points - centre) @ v for v in (axis, across, np.cross(axis, across)))
            edges = np.linspace(t.min(), t.max(), PROFILE_POINTS + 1)
            sections = [(t >= lo) & (t <= hi) for lo, hi in zip(edges[:-1], edges[1:])]
            extent = np.array([[np.ptp(np.percentile(x[m], (3, 97))) for x in (n, b)] for m in sections])
            extent = np.apply_along_axis(lambda e: np.convolve(np.pad(e, 1, mode="edge"), np.ones(3) / 3, "valid"), 0,
                                         extent)
            out.append((extent[:, 0] / 2, extent[:, 1] / 2))
    return tuple(out)


def _profile(g_lig, kind: str, people: tuple, parametric):
    """(half_n, half_b) of a band: a real ligament's stretched at random for REAL_SHARE of the knees, else
    ``parametric``; the same number of draws either way (the streams stay aligned)."""
    real, pick, stretch = g_lig.random() < REAL_SHARE, g_lig.random(), g_lig.uniform(0.8, 1.05, 2)
    profiles = real_profiles(kind, tuple(people)) if real else ()
    if not profiles:
        return parametric
    half_n, half_b = profiles[int(pick * len(profiles))]
    return half_n * stretch[0], half_b * stretch[1]


def _acl_pieces(anat, grade, g_lig, g_lesion, people=()):
    """ACL pieces and fluid blobs for a grade; geometry draws come first so grades share them. ``people``: the
    Visible Human people whose ligament profiles this knee may take."""
    lm = anat.landmarks
    a = np.asarray(lm["acl_femur"], dtype=float) + g_lig.normal(0, 0.8, 3) * [0.5, 1, 1]
    b = np.asarray(lm["acl_tibia"], dtype=float) + g_lig.normal(0, 1.2, 3) * [1, 1.5, 0.3]
    width, thick = g_lig.uniform(7.0, 11.0), g_lig.uniform(4.6, 6.6)
    fan, bow = g_lig.uniform(1.35, 1.8), g_lig.uniform(0.0, 1.5)
    striation, stripes, phase = g_lig.uniform(0.1, 0.35), g_lig.uniform(1.5, 3.0), g_lig.uniform(0, 2 * np.pi)
    n = PROFILE_POINTS
    s = np.linspace(0, 1, n)
    half_n = thick / 2 * (1 + 0.15 * np.clip(1 - s / 0.2, 0, 1) + (fan - 1) * np.clip((s - 0.6) / 0.4, 0, 1) ** 1.5)
    half_b = width / 2 * (1 + 0.1 * np.clip((s - 0.6) / 0.4, 0, 1))
    half_n, half_b = _profile(g_lig, "ACL", people, (half_n, half_b))
    path = _clear_path(anat, a, b, bow, float(half_n.mean()), n)
    base = dict(kind="acl", striation=striation, stripes=stripes, phase=phase)
    # lesion draws (only these depend on the grade)
    u = g_lesion.uniform(0, 1, 16)
    wobble = tuple(2 * np.pi * u[13:16])
    if grade == 0:
        return [Piece(Band(path, half_n, half_b, 0.6), **base)], []
    if grade == 1:
        return _strain(path, half_n, half_b, base, u)
    if grade == 2:
        return _partial_tear(path, half_n, half_b, base, u, wobble)
    return _complete_tear(anat, path, half_n, half_b, base, u, wobble)


def _strain(path, half_n, half_b, base, u):
    """Strain: thickened, oedematous, fibres continuous, hazy margins, a little fluid around."""
    grow = 1.15 + 0.3 * u[0]
    piece = Piece(Band(path, half_n * grow, half_b * (1.05 + 0.2 * u[1]), 1.0 + 0.8 * u[2]),
                  **{**base, "striation": 0.15}, oedema=0.2 + 0.2 * u[3], streaks=0.1 + 0.15 * u[4])
    d = path[-1] - path[0]
    blob = Blob(path[len(path) // 2], _frame(d), np.array([np.linalg.norm(d) / 2.2, half_n.mean() * 2.2,
                                                           half_b.mean() * 1.6]), 0.25 + 0.2 * u[5])
    return [piece], [blob]


def _partial_tear(path, half_n, half_b, base, u, wobble):
    """Partial rupture: thinned, a gap across part of the band, fluid in it, the rest continuous."""
    thin = 0.6 + 0.25 * u[0]
    s0 = 0.2 + 0.45 * u[1]
    length = _length(path)
    gap = (2.5 + 3.0 * u[2]) / length
    q = 0.35 + 0.35 * u[3]  # fraction of the cross-section torn
    c = _chord_for_fraction(q)
    angle = 2 * np.pi * u[4]
    wavy = _wave(path, (0.4 + 0.8 * u[5]), 6 + 4 * u[6], 2 * np.pi * u[7], start=s0)
    piece = Piece(Band(wavy, half_n * thin, half_b * (0.8 + 0.15 * u[8]), 0.9),
                  **base, oedema=0.15 + 0.2 * u[9], streaks=0.3 + 0.3 * u[10],
                  cut=(s0, s0 + gap, c, angle))
    centre = _point_at(path, s0 + gap / 2)
    blob = Blob(centre, _frame(path[-1] - path[0]), np.array([3.0, 2.5, 3.0]) * (0.8 + 0.5 * u[11]), 0.7, wobble)
    return [piece], [blob]


def _complete_tear(anat, path, half_n, half_b, base, u, wobble):
    """Complete rupture: a gap across the band, a short or absent femoral stump, a wavy sagging tibial stump,
    notch fluid."""
    n = len(path)
    s = np.linspace(0, 1, n)
    length = _length(path)
    s0 = 0.15 + 0.45 * u[0]
    gap = (5.0 + 7.0 * u[1]) / length
    pieces = []
    keep = s0 * (0.3 + 0.7 * u[2]) if u[3] > 0.35 else 0.0  # proximal stump kept (else: empty lateral wall)
    if keep * length > 2.0:
        k = max(3, int(round(keep * n)))
        stump = _resample(path[: k + 1], 8)
        pieces.append(Piece(Band(stump, np.interp(np.linspace(0, keep, 8), s, half_n) * 1.1,
                                 np.interp(np.linspace(0, keep, 8), s, half_b), 1.2),
                            **base, oedema=0.3 + 0.3 * u[4], streaks=0.3))
    start = min(s0 + gap, 0.85)
    k0 = int(round(start * (n - 1)))
    distal = path[k0:][::-1]  # from the tibia upwards
    # sag: rotate the stump about its tibial end towards the plateau (about the knee's left-right axis)
    tibial_end = distal[0]
    turn = (15 + 20 * u[5]) * (1 if (distal[-1] - distal[0])[1] < 0 else -1)
    rot = _rotation([1.0, 0.0, 0.0], turn)
    sagged = (distal - tibial_end) @ rot.T + tibial_end
    if _bone_at(anat, sagged[2:]).any():
        sagged = (distal - tibial_end) @ _rotation([1.0, 0.0, 0.0], turn / 2).T + tibial_end
    sagged = _resample(sagged, 14)
    sagged = tibial_end + (sagged - tibial_end) * (0.75 + 0.2 * u[6])  # retracted (shortened)
    wavy = _wave(sagged, 1.0 + 1.5 * u[7], 5 + 4 * u[8], 2 * np.pi * u[9], start=0.15)
    sd = np.linspace(1, start, len(wavy))  # the original path position of each node of the stump
    pieces.append(Piece(Band(wavy, np.interp(sd, s, half_n) * (1.0 + 0.3 * u[10]), np.interp(sd, s, half_b), 1.3),
                        **{**base, "striation": 0.1}, oedema=0.3 + 0.3 * u[11], streaks=0.4))
    d = path[-1] - path[0]
    centre = _point_at(path, s0 + gap / 2)
    blobs = [Blob(centre, _frame(d), np.array([gap * length / 2 + 3.0, half_n.mean() * 2.0 + 1.5,
                                               half_b.mean() * 1.4 + 1.0]), 0.7 + 0.25 * u[12], wobble),
             Blob(path[2] * 0.6 + centre * 0.4, _frame(d), np.array([5.0, 3.0, 3.5]), 0.6 + 0.3 * u[12],
                  wobble[::-1])]  # the second along the lateral wall
    return pieces, blobs


def _pcl_pieces(anat, g_lig, people=()):
    lm = anat.landmarks
    a = np.asarray(lm["pcl_femur"], dtype=float) + g_lig.normal(0, 1.0, 3)
    b = np.asarray(lm["pcl_tibia"], dtype=float) + g_lig.normal(0, 1.0, 3)
    thick, width = g_lig.uniform(5.6, 7.6), g_lig.uniform(10.0, 13.0)
    d = b - a
    # a hockey stick: leaves the femur backwards under the roof, rising a little, then bends down to the
    # posterior tibia; the rise shrinks until the path clears the femur
    n = PROFILE_POINTS
    ext = 2.5
    rise = g_lig.uniform(4.0, 9.0)
    for scale in np.linspace(1.0, -0.5, 7):
        c1 = a + np.array([0.0, 0.6 * d[1], rise * scale])
        c2 = b + np.array([0.0, -0.1 * d[1], -0.75 * d[2]])
        path = _bezier([a - (c1 - a) / np.linalg.norm(c1 - a) * ext, c1, c2,
                        b + (b - c2) / np.linalg.norm(b - c2) * ext], n)
        if not _bone_at(anat, path[int(0.2 * n):int(0.8 * n)]).any():
            break
    s = np.linspace(0, 1, n)
    half_n = thick / 2 * (1 + 0.2 * np.sin(np.pi * s))
    half_b = width / 2 * (1 - 0.25 * s)
    half_n, half_b = _profile(g_lig, "PCL", people, (half_n, half_b))
    return Piece(Band(path, half_n, half_b, 0.5), "pcl", striation=g_lig.uniform(0.0, 0.08),
                 stripes=2.0, phase=g_lig.uniform(0, 2 * np.pi))


def _frame(direction) -> np.ndarray:
    d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    n = sagittal_normal(d)
    return np.stack([d, n, np.cross(d, n)], axis=1)


def _length(path) -> float:
    return float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())


def _point_at(path, s) -> np.ndarray:
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    return np.array([np.interp(s * cum[-1], cum, path[:, i]) for i in range(3)])


def _resample(path, n) -> np.ndarray:
    return np.stack([_point_at(path, s) for s in np.linspace(0, 1, n)])


def _wave(path, amplitude, wavelength, phase, start=0.0) -> np.ndarray:
    """The path displaced along its in-plane normal by a sine wave growing from ``start`` (0..1) on."""
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    s = cum / max(cum[-1], 1e-9)
    normal = sagittal_normal(path[-1] - path[0])
    ramp = np.clip((s - start) / 0.15, 0, 1)
    return path + normal[None] * (amplitude * ramp * np.sin(2 * np.pi * cum / wavelength + phase))[:, None]


def _chord_for_fraction(q: float) -> float:
    """c such that the part of the unit disc beyond the chord u = c has area fraction q."""
    c = np.linspace(-1, 1, 2001)
    area = (np.arccos(c) - c * np.sqrt(1 - c**2)) / np.pi
    return float(np.interp(q, area[::-1], c[::-1]))
