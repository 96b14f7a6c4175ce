"""Real bone shapes for synthetic training: the OAI femur + tibia masks (../shared/data/oai_knee_bone_masks).

Each mask holds femur and tibia as one label; ``split_femur_tibia`` separates them (erosion until the
mask falls apart, then nearest piece). ``RealKneeSource`` turns such a bone label map into a tissue map
(cortex, marrow, joint cartilage, a muscle and fat envelope, air) that renders through
``synthseg.make_sample`` / ``synthetic_case`` like ``KneeLabelSource``; ``cached_split`` loads and splits a file.
Data: Apache-2.0 (wilsonkchung/knee-osteoarthritis-classification-using-bone-distance), OAI images (NIH);
keep ../shared/data/NOTICE.md with anything derived from them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mskai.segment.labels import BONE_VALUES
from mskai.synth.synthseg import (AIR, CARTILAGE, CORTEX, CORTEX_MM, FAT, MARROW, MUSCLE, OTHER, TENDON, VESSEL,
                                  TissueMapSource)

TIBIA, FEMUR = BONE_VALUES["tibia"], BONE_VALUES["femur"]
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_oai_mask(path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 mask, 4x4 voxel->RAS affine) of one OAI knee; axes are LR, AP, IS."""
    import nibabel as nib

    image = nib.load(str(path))
    return (np.asarray(image.dataobj) > 0).astype(np.uint8), np.asarray(image.affine, dtype=float)


def spacing_of(affine) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def _largest(mask: np.ndarray) -> np.ndarray:
    comps, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool)
    return comps == 1 + int(np.argmax(ndimage.sum_labels(mask, comps, range(1, n + 1))))


def _seeds(bone: np.ndarray, depth: np.ndarray, min_fraction: float = 0.1):
    """The two largest pieces left when the mask is eroded just enough to fall apart (depth > t mm)."""
    total = bone.sum()
    for t in np.arange(0.0, depth.max(), 0.5):
        comps, n = ndimage.label(depth > t)
        if n < 2:
            continue
        sizes = ndimage.sum_labels(np.ones_like(bone), comps, range(1, n + 1))
        first, second = 1 + np.argsort(sizes)[::-1][:2]
        if sizes[second - 1] >= min_fraction * total:
            return comps == first, comps == second
    raise ValueError("the femur + tibia mask does not fall apart into two bones")


