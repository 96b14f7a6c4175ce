"""One synthetic knee case and its series: what is drawn per case (subject, side, pose, ligaments, fluid, the
acquisition of each plane: ``draw_case``), the rendering of a series (``acquire``), and the entry points
``synthetic_acl_knee`` and ``write_acl_study``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mskai.acl import GRADES, to_binary  # the task's one class table
from mskai.synth.acl_knee.geometry import _box, _box_points, _rotation
from mskai.synth.acl_knee.knee_model import OAI_FOLDER, acl_shape_subjects, anatomy
from mskai.synth.acl_knee.ligaments import Blob, Piece, _acl_pieces, _length, _pcl_pieces
from mskai.synth.acl_knee.tissues import (AIR, ARTERY, BONES, CARTILAGE, CORTEX_F, FAT, FLUID, MENISCUS, MUSCLE,
                                          N_TISSUES, PLANE_AXES, PROTOCOL_WEIGHTS, PROTOCOLS, SKIN, TENDON, VEIN,
                                          KneeAnatomy)
from mskai.synth.visible_human import VH_TEST, VH_TRAIN
from mskai.volume import Volume

SUB = 3  # samples across each slice's thickness


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


def _check_grade(grade):
    if isinstance(grade, bool) or int(grade) != grade or not 0 <= int(grade) < len(GRADES):
        raise ValueError(f"grade must be 0..{len(GRADES) - 1} ({', '.join(GRADES)}), not {grade!r}")


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
    people = VH_TEST if anat.subject in acl_shape_subjects("test", shape_folder) else VH_TRAIN
    pcl = _pcl_pieces(anat, g_lig, people)
    acl, blobs = _acl_pieces(anat, grade, g_lig, g_lesion, people)
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
    w = _grid_to_anatomy(case, acq)
    ni, nj, nk = acq.shape
    offsets = (np.arange(SUB) - (SUB - 1) / 2) / SUB * acq.thickness / acq.spacing[2]  # in slice steps
    crop = _crop(anat, w, acq.shape, offsets)
    tissue, wet = _filled_tissue(anat, crop, case.effusion)
    tissue_t = torch.from_numpy(tissue)
    image, labels = _painted(case, acq, tissue_t, crop, with_masks)
    grid = _sampling_grid(w, crop, tissue.shape, acq.shape, offsets)
    sampled = F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    volume = _scanner_effects(sampled[0, 0].reshape(nk, SUB, nj, ni).mean(1), acq)
    array = np.rint(volume.permute(2, 1, 0).numpy() * 1000).clip(0, 32767).astype(np.int16)
    out = Volume(array, acq.affine_lps, label=f"synthetic {plane} knee",
                 meta={"modality": "MR", "plane": plane, "protocol": acq.protocol,
                       "series_description": f"SYNTHETIC {acq.protocol} {plane} knee",
                       "grade": case.grade, "grade_name": GRADES[case.grade], "torn": to_binary(case.grade),
                       "side": case.side, "subject": anat.subject})
    if not with_masks:
        return out
    return out, _masks(labels, tissue_t, wet, grid, acq.shape)


def _crop(anat: KneeAnatomy, w, shape, offsets) -> tuple:
    """The anatomy voxels (slices) a series' grid (``w``: its voxel -> anatomy voxel) reaches, with a margin."""
    ni, nj, nk = shape
    corners = np.array([[i, j, k, 1.0] for i in (0, ni - 1) for j in (0, nj - 1)
                        for k in (offsets[0], nk - 1 + offsets[-1])]) @ w.T
    lo = np.maximum(np.floor(corners[:, :3].min(0)).astype(int) - 2, 0)
    hi = np.minimum(np.ceil(corners[:, :3].max(0)).astype(int) + 3, anat.tissue.shape)
    return tuple(slice(int(a), int(max(b, a + 2))) for a, b in zip(lo, hi))


def _filled_tissue(anat: KneeAnatomy, crop, effusion: float):
    """The cropped tissue map with the recesses of the effusion filled with fluid, and where they were filled."""
    tissue = np.array(anat.tissue[crop])
    wet = np.zeros(tissue.shape, dtype=bool)
    index, levels = anat.recesses()
    level = int(round(effusion * 254))
    fills = np.unravel_index(index[levels <= level], anat.tissue.shape)
    inside = np.all([(f >= c.start) & (f < c.stop) for f, c in zip(fills, crop)], axis=0)
    local_fill = tuple(f[inside] - c.start for f, c in zip(fills, crop))
    tissue[local_fill] = FLUID
    wet[local_fill] = True
    return tissue, wet


def _painted(case: KneeCase, acq: Acquisition, tissue_t, crop, with_masks: bool):
    """The tissue means of the contrast with the fluid blobs and ligament pieces painted over them (outside
    bone), and their labels (1 ACL, 2 PCL, 3 fluid) with ``with_masks``, else None."""
    anat = case.anatomy
    sp = anat.spacing
    image = _textured(torch.as_tensor(acq.means, dtype=torch.float32), tissue_t, sp, acq.seed)
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
    return image, labels


