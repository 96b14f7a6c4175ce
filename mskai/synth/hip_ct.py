"""Real hip shapes of 30 more people: label maps of the hip region from CT (proximal femurs, hip bones, sacrum).

Data: ../shared/data/hip_ct_labels (MICCAI2022-155/AuToSeg predictions, MIT License; a published model's outputs,
not manual masks: small holes, specks and fused joints occur). ``clean_hip_labels`` keeps each bone's largest piece
and fills its holes; ``HipCTSource`` turns a cleaned map into the encoding of ``real_pelves.RealPelvisSource`` (hip
bone, femur, sacrum: its own class, never hip bone) with muscles grown around the bones, so that the same
soft tissue, vessels and legs (``RealHipLimb``) apply. People are split before anything else (``HIP_CT_SPLIT``):
the test people are never trained on. Keep ../shared/data/NOTICE.md with anything derived from them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from mskai.synth import SHARED_DATA
from mskai.synth.real_pelves import FEMUR, FIRST_MUSCLE, HIP_BONE, SACRUM, RealPelvisSource, _smooth_noise

HIP_CT_FOLDER = SHARED_DATA / "hip_ct_labels"
# the files' values -> RealPelvisSource's: 1, 2 proximal femurs; 3, 4 hip bones; 5 sacrum
TO_PELVIS = {1: FEMUR, 2: FEMUR, 3: HIP_BONE, 4: HIP_BONE, 5: SACRUM}
MIN_PIECE_FRACTION = 0.05  # a second piece of a bone this large (of the largest) is kept: a bone cut by the map
# People left out after looking at the contact sheet (scripts/hip_ct_contact_sheet.py), with the reason.
EXCLUDED: dict[str, str] = {}
N_TEST, N_VAL = 7, 3
MUSCLE_MM = (20.0, 45.0)  # thickness of the muscle grown around the bones (then fat, skin)


def hip_ct_subjects(folder=HIP_CT_FOLDER) -> list[str]:
    """Ids (file names without hip_ and .nii.gz) of the hip CT label maps, sorted; EXCLUDED left out."""
    names = sorted(p.name[len("hip_"):-len(".nii.gz")] for p in Path(folder).glob("hip_*.nii.gz"))
    return [n for n in names if n not in EXCLUDED]


def hip_ct_split(folder=HIP_CT_FOLDER) -> dict:
    """{"train", "val", "test"}: people by a hash of their id (``split_subjects``), fixed before any training."""
    from mskai.synth.real_shapes import split_subjects

    return split_subjects(hip_ct_subjects(folder), n_test=N_TEST, n_val=N_VAL, seed=2026)


def load_hip_ct(subject: str, folder=HIP_CT_FOLDER):
    """(labels uint8 in the closest RAS axes, RAS affine) of one person."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(Path(folder) / f"hip_{subject}.nii.gz")))
    return np.asarray(image.dataobj, dtype=np.uint8), image.affine


def clean_hip_labels(labels: np.ndarray, spacing) -> tuple[np.ndarray, dict]:
    """Each bone's largest piece (and pieces of at least MIN_PIECE_FRACTION of it), holes filled; specks go to
    background. Returns (cleaned labels, {label: {"dropped_ml", "filled_ml", "pieces"}})."""
    voxel_ml = float(np.prod(spacing)) / 1000
    out = np.zeros_like(labels)
    notes = {}
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            notes[str(value)] = {"missing": True}
            continue
        box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
        mask = labels[box] == value
        pieces, n = ndimage.label(mask)
        sizes = np.bincount(pieces.ravel())[1:]
        keep = np.isin(pieces, 1 + np.nonzero(sizes >= MIN_PIECE_FRACTION * sizes.max())[0])
        filled = ndimage.binary_fill_holes(keep)
        region = out[box]
        region[filled & (region == 0)] = value
        notes[str(value)] = {"pieces": int(n), "dropped_ml": round(float(sizes.sum() - keep.sum()) * voxel_ml, 2),
                             "filled_ml": round(float(filled.sum() - keep.sum()) * voxel_ml, 2)}
    return out, notes


@lru_cache(maxsize=4)
def _cleaned(subject: str, folder: str):
    labels, affine = load_hip_ct(subject, folder)
    return clean_hip_labels(labels, np.linalg.norm(affine[:3, :3], axis=0))[0], affine


def _grow_muscles(labels: np.ndarray, spacing, rng) -> np.ndarray:
    """Muscle groups around the bones, 20-45 mm thick with a smooth random margin: each soft-tissue voxel within
    reach gets a muscle value by its nearest bone (hip bones, femurs, sacrum: fat septa show between groups)."""
    step = 2
    coarse = labels[::step, ::step, ::step]
    sp = np.asarray(spacing) * step
    distance, nearest = ndimage.distance_transform_edt(coarse == 0, sampling=sp, return_indices=True)
    owner = coarse[tuple(nearest)]
    low, high = MUSCLE_MM
    reach = rng.uniform(low, high) * np.exp(0.25 * _smooth_noise(rng, coarse.shape, sp, 60.0))
    group = np.where((coarse == 0) & (distance <= reach), FIRST_MUSCLE + owner, 0).astype(np.uint8)
    side = np.arange(coarse.shape[0])[:, None, None] >= coarse.shape[0] // 2  # left and right groups differ
    group[(group > 0) & side] += 4
    full = group[np.ix_(*[np.minimum(np.arange(n) // step, c - 1) for n, c in zip(labels.shape, coarse.shape)])]
    return np.where(labels > 0, labels, full)


class HipCTSource(RealPelvisSource):
    """One person of the hip CT label maps as a synthseg shape source, in RealPelvisSource's encoding and with its
    soft tissue (muscles grown around the bones here: the maps have none). Sides mirrored at random."""

    def __init__(self, subject: str, rng=None, folder=HIP_CT_FOLDER):
        import nibabel as nib

        rng = np.random.default_rng(0) if rng is None else rng
        cleaned, affine = _cleaned(subject, str(folder))
        labels = np.zeros_like(cleaned)
        for value, target in TO_PELVIS.items():
            labels[cleaned == value] = target
        if rng.random() < 0.5:
            labels = labels[::-1].copy()
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        pad = [int(np.ceil((MUSCLE_MM[1] * 1.4 + 10) / s)) for s in spacing[:2]]
        labels = np.pad(labels, [(pad[0], pad[0]), (pad[1], pad[1]), (0, 0)])
        shift = np.eye(4)
        shift[:3, 3] = [-pad[0], -pad[1], 0]
        labels = _grow_muscles(labels, spacing, rng)
        super().__init__(subject, rng, image=nib.Nifti1Image(labels, affine @ shift))
