"""SynthSeg-style MR-like images rendered from label maps, for training and testing the demo bone model.

Shape sources give "tissue" maps (bone marrow per bone, cortical rim, cartilage, menisci, muscle, fat,
vessels, tendons, air...) that are rendered with random intensities per tissue:
- ``KneeLabelSource``: the real knee label map in ../shared/data (pymskt, MIT licence);
- ``LowerLimbPhantom``: procedural pelvis, femur, patella, tibia and fibula built from
  signed distance functions, with random sizes, angles, knee flexion and side;
- ``real_shapes.RealKneeSource`` (OAI knees, the PD knee) and ``real_pelves`` (real pelves, hip-to-ankle).
Each sample draws a random pose (rotation, scale, elastic deformation), renders intensities,
partial-volume blur, a random slice thickness, ringing, a bias field, gamma and noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# Tissue classes shared by every source (OTHER: joint fluid and other soft tissue).
AIR, MUSCLE, FAT, CORTEX, CARTILAGE, MENISCUS, OTHER = 0, 1, 2, 3, 4, 5, 6
MARROW = {1: 7, 2: 8, 3: 9, 4: 10, 5: 11, 6: 15}  # bone label -> its marrow tissue class (6: sacrum)
VESSEL, TENDON = 12, 13  # vessels (bright or dark: flow), tendons and ligaments (dark bands)
OTHER_MARROW = 14  # marrow of bones outside the label table (the spine): looks like bone, is background
SACRUM_MARROW = MARROW[6]  # rendered exactly as OTHER_MARROW (the same draws): the sacrum is told apart by shape
N_TISSUES = 16
CORTEX_MM = 1.5
# Patch axes R, A, S written in LPS: the orientation the model sees after canonical reorientation.
CANONICAL_RAS = np.diag([-1.0, -1.0, 1.0])

# Knee label map values (pymskt SAG_3D_DESS ... bones_cart_men_fib): 5 femur, 6 tibia, 7 patella, 8 fibula,
# 1 femoral cartilage, 2/3 tibial cartilage, 4 patellar cartilage, 9/10 menisci.
KNEE_BONES = {6: 1, 5: 2, 8: 3, 7: 5}
# A copy of that label map ships with the extension (Resources/SampleData, with its NOTICE.md).
BUNDLED_KNEE_LABELS = Path(__file__).resolve().parents[2] / "Resources" / "SampleData" / "knee_bones_cartilage_label.nrrd"
KNEE_CARTILAGE = (1, 2, 3, 4)
KNEE_MENISCI = (9, 10)


def bone_labels_of(tissue: torch.Tensor, cortex_owner: torch.Tensor) -> torch.Tensor:
    """Bone label map from a tissue map: marrow classes plus the cortex assigned to its bone."""
    labels = torch.zeros_like(tissue, dtype=torch.uint8)
    for bone, marrow in MARROW.items():
        labels[tissue == marrow] = bone
    cortex = tissue == CORTEX
    labels[cortex] = cortex_owner[cortex].to(torch.uint8)
    return labels


class TissueMapSource:
    """A tissue map and its bone owners on a voxel grid (``affine``: IJK -> LPS mm), sampled by nearest neighbour.

    Subclasses set ``affine``, ``tissue``, ``owner`` (torch uint8) in their ``__init__`` and call ``_finish()``;
    ``outside`` is the tissue beyond the map (None: the edge voxel continues, bones included).
    """

    outside: int | None = None

    def _finish(self):
        self.shape = tuple(self.tissue.shape)
        bones = np.argwhere(self.owner.numpy() > 0)
        self.bone_box_mm = (self._mm(bones.min(0)), self._mm(bones.max(0)))
        self.centre_mm = self._mm((np.array(self.shape) - 1) / 2)

    def _mm(self, ijk):
        return self.affine[:3, :3] @ np.asarray(ijk, dtype=float) + self.affine[:3, 3]

    def random_centre(self, rng) -> np.ndarray:
        lo, hi = self.bone_box_mm
        return rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi))

    def sample(self, points_mm: torch.Tensor):
        """Tissue and bone owner at LPS points (..., 3)."""
        inv = torch.as_tensor(np.linalg.inv(self.affine), dtype=torch.float32)
        idx = torch.round(points_mm.float() @ inv[:3, :3].T + inv[:3, 3]).long()
        inside = torch.ones(idx.shape[:-1], dtype=torch.bool)
        for axis, n in enumerate(self.shape):
            inside &= (idx[..., axis] >= 0) & (idx[..., axis] < n)
            idx[..., axis] = idx[..., axis].clamp(0, n - 1)
        tissue = self.tissue[idx[..., 0], idx[..., 1], idx[..., 2]]
        owner = self.owner[idx[..., 0], idx[..., 1], idx[..., 2]]
        if self.outside is None:
            return tissue, owner
        tissue = torch.where(inside, tissue, torch.tensor(self.outside, dtype=torch.uint8))
        owner = torch.where(inside, owner, torch.tensor(0, dtype=torch.uint8))
        return tissue, owner


class KneeLabelSource(TissueMapSource):
    """The real knee label map as tissues; sampled by nearest neighbour in millimetres (LPS); outside is muscle."""

    outside = MUSCLE

    def __init__(self, path):
        from scipy import ndimage

        from mskai.volume_files import read_volume_file

        volume = read_volume_file(path)
        data, self.affine = np.asarray(volume.array), volume.affine_lps
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        tissue = np.full(data.shape, MUSCLE, dtype=np.uint8)
        owner = np.zeros(data.shape, dtype=np.uint8)
        boxes = ndimage.find_objects(data)
        for value, bone in KNEE_BONES.items():
            box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in boxes[value - 1])
            mask = data[box] == value
            depth = ndimage.distance_transform_edt(mask, sampling=spacing)
            tissue[box][mask] = np.where(depth[mask] <= CORTEX_MM, CORTEX, MARROW[bone])
            owner[box][mask] = bone
        tissue[np.isin(data, KNEE_CARTILAGE)] = CARTILAGE
        tissue[np.isin(data, KNEE_MENISCI)] = MENISCUS
        self.tissue = torch.from_numpy(tissue)
        self.owner = torch.from_numpy(owner)
        self._finish()


# --- procedural lower limb ------------------------------------------------------------------------------


def _capsule(p, a, b, r):
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    ab = b - a
    t = ((p - a) @ ab / (ab @ ab)).clamp(0, 1)
    return torch.linalg.norm(p - (a + t[..., None] * ab), dim=-1) - r


def _tapered(p, a, b, ra, rb):
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    ab = b - a
    t = ((p - a) @ ab / (ab @ ab)).clamp(0, 1)
    return torch.linalg.norm(p - (a + t[..., None] * ab), dim=-1) - (ra + (rb - ra) * t)


def _ellipsoid(p, c, radii):
    q = (p - torch.as_tensor(c, dtype=torch.float32)) / torch.as_tensor(radii, dtype=torch.float32)
    return (torch.linalg.norm(q, dim=-1) - 1) * float(min(radii))


def _sphere(p, c, r):
    return torch.linalg.norm(p - torch.as_tensor(c, dtype=torch.float32), dim=-1) - r


def _rot_x(deg):
    a = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


class LowerLimbPhantom:
    """One random leg (hip to ankle) in LPS millimetres, hip joint centre at the origin.

    ``side`` names the leg ("left" or "right"; LPS: the patient's left is +x): its pelvis extends medially
    (towards the midline) and superiorly, its greater trochanter and fibula lie laterally.
    """

    def __init__(self, rng):
        self.side = rng.choice(["left", "right"])
        m = 1.0 if self.side == "right" else -1.0  # medial: towards +x (L) for a right leg, -x for a left one
        s = rng.uniform(0.85, 1.15)  # overall size
        r = lambda lo, hi: rng.uniform(lo, hi) * s  # noqa: E731
        femur_len = r(400, 460)
        self.head_r = r(21, 25)
        knee = np.array([m * r(5, 15), r(-5, 10), -femur_len])
        neck_end = np.array([-m * r(30, 40), 0.0, -r(25, 35)])  # greater trochanter side is lateral
        shaft_top = neck_end + np.array([0.0, 0.0, -r(5, 15)])  # overlaps the trochanter: one femur
        self.femur = dict(head=(np.zeros(3), self.head_r), neck=(np.zeros(3), neck_end, r(14, 17)),
                          troch=(neck_end, r(16, 20)), shaft=(shaft_top, knee + [0, 0, 40], r(11, 14), r(12, 15)))
        cw = r(20, 25)
        self.condyles = [(knee + [sgn * cw, r(5, 10), 0], (r(18, 22), r(25, 30), r(22, 26))) for sgn in (-1, 1)]
        # the metaphysis joins the condyles and the shaft: one femur
        self.metaphysis = (knee + np.array([0.0, 5.0, 15.0]) * s, (cw + 5 * s, 20 * s, 25 * s))
        flex = rng.uniform(0, 35)  # knee flexion, tibia rotates about the knee's L axis
        self.knee, self.flex = knee, _rot_x(flex)
        tib_len = r(340, 400)
        self.patella = (knee + self.flex @ np.array([0, -r(32, 38), r(15, 25)]), (r(20, 24), r(9, 12), r(22, 27)))
        self.tibia = dict(plateau=(np.array([0, r(0, 5), -r(30, 36)]), (r(36, 42), r(26, 31), r(12, 16))),
                          shaft=(np.array([0, 0, -r(40, 50)]), np.array([0, r(0, 8), -tib_len]), r(13, 16), r(10, 12)),
                          malleolus=(np.array([m * r(10, 16), 0, -tib_len - r(5, 12)]), r(9, 12)))
        fx = -m * r(26, 32)
        self.fibula = dict(head=(np.array([fx, r(12, 18), -r(50, 58)]), r(9, 12)),
                           shaft=(np.array([fx, r(12, 18), -r(60, 70)]), np.array([fx * 1.05, r(5, 12), -tib_len - r(5, 15)]),
                                  r(5.5, 7.5)))
        cup, wall = self.head_r + r(2, 4), r(5, 7)
        pubis_r, ischium_r = r(9, 12), r(10, 13)

        def on_cup(direction, radius):  # a ramus starts on the cup's outer wall: one connected hip bone
            direction = np.asarray(direction) / np.linalg.norm(direction)
            return direction * (cup + wall + 0.6 * radius)

        self.pelvis = dict(cup=(np.zeros(3), cup, wall),
                           ilium=(np.array([-m * r(5, 20), r(-5, 10), r(70, 100)]), (r(55, 70), r(10, 14), r(65, 80))),
                           pubis=(on_cup([m * 0.7, -0.7, -0.1], pubis_r),
                                  np.array([m * r(70, 85), -r(30, 45), -r(10, 25)]), pubis_r),
                           ischium=(on_cup([m * 0.2, 0.95, -0.1], ischium_r),
                                    np.array([m * r(35, 45), r(25, 35), -r(60, 75)]), ischium_r))
        self.thigh = (np.array([-m * 10, 0, 30]), knee + [0, 0, -10], r(75, 95), r(48, 58))
        self.calf = (np.array([0, 0, -20.0]), np.array([0, 0, -tib_len]), r(50, 60), r(28, 34))  # shank frame
        self.fat = r(6, 15)
        self.length = femur_len + tib_len
        # femoral and popliteal vessels (groin, behind the knee, into the calf) and the patellar tendons
        behind = knee + [0, r(40, 50), 0]
        self.vessels = [(np.array([m * r(40, 60), -r(15, 30), -r(30, 50)]), behind + [0, 0, r(80, 120)], r(3, 4.5)),
                        (behind + [0, 0, r(80, 120)], behind + [0, 0, -20], r(3, 4.5))]
        self.calf_vessel = (np.array([0, r(35, 45), -20]), np.array([0, r(20, 30), -0.7 * tib_len]), r(2.5, 4))
        self.tendons = [(self.patella[0] + [0, 0, -15], knee + self.flex @ np.array([0, -r(28, 34), -r(55, 70)]),
                         r(3, 4.5)),
                        (self.patella[0] + [0, 0, 15], knee + [0, -r(22, 28), r(60, 90)], r(3, 5))]

    REGIONS = {"hip": 0.35, "thigh": 0.1, "knee": 0.25, "shank": 0.15, "edge": 0.15}

    def random_centre(self, rng, region=None) -> np.ndarray:
        """A point along the skeleton, so patches mostly contain bone; hip and knee are drawn most often.

        "edge" points lie 50-110 mm beside the skeleton, so patches also show the skin and the air around
        the body, as whole scans do.
        """
        region = region or rng.choice(list(self.REGIONS), p=list(self.REGIONS.values()))
        if region == "edge":
            axis = rng.normal(0, 1, 3) * [1, 1, 0]
            offset = axis / (np.linalg.norm(axis) + 1e-9) * rng.uniform(50, 110)
            return self.random_centre(rng, rng.choice(["hip", "thigh", "knee", "shank"])) + offset
        if region == "hip":
            return np.array([0.0, 0.0, 30.0]) + rng.normal(0, 25, 3)
        if region == "knee":
            return self.knee + rng.normal(0, 20, 3)
        t = rng.uniform(0.2, 0.9)
        if region == "thigh":
            return self.knee * t + rng.normal(0, 10, 3)
        return self.knee + np.array([0.0, 0.0, -t * (self.length + self.knee[2])]) + rng.normal(0, 10, 3)

    def _shank(self, p):
        """Points in the flexed shank frame (origin at the knee): tibia, fibula and calf live there."""
        return (p - torch.as_tensor(self.knee, dtype=torch.float32)) @ torch.as_tensor(self.flex, dtype=torch.float32)

    def _bones(self, p):
        f = self.femur
        femur = torch.minimum(_sphere(p, *f["head"]), _capsule(p, *f["neck"]))
        femur = torch.minimum(femur, _sphere(p, *f["troch"]))
        femur = torch.minimum(femur, _tapered(p, *f["shaft"]))
        for c, radii in [*self.condyles, self.metaphysis]:
            femur = torch.minimum(femur, _ellipsoid(p, c, radii))
        q = self._shank(p)
        t = self.tibia
        tibia = torch.minimum(_ellipsoid(q, *t["plateau"]), _tapered(q, *t["shaft"]))
        tibia = torch.minimum(tibia, _sphere(q, *t["malleolus"]))
        fibula = torch.minimum(_sphere(q, *self.fibula["head"]), _capsule(q, *self.fibula["shaft"]))
        patella = _ellipsoid(p, *self.patella)
        c, radius, thick = self.pelvis["cup"]
        above = p[..., 2] > -0.3 * radius  # the acetabulum covers the upper part of the head
        cup = torch.where(above, torch.abs(_sphere(p, c, radius + thick / 2)) - thick / 2, torch.tensor(1e3))
        ilium = _ellipsoid(p, *self.pelvis["ilium"])
        pelvis = torch.minimum(torch.minimum(cup, ilium),
                               torch.minimum(_capsule(p, *self.pelvis["pubis"]), _capsule(p, *self.pelvis["ischium"])))
        return {1: tibia, 2: femur, 3: fibula, 4: pelvis, 5: patella}

    def sample(self, points_mm: torch.Tensor):
        p = points_mm.float()
        limb = torch.minimum(_tapered(p, *self.thigh), _tapered(self._shank(p), *self.calf))
        limb = torch.minimum(limb, _ellipsoid(p, np.array([0, 0, 60.0]), (160.0, 110.0, 120.0)))
        tissue = torch.full(p.shape[:-1], AIR, dtype=torch.uint8)
        tissue[limb < 0] = FAT
        tissue[limb < -self.fat] = MUSCLE
        soft = tissue > 0
        for kind, tubes in ((VESSEL, self.vessels), (TENDON, self.tendons)):
            for a, b, radius in tubes:
                tissue[soft & (_capsule(p, a, b, radius) < 0)] = kind
        tissue[soft & (_capsule(self._shank(p), *self.calf_vessel) < 0)] = VESSEL
        owner = torch.zeros(p.shape[:-1], dtype=torch.uint8)
        for bone, sdf in self._bones(p).items():  # later bones win overlaps: pelvis, patella last
            inside = sdf < 0
            owner[inside] = bone
            tissue[inside] = torch.where(sdf[inside] > -CORTEX_MM, torch.tensor(CORTEX, dtype=torch.uint8),
                                         torch.tensor(MARROW[bone], dtype=torch.uint8))
        return tissue, owner


# --- rendering ------------------------------------------------------------------------------------------


def _rotation(rng, max_deg):
    from mskai.synth.phantom import rotation

    r = np.eye(3)
    for axis in np.eye(3):
        r = rotation(axis, rng.uniform(-max_deg, max_deg)) @ r
    return r


def _smooth_field(rng, shape, coarse=4, scale=1.0):
    field = torch.as_tensor(rng.normal(0, scale, (1, 1, coarse, coarse, coarse)), dtype=torch.float32)
    return F.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0]


def _blur_axis(image, axis, sigma_vox):
    if sigma_vox < 0.3:
        return image
    radius = int(np.ceil(3 * sigma_vox))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma_vox) ** 2)
    kernel /= kernel.sum()
    moved = image.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    out = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), kernel[None, None])
    return out.reshape(shape).movedim(-1, axis)


def sample_grid_points(shape, spacing, directions, centre, rng, max_rotation=15.0, scale=0.1, elastic_mm=3.0):
    """LPS points (…, 3) of a grid centred at ``centre`` after a random pose and elastic deformation."""
    spacing = np.asarray(spacing, dtype=float)
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    pose = _rotation(rng, max_rotation) * rng.uniform(1 - scale, 1 + scale)
    m = torch.as_tensor(pose @ np.asarray(directions) @ np.diag(spacing), dtype=torch.float32)
    points = ijk @ m.T + torch.as_tensor(centre, dtype=torch.float32)
    if elastic_mm > 0:
        disp = torch.stack([_smooth_field(rng, shape, coarse=5, scale=elastic_mm) for _ in range(3)], dim=-1)
        points = points + disp
    return points


def _tissue_means(rng) -> np.ndarray:
    """Random mean intensity per tissue within MR-plausible ranges.

    Cortical bone, tendons, ligaments and menisci have almost no signal in any sequence; fat and fatty
    marrow are bright unless fat-suppressed (then darker than muscle or fluid); vessels are bright or
    dark (flow); everything else varies widely, as across PD, T1, T2 and DESS protocols.
    """
    means = rng.uniform(0, 1, N_TISSUES - 1)  # every tissue but SACRUM_MARROW, the last
    fat = rng.uniform(0.02, 0.3) if rng.random() < 0.35 else rng.uniform(0.5, 1.0)  # fat-suppressed or not
    means[AIR] = rng.uniform(0, 0.06)
    means[CORTEX] = rng.uniform(0, 0.12)
    means[MENISCUS] = rng.uniform(0, 0.2)
    means[TENDON] = rng.uniform(0, 0.15)
    means[VESSEL] = rng.uniform(0, 0.15) if rng.random() < 0.4 else rng.uniform(0.4, 1.0)
    means[FAT] = fat
    means[MUSCLE] = rng.uniform(0.1, 0.55)
    means[CARTILAGE] = rng.uniform(0.2, 0.8)
    marrow = fat * rng.uniform(0.6, 1.1) if rng.random() < 0.8 else rng.uniform(0.1, 0.7)  # fatty or red marrow
    for tissue in (*MARROW.values(), OTHER_MARROW):
        if tissue != SACRUM_MARROW:
            means[tissue] = np.clip(marrow * rng.uniform(0.9, 1.1), 0, 1)
    return _with_sacrum(means)


def _with_sacrum(values: np.ndarray) -> np.ndarray:
    """Per-tissue values drawn for all tissues but SACRUM_MARROW, with its value copied from OTHER_MARROW."""
    return np.append(values, values[OTHER_MARROW])


def render(tissue: torch.Tensor, rng, spacing, fast: bool = False) -> torch.Tensor:
    """MR-like intensities for a tissue map: random contrast, texture, slice thickness, bias, gamma, noise."""
    means = torch.as_tensor(_tissue_means(rng), dtype=torch.float32)
    stds = torch.as_tensor(_with_sacrum(rng.uniform(0, 0.06, N_TISSUES - 1)), dtype=torch.float32)
    image = means[tissue.long()] + stds[tissue.long()] * torch.randn(tissue.shape, generator=_torch_rng(rng))
    image = image * (1 + _smooth_field(rng, tissue.shape, coarse=8, scale=0.08))  # tissue texture
    image = _blur_axis(_blur_axis(_blur_axis(image, 0, 0.5), 1, 0.5), 2, 0.5)  # partial volume
    if rng.random() < 0.7:  # thick slices along a random axis (anisotropic acquisitions)
        axis = int(rng.integers(3))
        thickness_mm = rng.uniform(1.0, 4.0) if rng.random() < 0.5 else rng.uniform(3.0, 5.0)
        image = _blur_axis(image, axis, thickness_mm / 2.355 / spacing[axis])
    if rng.random() < 0.3:  # Gibbs ringing along one axis: k-space truncation
        image = _ringing(image, int(rng.integers(3)), rng.uniform(0.3, 0.7))
    image = image * torch.exp(_smooth_field(rng, tissue.shape, coarse=4, scale=rng.uniform(0, 0.3)))
    image = image.clamp(min=0)
    image = image / image.max().clamp(min=1e-6)
    image = image ** float(np.exp(rng.normal(0, 0.25)))
    image = image + rng.uniform(0, 0.04) * torch.randn(image.shape, generator=_torch_rng(rng))
    return image


def _ringing(image: torch.Tensor, axis: int, keep: float) -> torch.Tensor:
    """Keep the central ``keep`` fraction of k-space along ``axis`` (a sharp cut rings at edges)."""
    spectrum = torch.fft.fftshift(torch.fft.fft(image, dim=axis), dim=axis)
    n = image.shape[axis]
    centre = torch.arange(n) - n // 2
    shape = [1, 1, 1]
    shape[axis] = n
    spectrum = spectrum * (centre.abs() <= keep * n / 2).reshape(shape)
    return torch.fft.ifft(torch.fft.ifftshift(spectrum, dim=axis), dim=axis).real


def _torch_rng(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


class SyntheticPatches(torch.utils.data.IterableDataset):
    """Endless random (image 1xPxPxP, labels PxPxP, labelled classes) training patches on the model grid.

    ``mixture``: (weight, make_source(rng), renew_every) per kind of shape source; each kind keeps one
    current source per worker and draws a new one every ``renew_every`` of its samples (new phantoms, other
    real subjects). ``labelled`` marks the classes the source annotates (its ``labelled`` attribute, else all):
    the loss leaves the others out.
    """

    def __init__(self, mixture, patch=64, spacing=1.0, seed=0):
        self.mixture, self.patch, self.spacing, self.seed = list(mixture), patch, float(spacing), seed

    def reseed(self, iteration: int):
        """A resumed run's stream: its own seed, from the first seed and the iteration it resumes at."""
        self.seed = self.seed * 1_000_003 + iteration

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + (info.id if info else 0) * 7919)
        weights = np.array([w for w, _, _ in self.mixture], dtype=float)
        current, used = [None] * len(self.mixture), [0] * len(self.mixture)
        while True:
            kind = int(rng.choice(len(self.mixture), p=weights / weights.sum()))
            _, make_source, renew_every = self.mixture[kind]
            if current[kind] is None or used[kind] >= renew_every:
                current[kind], used[kind] = make_source(rng), 0
            used[kind] += 1
            image, labels = make_sample(current[kind], rng, (self.patch,) * 3, (self.spacing,) * 3,
                                        directions=CANONICAL_RAS)
            yield image, labels, labelled_classes(current[kind])


