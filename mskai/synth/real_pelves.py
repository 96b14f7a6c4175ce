"""Real hip and pelvis shapes for synthetic training: manual labels of 4 pelvic CT scans.

``RealPelvisSource`` turns one label map (hip bones, femora, sacrum, spine and 24 muscles, from the iliac
crests to the mid-thigh) into a synthseg tissue map; ``RealHipLimb`` continues it below a seam in the thigh
with procedural legs (``LowerLimbPhantom``) down to the ankles; ``hip_cases`` renders whole hip scans.
Data: ../shared/data/pelvis_thigh_labels, labels of yuta-hi/pelvic-annonation (MIT License) drawn on CT of
TCIA's Pelvic Reference Data; keep ../shared/data/NOTICE.md with anything derived from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mskai.synth import SHARED_DATA
from mskai.synth.real_shapes import RAS_TO_LPS
from mskai.synth.synthseg import (AIR, CORTEX, CORTEX_MM, FAT, MARROW, MUSCLE, OTHER, OTHER_MARROW, VESSEL,
                                  LowerLimbPhantom, TissueMapSource, synthetic_case)

PELVIS_SUBJECTS = ("001", "002", "004", "005")
PELVIS_FOLDER = SHARED_DATA / "pelvis_thigh_labels"
# map value -> (marrow tissue, owner = product bone label); the spine looks like bone but is background
HIP_BONE, FEMUR, SACRUM, SPINE = 1, 2, 3, 4
BONE_TISSUES = {SACRUM: (MARROW[6], 6), SPINE: (OTHER_MARROW, 0), HIP_BONE: (MARROW[4], 4), FEMUR: (MARROW[2], 2)}
FIRST_MUSCLE = 5
CLOSE_MM, RING_MM = 20.0, 80.0  # the skin outline bridges gaps up to twice this between labelled structures
IN_PLANE = np.ones((3, 3, 1), dtype=bool)  # per-slice connectivity


def pelvis_path(subject: str, folder=PELVIS_FOLDER) -> Path:
    return Path(folder) / f"pelvic_ref_{subject}.nii.gz"


def _smooth_noise(rng, shape, spacing, cell_mm) -> np.ndarray:
    """Unit-variance-ish random field, smooth over about ``cell_mm`` (float32)."""
    coarse = [max(2, int(np.ceil(n * s / cell_mm)) + 1) for n, s in zip(shape, spacing)]
    field = ndimage.zoom(rng.normal(0, 1, coarse).astype(np.float32), [n / c for n, c in zip(shape, coarse)], order=1)
    return field[tuple(slice(0, n) for n in shape)]


def _in_plane_distance(mask, spacing) -> np.ndarray:
    """Distance (mm) to the nearest True voxel of the same slice (>= 1e3 when the slice has none)."""
    return ndimage.distance_transform_edt(~mask, sampling=(spacing[0], spacing[1], 1e3))


def _close_slices(mask, spacing, reach) -> np.ndarray:
    """Per-slice morphological closing by a disc of radius ``reach`` mm (a scalar or one per slice)."""
    pad = [int(np.ceil(np.max(reach) / s)) + 1 for s in spacing[:2]]
    padded = np.pad(mask, [(pad[0], pad[0]), (pad[1], pad[1]), (0, 0)])
    closed = _in_plane_distance(~(_in_plane_distance(padded, spacing) <= reach), spacing) > reach
    return closed[pad[0]:-pad[0], pad[1]:-pad[1]]


def _rim_footprint(spacing) -> np.ndarray:
    """In-plane disc of radius CORTEX_MM plus the neighbours above and below: 3 mm slices get a cap too."""
    r = [max(1, int(CORTEX_MM // s)) for s in spacing[:2]]
    grid = np.meshgrid(*[np.arange(-n, n + 1) * s for n, s in zip(r, spacing[:2])], indexing="ij")
    footprint = np.zeros((2 * r[0] + 1, 2 * r[1] + 1, 3), dtype=bool)
    footprint[:, :, 1] = sum(g**2 for g in grid) <= max(CORTEX_MM, spacing[0], spacing[1]) ** 2
    footprint[r[0], r[1], :] = True
    return footprint


class RealPelvisSource(TissueMapSource):
    """One real pelvis label map as a synthseg shape source (LPS mm).

    Hip bone, femur and sacrum get a cortex rim and their marrow; the spine gets a cortex rim and
    OTHER_MARROW with no owner (bone-like background). All muscles are MUSCLE, with random thin fat
    septa between different muscles. The skin outline closes the labelled region, adds a random
    subcutaneous fat layer (5-25 mm) and fills the unlabelled inside with fat and other soft tissue
    (bowel, bladder, vessels); femoral vessels run in each groin; air beyond. Beyond the top and bottom
    slices the edge continues (femoral shafts, spine). ``hip_centres_mm``: femoral head centres by side
    ("left" at +x); ``femur_sections``: per side (z, centroid, area) of the femur per slice.
    """

    # All six labels are taught: a hip scan truly holds no tibia, fibula or patella (out of the field
    # of view, not unannotated), so their absence is a true negative, unlike in RealKneeSource.
    labelled = {1, 2, 3, 4, 5, 6}

    def __init__(self, subject: str = "001", rng=None, folder=PELVIS_FOLDER, image=None):
        """image: a nibabel image in this encoding instead of the subject's file (``mskai.synth.hip_ct``)."""
        import nibabel as nib

        rng = np.random.default_rng(0) if rng is None else rng
        self.subject = subject
        image = nib.as_closest_canonical(image if image is not None else nib.load(str(pelvis_path(subject, folder))))
        labels = np.asarray(image.dataobj, dtype=np.uint8)
        spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
        box = [slice(*np.nonzero(labels.any(axis=other))[0][[0, -1]] + [0, 1]) for other in ((1, 2), (0, 2))]
        pad = [int(np.ceil((CLOSE_MM + 40) / s)) for s in spacing[:2]]
        labels = np.pad(labels[box[0], box[1]], [(pad[0], pad[0]), (pad[1], pad[1]), (0, 0)])
        shift = np.eye(4)
        shift[:3, 3] = [box[0].start - pad[0], box[1].start - pad[1], 0]
        self.affine = RAS_TO_LPS @ image.affine @ shift
        self.spacing = spacing
        self._measure_femora(labels)
        tissue = self._soft_tissue(labels, spacing, rng)
        self._femoral_vessels(tissue, rng)
        owner = np.zeros(labels.shape, dtype=np.uint8)
        footprint = _rim_footprint(spacing)
        boxes = ndimage.find_objects(np.where(labels < FIRST_MUSCLE, labels, 0))
        for value, (marrow, bone) in BONE_TISSUES.items():
            if value > len(boxes) or boxes[value - 1] is None:  # no spine in the hip CT maps
                continue
            found = tuple(slice(max(0, b.start - 2), b.stop + 2) for b in boxes[value - 1])
            mask = ndimage.binary_fill_holes(labels[found] == value)
            rim = mask & ~ndimage.binary_erosion(mask, footprint, border_value=1)
            tissue[found][mask] = np.where(rim[mask], CORTEX, marrow)
            owner[found][mask] = bone
        body = [np.nonzero(tissue.any(axis=other))[0] for other in ((1, 2), (0, 2))]  # crop to the skin
        keep = tuple(slice(max(0, b[0] - 2), b[-1] + 3) for b in body)
        shift = np.eye(4)
        shift[:2, 3] = [keep[0].start, keep[1].start]
        self.affine = self.affine @ shift
        self.tissue = torch.from_numpy(np.ascontiguousarray(tissue[keep]))
        self.owner = torch.from_numpy(np.ascontiguousarray(owner[keep]))
        self._finish()
        hip = np.argwhere(self.owner.numpy() == 4)
        self.hip_box_mm = (self._mm(hip.min(0)), self._mm(hip.max(0)))

    def _xyz(self, ijk) -> np.ndarray:
        """LPS mm of voxel indices (N, 3)."""
        return np.asarray(ijk, dtype=float) @ self.affine[:3, :3].T + self.affine[:3, 3]

    def _measure_femora(self, labels):
        """Femoral head centres and per-slice femur sections, per side.

        A head centre is the centre of the sphere fitted (least squares) to the femur's surface within 4 mm
        of the hip bone: the joint surface.
        """
        self.midline_x = float(self._xyz(np.argwhere(labels == HIP_BONE)[::50])[:, 0].mean())
        femur = np.argwhere(labels == FEMUR)
        xyz = self._xyz(femur)
        self.hip_centres_mm, self.head_radius_mm, self.femur_sections = {}, {}, {}
        for side, sel in (("left", xyz[:, 0] > self.midline_x), ("right", xyz[:, 0] <= self.midline_x)):
            pts, mm = femur[sel], xyz[sel]
            top = pts[mm[:, 2] > mm[:, 2].max() - 70]
            box = tuple(slice(max(0, a - 5), b + 6) for a, b in zip(top.min(0), top.max(0)))
            bone = np.zeros(labels.shape, dtype=bool)
            bone[tuple(top.T)] = True
            bone = bone[box]
            surface = bone & ~ndimage.binary_erosion(bone)
            near_hip = ndimage.distance_transform_edt(labels[box] != HIP_BONE, sampling=self.spacing) <= 4.0
            joint = self._xyz(np.argwhere(surface & near_hip) + [b.start for b in box])
            if len(joint) < 50:
                raise ValueError(f"pelvis {self.subject}: the {side} femoral head does not meet the hip bone")
            solution = np.linalg.lstsq(np.c_[2 * joint, np.ones(len(joint))], (joint**2).sum(1), rcond=None)[0]
            self.hip_centres_mm[side] = solution[:3]
            self.head_radius_mm[side] = float(np.sqrt(solution[3] + solution[:3] @ solution[:3]))
            k, count = np.unique(pts[:, 2], return_counts=True)
            centroid = np.stack([np.bincount(pts[:, 2], weights=mm[:, a])[k] / count for a in range(3)], axis=1)
            self.femur_sections[side] = (centroid[:, 2], centroid, count * self.spacing[0] * self.spacing[1])

    def _soft_tissue(self, labels, spacing, rng) -> np.ndarray:
        """Air, subcutaneous fat, the unlabelled inside (fat and other soft tissue), muscles with fat septa.

        The skin bridges gaps up to 2 x CLOSE_MM between the labelled structures of a slice, 2 x RING_MM
        within the pelvic ring (slices holding hip bone: the pelvic cavity and the perineum are unlabelled
        but body) with a 40 mm ramp below it (the crotch); outlines are drawn on grids 4x (closing, depth)
        and 2x (fat layer) coarser in-plane.
        """
        n = labels.shape
        grid2, grid4 = [np.ix_(np.arange(n[0]) // f, np.arange(n[1]) // f, np.arange(n[2])) for f in (2, 4)]
        sp2, sp4 = [(spacing[0] * f, spacing[1] * f, spacing[2]) for f in (2, 4)]
        coarse = labels[::4, ::4] > 0
        z = np.arange(n[2]) * spacing[2]
        bottom = np.nonzero((labels == HIP_BONE).any(axis=(0, 1)))[0].min() * spacing[2]
        reach = np.interp(z, [bottom - 40, bottom], [CLOSE_MM, RING_MM])
        closed = ndimage.binary_fill_holes(_close_slices(coarse, sp4, reach) | coarse, structure=IN_PLANE)
        depth = _in_plane_distance(~closed, sp4).astype(np.float32)[grid4]
        closed = closed[np.ix_(np.arange(-(-n[0] // 2)) // 2, np.arange(-(-n[1] // 2)) // 2, np.arange(n[2]))]
        closed |= labels[::2, ::2] > 0
        self.fat_mm = rng.uniform(5, 25)
        fat_mm = self.fat_mm * np.exp(0.3 * _smooth_noise(rng, closed.shape, sp2, 80.0))
        body = closed | (_in_plane_distance(closed, sp2) <= fat_mm)
        blobs = _smooth_noise(rng, closed.shape, sp2, rng.uniform(20, 40)) > rng.normal(0, 0.4)
        tissue = np.where(body, FAT, AIR).astype(np.uint8)[grid2]
        tissue[(closed & blobs)[grid2] & (depth > rng.uniform(8, 20))] = OTHER
        muscle = np.where(labels >= FIRST_MUSCLE, labels, 0)
        tissue[muscle > 0] = MUSCLE
        if rng.random() < 0.8:  # thin fat septa where two different muscles meet: the muscle groups show
            size = (3, 3, 1) if rng.random() < 0.6 else (5, 5, 1)
            other = ndimage.maximum_filter(muscle, size) > muscle
            other |= ndimage.minimum_filter(np.where(muscle > 0, muscle, 255).astype(np.uint8), size) < muscle
            tissue[(muscle > 0) & other] = FAT
        return tissue

    def _femoral_vessels(self, tissue, rng):
        """Femoral artery and vein per side: from above the groin, anterior-medial to the head, down the thigh."""
        x = np.arange(tissue.shape[0]) * self.affine[0, 0] + self.affine[0, 3]
        y = np.arange(tissue.shape[1]) * self.affine[1, 1] + self.affine[1, 3]
        for side, head in self.hip_centres_mm.items():
            medial = 1.0 if head[0] < self.midline_x else -1.0
            z, centroid, _ = self.femur_sections[side]
            start = head + [medial * rng.uniform(10, 20), -rng.uniform(25, 35), rng.uniform(30, 45)]
            end = centroid[0] + [medial * rng.uniform(18, 28), -rng.uniform(5, 15), -10.0]
            vein = np.array([medial * rng.uniform(8, 12), rng.uniform(2, 8), 0.0])
            for a, b, radius in ((start, end, rng.uniform(3, 4.5)), (start + vein, end + vein, rng.uniform(4, 6))):
                for k in range(tissue.shape[2]):
                    zk = k * self.affine[2, 2] + self.affine[2, 3]
                    if not end[2] <= zk <= start[2]:
                        continue
                    c = a + (zk - a[2]) / (b[2] - a[2]) * (b - a)
                    i, j = np.abs(x - c[0]) <= radius, np.abs(y - c[1]) <= radius
                    section = tissue[i][:, j, k]
                    tube = (x[i, None] - c[0]) ** 2 + (y[None, j] - c[1]) ** 2 <= radius**2
                    section[tube & (section != AIR)] = VESSEL
                    tissue[np.ix_(i, j, [k])] = section[:, :, None]

    def random_centre(self, rng) -> np.ndarray:
        """Near a hip joint (40 %), in the hip bones' box (40 %) or anywhere in the bones' box."""
        u = rng.random()
        if u < 0.4:
            return self.hip_centres_mm[rng.choice(["left", "right"])] + rng.normal(0, 20, 3)
        lo, hi = self.hip_box_mm if u < 0.8 else self.bone_box_mm
        return rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi))


def hip_joint_centres_mm(source) -> dict:
    """{"left": LPS mm, "right": LPS mm} femoral head centres of a RealPelvisSource or RealHipLimb."""
    return dict(source.hip_centres_mm)


# --- hip to ankle ---------------------------------------------------------------------------------------


def _unit(v):
    return np.asarray(v, dtype=float) / np.linalg.norm(v)


def _frame(a, b):
    """Right-handed orthonormal frame (columns) with a first axis along ``a`` and ``b`` in the first two."""
    e1 = _unit(a)
    e2 = _unit(b - (b @ e1) * e1)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


class RealHipLimb:
    """A real pelvis and upper thighs above a seam plane, a procedural leg per side below it, to the ankles.

    One ``LowerLimbPhantom``, scaled to the real femoral heads' size, serves both sides (mirrored as
    needed). Each side's copy is rotated about the real femoral head so that its femur shaft crosses the
    seam where the real femur does, and runs along the real shaft axis as far as the phantom's neck-shaft
    angle allows; its shaft gets the real shaft's radius, its thigh the real thigh's centre, girth and fat.
    The seam is a transverse plane of the pelvis map 115-140 mm below the femoral heads (``seam_z``, map
    frame). Most of these CTs have the hips flexed by 20-26 degrees (knee cushions): the whole body is
    turned about the hips' left-right axis by a random 60-100 % of the femora's sagittal angle
    (``tilt_deg``), so that the legs hang nearly straight down in LPS.
    """

    labelled = {1, 2, 3, 4, 5, 6}
    REGIONS = {"hip": 0.35, "thigh": 0.2, "knee": 0.25, "shank": 0.2}

    def __init__(self, pelvis: RealPelvisSource, rng):
        from mskai.synth.phantom import rotation

        self.pelvis, self.phantom = pelvis, LowerLimbPhantom(rng)
        heads, sections = pelvis.hip_centres_mm, pelvis.femur_sections
        lowest = max(sections[s][0].min() for s in sections)
        head_z = min(h[2] for h in heads.values())
        self.seam_z = head_z - min(rng.uniform(115, 140), head_z - lowest - 15)
        fits = {side: self._real_shaft(side) for side in heads}
        self.scale = float(np.clip(np.mean(list(pelvis.head_radius_mm.values())) / self.phantom.head_r, 0.8, 1.25))
        shaft_top, shaft_end, r_top, r_end = self.phantom.femur["shaft"]
        length = np.linalg.norm(shaft_end - shaft_top)
        u = (shaft_end - shaft_top) / length
        ratios = []  # the phantom's shaft as thick as the real one at the seam
        for side, (c, _, r_real) in fits.items():
            t = self._along(shaft_top, u, np.linalg.norm(c - heads[side]) / self.scale) / length
            ratios.append(r_real / self.scale / (r_top + (r_end - r_top) * t))
        self.phantom.femur["shaft"] = (shaft_top, shaft_end, r_top * np.mean(ratios), r_end * np.mean(ratios))
        self.transforms = {}  # side -> (head, rotation, mirror): phantom -> map frame
        for side, (c, d, _) in fits.items():
            for mirror in (np.eye(3), np.diag([-1.0, 1.0, 1.0])):
                a, v = mirror @ shaft_top, mirror @ u
                p = a + self._along(a, v, np.linalg.norm(c - heads[side]) / self.scale) * v
                turn = _frame(c - heads[side], d) @ _frame(p, v).T
                if (turn @ [0.0, -1.0, 0.0])[1] < 0:  # the phantom's front faces the front
                    break
            self.transforms[side] = (heads[side], turn, mirror)
        self._match_thighs()
        self.shaft_angle_deg = {s: float(np.degrees(np.arccos(np.clip(
            (self.transforms[s][1] @ self.transforms[s][2] @ u) @ fits[s][1], -1, 1)))) for s in fits}
        down = np.mean([d for _, d, _ in fits.values()], axis=0)
        self.tilt_deg = float(np.degrees(np.arctan(down[1] / down[2]))) * rng.uniform(0.6, 1.0)
        self.pivot = np.mean(list(heads.values()), axis=0)
        self.tilt = rotation([1.0, 0.0, 0.0], self.tilt_deg)  # map frame -> world
        self.hip_centres_mm = {side: self._from_map(h) for side, h in heads.items()}
        lo, hi = pelvis.bone_box_mm
        corners = [self._from_map(np.where([i, j, k], hi, lo)) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        ends = corners + [self.to_world(s, [0.0, 0.0, -self.phantom.length]) for s in heads]
        self.bone_box_mm = (np.min(ends, axis=0), np.max(ends, axis=0))
        self.centre_mm = (self.bone_box_mm[0] + self.bone_box_mm[1]) / 2

    def _real_shaft(self, side):
        """Real femur axis at the seam: (centre on the seam plane, unit direction downwards, radius mm)."""
        z, centroid, area = self.pelvis.femur_sections[side]
        near = (z > self.seam_z - 30) & (z < self.seam_z + 50)
        fit = [np.polyfit(z[near], centroid[near, a], 1) for a in (0, 1)]
        c = np.array([np.polyval(fit[0], self.seam_z), np.polyval(fit[1], self.seam_z), self.seam_z])
        d = _unit([-fit[0][0], -fit[1][0], -1.0])
        section = np.median(area[np.abs(z - self.seam_z) < 15])  # oblique: the true cross-section is smaller
        return c, d, float(np.sqrt(section * abs(d[2]) / np.pi))

    def _match_thighs(self):
        """The phantom's thigh through the real thighs' centres at the seam, as thick, with as much fat."""
        map_ = self.pelvis
        k = int(round((self.seam_z - map_.affine[2, 3]) / map_.affine[2, 2]))
        body = (map_.tissue[:, :, k] != AIR).numpy()
        xy = np.argwhere(body) * np.diag(map_.affine)[:2] + map_.affine[:2, 3]
        centres, areas = [], []
        for side, sel in (("left", xy[:, 0] > map_.midline_x), ("right", xy[:, 0] <= map_.midline_x)):
            head, turn, mirror = self.transforms[side]
            centre = np.array([*xy[sel].mean(0), self.seam_z])
            centres.append(mirror @ turn.T @ (centre - head) / self.scale)
            areas.append(sel.sum() * abs(map_.affine[0, 0] * map_.affine[1, 1]))
        centre = np.mean(centres, axis=0)
        start, end, _, r_end = self.phantom.thigh
        start = end + (centre - end) * (start[2] - end[2]) / (centre[2] - end[2])
        t = (centre - start) @ (end - start) / ((end - start) @ (end - start))
        radius = np.sqrt(np.mean(areas) / np.pi) / self.scale
        self.phantom.thigh = (start, end, float(np.clip((radius - r_end * t) / (1 - t), r_end, 150.0)), r_end)
        self.phantom.fat = map_.fat_mm / self.scale

    @staticmethod
    def _along(a, v, distance):
        """t >= 0 where |a + t v| = distance (v unit): the shaft point at that distance from the hip centre."""
        b = a @ v
        return -b + np.sqrt(max(b * b - a @ a + distance**2, 0.0))

    def _from_map(self, p) -> np.ndarray:
        """LPS mm of map-frame points (..., 3)."""
        return self.pivot + (np.asarray(p, dtype=float) - self.pivot) @ self.tilt.T

    def to_world(self, side, q) -> np.ndarray:
        """LPS mm of a point of the side's phantom frame."""
        head, turn, mirror = self.transforms[side]
        return self._from_map(head + self.scale * turn @ mirror @ np.asarray(q, dtype=float))

    def sample(self, points_mm: torch.Tensor):
        pivot = torch.as_tensor(self.pivot, dtype=torch.float32)
        points = (points_mm.float() - pivot) @ torch.as_tensor(self.tilt, dtype=torch.float32) + pivot  # map frame
        tissue, owner = self.pelvis.sample(points)
        below = points[..., 2] < self.seam_z
        if below.any():
            p = points[below]
            low_tissue = torch.zeros(p.shape[0], dtype=torch.uint8)
            low_owner = torch.zeros(p.shape[0], dtype=torch.uint8)
            left = p[:, 0] > self.pelvis.midline_x
            for side, sel in (("left", left), ("right", ~left)):
                head, turn, mirror = self.transforms[side]
                m = torch.as_tensor(mirror @ turn.T / self.scale, dtype=torch.float32)
                q = (p[sel] - torch.as_tensor(head, dtype=torch.float32)) @ m.T
                low_tissue[sel], low_owner[sel] = self.phantom.sample(q)
            tissue[below], owner[below] = low_tissue, low_owner
        return tissue, owner

    def random_centre(self, rng, region=None) -> np.ndarray:
        """Hip (the pelvis's own draw), thigh, knee or shank of a random side."""
        region = region or rng.choice(list(self.REGIONS), p=list(self.REGIONS.values()))
        if region == "hip":
            return self._from_map(self.pelvis.random_centre(rng))
        return self.to_world(rng.choice(["left", "right"]), self.phantom.random_centre(rng, region))


# --- evaluation cases -----------------------------------------------------------------------------------


def hip_cases(n: int, seed: int = 0, subjects=PELVIS_SUBJECTS, folder=PELVIS_FOLDER, max_voxels: float = 2.5e7,
              sources: dict | None = None, with_tissue: bool = False, make_source=None):
    """Yield ``n`` (name, image Volume, label Volume[, tissue Volume]) whole hip scans, cycling through ``subjects``.

    Axial or coronal, 0.7-1.2 mm in-plane, 1-5 mm slices (thicker when the grid would exceed
    ``max_voxels``), 300-400 mm wide and 200-300 mm tall, centred near the hip bones with random offsets.
    ``sources``: RealPelvisSource per subject, built here when missing (and added to the dict).
    make_source: (subject, rng) -> source (default: RealPelvisSource of ``folder``; ``hip_ct.HipCTSource``).
    """
    rng = np.random.default_rng(seed)
    sources = {} if sources is None else sources
    make_source = make_source or (lambda subject, rng: RealPelvisSource(subject, rng, folder))
    for i in range(n):
        subject = subjects[i % len(subjects)]
        if subject not in sources:
            sources[subject] = make_source(subject, rng)
        source = sources[subject]
        plane = str(rng.choice(["axial", "coronal"]))
        pixel, width, height = rng.uniform(0.7, 1.2), rng.uniform(300, 400), rng.uniform(200, 300)
        if plane == "axial":  # grid axes L, P, S
            extent = (width, width * rng.uniform(0.8, 1.0), height)
        else:  # grid axes L, I, P
            extent = (width, height, rng.uniform(150, 250))
        thickness = max(rng.uniform(1, 5), extent[0] * extent[1] * extent[2] / pixel**2 / max_voxels)
        heads = np.mean(list(source.hip_centres_mm.values()), axis=0)
        centre = heads + [0.0, 0.0, 25.0] + rng.normal(0, [15, 10, 15])
        case = synthetic_case(source, rng, (pixel, pixel, thickness), extent_mm=extent, plane=plane, centre=centre,
                              with_tissue=with_tissue)
        yield (f"{'pelvis' if subject in PELVIS_SUBJECTS else 'hip'}{subject}_{i:02d}_{plane}", *case)
