"""Synthetic sagittal knee MR with graded anterior cruciate ligaments (ACL), for the ACL classifier.

No labelled knee MR images can be used here, so the classifier learns from and is tested on these renders.
Each case is one real knee shape (femur and tibia of an OAI subject, ``mskai.synth.real_shapes``) dressed
with a tissue model built around it once per subject and process:

- bones with a cortical rim and marrow; a patella transplanted from the bundled pymskt knee label map (MIT),
  scaled and seated on the trochlea; a fibular head; femoral, tibial and patellar cartilage; menisci
  (wedges at the rim of the tibial plateaus);
- the intercondylar notch found on the femur (``notch_landmarks``: the deepest intercondylar point between
  the condyles per coronal section, the roof = Blumensaat line, the walls), so the cruciates sit where they
  do in that knee; which condyle is lateral is read from the shape (``lateral_side``);
- Hoffa's fat pad, patellar and quadriceps tendons, prefemoral and suprapatellar fat, the popliteal fossa
  with artery and vein, muscle, subcutaneous fat and skin; recesses that fill with joint fluid.

Per case (``synthetic_acl_knee``) the ACL and PCL are drawn as bands along curved paths between their
attachments, with the grade's lesion; then a random acquisition renders the anatomy: right or left knee,
pose, oblique-sagittal slices of 3-4.5 mm (20-40 of them), a 256 or 320 matrix at 0.4-0.66 mm, a contrast
(PD, PD fat-sat, T2 fat-sat, T1), a bias field and Rician noise. The random stream is split at the start
(subject, scene, ligament, lesion, fluid, noise), so for the same generator state the grades differ only in
the ligament and in the joint fluid that goes with a tear: same subject, pose, contrast, noise, field of
view and slice count.

Grades (``GRADES``; label = index): 0 healthy, 1 minor strain (thickened, oedematous, continuous fibres),
2 partial rupture (thinned, a partial gap across part of the band, some fluid), 3 complete rupture (a gap
across the whole band, a wavy sagging distal stump, a short or absent femoral stump, fluid in the notch, a
joint effusion). Binary (``mskai.acl.to_binary``): intact = 0 (healthy, strain) versus torn = 1 (partial, complete),
as MRNet's "ACL tear" counts partial tears as tears. Effusion also occurs with intact ligaments (less often),
so it is a hint, not a give-away.

Data: OAI bone masks (Apache-2.0; OAI images, NIH) and the pymskt knee label map (MIT); keep
../shared/data/NOTICE.md with anything derived from them. Images are synthetic: demo, not for clinical use.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mskai.acl import GRADES, to_binary  # the task's one class table
from mskai.synth import SHARED_DATA
from mskai.volume import Volume

OAI_FOLDER = SHARED_DATA / "oai_knee_bone_masks"
REPO = Path(__file__).resolve().parents[2]
SPLIT_CACHE = REPO / "build" / "oai_splits"
ANATOMY_VERSION = 2  # bump whenever build_anatomy changes: the disk cache is keyed on it
ANATOMY_CACHE = REPO / "build" / f"acl_anatomy_v{ANATOMY_VERSION}"
ANATOMY_CACHE_SIZE = int(os.environ.get("MSKAI_ACL_ANATOMY_CACHE", "16"))  # subjects kept in memory per process

# Tissue classes of the knee model; every class from CORTEX_F on is bone (cortex and marrow per bone).
(AIR, MUSCLE, FAT, SKIN, CARTILAGE, MENISCUS, FLUID, TENDON, ARTERY, VEIN,
 CORTEX_F, MARROW_F, CORTEX_T, MARROW_T, CORTEX_P, MARROW_P, CORTEX_FIB, MARROW_FIB) = range(18)
N_TISSUES = 18
BONES = {"femur": (CORTEX_F, MARROW_F), "tibia": (CORTEX_T, MARROW_T), "patella": (CORTEX_P, MARROW_P),
         "fibula": (CORTEX_FIB, MARROW_FIB)}
NEVER = 255  # recess value of voxels that never fill with fluid

# Mean intensities (low, high) per tissue kind and contrast, on a 0-1 scale where fluid or fat is brightest.
PROTOCOLS = {
    "PD": dict(fat=(.80, 1.0), marrow=(.72, .92), muscle=(.26, .38), cartilage=(.45, .60), fluid=(.58, .78),
               oedema=(.50, .70), acl=(.13, .22), pcl=(.04, .09), dark=(.02, .07), skin=(.35, .5)),
    "PD fat-sat": dict(fat=(.10, .22), marrow=(.10, .22), muscle=(.26, .38), cartilage=(.42, .60),
                       fluid=(.85, 1.0), oedema=(.62, .85), acl=(.07, .15), pcl=(.03, .07), dark=(.02, .06),
                       skin=(.25, .4)),
    "T2 fat-sat": dict(fat=(.07, .15), marrow=(.06, .14), muscle=(.12, .22), cartilage=(.25, .40),
                       fluid=(.90, 1.0), oedema=(.60, .85), acl=(.04, .10), pcl=(.02, .05), dark=(.01, .04),
                       skin=(.15, .3)),
    "T1": dict(fat=(.85, 1.0), marrow=(.78, .95), muscle=(.24, .34), cartilage=(.30, .42), fluid=(.10, .20),
               oedema=(.25, .36), acl=(.13, .22), pcl=(.04, .09), dark=(.02, .06), skin=(.3, .45)),
}
PROTOCOL_WEIGHTS = (0.3, 0.35, 0.2, 0.15)
PLANE_AXES = {  # directions of the i, j, k axes (columns) in LPS before the oblique tilt
    "sagittal": np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float).T,
    "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float).T,
    "axial": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float).T,
}


def _check_grade(grade):
    if isinstance(grade, bool) or int(grade) != grade or not 0 <= int(grade) < len(GRADES):
        raise ValueError(f"grade must be 0..{len(GRADES) - 1} ({', '.join(GRADES)}), not {grade!r}")


def acl_shape_subjects(split: str = "train", folder=None) -> list[str]:
    """OAI subject ids of one split, the same split as the bone model's (``real_shapes.split_subjects``).

    Train the classifier on "train", choose on "val", report on "test": the test knees are never trained on
    by either model.
    """
    from mskai.synth.real_shapes import oai_subjects, split_subjects

    ids = oai_subjects(Path(folder) if folder else OAI_FOLDER)
    if not ids:
        raise FileNotFoundError(f"no OAI knee masks (*.nii.gz) in {folder or OAI_FOLDER}")
    return split_subjects(ids)[split]


# --- geometry helpers -----------------------------------------------------------------------------------


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


# --- landmarks on the real shape -----------------------------------------------------------------------


def lateral_side(femur: np.ndarray, tibia: np.ndarray, spacing, notch_x: float) -> int:
    """+1 when the lateral condyle lies towards +x (axis 0), else -1: read from the bone shapes.

    Three cues, each checked on the pymskt right knee (its fibula marks the lateral side) and agreeing with
    each other on most OAI knees: the femoral shaft leans laterally above the knee (valgus), the medial
    condyle reaches lower (the lateral one ends higher), and the plateau cross-section 4-7 mm below the
    tibia's top is larger on the lateral side (the medial plateau is concave, cut less).
    """
    sp = np.asarray(spacing, dtype=float)
    xc = int(round(notch_x / sp[0]))
    fz = np.nonzero(femur.any((0, 1)))[0]
    top = femur[:, :, fz.max() - int(15 / sp[2]):fz.max() + 1]
    shaft = (np.nonzero(top)[0].mean() - xc) * sp[0]
    tz = np.nonzero(tibia.any((0, 1)))[0].max()
    slab = np.nonzero(tibia[:, :, tz - int(7 / sp[2]):tz - int(4 / sp[2])])[0]
    area = ((slab > xc).sum() - (slab < xc).sum()) / max(len(slab), 1)

    def bottom(mask):
        found = np.nonzero(mask.any((0, 1)))[0]
        return found.min() * sp[2] if len(found) else np.nan

    higher = bottom(femur[xc + 3:]) - bottom(femur[:max(xc - 3, 1)])
    score = np.nansum([shaft / 5.0, area / 0.3, higher / 3.0])
    return 1 if score >= 0 else -1


def notch_landmarks(femur: np.ndarray, tibia: np.ndarray, spacing) -> dict:
    """Intercondylar notch, joint line and tibial plateau of a knee (axes LR, AP with anterior +, IS), in mm.

    The notch centre is where the hull of axial femur sections 6-15 mm above its lowest point has its largest
    gap; per coronal section (each y) the roof is the femur's lowest point at that centre, the condyles the
    lowest points either side; the notch runs over the sections where the roof lies over 5 mm above both
    condyles (its posterior end is where the Blumensaat line meets the posterior cortex).
    """
    from skimage.morphology import convex_hull_image

    sp = np.asarray(spacing, dtype=float)
    fz = np.nonzero(femur.any((0, 1)))[0]
    bottom = fz.min()
    centres = []
    for dz in (6.0, 9.0, 12.0, 15.0):
        section = femur[:, :, bottom + int(round(dz / sp[2]))]
        if section.sum() < 50:
            continue
        gap = ndimage.binary_opening(convex_hull_image(section) & ~section, iterations=2)
        comps, n = ndimage.label(gap)
        if n:
            biggest = comps == 1 + int(np.argmax(ndimage.sum_labels(gap, comps, range(1, n + 1))))
            centres.append(np.nonzero(biggest)[0].mean())
    if not centres:
        raise ValueError("no intercondylar notch found")
    xc = float(np.median(centres))
    has = femur.any(2)
    zb = np.where(has, femur.argmax(2), np.nan).astype(float) * sp[2]  # lowest femur point per (x, y), mm
    x = np.arange(femur.shape[0])
    mid = np.abs(x * sp[0] - xc * sp[0]) <= 2.0
    side_a, side_b = x * sp[0] < xc * sp[0] - 4, x * sp[0] > xc * sp[0] + 4
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            roof = np.nanmedian(zb[mid], axis=0)
            cond_a, cond_b = np.nanmin(zb[side_a], axis=0), np.nanmin(zb[side_b], axis=0)
    depth = roof - np.maximum(cond_a, cond_b)
    low = bottom * sp[2] + 30.0  # condyles: within 30 mm of the femur's lowest point
    valid = np.isfinite(depth) & (cond_a < low) & (cond_b < low)
    if not valid.any() or np.nanmax(np.where(valid, depth, np.nan)) < 8:
        raise ValueError("no intercondylar notch found")
    ok = valid & (depth > max(6.0, 0.35 * np.nanmax(np.where(valid, depth, np.nan))))
    comps, n = ndimage.label(ok)
    run = np.nonzero(comps == 1 + int(np.argmax(ndimage.sum_labels(ok, comps, range(1, n + 1)))))[0]
    if (run[-1] - run[0]) * sp[1] < 5:
        raise ValueError("the intercondylar notch is implausibly short")
    zt = np.where(tibia.any(2), tibia.shape[2] - 1 - tibia[:, :, ::-1].argmax(2), np.nan) * sp[2]  # tibial top
    under = has & tibia.any(2) & ~(np.abs(x * sp[0] - xc * sp[0]) <= 8)[:, None]  # under the condyles
    plateau = float(np.nanmedian(zt[under])) if under.any() else float(np.nanmax(zt))
    front = np.nonzero(np.any(zt > plateau - 4, axis=0))[0]  # the plateau's AP extent (all columns)
    if len(front) < 5:
        raise ValueError("no tibial plateau under the notch")
    return {
        "notch_x": xc * sp[0],
        "roof": {int(j): float(roof[j]) for j in run},
        "condyle_a": {int(j): float(cond_a[j]) for j in run},
        "condyle_b": {int(j): float(cond_b[j]) for j in run},
        "notch_y": (run[0] * sp[1], run[-1] * sp[1]),
        "femur_bottom": bottom * sp[2],
        "plateau_z": plateau,
        "plateau_y": (front.min() * sp[1], front.max() * sp[1]),
        "tibial_top": zt,
    }


def _wall_x(femur, sp, x_mm, y_mm, z_mm, towards: int) -> float:
    """x (mm) of the first femur voxel met going from x_mm towards +x (1) or -x (-1) at (y, z)."""
    j, k = int(round(y_mm / sp[1])), int(round(z_mm / sp[2]))
    row = femur[:, j, k]
    i0 = int(round(x_mm / sp[0]))
    idx = np.arange(i0, len(row)) if towards > 0 else np.arange(i0, -1, -1)
    hit = idx[row[idx]]
    return float(hit[0] * sp[0]) if len(hit) else float(x_mm + towards * 9.0)


def _attachments(femur, tibia, sp, lm, lateral) -> dict:
    """Attachment centres (mm) of the ACL and the PCL on this knee."""
    y0, y1 = lm["notch_y"]
    xc = lm["notch_x"]

    def roof_at(y):
        keys = np.array(sorted(lm["roof"]))
        j = keys[np.argmin(np.abs(keys * sp[1] - y))]
        return lm["roof"][int(j)], min(lm["condyle_a"][int(j)], lm["condyle_b"][int(j)])

    # tibia: anterior intercondylar area, ~40 % of the plateau's depth behind its anterior edge.
    # femur: inner wall of the lateral condyle near the posterior end of the roof (Blumensaat line). The pair
    # whose straight band crosses the least bone is taken (in extension the ACL lies just under the roof),
    # preferring the highest femoral point; bone still in the way (segmentation errors of the masks, up to a
    # few samples) is carved away by build_anatomy, knees needing more are refused.
    ty0, ty1 = lm["plateau_y"]
    roof, cond = roof_at(y0)
    bones = femur | tibia
    tibials = []
    for fraction in (0.42, 0.36, 0.48):
        for shift in (1.5, 3.0, 0.0):
            x_t, y_t = xc - lateral * shift, ty1 - fraction * (ty1 - ty0)
            tibials.append(np.array([x_t, y_t, _top_at(lm["tibial_top"], sp, x_t, y_t, lm["plateau_z"])]))
    best, best_cost = None, np.inf
    for z_f in np.arange(roof - 1.5, cond + 0.25 * (roof - cond), -1.0):
        for y_f in (y0 - 1.5, y0 - 4.0, y0 + 1.0, y0 - 6.5, y0 + 3.5):
            x_f = _wall_x(femur, sp, xc, y_f, z_f, lateral) - lateral * 1.0
            if lateral * (x_f - xc) < 2.5:
                continue
            point = np.array([x_f, y_f, z_f])
            for tib in tibials:
                d = point - tib
                if not 18 <= np.linalg.norm(d) <= 40 or not 35 <= np.degrees(np.arctan2(d[2], abs(d[1]))) <= 75:
                    continue  # the ACL is 30-38 mm long, 45-60 degrees to the plateau in extension
                cost = _segment_hits(bones, sp, point, tib, 1.8)
                if cost < best_cost:
                    best, best_cost = (point, tib), cost
        if best_cost == 0:
            break
    if best is None or best_cost > 12:
        raise ValueError("no free path for the ACL through this knee's notch")
    acl_f, tib = best
    # PCL: inner wall of the medial condyle, anterior part of the notch; posterior tibia below the plateau
    y_pf = y1 - 0.3 * (y1 - y0)
    roof, cond = roof_at(y_pf)
    z_pf = roof - 0.4 * (roof - cond)
    x_pf = _wall_x(femur, sp, xc, y_pf, z_pf, -lateral) + lateral * 1.0
    z_pt = lm["plateau_z"] - 9.0
    row = tibia[int(round(xc / sp[0])), :, int(round(z_pt / sp[2]))]
    y_pt = (np.nonzero(row)[0].min() * sp[1] + 1.0) if row.any() else ty0
    return {"acl_femur": acl_f, "acl_tibia": tib,
            "pcl_femur": np.array([x_pf, y_pf, z_pf]), "pcl_tibia": np.array([xc, y_pt, z_pt])}


def _segment_hits(bone, sp, a, b, half, skip=0.12) -> int:
    """Bone samples on the straight band a -> b (its axis and edges ``half`` mm either side), ends excepted."""
    d = np.asarray(b, dtype=float) - a
    t = d / np.linalg.norm(d)
    n = _sagittal_normal(t)
    m = np.cross(t, n)
    pts = a + np.linspace(skip, 1 - skip, 16)[:, None] * d
    pts = (pts[None] + np.stack([0 * n, n * half, -n * half, m * half, -m * half])[:, None]).reshape(-1, 3)
    idx = np.clip(np.rint(pts / sp).astype(int), 0, np.array(bone.shape) - 1)
    return int(bone[idx[:, 0], idx[:, 1], idx[:, 2]].sum())


def _top_at(zt, sp, x, y, default):
    i, j = int(round(x / sp[0])), int(round(y / sp[1]))
    block = zt[max(i - 2, 0):i + 3, max(j - 2, 0):j + 3]
    return float(np.nanmax(block)) if np.isfinite(block).any() else float(default)


# --- the static tissue model of one subject ------------------------------------------------------------


@dataclass
class KneeAnatomy:
    """One subject's tissue map (axes LR, AP with anterior +, IS; mm = index * spacing) and landmarks."""

    subject: str
    tissue: np.ndarray
    recess: np.ndarray
    spacing: np.ndarray
    landmarks: dict = field(default_factory=dict)

    @property
    def lateral(self) -> int:
        return int(self.landmarks["lateral"])

    def recesses(self):
        """(flat indices, levels) of the voxels that can fill with fluid (kept: most voxels never do)."""
        if not hasattr(self, "_recesses"):
            index = np.flatnonzero(self.recess < NEVER)
            self._recesses = (index, self.recess.ravel()[index])
        return self._recesses


