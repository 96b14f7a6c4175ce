"""The bones of the knee model and the model under construction (``KneeDraft``): the real femur and tibia (shafts
continued, the ACL's bed cleared), a patella transplanted from the pymskt knee label map and seated on the
trochlea, a fibular head, and the cortex and marrow of each bone."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from mskai.synth import SHARED_DATA
from mskai.synth.acl_knee.geometry import Band, _box, _box_points
from mskai.acl.landmarks import notch_landmarks
from mskai.synth.acl_knee.tissues import BONES


@dataclass
class KneeDraft:
    """A knee model while ``build_anatomy`` builds it: the mm grid (axes LR, AP with anterior +, IS; mm = index *
    spacing), the landmarks, the bone masks and the tissue map so far. Each step fills in what it names."""

    sp: np.ndarray
    lm: dict
    femur: np.ndarray
    tibia: np.ndarray
    patella: np.ndarray | None = None
    pat_cart: np.ndarray | None = None  # patellar cartilage
    fibula: np.ndarray | None = None
    bones: np.ndarray | None = None  # all four
    tissue: np.ndarray | None = None
    deep: np.ndarray | None = None  # under the subcutaneous fat

    def __post_init__(self):
        self.X, self.Y, self.Z = [np.arange(n, dtype=np.float32) * d for n, d in zip(self.shape, self.sp)]

    @property
    def shape(self) -> tuple:
        return self.femur.shape

    @property
    def lateral(self) -> int:
        return self.lm["lateral"]

    @property
    def xc(self) -> float:
        return self.lm["notch_x"]

    @property
    def zj(self) -> float:
        return self.lm["plateau_z"]

    @cached_property
    def femur_front(self) -> np.ndarray:
        """y (mm) of the femur's front per (x, z), 0 where there is no femur."""
        femur, shape = self.femur, self.shape
        return np.where(femur.any(1), shape[1] - 1 - femur[:, ::-1, :].argmax(1), 0) * self.sp[1]

    @cached_property
    def knee_front(self) -> np.ndarray:
        """y (mm) of the front of the femur or tibia per (x, z), 0 where there is neither."""
        both, shape = self.femur | self.tibia, self.shape
        return np.where(both.any(1), shape[1] - 1 - both[:, ::-1, :].argmax(1), 0) * self.sp[1]

    @cached_property
    def patella_points(self) -> np.ndarray:
        return np.argwhere(self.patella) * self.sp


def _padded_bones(labels, sp):
    """Femur and tibia masks of a split OAI mask, padded for the soft tissue around them; the shafts go on beyond
    the masks' ragged ends: a clean section 4 mm inside each end, repeated outwards."""
    from mskai.synth.real_shapes import FEMUR, TIBIA

    pad = [(int(25 / sp[0]),) * 2, (int(50 / sp[1]), int(30 / sp[1])), (0, 0)]
    labels = np.pad(labels, pad)
    for value, upwards in ((FEMUR, True), (TIBIA, False)):
        zs = np.nonzero((labels == value).any((0, 1)))[0]
        k = zs.max() - int(4 / sp[2]) if upwards else zs.min() + int(4 / sp[2])
        section = ndimage.binary_opening(ndimage.binary_fill_holes(labels[:, :, k] == value), iterations=2)
        span = slice(k, labels.shape[2]) if upwards else slice(0, k + 1)
        block = labels[:, :, span]
        block[block == value] = 0
        block[np.broadcast_to(section[:, :, None], block.shape) & (block == 0)] = value
    return labels == FEMUR, labels == TIBIA


def _carve_acl_bed(femur, tibia, sp, lm):
    """Bone in the ACL's way (mask errors) carved along the band, 3.5 mm around its axis, ends kept (in place);
    the carved volume goes to ``lm["carved_mm3"]``."""
    a, b = lm["acl_femur"], lm["acl_tibia"]
    carve_box = _box(np.minimum(a, b) - 5, np.maximum(a, b) + 5, sp, femur.shape)
    pts = _box_points(carve_box, sp).numpy()
    d = b - a
    t = np.clip(((pts - a) @ d) / (d @ d), 0, 1)
    near = np.linalg.norm(pts - (a + t[..., None] * d), axis=-1) <= 3.5
    carve = near & (t > 0.15) & (t < 0.85)
    lm["carved_mm3"] = float((carve & (femur[carve_box] | tibia[carve_box])).sum() * np.prod(sp))
    femur[carve_box] &= ~carve
    tibia[carve_box] &= ~carve


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



def _add_patella(knee: KneeDraft, rng):
    """The patella and its cartilage, off the femur and tibia."""
    patella_labels = _place_patella(knee.femur, knee.sp, knee.lm, knee.lateral, rng)
    patella, pat_cart = patella_labels == 1, patella_labels == 2
    patella &= ~knee.femur & ~knee.tibia
    pat_cart &= ~knee.femur & ~knee.tibia & ~patella
    knee.patella, knee.pat_cart = patella, pat_cart


def _add_fibula(knee: KneeDraft, rng):
    """The fibula (head below the lateral plateau, posterior half; shaft downwards), then all four bones."""
    sp, lm, lateral, zj, shape = knee.sp, knee.lm, knee.lateral, knee.zj, knee.shape
    femur, tibia = knee.femur, knee.tibia
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
    knee.fibula = fibula
    knee.bones = femur | tibia | knee.patella | fibula


def _bone_layers(knee: KneeDraft):
    """Each bone as a cortex rim (~1.4 mm) around marrow, in the tissue map."""
    tissue = knee.tissue
    for mask, (cortex, marrow) in ((knee.femur, BONES["femur"]), (knee.tibia, BONES["tibia"]),
                                   (knee.patella, BONES["patella"]), (knee.fibula, BONES["fibula"])):
        found = ndimage.find_objects(mask.astype(np.uint8))
        if not found:
            continue
        b = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in found[0])
        m = mask[b]
        inner = ndimage.binary_erosion(m, iterations=2, border_value=1)
        view = tissue[b]
        view[m] = np.where(inner[m], marrow, cortex)
