"""Training data for the knee ligament network (``mskai.acl.ligaments``): sagittal slices of synthetic knees with
graded ACLs (``mskai.synth.acl_knee``) and their masks, on the slice grids the network reads, augmented by
in-plane rotation, zoom and shift. Subjects come from one OAI split only (train / val / test never mix)."""

from __future__ import annotations

import numpy as np
import torch

from mskai.acl.ligaments import LIGAMENT_VALUES, labels_on_slices, ligament_label_map, slice_stack


def case_slices(grade: int, rng: np.random.Generator, subjects, augment: bool = True):
    """(images n x C x S x S, labels n x S x S) of the slices of one synthetic knee that hold femur or tibia."""
    from mskai.synth.acl_knee import synthetic_acl_knee

    volume, masks = synthetic_acl_knee(grade, rng, subjects=list(subjects), with_masks=True)
    labels = ligament_label_map(masks)
    if augment:
        pose = {"scale": float(rng.uniform(0.85, 1.15)), "angle": float(np.radians(rng.uniform(-15, 15))),
                "shift_mm": tuple(rng.uniform(-12, 12, 3))}
    else:
        pose = {}
    images, grids, _ = slice_stack(volume, **pose)
    slice_labels = labels_on_slices(labels, grids)
    keep = (slice_labels > 0).any((1, 2))
    return images[keep], slice_labels[keep]


class LigamentSlices(torch.utils.data.IterableDataset):
    """Endless (image C x S x S, labels S x S) slices: each worker keeps a pool of recent knees (a new one every
    ``renew_every`` samples) and draws slices from it, those with a ligament twice as often."""

    def __init__(self, subjects, seed: int = 0, pool: int = 8, renew_every: int = 24):
        self.subjects, self.seed, self.pool, self.renew_every = list(subjects), seed, pool, renew_every

    def reseed(self, iteration: int):
        self.seed = self.seed * 1_000_003 + iteration

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + (info.id if info else 0) * 7919)
        cases, served = [], 0
        while True:
            if len(cases) < self.pool or served >= self.renew_every:
                cases = (cases + [case_slices(int(rng.integers(4)), rng, self.subjects)])[-self.pool:]
                served = 0
            images, labels = cases[int(rng.integers(len(cases)))]
            ligament = ((labels == LIGAMENT_VALUES["acl"]) | (labels == LIGAMENT_VALUES["pcl"])).any((1, 2))
            weights = np.where(ligament, 2.0, 1.0)
            k = int(rng.choice(len(labels), p=weights / weights.sum()))
            image = images[k]
            if rng.random() < 0.5:  # contrast: gamma and noise beyond the generator's own
                image = np.clip(image, 0, None) ** float(np.exp(rng.normal(0, 0.2)))
            served += 1
            yield torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(labels[k].astype(np.int64))


def validation_slices(subjects, n_cases: int = 8, seed: int = 10_000, per_case: int = 4) -> list:
    """Fixed slices of ``n_cases`` knees (grades in turn), the ``per_case`` with the most ligament first."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cases):
        images, labels = case_slices(i % 4, rng, subjects, augment=False)
        amount = ((labels == LIGAMENT_VALUES["acl"]) | (labels == LIGAMENT_VALUES["pcl"])).sum((1, 2))
        for k in np.argsort(-amount, kind="stable")[:per_case]:
            out.append((torch.from_numpy(images[k]), torch.from_numpy(labels[k].astype(np.int64))))
    return out