def labelled_classes(source) -> torch.Tensor:
    """Bool per class (background first): which bones the source's label maps annotate."""
    labelled = getattr(source, "labelled", None)
    flags = torch.ones(len(MARROW) + 1, dtype=torch.bool)
    if labelled is not None:
        flags[1:] = torch.tensor([bone in labelled for bone in sorted(MARROW)])
    return flags


def make_sample(source, rng, shape, spacing, directions=np.eye(3), centre=None, supersample=1, with_tissue=False,
                **pose):
    """Render one case/patch: (image tensor 1 x shape, bone labels uint8 tensor shape[, tissue classes])."""
    from mskai import MskaiError
    from mskai.grid import normalise

    centre = source.random_centre(rng) if centre is None else centre
    fine_shape = tuple(n * supersample for n in shape)
    fine_spacing = np.asarray(spacing, dtype=float) / supersample
    points = sample_grid_points(fine_shape, fine_spacing, directions, centre, rng, **pose)
    tissue, owner = source.sample(points)
    image = render(tissue, rng, fine_spacing)
    image = F.avg_pool3d(image[None, None], supersample)[0, 0]
    labels = bone_labels_of(tissue, owner)
    onehot = F.one_hot(labels.long(), len(MARROW) + 1).permute(3, 0, 1, 2).float()
    labels = F.avg_pool3d(onehot[None], supersample)[0].argmax(0).to(torch.uint8)
    try:
        image = torch.as_tensor(normalise(image.numpy(), {"method": "percentile", "lower": 0.5, "upper": 99.5}))
    except MskaiError:  # a featureless patch
        image = torch.zeros_like(image)
    if with_tissue:
        return image[None], labels, tissue[tuple(slice(supersample // 2, None, supersample) for _ in range(3))]
    return image[None], labels


def synthetic_case(source, rng, spacing, extent_mm=(160.0, 160.0, 160.0), plane="sagittal", centre=None,
                   with_tissue=False):
    """A whole synthetic acquisition: (image Volume, bone label Volume[, tissue class Volume]) on one grid.

    The grid has the given voxel spacing and slice plane; the anatomy sits in it with a random pose
    and deformation. Labels are the bones at the voxel centres (no partial volume).
    """
    from mskai.synth.phantom import ORIENTATIONS, grid_affine
    from mskai.volume import Volume

    directions = ORIENTATIONS[plane]
    shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing))
    image, labels, *tissue = make_sample(source, rng, shape, spacing, directions=directions, centre=centre,
                                         with_tissue=with_tissue)
    affine = grid_affine(directions, spacing, -directions @ (np.asarray(spacing) * (np.array(shape) - 1) / 2))
    volume = Volume(np.rint(image[0].numpy() * 1000).astype(np.int16), affine, label="synthetic MR",
                    meta={"modality": "MR", "plane": plane})
    out = (volume, Volume(labels.numpy(), affine, label="bones"))
    return out + (Volume(tissue[0].numpy(), affine, label="tissues"),) if with_tissue else out