def split_femur_tibia(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Femur (2) and tibia (1) from a joint femur + tibia mask with axes (LR, AP, IS, superior last).

    The mask first gets a 3-slice majority vote across the sagittal slices (the network's slice-to-slice
    jitter) and loses debris (pieces under 1 % of it or under 20 mm wide, like the streaks at its left and
    right ends). It is then eroded (a threshold on its distance transform) just until it falls apart into
    two large pieces, the upper one the femur; every voxel goes to its nearest piece, which cuts the
    bridges where the bones touch. Each bone keeps its largest connected piece, enclosed holes filled.
    """
    spacing_mm = np.asarray(spacing_mm, dtype=float)
    mask = ndimage.median_filter((mask > 0).astype(np.uint8), size=(3, 1, 1))  # 3-slice majority: slice jitter
    comps, n = ndimage.label(mask)
    sizes = ndimage.sum_labels(mask, comps, range(1, n + 1))
    width = np.array([(b[0].stop - b[0].start) * spacing_mm[0] for b in ndimage.find_objects(comps)])
    bone = np.isin(comps, 1 + np.nonzero((sizes >= 0.01 * sizes.sum()) & (width >= 20))[0])  # drop debris
    depth = ndimage.distance_transform_edt(bone, sampling=spacing_mm)
    a, b = _seeds(bone, depth)
    if np.nonzero(a)[2].mean() < np.nonzero(b)[2].mean():
        a, b = b, a
    seeds = np.where(a, FEMUR, np.where(b, TIBIA, 0)).astype(np.uint8)
    nearest = ndimage.distance_transform_edt(seeds == 0, sampling=spacing_mm, return_distances=False,
                                             return_indices=True)
    flooded = np.where(bone, seeds[tuple(nearest)], 0)
    labels = np.zeros(bone.shape, dtype=np.uint8)
    for value in (TIBIA, FEMUR):
        labels[_largest(bone & (flooded == value))] = value
    for value in (TIBIA, FEMUR):  # cavities the network left inside a bone
        labels[ndimage.binary_fill_holes(labels == value) & (labels == 0)] = value
    return labels


def split_quality(labels: np.ndarray) -> dict:
    """Plausibility numbers of a split: voxel fractions, superior centroids, main-component fractions."""
    total = max(int((labels > 0).sum()), 1)
    out = {}
    for name, value in (("tibia", TIBIA), ("femur", FEMUR)):
        mask = labels == value
        count = int(mask.sum())
        out[f"{name}_fraction"] = count / total
        out[f"{name}_z"] = float(np.nonzero(mask)[2].mean()) if count else float("nan")
        out[f"{name}_main"] = float(_largest(mask).sum()) / count if count else 0.0
    out["ok"] = bool(out["femur_z"] > out["tibia_z"] and all(0.25 <= out[f"{b}_fraction"] <= 0.75
                                                             and out[f"{b}_main"] >= 0.95 for b in ("tibia", "femur")))
    return out


# --- subjects ------------------------------------------------------------------------------------------


def oai_subjects(folder) -> list[str]:
    """Sorted subject ids (file names without .nii.gz) of an OAI mask folder."""
    return sorted(p.name[: -len(".nii.gz")] for p in Path(folder).glob("*.nii.gz"))


def split_subjects(ids, n_test: int = 30, n_val: int = 10, seed: int = 0) -> dict:
    """Deterministic disjoint train/val/test lists; an id's set depends only on the ids and the seed."""
    ids = sorted(set(ids))
    if n_test + n_val > len(ids):
        raise ValueError(f"{len(ids)} subjects cannot give {n_test} test and {n_val} validation cases")
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return {"train": sorted(order[n_test + n_val:]), "val": sorted(order[n_test:n_test + n_val]),
            "test": sorted(order[:n_test])}


# --- shape source --------------------------------------------------------------------------------------


def _ball(radius_mm: float, spacing) -> np.ndarray:
    """Ellipsoidal footprint of voxel offsets within ``radius_mm``."""
    r = [int(radius_mm // s) for s in spacing]
    grid = np.meshgrid(*[np.arange(-n, n + 1) * s for n, s in zip(r, spacing)], indexing="ij")
    return sum(g**2 for g in grid) <= radius_mm**2


def _grow(box, by, shape):
    return tuple(slice(max(0, b.start - by), min(n, b.stop + by)) for b, n in zip(box, shape))


class RealKneeSource(TissueMapSource):
    """A real bone label map (e.g. split OAI femur + tibia; axes LR, AP, IS) as a synthseg shape source.

    Bones get a cortex rim and their marrow class; the joint space between them gets cartilage and fluid;
    a random envelope of muscle (thicker behind the knee) and subcutaneous fat surrounds them, with air
    beyond. Along the superior axis the map is cut ``trim_mm`` inside the bones' ragged ends and its end
    slices continue beyond it (the shafts go on). ``labelled`` holds the bone labels present: other bones
    (patella, fibula) are not annotated here and belong out of the loss, not taught as absent.
    """

    def __init__(self, labels: np.ndarray, spacing_mm, affine_ras=None, rng=None, trim_mm: float = 4.0):
        rng = np.random.default_rng(0) if rng is None else rng
        spacing = np.asarray(spacing_mm, dtype=float)
        affine = np.diag([*spacing, 1.0]) if affine_ras is None else np.asarray(affine_ras, dtype=float)
        if not np.array_equal(np.abs(affine[:3, :3]).argmax(0), [0, 1, 2]):
            raise ValueError("the label map's axes must run left-right, anterior-posterior, inferior-superior")
        labels = np.asarray(labels, dtype=np.uint8)
        self.labelled = {int(v) for v in np.unique(labels) if v}
        if not self.labelled <= set(MARROW):
            raise ValueError(f"unknown bone labels {sorted(self.labelled - set(MARROW))}")
        back, muscle, fat = rng.uniform(15, 35), rng.uniform(8, 20), rng.uniform(4, 15)
        box = list(ndimage.find_objects((labels > 0).astype(np.uint8))[0])
        cut = int(round(trim_mm / spacing[2]))
        box[2] = slice(box[2].start + cut, box[2].stop - cut)
        pad = [int(np.ceil((back + muscle + fat + 5) / s)) for s in spacing[:2]]
        labels = np.pad(labels[tuple(box)], [(pad[0], pad[0]), (pad[1], pad[1]), (0, 0)])
        n = int(CORTEX_MM // spacing[2]) + 1  # clean end slabs of n + 1 equal slices: they repeat beyond the map
        labels[:, :, :n + 1] = self._clean_slice(labels[:, :, n])[:, :, None]
        labels[:, :, -n - 1:] = self._clean_slice(labels[:, :, -n - 1])[:, :, None]
        shift = np.eye(4)
        shift[:3, 3] = [box[0].start - pad[0], box[1].start - pad[1], box[2].start]
        self.affine = RAS_TO_LPS @ affine @ shift
        tissue = self._soft_tissue(labels > 0, spacing, rng.uniform(1.5, 3.0), back, muscle, fat)
        self._vessels_and_tendons(tissue, labels > 0, spacing, rng)
        ball = _ball(CORTEX_MM, spacing)
        for bone, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None:
                continue
            found = _grow(found, max(ball.shape), labels.shape)
            mask = labels[found] == bone
            rim = mask & ~ndimage.binary_erosion(mask, ball, border_value=1)
            tissue[found][mask] = np.where(rim[mask], CORTEX, MARROW[bone])
        self.tissue = torch.from_numpy(tissue)
        self.owner = torch.from_numpy(labels)
        self._finish()

    @staticmethod
    def _clean_slice(section: np.ndarray) -> np.ndarray:
        """Each bone's largest 2D piece, holes filled and spurs opened."""
        out = np.zeros_like(section)
        for bone in np.unique(section[section > 0]):
            mask = ndimage.binary_opening(ndimage.binary_fill_holes(section == bone), iterations=2)
            if mask.any():
                out[_largest(mask)] = bone
        return out

    @staticmethod
    def _soft_tissue(bone: np.ndarray, spacing, cartilage_mm, back_mm, muscle_mm, fat_mm) -> np.ndarray:
        """Tissue classes around the bones: joint cartilage and fluid, muscle, fat, air."""
        along_s = lambda n_mm: max(1, int(round(n_mm / spacing[2])))  # noqa: E731
        tissue = np.full(bone.shape, AIR, dtype=np.uint8)
        # limb cross-section: bone shadow over 40 mm of height, swept posteriorly (popliteal fossa, calf);
        # its in-plane distance (huge superior spacing) on a grid halved in-plane, smoothed (no steps)
        shadow = ndimage.maximum_filter1d(bone, along_s(40), axis=2)
        back = int(round(back_mm / spacing[1]))
        shadow = ndimage.maximum_filter1d(shadow, back + 1, axis=1, origin=back // 2)
        coarse = ndimage.distance_transform_edt(~shadow[::2, ::2], sampling=(spacing[0] * 2, spacing[1] * 2, 1e3))
        coarse = ndimage.gaussian_filter(coarse, (1.0, 1.0, 6.0 / spacing[2]))
        dist = coarse[np.ix_(np.arange(bone.shape[0]) // 2, np.arange(bone.shape[1]) // 2, np.arange(bone.shape[2]))]
        tissue[dist <= muscle_mm + fat_mm] = FAT
        tissue[dist <= muscle_mm] = MUSCLE
        # the joint space: gaps between bone above and below within 12 mm; cartilage next to the bone
        joint = ndimage.binary_closing(bone, np.ones((1, 1, along_s(12)), dtype=bool)) & ~bone
        found = ndimage.find_objects(joint.astype(np.uint8))
        if found:
            ball = _ball(cartilage_mm, spacing)
            box = _grow(found[0], max(ball.shape), bone.shape)
            tissue[box][joint[box]] = OTHER
            near = joint[box] & ndimage.binary_dilation(bone[box], ball)
            tissue[box][near] = CARTILAGE
        return tissue

    @staticmethod
    def _vessels_and_tendons(tissue: np.ndarray, bone: np.ndarray, spacing, rng):
        """Tubes along the superior axis through the soft tissue (axes LR, AP with anterior up, IS).

        The popliteal artery and vein behind the bones, the patellar tendon in front, and two or three
        hamstring tendons at the posterior corners, each over a random part of the height.
        """
        x, y = (np.nonzero(bone.any(axis=2))[i] * spacing[i] for i in (0, 1))
        grid = np.meshgrid(np.arange(bone.shape[0]) * spacing[0], np.arange(bone.shape[1]) * spacing[1], indexing="ij")
        soft = (tissue == MUSCLE) | (tissue == FAT)
        n = bone.shape[2]

        def tube(cx, cy, rx, ry, kind, length=1.0):
            z0 = int(rng.uniform(0, 1 - length) * n)
            inside = ((grid[0] - cx) / rx) ** 2 + ((grid[1] - cy) / ry) ** 2 <= 1
            block = tissue[:, :, z0:z0 + max(1, int(length * n))]
            block[inside[:, :, None] & soft[:, :, z0:z0 + block.shape[2]]] = kind

        behind, middle = y.min() - rng.uniform(6, 16), x.mean() + rng.uniform(-8, 8)
        gap = rng.uniform(6, 10) * rng.choice([-1, 1])
        for dx, r in ((0.0, rng.uniform(2.5, 4.0)), (gap, rng.uniform(3.0, 5.0))):  # artery, vein
            tube(middle + dx, behind, r, r, VESSEL)
        tube(x.mean() + rng.uniform(-5, 5), y.max() + rng.uniform(2, 5), rng.uniform(8, 14), rng.uniform(2, 3),
             TENDON, rng.uniform(0.3, 0.6))
        for _ in range(rng.integers(2, 4)):
            side = x.min() + rng.uniform(0, 12) if rng.random() < 0.5 else x.max() - rng.uniform(0, 12)
            r = rng.uniform(1.5, 3.0)
            tube(side, y.min() - rng.uniform(2, 12), r, r, TENDON, rng.uniform(0.3, 0.8))


def cached_split(path, cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """(femur/tibia labels, affine) of one OAI mask, split once and kept in ``cache_dir`` (.npz) when given."""
    path = Path(path)
    cache = Path(cache_dir) / f"{path.name[:-len('.nii.gz')]}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            return stored["labels"], stored["affine"]
    mask, affine = load_oai_mask(path)
    labels = split_femur_tibia(mask, spacing_of(affine))
    if cache is not None:
        from mskai.outputs import atomic_output

        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(cache) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, labels=labels, affine=affine)
    return labels, affine


# The manually corrected PD knee of ../shared/data/knee_pd_sagittal_label (BSD-3, hmc-humble/patellar-instability-skm)
PD_KNEE_BONES = {1: FEMUR, 2: 5, 3: TIBIA}  # its femur, patella, tibia -> the label table's values


def load_pd_knee(path, slice_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(bone labels in the label table's values, voxel->RAS affine) of the PD knee map, axes turned to LR, AP, IS.

    Its 4 mm sagittal slices are interpolated to ``slice_mm`` (linear per label, then the most likely label),
    so renders in other planes show bones, not 4 mm steps.
    """
    import nibabel as nib

    from mskai.volume_files import read_volume_file

    volume = read_volume_file(path)
    data, affine = np.asarray(volume.array), RAS_TO_LPS @ volume.affine_lps  # LPS -> RAS (the same flip both ways)
    orientation = nib.orientations.io_orientation(affine)
    labels = np.zeros(data.shape, dtype=np.uint8)
    for value, bone in PD_KNEE_BONES.items():
        labels[data == value] = bone
    turned = nib.orientations.apply_orientation(labels, orientation)
    affine = affine @ nib.orientations.inv_ornt_aff(orientation, data.shape)
    factor, before = spacing_of(affine)[0] / slice_mm, turned.shape[0]
    if factor > 1:
        values = np.arange(turned.max() + 1)
        scores = [ndimage.zoom((turned == v).astype(np.float32), (factor, 1, 1), order=1) for v in values]
        turned = values[np.argmax(scores, axis=0)].astype(np.uint8)
        affine = affine @ np.diag([(before - 1) / (turned.shape[0] - 1), 1.0, 1.0, 1.0])  # zoom keeps end voxels
    return np.ascontiguousarray(turned), affine