def _field(shape, spacing, grain_mm, gen) -> torch.Tensor:
    """A smooth random field of about unit spread with about ``grain_mm`` between its extremes (per axis, or one)."""
    grain = np.broadcast_to(np.asarray(grain_mm, dtype=float), (3,))
    coarse = [max(2, int(np.ceil(n * s / g)) + 1) for n, s, g in zip(shape, spacing, grain)]
    f = F.interpolate(torch.randn(coarse, generator=gen)[None, None], size=tuple(shape), mode="trilinear",
                      align_corners=True)[0, 0]
    return f.div_(f[::4, ::4, ::4].std().clamp(min=1e-6))


def _textured(means: torch.Tensor, tissue_t: torch.Tensor, spacing, seed: int) -> torch.Tensor:
    """The tissue means per voxel with the texture real knees show (anatomy axes LR, AP, IS): a fine grain in bone
    marrow, muscle, fat, cartilage, menisci and tendons; muscle striated along the limb; a random network of
    trabeculae in the marrow (towards cortex), fat septa in muscle (towards fat) and septa in fat (towards tendon).
    Its own random stream (``seed``), so nothing else drawn for the case changes."""
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand(1, generator=gen))  # noqa: E731
    marrows = [m for _, m in BONES.values()]
    grain, striae = torch.zeros(N_TISSUES), torch.zeros(N_TISSUES)
    grain[marrows], grain[MUSCLE], grain[FAT] = u(0.05, 0.14), u(0.04, 0.10), u(0.02, 0.06)
    grain[[CARTILAGE, MENISCUS, TENDON]] = u(0.02, 0.06)
    striae[MUSCLE] = u(0.03, 0.08)
    width, towards, weight = torch.zeros(N_TISSUES), means.clone(), torch.zeros(N_TISSUES)
    for kinds, target in ((marrows, CORTEX_F), ([MUSCLE], FAT), ([FAT], TENDON)):
        width[kinds], towards[kinds], weight[kinds] = u(0.08, 0.16), means[target], u(0.2, 0.6)
    t, shape = tissue_t.long(), tissue_t.shape
    image = means[t] * (1 + grain[t] * _field(shape, spacing, 1.2, gen).clamp_(-2.5, 2.5)
                        + striae[t] * _field(shape, spacing, (2.0, 2.0, 12.0), gen).clamp_(-2.5, 2.5))
    network = (_field(shape, spacing, 4.0, gen).abs_() < width[t]) * weight[t]
    return image.add_((towards[t] - image).mul_(network))


def _sampling_grid(w, crop, crop_shape, shape, offsets) -> torch.Tensor:
    """grid_sample's grid: the series' points (slice sub-samples, rows, columns) in normalised crop coordinates.

    One affine from output voxel to grid_sample's normalised crop coordinates, rows in (z, y, x) order.
    """
    ni, nj, nk = shape
    to_crop = np.eye(4)
    to_crop[:3, 3] = -np.array([c.start for c in crop], dtype=float)
    scale = 2 / np.maximum(np.array(crop_shape, dtype=float) - 1, 1)
    norm = np.diag([*scale, 1.0])
    norm[:3, 3] = -1
    wt = torch.as_tensor((norm @ to_crop @ w)[[2, 1, 0]], dtype=torch.float32)
    ks = torch.as_tensor((np.arange(nk)[:, None] + offsets[None, :]).ravel(), dtype=torch.float32)
    grid = ((wt[:, 3] + ks[:, None, None, None] * wt[:, 2]) + torch.arange(nj, dtype=torch.float32)[None, :, None, None]
            * wt[:, 1]) + torch.arange(ni, dtype=torch.float32)[None, None, :, None] * wt[:, 0]
    return grid[None]


def _scanner_effects(volume: torch.Tensor, acq: Acquisition) -> torch.Tensor:
    """Bias field, tissue texture and Rician noise on the sampled (k, j, i) volume."""
    nk, nj, ni = volume.shape
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
    return torch.sqrt(real**2 + imag**2)


def _masks(labels, tissue_t, wet, grid, shape) -> dict:
    """The series' masks: acl, pcl, femur, tibia at the slice centres, fluid in any part of a voxel's slab."""
    ni, nj, nk = shape
    centre = grid[:, (SUB - 1) // 2::SUB] if SUB > 1 else grid
    kinds = torch.zeros(N_TISSUES, dtype=torch.uint8)
    kinds[list(BONES["femur"])] = 1
    kinds[list(BONES["tibia"])] = 2
    maps = torch.stack([labels, kinds[tissue_t.long()]])
    near = F.grid_sample(maps[None].float(), centre, mode="nearest", padding_mode="border", align_corners=True)[0]
    near = near.permute(0, 3, 2, 1).numpy().astype(np.uint8)
    fluid = (torch.from_numpy(wet) | (labels == 3)).float()[None, None]  # fluid in any part of the voxel's slab
    fluid = F.grid_sample(fluid, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
    fluid = fluid.reshape(nk, SUB, nj, ni).amax(1).permute(2, 1, 0).numpy() > 0.05
    return {"acl": near[0] == 1, "pcl": near[0] == 2, "femur": near[1] == 1, "tibia": near[1] == 2,
            "fluid": fluid}


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
    refuses them). The folder is replaced as a whole (``mskai.outputs.output_folder``). Returns {plane: [paths]}.
    """
    from pydicom.uid import generate_uid

    from mskai.outputs import output_folder
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