_PATELLA = {}


def _patella_template():
    """Patella + its cartilage of the pymskt right knee as (labels, voxel->RAS affine, femur width, offsets)."""
    if "t" in _PATELLA:
        return _PATELLA["t"]
    import nibabel as nib
    import nrrd

    from mskai.synth.synthseg import BUNDLED_KNEE_LABELS

    path = BUNDLED_KNEE_LABELS if BUNDLED_KNEE_LABELS.exists() else SHARED_DATA / "knee_bones_cartilage_label.nrrd"
    data, header = nrrd.read(str(path))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    affine[:3, 3] = header["space origin"]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    ornt = nib.orientations.io_orientation(ras)
    data = nib.orientations.apply_orientation(data, ornt)
    ras = ras @ nib.orientations.inv_ornt_aff(ornt, header["sizes"])
    sp = np.linalg.norm(ras[:3, :3], axis=0)
    femur, tibia = data == 5, data == 6
    lm = notch_landmarks(femur, tibia, sp)
    patella = np.where(data == 7, 1, np.where(data == 4, 2, 0)).astype(np.uint8)  # 1 bone, 2 cartilage
    pts = np.argwhere(patella == 1) * sp
    xs = np.nonzero(femur[:, :, int(round((lm["femur_bottom"] + 10) / sp[2]))].any(1))[0]
    template = {"labels": patella, "spacing": sp, "centre": pts.mean(0),
                "dx": pts[:, 0].mean() - lm["notch_x"],  # right knee: lateral is +x (RAS)
                "dz": pts[:, 2].mean() - lm["femur_bottom"], "width": (xs.max() - xs.min()) * sp[0]}
    _PATELLA["t"] = template
    return template


