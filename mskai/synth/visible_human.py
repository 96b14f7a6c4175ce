"""Patellae and fibulae of the Visible Human Female and Male (../shared/data/visible_human_knee, CC BY 4.0) as
shape sources: each surface is voxelised (VTK) and put in place of the patella or fibula of the bundled knee
label map, aligned by centroid and principal axes (the axis signs, mirror included, that overlap the bone it
replaces best), so that the network sees real patella and fibula shapes of other people in a whole knee.

Split by person: the Female (``VH_TRAIN``) is trained on, the Male (``VH_TEST``) only evaluated.
Cite: Andreassen T.E. et al., Scientific Data 2022, doi 10.1038/s41597-022-01905-2; keep ../shared/data/NOTICE.md
with anything derived from them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from mskai.synth import SHARED_DATA
from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, CORTEX, CORTEX_MM, MARROW, MUSCLE, KneeLabelSource

VH_DIR = SHARED_DATA / "visible_human_knee"
VH_TRAIN, VH_TEST = ("VHF",), ("VHM",)
SIDES = ("Left", "Right")
PATELLA, FIBULA = 5, 3  # bone labels of the model
VH_BONES = {PATELLA: "Patella", FIBULA: "Fibula"}
VOXEL_MM = 0.5


@lru_cache(maxsize=16)
def voxelised(path: str, spacing: float = VOXEL_MM) -> tuple[np.ndarray, np.ndarray]:
    """(bool mask, (N, 3) mm coordinates of its voxels) of a closed STL surface, voxelised at ``spacing``."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkSTLReader()
    reader.SetFileName(path)
    reader.Update()
    surface = reader.GetOutput()
    if surface.GetNumberOfPoints() == 0:
        raise ValueError(f"{Path(path).name}: no surface in the file")
    lo = np.array(surface.GetBounds()[::2]) - 2 * spacing
    dims = np.ceil((np.array(surface.GetBounds()[1::2]) + 2 * spacing - lo) / spacing).astype(int) + 1
    stencil = vtk.vtkPolyDataToImageStencil()
    stencil.SetInputData(surface)
    stencil.SetOutputOrigin(*lo)
    stencil.SetOutputSpacing(spacing, spacing, spacing)
    stencil.SetOutputWholeExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    image = vtk.vtkImageStencilToImage()
    image.SetInputConnection(stencil.GetOutputPort())
    image.SetInsideValue(1)
    image.SetOutsideValue(0)
    image.SetOutputScalarTypeToUnsignedChar()
    image.Update()
    mask = vtk_to_numpy(image.GetOutput().GetPointData().GetScalars()).reshape(dims[::-1]).transpose(2, 1, 0) > 0
    if mask.sum() < 100:
        raise ValueError(f"{Path(path).name}: the surface encloses no volume (not closed?)")
    return mask, lo + np.argwhere(mask) * spacing


def bone_points(person: str, side: str, bone: int, length_mm: float = 90.0, vh_dir: Path = VH_DIR) -> np.ndarray:
    """mm coordinates (person's frame) of one Visible Human patella or fibula; a fibula is cut to its proximal
    ``length_mm`` (from the end nearer that knee's patella), the part a knee scan sees."""
    points = voxelised(str(vh_dir / f"{person}_{side}_Bone_{VH_BONES[bone]}.stl"))[1]
    if bone == FIBULA:
        patella = voxelised(str(vh_dir / f"{person}_{side}_Bone_Patella.stl"))[1].mean(0)
        axis = _axes(points)[:, 0]
        t = (points - points.mean(0)) @ axis
        if (patella - points.mean(0)) @ axis < 0:
            t = -t  # the proximal end at t.max()
        points = points[t >= t.max() - length_mm]
    return points


def _axes(points: np.ndarray) -> np.ndarray:
    """Principal axes (columns, largest variance first)."""
    values, vectors = np.linalg.eigh(np.cov((points - points.mean(0)).T))
    return vectors[:, ::-1]


def _sign_flips():
    return [np.diag([a, b, c]) for a in (1, -1) for b in (1, -1) for c in (1, -1)]


@lru_cache(maxsize=4)
def visible_human_knee(person: str, side: str) -> "VisibleHumanKnee":
    """The bundled knee with ``person``'s patella and fibula of ``side`` (built once per process: ~20 s)."""
    return VisibleHumanKnee({PATELLA: (person, side), FIBULA: (person, side)})


class VisibleHumanKnee(KneeLabelSource):
    """The bundled knee label map with its patella and/or fibula replaced by those of a Visible Human person.

    ``replace``: {bone label: (person, side)}. The new bone keeps its own size and never overwrites another bone.
    """

    def __init__(self, replace: dict, path=BUNDLED_KNEE_LABELS, vh_dir: Path = VH_DIR):
        super().__init__(path)
        tissue, owner = self.tissue.numpy().copy(), self.owner.numpy().copy()
        spacing = np.linalg.norm(self.affine[:3, :3], axis=0)
        self.overlap = {}
        for bone, (person, side) in replace.items():
            old = owner == bone
            target = np.argwhere(old) @ self.affine[:3, :3].T + self.affine[:3, 3]  # the bone replaced, in mm
            length = 90.0
            if bone == FIBULA:  # the map holds the fibula's head only: take as much of the new one
                length = float(np.ptp((target - target.mean(0)) @ _axes(target)[:, 0]))
            new, self.overlap[bone] = self._placed(old, target, bone_points(person, side, bone, length, vh_dir))
            tissue[old & ~new], owner[old & ~new] = MUSCLE, 0
            new &= (owner == 0) | (owner == bone)
            depth = ndimage.distance_transform_edt(new, sampling=spacing)
            tissue[new] = np.where(depth[new] <= CORTEX_MM, CORTEX, MARROW[bone])
            owner[new] = bone
        self.tissue, self.owner = torch.from_numpy(tissue), torch.from_numpy(owner)
        self._finish()

    def _placed(self, old, target, points):
        """Bool mask on this map's grid of ``points`` moved onto the bone ``old`` (its voxels; ``target``: their mm
        coordinates), aligned by centroid and principal axes with the axis signs that overlap it best (Dice)."""
        ijk = np.argwhere(old)
        lo, hi = np.maximum(ijk.min(0) - 40, 0), np.minimum(ijk.max(0) + 40, np.array(old.shape) - 1)
        box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), -1)
        grid_mm = grid @ self.affine[:3, :3].T + self.affine[:3, 3]
        centre_new, centre_old = points.mean(0), target.mean(0)
        axes_new, axes_old = _axes(points), _axes(target)
        vh_mask, vh_lo = self._mask_of(points)
        old_box, best = old[box], None
        for flip in _sign_flips():
            rotation = axes_old @ flip @ axes_new.T  # new frame -> map frame
            idx = np.round(((grid_mm - centre_old) @ rotation + centre_new - vh_lo) / VOXEL_MM).astype(int)
            inside = np.all((idx >= 0) & (idx < vh_mask.shape), axis=-1)
            placed = np.zeros(old_box.shape, bool)
            placed[inside] = vh_mask[tuple(idx[inside].T)]
            dice = 2 * (placed & old_box).sum() / (placed.sum() + old.sum())
            if best is None or dice > best[0]:
                best = dice, placed
        mask = np.zeros(old.shape, bool)
        mask[box] = best[1]
        return mask, float(best[0])

    @staticmethod
    def _mask_of(points):
        lo = points.min(0)
        idx = np.round((points - lo) / VOXEL_MM).astype(int)
        mask = np.zeros(idx.max(0) + 1, bool)
        mask[tuple(idx.T)] = True
        return mask, lo
