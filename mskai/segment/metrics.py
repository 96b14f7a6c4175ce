"""Agreement of a segmentation with a reference, per bone: Dice, volume error, HD95, average surface distance."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mskai import MskaiError
from mskai.segment.labels import BONES
from mskai.volume import Volume


def on_grid_of(reference: Volume, target: Volume) -> np.ndarray:
    """``reference`` labels resampled (nearest neighbour) onto ``target``'s grid; no-op when the grids match."""
    if reference.shape == target.shape and np.allclose(reference.affine_lps, target.affine_lps, atol=1e-3):
        return np.asarray(reference.array)
    # target voxel -> reference voxel
    m = np.linalg.inv(reference.affine_lps) @ target.affine_lps
    return ndimage.affine_transform(np.asarray(reference.array), m[:3, :3], offset=m[:3, 3], output_shape=target.shape,
                                    order=0, mode="grid-constant", cval=0).astype(np.uint8)


def label_counts(labels: Volume) -> np.ndarray:
    """Voxels per label value (0-255) of a uint8 label map."""
    return np.bincount(np.asarray(labels.array, dtype=np.uint8).reshape(-1), minlength=256)


def inside_counts(labels: Volume, grid: Volume, chunk: int = 16) -> np.ndarray:
    """Per label value: how many of its voxels have their centre inside ``grid``'s field of view."""
    to_grid = np.linalg.inv(grid.affine_lps) @ labels.affine_lps
    upper = np.array(grid.shape) - 0.5
    array = np.asarray(labels.array, dtype=np.uint8)
    inside = np.zeros(256, dtype=np.int64)
    for k0 in range(0, array.shape[2], chunk):  # in slabs: the voxel list of a whole limb would be large
        i, j, k = np.nonzero(array[:, :, k0:k0 + chunk])
        ijk = np.stack([i, j, k + k0], axis=1) @ to_grid[:3, :3].T + to_grid[:3, 3]
        ok = np.all((ijk >= -0.5) & (ijk < upper), axis=1)
        inside += np.bincount(array[i[ok], j[ok], k[ok] + k0], minlength=256)
    return inside


def evaluate(prediction: Volume, reference: Volume, table=BONES) -> list[dict]:
    """Per label: Dice, volumes (mL) and their difference, HD95 and symmetric average surface distance (mm).

    Overlap is measured on the prediction's grid (the reference is resampled onto it); volumes are
    measured on each side's own grid. Each row says which fraction of the reference's and of the
    prediction's voxels lie inside the other's field of view (``reference_inside``, ``prediction_inside``):
    below 1 the pair only partly overlaps and Dice covers the overlap only. A pair whose labels do not
    overlap the other's grid at all is refused. Distances come from MONAI's metrics with the real voxel
    spacing; labels absent from both are reported with NaN, absent from one side with Dice 0 and infinite
    distances.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    pred = np.asarray(prediction.array)
    values = [label.value for label in table]
    pred_total, ref_total = label_counts(prediction)[values], label_counts(reference)[values]
    pred_inside, ref_inside = inside_counts(prediction, reference)[values], inside_counts(reference, prediction)[values]
    if (pred_total.any() or ref_total.any()) and not (pred_inside.any() or ref_inside.any()):
        raise MskaiError("The segmentation and the reference do not overlap: no labelled voxel of either lies in the "
                         "other's field of view (shifted, another field of view, or another frame of reference)")
    ref = on_grid_of(reference, prediction)
    spacing = [float(s) for s in prediction.spacing]
    voxel_ml = float(abs(np.linalg.det(prediction.affine_lps[:3, :3]))) / 1000.0
    ref_voxel_ml = float(abs(np.linalg.det(reference.affine_lps[:3, :3]))) / 1000.0
    rows = []
    for n, label in enumerate(table):
        p, r = pred == label.value, ref == label.value
        np_, nr = int(p.sum()), int(r.sum())
        pred_ml, ref_ml = pred_total[n] * voxel_ml, ref_total[n] * ref_voxel_ml
        row = {"value": label.value, "name": label.name, "volume_ml": round(pred_ml, 3),
               "reference_volume_ml": round(ref_ml, 3), "volume_error_ml": round(pred_ml - ref_ml, 3),
               "reference_inside": round(ref_inside[n] / ref_total[n], 4) if ref_total[n] else None,
               "prediction_inside": round(pred_inside[n] / pred_total[n], 4) if pred_total[n] else None}
        if np_ + nr == 0:
            row.update(dice=float("nan"), hd95_mm=float("nan"), asd_mm=float("nan"))
        elif np_ == 0 or nr == 0:
            row.update(dice=0.0, hd95_mm=float("inf"), asd_mm=float("inf"))
        else:
            row["dice"] = round(2.0 * int(np.logical_and(p, r).sum()) / (np_ + nr), 4)
            box = ndimage.find_objects((p | r).astype(np.uint8))[0]
            box = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in box)
            import torch

            yp = torch.from_numpy(np.stack([~p[box], p[box]])[None].astype(np.float32))
            yr = torch.from_numpy(np.stack([~r[box], r[box]])[None].astype(np.float32))
            row["hd95_mm"] = round(float(compute_hausdorff_distance(yp, yr, percentile=95, spacing=spacing)[0, 0]), 3)
            row["asd_mm"] = round(float(compute_average_surface_distance(yp, yr, symmetric=True,
                                                                         spacing=spacing)[0, 0]), 3)
        rows.append(row)
    return rows