def _place_patella(femur, sp, lm, lateral, rng):
    """Patella (1) and patellar cartilage (2) labels on the subject grid, seated 2-3 mm off the trochlea."""
    t = _patella_template()
    xs = np.nonzero(femur[:, :, int(round((lm["femur_bottom"] + 10) / sp[2]))].any(1))[0]
    scale = float(np.clip((xs.max() - xs.min()) * sp[0] / t["width"], 0.85, 1.15)) * rng.uniform(0.95, 1.05)
    centre = np.array([lm["notch_x"] + lateral * t["dx"] * scale, 0.0,
                       lm["femur_bottom"] + t["dz"] * scale + rng.uniform(-4, 4)])
    tl, tsp = t["labels"], t["spacing"]
    half = np.array(tl.shape) * tsp / 2 * scale + 2
    # first on a box at y = 0, then shift forwards until it clears the femur
    shape_mm = np.array(femur.shape) * sp
    box = _box([centre[0] - half[0], 0, centre[2] - half[2]], [centre[0] + half[0], 2 * half[1], centre[2] + half[2]],
               sp, femur.shape)
    pts = _box_points(box, sp).numpy()
    local = (pts - [centre[0], half[1], centre[2]]) / scale
    local[..., 0] *= lateral
    idx = np.rint((local + t["centre"]) / tsp).astype(int)
    inside = np.all((idx >= 0) & (idx < tl.shape), axis=-1)
    idx = np.where(inside[..., None], idx, 0)
    labels = np.where(inside, tl[idx[..., 0], idx[..., 1], idx[..., 2]], 0).astype(np.uint8)
    # forward shift: for each (x, z) column, femur front + gap <= patella back
    front = np.where(femur.any(1), femur.shape[1] - 1 - femur[:, ::-1, :].argmax(1), -10**6) * sp[1]
    cols = labels.any(1)
    back = np.where(cols, labels.argmax(1), 10**6) * sp[1]
    fr = front[box[0], box[2]]
    need = np.max(np.where(cols & (fr > -1e5), fr + rng.uniform(1.5, 2.5) - back, -np.inf))
    shift = int(np.ceil(need / sp[1])) if np.isfinite(need) else int(round((shape_mm[1] / 2) / sp[1]))
    out = np.zeros(femur.shape, dtype=np.uint8)
    ny = labels.shape[1]
    j0 = box[1].start + shift
    lo, hi = max(j0, 0), min(j0 + ny, femur.shape[1])
    out[box[0], lo:hi, box[2]] = labels[:, lo - j0:hi - j0, :]
    return out


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


