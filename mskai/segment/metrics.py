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


def evaluate(prediction: Volume, reference: Volume, table=BONES) -> list[dict]:
    """Per label: Dice, volumes (mL) and their difference, HD95 and symmetric average surface distance (mm).

    Distances come from MONAI's metrics with the real voxel spacing; labels absent from both are
    reported with NaN, absent from one side with Dice 0 and infinite distances.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    pred = np.asarray(prediction.array)
    ref = on_grid_of(reference, prediction)
    if pred.shape != ref.shape:
        raise MskaiError(f"Segmentation {pred.shape} and reference {ref.shape} are on different grids")
    spacing = [float(s) for s in prediction.spacing]
    voxel_ml = float(abs(np.linalg.det(prediction.affine_lps[:3, :3]))) / 1000.0
    rows = []
    for label in table:
        p, r = pred == label.value, ref == label.value
        np_, nr = int(p.sum()), int(r.sum())
        row = {"value": label.value, "name": label.name, "volume_ml": round(np_ * voxel_ml, 3),
               "reference_volume_ml": round(nr * voxel_ml, 3), "volume_error_ml": round((np_ - nr) * voxel_ml, 3)}
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