def build_anatomy(subject: str, folder=None, rng=None) -> KneeAnatomy:
    """The tissue model of one OAI knee (slow: a few seconds; ``anatomy`` caches it)."""
    from mskai.synth.real_shapes import FEMUR, TIBIA, cached_split, spacing_of, split_quality

    folder = Path(folder) if folder else OAI_FOLDER
    labels, affine = cached_split(folder / f"{subject}.nii.gz", SPLIT_CACHE)
    if not split_quality(labels)["ok"]:
        raise ValueError(f"OAI subject {subject}: femur and tibia do not split cleanly")
    rng = np.random.default_rng(int.from_bytes(subject.encode()[-8:], "little")) if rng is None else rng
    sp = spacing_of(affine)
    pad = [(int(25 / sp[0]),) * 2, (int(50 / sp[1]), int(30 / sp[1])), (0, 0)]
    labels = np.pad(labels, pad)
    # the shafts go on beyond the masks' ragged ends: a clean section 4 mm inside each end, repeated outwards
    for value, upwards in ((FEMUR, True), (TIBIA, False)):
        zs = np.nonzero((labels == value).any((0, 1)))[0]
        k = zs.max() - int(4 / sp[2]) if upwards else zs.min() + int(4 / sp[2])
        section = ndimage.binary_opening(ndimage.binary_fill_holes(labels[:, :, k] == value), iterations=2)
        span = slice(k, labels.shape[2]) if upwards else slice(0, k + 1)
        block = labels[:, :, span]
        block[block == value] = 0
        block[np.broadcast_to(section[:, :, None], block.shape) & (block == 0)] = value
    femur, tibia = labels == FEMUR, labels == TIBIA
    lm = notch_landmarks(femur, tibia, sp)
    lateral = lateral_side(femur, tibia, sp, lm["notch_x"])
    lm["lateral"] = lateral
    lm.update(_attachments(femur, tibia, sp, lm, lateral))
    shape = femur.shape
    # bone in the ACL's way (mask errors): carved along the band, 3.5 mm around its axis, ends kept
    a, b = lm["acl_femur"], lm["acl_tibia"]
    carve_box = _box(np.minimum(a, b) - 5, np.maximum(a, b) + 5, sp, shape)
    pts = _box_points(carve_box, sp).numpy()
    d = b - a
    t = np.clip(((pts - a) @ d) / (d @ d), 0, 1)
    near = np.linalg.norm(pts - (a + t[..., None] * d), axis=-1) <= 3.5
    carve = near & (t > 0.15) & (t < 0.85)
    lm["carved_mm3"] = float((carve & (femur[carve_box] | tibia[carve_box])).sum() * np.prod(sp))
    femur[carve_box] &= ~carve
    tibia[carve_box] &= ~carve
    patella_labels = _place_patella(femur, sp, lm, lateral, rng)
    patella, pat_cart = patella_labels == 1, patella_labels == 2
    patella &= ~femur & ~tibia
    pat_cart &= ~femur & ~tibia & ~patella
    grid = [np.arange(n, dtype=np.float32) * d for n, d in zip(shape, sp)]
    X, Y, Z = grid
    xc, zj = lm["notch_x"], lm["plateau_z"]

    # fibula: head below the lateral plateau, posterior half; shaft downwards
    tib_rows = np.nonzero(tibia[:, :, int(round((zj - 15) / sp[2]))].any(1))[0] * sp[0]
    edge = tib_rows.max() if lateral > 0 else tib_rows.min()
    ty0, ty1 = lm["plateau_y"]
    head = np.array([edge - lateral * rng.uniform(2, 5), ty0 + rng.uniform(0.15, 0.3) * (ty1 - ty0),
                     zj - rng.uniform(14, 20)])
    fib = Band(np.array([head + [0, 0, 4], head - [0, 0, 15], head + [-lateral * 3, 6, -90]]),
               np.array([rng.uniform(8, 10), 7.0, 6.0]), np.array([rng.uniform(9, 11), 7.5, 6.5]), 0.3)
    fibula = np.zeros(shape, dtype=bool)
    fbox = _box(*fib.bounds(2), sp, shape)
    if fbox is not None:
        fibula[fbox] = (fib.occupancy(_box_points(fbox, sp))[0] > 0.5).numpy()
    fibula &= ~tibia & ~femur

    bones = femur | tibia | patella | fibula
    # tendons: patellar (lower pole -> tibial tuberosity) and quadriceps (upper pole, upwards)
    pts = np.argwhere(patella) * sp
    lower = pts[pts[:, 2] <= pts[:, 2].min() + 3].mean(0)
    upper = pts[pts[:, 2] >= pts[:, 2].max() - 3].mean(0)
    tz = zj - rng.uniform(22, 30)
    k = int(round(tz / sp[2]))
    cols = tibia[int(round((lower[0]) / sp[0])), :, k]
    tub = np.array([lower[0], (np.nonzero(cols)[0].max() * sp[1] if cols.any() else ty1) + 1.5, tz])
    tendon_t = rng.uniform(2.0, 3.0)
    patellar = Band(_bezier([lower + [0, 2, 3], (lower + tub) / 2 + [0, 1.5, 0], tub], 12),
                    np.full(12, tendon_t), np.linspace(12, 14, 12) * rng.uniform(0.9, 1.1), 0.5)
    top = shape[2] * sp[2] + 10
    fem_front = np.where(femur.any(1), shape[1] - 1 - femur[:, ::-1, :].argmax(1), 0) * sp[1]  # (x, z)
    xi = int(round(upper[0] / sp[0]))
    gap_q, quad_half = rng.uniform(10, 16), rng.uniform(3.0, 4.0)
    q_mid = min(upper[2] + 30, top - 12)
    quad_y = lambda z: fem_front[xi, min(int(round(z / sp[2])), shape[2] - 1)] + gap_q + quad_half  # noqa: E731
    quad_path = [upper + [0, 3, -4], [upper[0], quad_y(q_mid) + 2, q_mid], [upper[0], quad_y(top - 12), top]]
    quad = Band(_bezier(quad_path, 12),
                np.full(12, quad_half), np.linspace(13, 16, 12), 0.5)
    tendons = np.zeros(shape, dtype=bool)
    for band in (patellar, quad):
        b = _box(*band.bounds(2), sp, shape)
        if b is not None:
            tendons[b] |= (band.occupancy(_box_points(b, sp))[0] > 0.5).numpy()
    tendons &= ~bones

    # body outline: bone and tendon footprints over +-20 mm of height, swept posteriorly; half-resolution
    # distances in the axial plane
    # the thigh's front: quadriceps over the femur, thickening upwards from the patella's upper pole
    thick = np.clip((Z - upper[2]) / 50.0, 0, 1) * rng.uniform(20, 35)
    has_front = femur.any(1)
    thigh = has_front[:, None, :] & (Y[None, :, None] > fem_front[:, None, :]) & \
        (Y[None, :, None] < fem_front[:, None, :] + thick[None, None, :])
    foot = ndimage.maximum_filter1d(bones | tendons | thigh, int(40 / sp[2]) + 1, axis=2)
    back = rng.uniform(25, 40)
    nb = int(back / sp[1])
    foot = ndimage.maximum_filter1d(foot, nb + 1, axis=1, origin=-(nb // 2))  # spreads to lower y: posterior
    dist = _edt(foot[::2, ::2, ::2], np.asarray(sp) * [2, 2, 1e3])
    dist = ndimage.gaussian_filter(dist, (0.7, 0.7, 3.0))
    idx = [np.minimum(np.arange(n) // 2, c - 1) for n, c in zip(shape, dist.shape)]
    dist = dist[np.ix_(*idx)]
    body_r, fat_r = rng.uniform(10, 16), rng.uniform(4, 9)
    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[dist <= body_r] = SKIN
    tissue[dist <= body_r - 1.2] = FAT
    deep = dist <= body_r - fat_r
    tissue[deep] = MUSCLE

    # posterior bone profile near the midline, per height
    by = bones[np.abs(X - xc) < 12].any(0)  # (y, z)
    post = np.where(by.any(0), by.argmax(0), np.nan) * sp[1]
    post = ndimage.uniform_filter1d(np.nan_to_num(post, nan=np.nanmean(post)), int(15 / sp[2]))
    # popliteal fossa fat (diamond: widest above the joint line), vessels in it
    # (in axial sections an ellipse behind the bones between the hamstrings and gastrocnemius heads, widest
    # a little above the joint line, its outline gently irregular)
    w0, zc_f, hz = rng.uniform(18, 26), zj + rng.uniform(10, 20), rng.uniform(45, 60)
    depth = rng.uniform(30, 45)
    wobble = 1 + 0.12 * np.sin(Z / rng.uniform(9, 15) + rng.uniform(0, 6)) \
        + 0.08 * np.sin(Z / rng.uniform(4, 7) + rng.uniform(0, 6))
    width = w0 * np.clip(1 - ((Z - zc_f) / hz) ** 2, 0, 1) * wobble
    fy = (Y[None, :, None] - (post - 2 - depth / 2)[None, None, :]) / (depth / 2)
    fx = (X - xc - lateral * 3)[:, None, None] / np.maximum(width, 1e-3)[None, None, :]
    fossa = (fx**2 + fy**2 <= 1) | ((np.abs(fx) <= 1) & (fy > 0) & (Y[None, :, None] < post[None, None, :] - 2))
    tissue[deep & fossa] = FAT
    # popliteus: a thin muscle on the back of the tibia below the plateau
    popl = (Y[None, :, None] > post[None, None, :] - 7) & (Z[None, None, :] < zj - 6) & \
           (np.abs(X - xc)[:, None, None] < 25)
    tissue[deep & popl & ~bones & ndimage.binary_dilation(tibia, iterations=10)] = MUSCLE
    # joint region (bones closed by 8 mm): fat around the notch and the joint margins
    d_bone = _edt(bones, sp, step=2)
    closed = _edt(d_bone > 8.0, sp, step=2) > 8.0
    tissue[closed & (tissue > AIR)] = FAT
    # the notch and its posterior outlet (bones closed by 13 mm between the condyles): fat, where the
    # cruciates run
    wide = _edt(d_bone > 13.0, sp, step=2) > 13.0
    notch = wide & (np.abs(X - xc) < 16)[:, None, None] & \
        ((Z > zj - 4) & (Z < lm["femur_bottom"] + 40))[None, None, :] & (Y < lm["notch_y"][1] + 8)[None, :, None]
    tissue[notch & (tissue > AIR) & ~bones] = FAT

    # anterior: Hoffa's fat pad behind the patellar tendon, prefemoral + suprapatellar fat above the patella
    front = np.where((femur | tibia).any(1), shape[1] - 1 - (femur | tibia)[:, ::-1, :].argmax(1), 0) * sp[1]
    ytend = np.interp(Z, [tub[2], lower[2]], [tub[1], lower[1]])
    z_lo, z_hi = tub[2] + 3, lower[2] + 4
    half_w = 22 * np.sqrt(np.clip(1 - ((Z - (z_lo + z_hi) / 2) / ((z_hi - z_lo) / 2 + 4)) ** 2, 0, 1))
    hoffa = (Y[None, :, None] > front[:, None, :]) & (Y[None, :, None] < ytend[None, None, :]) & \
            (np.abs(X - lower[0])[:, None, None] < half_w[None, None, :]) & ((Z > z_lo) & (Z < z_hi))[None, None, :]
    tissue[hoffa & (tissue > AIR)] = FAT
    qz = np.linspace(upper[2], top, 12)
    yquad = np.interp(Z, qz, [quad_y(z) - quad_half for z in qz])  # back of the quadriceps tendon
    yquad[Z < upper[2]] = upper[1]
    prefem_t = rng.uniform(3, 6)
    pz_lo, pz_hi = lower[2], upper[2] + 45
    half_p = 25 * np.sqrt(np.clip(1 - ((Z - (pz_lo + pz_hi) / 2) / ((pz_hi - pz_lo) / 2 + 4)) ** 2, 0, 1))
    prefem = (Y[None, :, None] > front[:, None, :]) & (Y[None, :, None] < front[:, None, :] + prefem_t) & \
        (np.abs(X - xc)[:, None, None] < half_p[None, None, :]) & ((Z > pz_lo) & (Z < pz_hi))[None, None, :]
    tissue[prefem & deep & ~bones] = FAT
    pad_c = np.array([upper[0], yquad[int(round((upper[2] + 8) / sp[2]))] - gap_q / 3, upper[2] + 8])
    pad_r = np.array([rng.uniform(12, 18), gap_q / 3, rng.uniform(9, 14)])
    qpad = ((X - pad_c[0])[:, None, None] / pad_r[0]) ** 2 + ((Y - pad_c[1])[None, :, None] / pad_r[1]) ** 2 + \
        ((Z - pad_c[2])[None, None, :] / pad_r[2]) ** 2 <= 1
    tissue[qpad & deep & ~bones] = FAT

    # vessels: popliteal artery and (posterior, lateral) vein following the back of the bones
    course = ndimage.uniform_filter1d(post, int(45 / sp[2]), mode="nearest")  # the vessels run straighter
    for kind, off, dx, r in ((ARTERY, rng.uniform(6, 10), rng.uniform(-3, 3), rng.uniform(2.8, 3.6)),
                             (VEIN, rng.uniform(11, 16), lateral * rng.uniform(3, 7), rng.uniform(3.5, 5.0))):
        yv = np.minimum(course, post) - off - r
        tube = ((X - (xc + dx))[:, None, None] ** 2 + (Y[None, :, None] - yv[None, None, :]) ** 2) <= r * r
        tissue[tube & (tissue > AIR) & ~bones] = kind

    tissue[tendons] = TENDON

    # cartilage and menisci in a box around the joint (full-resolution distances)
    found = ndimage.find_objects((femur | tibia | patella).astype(np.uint8))[0]
    lo_xy = [found[0].start * sp[0] - 12, found[1].start * sp[1] - 12]
    hi_xy = [found[0].stop * sp[0] + 12, found[1].stop * sp[1] + 12]
    jbox = _box([*lo_xy, zj - 25], [*hi_xy, zj + 70], sp, shape)
    dF = _edt(femur[jbox], sp)
    dT = _edt(tibia[jbox], sp)
    dP = _edt_near(patella[jbox], sp, 15.0)
    t_view = tissue[jbox]
    soft = ~bones[jbox]
    cf, ct = rng.uniform(1.8, 2.6), rng.uniform(1.6, 2.4)
    condyles = (Z[jbox[2]] < lm["femur_bottom"] + 26)[None, None, :] & (np.abs(X[jbox[0]] - xc) > 9)[:, None, None]
    fem_cart = soft & (dF <= cf) & ((dT < 10) | (dP < 12) | condyles)
    tib_cart = soft & (dT <= ct) & (dF < 10) & (np.abs(X[jbox[0]] - xc) > 6)[:, None, None]
    # menisci: the wedge between condyle and plateau at the plateau's rim, outside the notch
    zt = lm["tibial_top"]
    footprint = np.isfinite(zt) & (zt > zj - 12)
    rim = ndimage.distance_transform_edt(footprint, sampling=sp[:2]) < rng.uniform(8, 11)
    rim &= (np.abs(X - xc) > 7)[:, None] & footprint
    gap = dF + dT
    men = soft & (dT > ct * 0.6) & (dT < 7) & (dF < 7) & (gap > 5.5) & (gap < 13) & rim[jbox[0], jbox[1]][:, :, None]
    men &= Z[jbox[2]][None, None, :] > zj - 6
    t_view[men & (t_view != TENDON)] = MENISCUS
    t_view[fem_cart | tib_cart] = CARTILAGE
    t_view[pat_cart[jbox] & soft] = CARTILAGE
    tissue[jbox] = t_view

    # bones: cortex rim (~1.4 mm) and marrow
    for mask, (cortex, marrow) in ((femur, BONES["femur"]), (tibia, BONES["tibia"]), (patella, BONES["patella"]),
                                   (fibula, BONES["fibula"])):
        found = ndimage.find_objects(mask.astype(np.uint8))
        if not found:
            continue
        b = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in found[0])
        m = mask[b]
        inner = ndimage.binary_erosion(m, iterations=2, border_value=1)
        view = tissue[b]
        view[m] = np.where(inner[m], marrow, cortex)

    # recesses: the level (0-254) at which a voxel fills with joint fluid
    recess = np.full(shape, NEVER, dtype=np.uint8)
    r_view = recess[jbox]
    t_view = tissue[jbox]
    fillable = np.isin(t_view, (FAT, MUSCLE))
    xr = np.abs(X[jbox[0]] - xc)[:, None, None]
    zz = Z[jbox[2]][None, None, :]
    # patellofemoral joint: a thin film at the slightest effusion
    pf = (dF < 6) & (dP < 6) & fillable
    # suprapatellar pouch: between prefemoral fat and the quadriceps, above the patella's middle
    fr = front[jbox[0], jbox[2]][:, None, :]
    yy = Y[jbox[1]][None, :, None]
    yq = yquad[jbox[2]][None, None, :]
    z0 = pts[:, 2].mean()
    low_y, high_y = fr + prefem_t, yq - 1.0
    mid_y = (low_y + high_y) / 2
    half_y = np.maximum((high_y - low_y) / 2, 1.0)
    level = np.maximum(np.maximum(np.abs(yy - mid_y) / half_y, (zz - z0) / 60.0), xr / 30.0)
    pouch = (yy > low_y) & (yy < high_y) & (zz > z0 - 5) & (level < 1) & fillable
    # posterior recesses behind the condyles
    cond_back = Y[jbox[1]][None, :, None] < (lm["notch_y"][0] + 10)
    postr = fillable & cond_back & (dF < 9) & (dF > cf) & (zz < lm["femur_bottom"] + 40) & (xr > 8)
    lev_post = (dF - cf) / 7.0
    r_view[postr] = np.clip(lev_post[postr] * 254, 0, 254).astype(np.uint8)
    r_view[pouch] = np.minimum(r_view[pouch], np.clip(level[pouch] * 254, 0, 254).astype(np.uint8))
    r_view[pf] = np.minimum(r_view[pf], 8)
    recess[jbox] = r_view

    # crop to the body (plus air) to keep the map small; landmarks move with it
    found = ndimage.find_objects((tissue > AIR).astype(np.uint8))[0]
    crop = tuple(slice(max(s.start - 4, 0), min(s.stop + 4, n)) for s, n in zip(found, shape))
    shift = np.array([s.start for s in crop]) * sp
    for key in ("acl_femur", "acl_tibia", "pcl_femur", "pcl_tibia"):
        lm[key] = lm[key] - shift
    lm["notch_x"] -= shift[0]
    lm["notch_y"] = (lm["notch_y"][0] - shift[1], lm["notch_y"][1] - shift[1])
    lm["plateau_y"] = (lm["plateau_y"][0] - shift[1], lm["plateau_y"][1] - shift[1])
    lm["plateau_z"] -= shift[2]
    lm["femur_bottom"] -= shift[2]
    lm["roof_line"] = np.array([[j * sp[1] - shift[1], z - shift[2]] for j, z in sorted(lm["roof"].items())])
    for key in ("roof", "condyle_a", "condyle_b", "tibial_top"):
        lm.pop(key)
    return KneeAnatomy(subject, np.ascontiguousarray(tissue[crop]), np.ascontiguousarray(recess[crop]),
                       np.asarray(sp, dtype=float), lm)


_CACHE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def anatomy(subject: str, folder=None) -> KneeAnatomy:
    """``build_anatomy`` of a subject, kept in memory (LRU) and on disk (build/acl_anatomy_v*)."""
    key = (str(folder or OAI_FOLDER), subject)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    stored = ANATOMY_CACHE / f"{subject}.npz" if folder is None else None
    result = None
    if stored is not None and stored.exists():
        try:
            with np.load(stored, allow_pickle=False) as f:
                lm = {k[3:]: f[k] for k in f.files if k.startswith("lm_")}
                for k in ("notch_x", "plateau_z", "femur_bottom", "lateral"):
                    lm[k] = float(lm[k])
                lm["lateral"] = int(lm["lateral"])
                for k in ("notch_y", "plateau_y"):
                    lm[k] = tuple(float(v) for v in lm[k])
                result = KneeAnatomy(subject, f["tissue"], f["recess"], f["spacing"], lm)
        except (OSError, ValueError, KeyError):
            result = None
    if result is None:
        result = build_anatomy(subject, folder)
        if stored is not None:
            try:
                from mskai.io import atomic_output

                stored.parent.mkdir(parents=True, exist_ok=True)
                with atomic_output(stored) as tmp, open(tmp, "wb") as f:
                    np.savez_compressed(f, tissue=result.tissue, recess=result.recess, spacing=result.spacing,
                                        **{f"lm_{k}": np.asarray(v) for k, v in result.landmarks.items()})
            except OSError:
                pass  # a read-only checkout: keep it in memory only
    with _LOCK:
        _CACHE[key] = result
        while len(_CACHE) > max(ANATOMY_CACHE_SIZE, 1):
            _CACHE.popitem(last=False)
    return result


_BAD_SUBJECTS: set = set()


def _usable_anatomy(subjects, g_subject, folder) -> KneeAnatomy:
    """The first subject of a random order whose shape gives a knee model (deterministic per stream)."""
    order = g_subject.permutation(len(subjects))
    for i in order:
        key = (str(folder or OAI_FOLDER), subjects[i])
        if key in _BAD_SUBJECTS:
            continue
        try:
            return anatomy(subjects[i], folder)
        except (ValueError, IndexError):
            _BAD_SUBJECTS.add(key)
    raise ValueError("none of the given OAI subjects gives a usable knee shape")


# --- ligaments and their lesions ----------------------------------------------------------------------


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


def _sagittal_normal(direction) -> np.ndarray:
    n = np.cross(direction, [1.0, 0.0, 0.0])
    return n / max(np.linalg.norm(n), 1e-9)


def _clear_path(anat, a, b, bow, half, n=24, extend=2.5):
    """A Bezier path a -> b bowed along the in-plane normal, bow increased until it clears the bones.

    The middle 70 % of the path, and its edges ``half`` mm either side, must lie outside bone; the ends are
    pushed ``extend`` mm into their bones (the footprints; only the part outside bone is drawn).
    """
    d = (b - a) / np.linalg.norm(b - a)
    normal = _sagittal_normal(d)
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


def _acl_pieces(anat, grade, g_lig, g_lesion):
    """ACL pieces and fluid blobs for a grade; geometry draws come first so grades share them."""
    lm = anat.landmarks
    a = np.asarray(lm["acl_femur"], dtype=float) + g_lig.normal(0, 0.8, 3) * [0.5, 1, 1]
    b = np.asarray(lm["acl_tibia"], dtype=float) + g_lig.normal(0, 1.2, 3) * [1, 1.5, 0.3]
    width, thick = g_lig.uniform(7.0, 11.0), g_lig.uniform(4.6, 6.6)
    fan, bow = g_lig.uniform(1.35, 1.8), g_lig.uniform(0.0, 1.5)
    striation, stripes, phase = g_lig.uniform(0.1, 0.35), g_lig.uniform(1.5, 3.0), g_lig.uniform(0, 2 * np.pi)
    n = 24
    s = np.linspace(0, 1, n)
    half_n = thick / 2 * (1 + 0.15 * np.clip(1 - s / 0.2, 0, 1) + (fan - 1) * np.clip((s - 0.6) / 0.4, 0, 1) ** 1.5)
    half_b = width / 2 * (1 + 0.1 * np.clip((s - 0.6) / 0.4, 0, 1))
    path = _clear_path(anat, a, b, bow, float(half_n.mean()), n)
    base = dict(kind="acl", striation=striation, stripes=stripes, phase=phase)
    # lesion draws (only these depend on the grade)
    u = g_lesion.uniform(0, 1, 16)
    wobble = tuple(2 * np.pi * u[13:16])
    blobs = []
    if grade == 0:
        return [Piece(Band(path, half_n, half_b, 0.6), **base)], blobs
    if grade == 1:  # strain: thickened, oedematous, fibres continuous, hazy margins, a little fluid around
        grow = 1.15 + 0.3 * u[0]
        piece = Piece(Band(path, half_n * grow, half_b * (1.05 + 0.2 * u[1]), 1.0 + 0.8 * u[2]),
                      **{**base, "striation": 0.15}, oedema=0.2 + 0.2 * u[3], streaks=0.1 + 0.15 * u[4])
        d = path[-1] - path[0]
        blobs.append(Blob(path[len(path) // 2], _frame(d), np.array([np.linalg.norm(d) / 2.2, half_n.mean() * 2.2,
                                                                       half_b.mean() * 1.6]), 0.25 + 0.2 * u[5]))
        return [piece], blobs
    if grade == 2:  # partial: thinned, a gap across part of the band, fluid in it, the rest continuous
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
        blobs.append(Blob(centre, _frame(path[-1] - path[0]), np.array([3.0, 2.5, 3.0]) * (0.8 + 0.5 * u[11]), 0.7,
                          wobble))
        return [piece], blobs
    # complete: gap across the band, short or absent femoral stump, wavy sagging tibial stump, notch fluid
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
    blobs.append(Blob(centre, _frame(d), np.array([gap * length / 2 + 3.0, half_n.mean() * 2.0 + 1.5,
                                                   half_b.mean() * 1.4 + 1.0]), 0.7 + 0.25 * u[12], wobble))
    blobs.append(Blob(path[2] * 0.6 + centre * 0.4, _frame(d), np.array([5.0, 3.0, 3.5]), 0.6 + 0.3 * u[12],
                      wobble[::-1]))  # along the lateral wall
    return pieces, blobs


def _pcl_pieces(anat, g_lig):
    lm = anat.landmarks
    a = np.asarray(lm["pcl_femur"], dtype=float) + g_lig.normal(0, 1.0, 3)
    b = np.asarray(lm["pcl_tibia"], dtype=float) + g_lig.normal(0, 1.0, 3)
    thick, width = g_lig.uniform(5.6, 7.6), g_lig.uniform(10.0, 13.0)
    d = b - a
    # a hockey stick: leaves the femur backwards under the roof, rising a little, then bends down to the
    # posterior tibia; the rise shrinks until the path clears the femur
    n = 24
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
    return Piece(Band(path, half_n, half_b, 0.5), "pcl", striation=g_lig.uniform(0.0, 0.08),
                 stripes=2.0, phase=g_lig.uniform(0, 2 * np.pi))


def _frame(direction) -> np.ndarray:
    d = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    n = _sagittal_normal(d)
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
    normal = _sagittal_normal(path[-1] - path[0])
    ramp = np.clip((s - start) / 0.15, 0, 1)
    return path + normal[None] * (amplitude * ramp * np.sin(2 * np.pi * cum / wavelength + phase))[:, None]


def _chord_for_fraction(q: float) -> float:
    """c such that the part of the unit disc beyond the chord u = c has area fraction q."""
    c = np.linspace(-1, 1, 2001)
    area = (np.arccos(c) - c * np.sqrt(1 - c**2)) / np.pi
    return float(np.interp(q, area[::-1], c[::-1]))


# --- scene and acquisition -------------------------------------------------------------------------------


@dataclass
class Acquisition:
    """One series' geometry and contrast: grid (LPS directions, spacing, count), tissue means, bias, noise."""

    plane: str
    protocol: str
    means: np.ndarray
    tones: dict
    shape: tuple
    spacing: tuple
    thickness: float
    directions: np.ndarray
    centre_lps: np.ndarray
    bias: np.ndarray
    noise: float
    seed: int

    @property
    def affine_lps(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, :3] = self.directions * np.asarray(self.spacing)
        affine[:3, 3] = self.centre_lps - affine[:3, :3] @ ((np.asarray(self.shape) - 1) / 2)
        return affine


@dataclass
class KneeCase:
    """Everything drawn for one synthetic knee: anatomy, side, pose, ligaments, fluid, acquisitions per plane."""

    grade: int
    anatomy: KneeAnatomy
    side: str
    knee_to_lps: np.ndarray  # 4x4: anatomy mm -> patient LPS mm
    pieces: list
    blobs: list
    effusion: float
    acquisitions: dict


def _draw_contrast(g):
    names = list(PROTOCOLS)
    name = names[int(g.choice(len(names), p=PROTOCOL_WEIGHTS))]
    tone = {k: g.uniform(*v) for k, v in PROTOCOLS[name].items()}
    means = np.zeros(N_TISSUES)
    means[AIR] = g.uniform(0.003, 0.015)
    means[MUSCLE], means[FAT], means[SKIN] = tone["muscle"], tone["fat"], tone["skin"]
    means[CARTILAGE], means[FLUID] = tone["cartilage"], tone["fluid"]
    means[MENISCUS] = tone["dark"] * g.uniform(0.8, 1.3)
    means[TENDON] = tone["dark"] * g.uniform(0.6, 1.0)
    flow_void = g.random() < 0.55
    bright = max(tone["fluid"], tone["muscle"]) * g.uniform(0.5, 0.9)
    means[ARTERY] = tone["dark"] * g.uniform(0.5, 1.5) if flow_void else bright
    means[VEIN] = tone["dark"] * g.uniform(0.8, 2.0) if flow_void else bright * g.uniform(0.8, 1.2)
    for cortex, marrow in BONES.values():
        means[cortex] = tone["dark"] * g.uniform(0.3, 0.8)
        means[marrow] = tone["marrow"] * g.uniform(0.95, 1.05)
    tones = {"acl": tone["acl"], "pcl": tone["pcl"], "oedema": tone["oedema"], "fluid": tone["fluid"],
             "mid": 0.5 * (tone["muscle"] + max(tone["fat"], tone["muscle"]))}
    return name, means, tones


def _draw_acquisition(g, plane, knee_to_lps, flip, anat):
    """A series' grid and contrast; every draw happens whatever the plane, so the streams stay aligned.

    The slices are prescribed on the knee, as technologists do: the sagittal ones turned about the knee's long
    axis by a random part of the ACL's own obliquity (oblique sagittal, parallel to the ligament) plus a few
    degrees, coronal and axial ones within a few degrees of the knee's planes; the patient's pose in the
    scanner adds its own obliquity.
    """
    name, means, tones = _draw_contrast(g)
    matrix = 320 if g.random() < 0.4 else 256
    pixel = g.uniform(130, 170) / matrix  # field of view 13-17 cm
    thickness = g.uniform(3.0, 4.5)
    step = thickness * g.uniform(1.0, 1.12)
    coverage = {"sagittal": g.uniform(95, 140), "coronal": g.uniform(80, 115), "axial": g.uniform(85, 125)}[plane]
    n_slices = int(np.clip(round(coverage / step), 20, 40))
    lm = anat.landmarks
    d = np.asarray(lm["acl_tibia"]) - np.asarray(lm["acl_femur"])
    along_acl = np.degrees(np.arctan2(-d[0], d[1]))  # about the knee's long axis, in the knee frame
    share, extra, side_tilt = g.random(), g.uniform(-4, 4), g.uniform(-3, 3)
    if plane == "sagittal":
        tilt = np.clip(share * along_acl + extra, -13, 13)
        turn = _rotation([0, 0, 1], tilt) @ _rotation([0, 1, 0], side_tilt)
    elif plane == "coronal":
        turn = _rotation([0, 0, 1], extra) @ _rotation([1, 0, 0], side_tilt)
    else:
        turn = _rotation([1, 0, 0], extra) @ _rotation([0, 1, 0], side_tilt)
    pose = knee_to_lps[:3, :3] @ flip  # flip is its own inverse
    directions = pose @ flip @ turn @ flip @ PLANE_AXES[plane]
    if g.random() < 0.5:  # slices stacked either way
        directions = directions * [1, 1, -1]
    aim = np.array([lm["notch_x"], np.mean(lm["plateau_y"]) + 5, lm["plateau_z"] + 5])
    aim = aim + g.uniform(-1, 1, 3) * [6, 8, 10]
    centre = knee_to_lps[:3, :3] @ aim + knee_to_lps[:3, 3]
    bias = g.normal(0, 1, (3, 3, 3)) * g.uniform(0.05, 0.25)
    noise = g.uniform(0.012, 0.035)
    seed = int(g.integers(2**62))
    return Acquisition(plane, name, means, tones, (matrix, matrix, n_slices), (pixel, pixel, step), thickness,
                       directions, centre, bias, noise, seed)


def draw_case(grade: int, rng: np.random.Generator, subjects=None, shape_folder=None) -> KneeCase:
    """Draw one synthetic knee (anatomy, pose, ligaments of the grade, fluid, sagittal/coronal/axial series).

    The generator is split into independent streams first, so the grade changes only the ACL's lesion and the
    joint fluid: the same generator state gives the same subject, pose, contrast, grid and noise for every grade.
    """
    _check_grade(grade)
    grade = int(grade)
    streams = [np.random.default_rng(int(s)) for s in rng.integers(0, 2**62, size=6)]
    g_subject, g_scene, g_lig, g_lesion, g_fluid, _ = streams
    subjects = list(subjects) if subjects is not None else acl_shape_subjects("train", shape_folder)
    if not subjects:
        raise ValueError("no OAI subjects to draw knee shapes from")
    anat = _usable_anatomy(subjects, g_subject, shape_folder)
    side = "right" if g_subject.random() < 0.5 else "left"
    lm = anat.landmarks
    flip = np.diag([-anat.lateral if side == "right" else anat.lateral, -1.0, 1.0])  # lateral -> patient's side
    pose = _rotation([0, 0, 1], g_scene.uniform(-6, 6)) @ _rotation([1, 0, 0], g_scene.uniform(-7, 7)) \
        @ _rotation([0, 1, 0], g_scene.uniform(-4, 4))
    knee_centre = np.array([lm["notch_x"], np.mean(lm["notch_y"]), lm["plateau_z"]])
    knee_to_lps = np.eye(4)
    knee_to_lps[:3, :3] = pose @ flip
    knee_to_lps[:3, 3] = g_scene.uniform(-1, 1, 3) * [40, 20, 30] - knee_to_lps[:3, :3] @ knee_centre
    acquisitions = {plane: _draw_acquisition(g_scene, plane, knee_to_lps, flip, anat) for plane in PLANE_AXES}
    pcl = _pcl_pieces(anat, g_lig)
    acl, blobs = _acl_pieces(anat, grade, g_lig, g_lesion)
    # joint fluid: a little always; an effusion with a tear more often and larger, but intact knees have some too
    physiological, chance, amount = g_fluid.uniform(0.02, 0.12), g_fluid.random(), g_fluid.uniform(0.2, 1.0)
    effusion = physiological
    if chance < (0.2, 0.3, 0.55, 0.85)[grade]:
        effusion += amount * (0.55, 0.65, 0.8, 1.0)[grade]
    return KneeCase(grade, anat, side, knee_to_lps, [pcl, *acl], blobs, float(min(effusion, 1.0)), acquisitions)


def _grid_to_anatomy(case: KneeCase, acq: Acquisition) -> np.ndarray:
    """4x4: output voxel (i, j, k) -> anatomy voxel index."""
    lps_to_knee = np.linalg.inv(case.knee_to_lps)
    return np.diag([*(1 / case.anatomy.spacing), 1.0]) @ lps_to_knee @ acq.affine_lps


def _paint_blob(image, boneless, blob, tones, box, sp, labels=None):
    pts = _box_points(box, sp) - torch.as_tensor(blob.centre, dtype=torch.float32)
    q = pts @ torch.as_tensor(blob.axes, dtype=torch.float32) / torch.as_tensor(blob.radii, dtype=torch.float32)
    r = torch.linalg.norm(q, dim=-1)
    if any(blob.wobble):
        p0, p1, p2 = blob.wobble
        r = r * (1 + 0.18 * torch.sin(3.1 * q[..., 0] + p0) * torch.cos(2.3 * q[..., 1] + p1)
                 + 0.12 * torch.sin(2.7 * q[..., 2] + p2))
    alpha = ((0.5 + (1 - r) * float(blob.radii.min()) / 1.5).clamp(0, 1) * blob.strength) * boneless
    value = 0.5 * tones["fluid"] + 0.5 * tones["oedema"]
    image.mul_(1 - alpha).add_(alpha * value)
    if labels is not None:
        labels[(r <= 1) & (labels == 0)] = 3  # its nominal extent, however faint


def _paint_piece(image, boneless, piece: Piece, tones, box, sp, labels=None):
    pts = _box_points(box, sp)
    alpha, s, u, v, r = piece.band.occupancy(pts)
    # a thin synovial sheath: a faint film of fluid signal hugging the ligament
    halo = (1 - (r - 1.2).abs() / 0.25).clamp(0, 1) * 0.3 * boneless
    image.mul_(1 - halo).add_(halo * tones["fluid"])
    base, mid = tones[piece.kind], tones["mid"]
    value = base + piece.striation * (0.5 + 0.5 * torch.cos(np.pi * piece.stripes * u + piece.phase)) * (mid - base)
    if piece.oedema or piece.streaks:
        length = _length(piece.band.path)
        # irregular bright streaks between the fibres (no regular pattern to learn instead of the lesion)
        streak = 0.5 + 0.25 * torch.sin(2.3 * np.pi * v + 1.7 * s * length / 4.0 + piece.phase) \
            + 0.25 * torch.sin(3.7 * np.pi * u - s * length / 2.3 + 2 * piece.phase)
        wet = (piece.oedema + piece.streaks * streak ** 2).clamp(0, 1)
        value = value * (1 - wet) + wet * tones["oedema"]
    torn = torch.zeros_like(alpha, dtype=torch.bool)
    if piece.cut is not None:
        s0, s1, c, angle = piece.cut
        torn = (s > s0) & (s < s1) & (u * np.cos(angle) + v * np.sin(angle) > c)
        value = torch.where(torn, 0.8 * tones["fluid"] + 0.2 * tones["oedema"], value)
    alpha = alpha * boneless
    image.mul_(1 - alpha).add_(alpha * value)
    if labels is not None:
        labels[(alpha > 0.5) & ~torn] = 1 if piece.kind == "acl" else 2
        labels[(alpha > 0.5) & torn & (labels == 0)] = 3  # the gap: fluid


def _local(box, crop):
    """box (anatomy voxel slices) clipped to crop, as (anatomy box, slices inside the crop) or None."""
    lo = [max(b.start, c.start) for b, c in zip(box, crop)]
    hi = [min(b.stop, c.stop) for b, c in zip(box, crop)]
    if any(h <= low for low, h in zip(lo, hi)):
        return None
    return (tuple(slice(a, b) for a, b in zip(lo, hi)),
            tuple(slice(a - c.start, b - c.start) for a, b, c in zip(lo, hi, crop)))


def acquire(case: KneeCase, plane: str = "sagittal", with_masks: bool = False):
    """Render one series of a drawn case: a Volume (int16), or (Volume, masks) with ``with_masks``.

    masks (bool, on the volume grid, at the slice centres): acl (intact fibres), pcl, femur, tibia and fluid
    (effusion and fluid in the notch).
    """
    acq = case.acquisitions[plane]
    anat = case.anatomy
    sp = anat.spacing
    w = _grid_to_anatomy(case, acq)
    ni, nj, nk = acq.shape
    sub = 3
    offsets = (np.arange(sub) - (sub - 1) / 2) / sub * acq.thickness / acq.spacing[2]  # in slice steps
    corners = np.array([[i, j, k, 1.0] for i in (0, ni - 1) for j in (0, nj - 1)
                        for k in (offsets[0], nk - 1 + offsets[-1])]) @ w.T
    lo = np.maximum(np.floor(corners[:, :3].min(0)).astype(int) - 2, 0)
    hi = np.minimum(np.ceil(corners[:, :3].max(0)).astype(int) + 3, anat.tissue.shape)
    crop = tuple(slice(int(a), int(max(b, a + 2))) for a, b in zip(lo, hi))
    tissue = np.array(anat.tissue[crop])
    wet = np.zeros(tissue.shape, dtype=bool)
    index, levels = anat.recesses()
    level = int(round(case.effusion * 254))
    fills = np.unravel_index(index[levels <= level], anat.tissue.shape)
    inside = np.all([(f >= c.start) & (f < c.stop) for f, c in zip(fills, crop)], axis=0)
    local_fill = tuple(f[inside] - c.start for f, c in zip(fills, crop))
    tissue[local_fill] = FLUID
    wet[local_fill] = True
    tissue_t = torch.from_numpy(tissue)
    image = torch.as_tensor(acq.means, dtype=torch.float32)[tissue_t.long()]
    boneless_all = tissue_t < CORTEX_F
    labels = torch.zeros(tissue_t.shape, dtype=torch.uint8) if with_masks else None
    for thing in [*case.blobs, *case.pieces]:
        found = _box(*(thing.bounds() if isinstance(thing, Blob) else thing.band.bounds(2)), sp, anat.tissue.shape)
        local = _local(found, crop) if found is not None else None
        if local is None:
            continue
        box, inside = local
        painter = _paint_blob if isinstance(thing, Blob) else _paint_piece
        painter(image[inside], boneless_all[inside].float(), thing, acq.tones, box, sp,
                None if labels is None else labels[inside])
    # sample: grid points (slice sub-samples, rows, columns) in crop voxel coordinates, normalised
    # one affine from output voxel to grid_sample's normalised crop coordinates, rows in (z, y, x) order
    to_crop = np.eye(4)
    to_crop[:3, 3] = -np.array([c.start for c in crop], dtype=float)
    scale = 2 / np.maximum(np.array(tissue.shape, dtype=float) - 1, 1)
    norm = np.diag([*scale, 1.0])
    norm[:3, 3] = -1
    wt = torch.as_tensor((norm @ to_crop @ w)[[2, 1, 0]], dtype=torch.float32)
    ks = torch.as_tensor((np.arange(nk)[:, None] + offsets[None, :]).ravel(), dtype=torch.float32)
    grid = ((wt[:, 3] + ks[:, None, None, None] * wt[:, 2]) + torch.arange(nj, dtype=torch.float32)[None, :, None, None]
            * wt[:, 1]) + torch.arange(ni, dtype=torch.float32)[None, None, :, None] * wt[:, 0]
    grid = grid[None]
    sampled = F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    volume = sampled[0, 0].reshape(nk, sub, nj, ni).mean(1)
    # bias field, Rician noise, scaling
    bias = F.interpolate(torch.as_tensor(acq.bias, dtype=torch.float32)[None, None], size=(nk, nj, ni),
                         mode="trilinear", align_corners=True)[0, 0]
    gen = torch.Generator().manual_seed(acq.seed)
    # tissue texture: a smooth random modulation of a few per cent (~8 mm grain in-plane)
    coarse = (max(2, nk // 2), max(2, int(nj * acq.spacing[1] / 8)), max(2, int(ni * acq.spacing[0] / 8)))
    texture = torch.randn(coarse, generator=gen) * float(0.02 + 0.05 * torch.rand(1, generator=gen))
    texture = F.interpolate(texture[None, None], size=(nk, nj, ni), mode="trilinear", align_corners=True)[0, 0]
    volume = volume * torch.exp(bias + texture)
    noise = acq.noise
    real = volume + noise * torch.randn(volume.shape, generator=gen)
    imag = noise * torch.randn(volume.shape, generator=gen)
    volume = torch.sqrt(real**2 + imag**2)
    array = np.rint(volume.permute(2, 1, 0).numpy() * 1000).clip(0, 32767).astype(np.int16)
    out = Volume(array, acq.affine_lps, label=f"synthetic {plane} knee",
                 meta={"modality": "MR", "plane": plane, "protocol": acq.protocol,
                       "series_description": f"SYNTHETIC {acq.protocol} {plane} knee",
                       "grade": case.grade, "grade_name": GRADES[case.grade], "torn": to_binary(case.grade),
                       "side": case.side, "subject": anat.subject})
    if not with_masks:
        return out
    centre = grid[:, (sub - 1) // 2::sub] if sub > 1 else grid
    kinds = torch.zeros(N_TISSUES, dtype=torch.uint8)
    kinds[list(BONES["femur"])] = 1
    kinds[list(BONES["tibia"])] = 2
    maps = torch.stack([labels, kinds[tissue_t.long()]])
    near = F.grid_sample(maps[None].float(), centre, mode="nearest", padding_mode="border", align_corners=True)[0]
    near = near.permute(0, 3, 2, 1).numpy().astype(np.uint8)
    fluid = (torch.from_numpy(wet) | (labels == 3)).float()[None, None]  # fluid in any part of the voxel's slab
    fluid = F.grid_sample(fluid, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
    fluid = fluid.reshape(nk, sub, nj, ni).amax(1).permute(2, 1, 0).numpy() > 0.05
    masks = {"acl": near[0] == 1, "pcl": near[0] == 2, "femur": near[1] == 1, "tibia": near[1] == 2,
             "fluid": fluid}
    return out, masks


def synthetic_acl_knee(grade: int, rng: np.random.Generator, subjects=None, shape_folder=None, with_masks=False):
    """A synthetic oblique-sagittal knee MR Volume whose ACL has the grade (0..3, see GRADES).

    grade: 0 healthy, 1 minor strain, 2 partial rupture, 3 complete rupture (``mskai.acl.to_binary``: torn = 2, 3).
    rng: numpy Generator; the same state, grade and subjects give the same volume.
    subjects: OAI subject ids the knee shape may come from (default: ``acl_shape_subjects("train")``).
    shape_folder: folder of the OAI masks (default ../shared/data/oai_knee_bone_masks).
    with_masks: also return {"acl", "pcl", "femur", "tibia", "fluid"} bool masks on the volume's grid.
    """
    return acquire(draw_case(grade, rng, subjects, shape_folder), "sagittal", with_masks)


def write_acl_study(folder, grade: int, seed: int, planes=("sagittal",), patient=("SYNTH^KNEE", "SYNTH-0001"),
                    subjects=None, shape_folder=None) -> dict:
    """Write one synthetic knee as a DICOM study, one series per plane (subfolders named after the planes).

    The planes are acquisitions of the same 3D knee (coronal and axial: for checking that the ACL classifier
    refuses them). The folder is replaced as a whole (``mskai.io.output_folder``). Returns {plane: [paths]}.
    """
    from pydicom.uid import generate_uid

    from mskai.io import output_folder
    from mskai.synth.dicom_writer import write_series

    planes = list(dict.fromkeys(planes))
    unknown = [p for p in planes if p not in PLANE_AXES]
    if unknown or not planes:
        raise ValueError(f"planes must be among {', '.join(PLANE_AXES)}, not {', '.join(unknown) or 'none'}")
    case = draw_case(grade, np.random.default_rng(seed), subjects, shape_folder)
    volumes = {plane: acquire(case, plane) for plane in planes}
    folder = Path(folder).resolve()
    study = generate_uid()
    written = {}
    with output_folder(folder, "synthetic ACL study") as staging:
        for number, plane in enumerate(planes, start=1):
            volume = volumes[plane]
            paths = write_series(volume, staging / plane, patient=tuple(patient), study_uid=study,
                                 series_number=number, description=volume.meta["series_description"])
            written[plane] = [folder / p.relative_to(staging) for p in paths]
    return written
