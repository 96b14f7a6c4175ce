"""Tear signs of the anterior cruciate ligament, measured as a radiologist reads them, from a knee segmentation
(ACL, PCL, femur, tibia) and the image.

The masks are resampled into the knee frame of ``mskai.acl.landmarks`` (x: LPS x, y: anterior, z: superior;
``FRAME_MM`` voxels), where the intercondylar notch, its roof (the Blumensaat line), the tibial plateau and the
ACL's expected femoral and tibial footprints are found from the bones alone. Then, per knee:

- continuity: the ACL's pieces and the share of its largest one; along the straight line from the femoral to
  the tibial footprint, the share covered by ACL (``coverage``) and the longest stretch with none (``gap_mm``);
- size: volume (mL), length along its main axis, both relative to the knee (PCL volume, footprint distance);
- orientation in the sagittal plane: the angle between the ACL and the Blumensaat line (near parallel when
  intact), and against the tibial plateau (steeper when intact, flatter when torn or sagging);
- signal: the ACL's median intensity over the PCL's (a torn, oedematous ACL is bright; the PCL stays dark);
- empty notch: the share of the ACL's corridor in the middle of the notch that holds ligament.

A knee where the notch, the footprints or the PCL cannot be found gets no signs: ``SignsUnavailable`` says why
(the classifier then says "indeterminate").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mskai.volume import Volume

FRAME_MM = 0.6
CORRIDOR_MM = 6.0  # ACL voxels this close to the footprint line count for coverage and gaps
NOTCH_CORE_MM = 3.0  # the empty-notch corridor's radius, over the middle 60 % of the footprint line
END_MM = 3.0  # footprints are estimates: the first and last few mm of the line are not scored for gaps
MIN_PCL_ML = 0.3
SIGN_NAMES = ("acl_volume_ml", "pcl_volume_ml", "acl_to_pcl_volume", "acl_pieces", "acl_largest_share",
              "coverage", "gap_mm", "acl_length_mm", "length_to_footprints", "footprint_distance_mm",
              "angle_to_blumensaat_deg", "angle_to_plateau_deg", "signal_to_pcl", "notch_fill")


class SignsUnavailable(ValueError):
    """The knee's signs cannot be measured (no notch, no PCL...): the message is the reason."""


def _frame_grid(masks: dict, affine_lps: np.ndarray, z_range_mm=(-45.0, 55.0)):
    """(affine frame IJK -> LPS, shape): the knee frame around the femur's lowest point, FRAME_MM voxels."""
    femur = np.argwhere(masks["femur"])
    if len(femur) < 100 or not masks["tibia"].any():
        raise SignsUnavailable("no femur and tibia in the segmentation")
    bones = np.argwhere(masks["femur"] | masks["tibia"])[::7]
    lps = bones @ affine_lps[:3, :3].T + affine_lps[:3, 3]
    femur_lps = femur[::7] @ affine_lps[:3, :3].T + affine_lps[:3, 3]
    bottom = np.percentile(femur_lps[:, 2], 0.5)
    lo = np.array([lps[:, 0].min(), -lps[:, 1].max(), bottom + z_range_mm[0]]) - 2
    hi = np.array([lps[:, 0].max(), -lps[:, 1].min(), bottom + z_range_mm[1]]) + 2
    frame = np.eye(4)
    frame[:3, :3] = np.diag([1.0, -1.0, 1.0]) * FRAME_MM  # frame y is anterior: LPS -y
    frame[:3, 3] = [lo[0], -lo[1], lo[2]]
    shape = tuple(int(np.ceil(n)) for n in (hi - lo) / FRAME_MM)
    return frame, shape


def _resampled(mask: np.ndarray, affine_lps: np.ndarray, frame: np.ndarray, shape) -> np.ndarray:
    """A bool mask (on ``affine_lps``) on the frame grid: linear interpolation, half full or more (smooth edges
    across thick slices, where nearest neighbour would leave steps of a slice's thickness)."""
    to_source = np.linalg.inv(affine_lps) @ frame
    return ndimage.affine_transform(mask.astype(np.float32), to_source[:3, :3], to_source[:3, 3], output_shape=shape,
                                    order=1, mode="constant", cval=0.0) >= 0.5


def _main_piece(mask: np.ndarray) -> np.ndarray:
    """A bone's largest connected piece with its holes filled: a segmentation's specks and dark-marrow holes must not
    move its lowest point or open a false notch."""
    pieces, n = ndimage.label(mask)
    if n > 1:
        mask = pieces == 1 + int(np.argmax(ndimage.sum_labels(mask, pieces, range(1, n + 1))))
    return ndimage.binary_fill_holes(mask)


def _line_fit(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Unit direction (y, z) of the least-squares line through points, pointing anterior (+y)."""
    slope = np.polyfit(y, z, 1)[0] if len(y) > 1 and np.ptp(y) > 0 else 0.0
    d = np.array([1.0, slope])
    return d / np.linalg.norm(d)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees, 0-90) between two undirected lines."""
    c = abs(float(a @ b)) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-9)
    return float(np.degrees(np.arccos(min(c, 1.0))))


def _plateau_direction(lm: dict) -> np.ndarray:
    """Sagittal direction (y, z) of the tibial plateau: its top under the condyles, per AP column."""
    zt = lm["tibial_top"]
    sp = FRAME_MM
    x = np.arange(zt.shape[0]) * sp
    under = np.abs(x - lm["notch_x"]) > 8.0
    y0, y1 = lm["plateau_y"]
    cols = np.arange(int(y0 / sp), int(y1 / sp) + 1)
    top = [np.nanmedian(zt[under, j]) if np.isfinite(zt[under, j]).any() else np.nan for j in cols]
    top = np.asarray(top)
    near = np.isfinite(top) & (top > lm["plateau_z"] - 6)  # the plateau, not the slopes at its rim
    if near.sum() < 5:
        return np.array([1.0, 0.0])
    return _line_fit(cols[near] * sp, top[near])


def _blumensaat_direction(lm: dict) -> np.ndarray:
    roof = lm["roof"]
    j = np.array(sorted(roof))
    return _line_fit(j * FRAME_MM, np.array([roof[k] for k in j]))


def _coverage(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> dict:
    """Coverage, longest gap (mm) and corridor fill of ACL points along the footprint line start -> end."""
    length = float(np.linalg.norm(end - start))
    u = (end - start) / length
    t = (points - start) @ u
    dist = np.linalg.norm(points - start - t[:, None] * u, axis=1)
    bins = np.zeros(max(int(np.ceil(length)), 1), dtype=bool)  # 1 mm bins
    inside = (dist <= CORRIDOR_MM) & (t >= 0) & (t < length)
    bins[np.clip(t[inside].astype(int), 0, len(bins) - 1)] = True
    scored = bins[int(END_MM):max(len(bins) - int(END_MM), int(END_MM) + 1)]
    gap = run = 0
    for filled in scored:
        run = 0 if filled else run + 1
        gap = max(gap, run)
    core = (dist <= NOTCH_CORE_MM) & (t >= 0.2 * length) & (t <= 0.8 * length)
    core_mm3 = np.pi * NOTCH_CORE_MM ** 2 * 0.6 * length
    return {"coverage": float(scored.mean()) if len(scored) else 0.0, "gap_mm": float(gap),
            "notch_fill": float(min(1.0, core.sum() * FRAME_MM ** 3 / core_mm3)), "footprint_distance_mm": length}


def _main_axis(points: np.ndarray) -> tuple:
    """(unit direction, extent mm) of a point cloud along its first principal axis."""
    centred = points - points.mean(0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 5000)], full_matrices=False)
    along = centred @ vt[0]
    return vt[0], float(np.ptp(along)) + FRAME_MM


def tear_signs(masks: dict, affine_lps: np.ndarray, image: np.ndarray | None = None) -> dict:
    """The ACL's tear signs (``SIGN_NAMES``, plain floats) and the landmarks used (knee frame mm, ``"frame"``:
    its IJK -> LPS affine), from bool masks "acl", "pcl", "femur", "tibia" on one grid (``affine_lps``) and the
    image on that grid (for the signal; None leaves ``signal_to_pcl`` out). Raises SignsUnavailable."""
    from mskai.acl.landmarks import knee_landmarks

    voxel_ml = abs(float(np.linalg.det(affine_lps[:3, :3]))) / 1000.0
    acl_ml, pcl_ml = masks["acl"].sum() * voxel_ml, masks["pcl"].sum() * voxel_ml
    if pcl_ml < MIN_PCL_ML:
        raise SignsUnavailable(f"no posterior cruciate ligament found ({pcl_ml:.2f} mL): not a readable knee")
    frame, shape = _frame_grid(masks, affine_lps)
    femur, tibia, acl = (_resampled(masks[name], affine_lps, frame, shape) for name in ("femur", "tibia", "acl"))
    femur, tibia = _main_piece(femur), _main_piece(tibia)
    try:
        lm = knee_landmarks(femur, tibia, (FRAME_MM,) * 3, max_hits=None)
    except (ValueError, IndexError) as exc:
        raise SignsUnavailable(f"the knee's landmarks were not found: {exc}") from None
    signs = {"acl_volume_ml": float(acl_ml), "pcl_volume_ml": float(pcl_ml),
             "acl_to_pcl_volume": float(acl_ml / pcl_ml)}
    pieces, n = ndimage.label(acl, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum_labels(acl, pieces, range(1, n + 1)) if n else np.zeros(0)
    signs["acl_pieces"] = float(np.sum(sizes * FRAME_MM ** 3 >= 5.0))  # pieces of at least 5 mm^3
    signs["acl_largest_share"] = float(sizes.max() / sizes.sum()) if n else 0.0
    points = np.argwhere(acl) * FRAME_MM
    signs.update(_coverage(points, lm["acl_femur"], lm["acl_tibia"]))
    blumensaat, plateau = _blumensaat_direction(lm), _plateau_direction(lm)
    if n:
        largest = np.argwhere(pieces == 1 + int(np.argmax(sizes))) * FRAME_MM
        axis, extent = _main_axis(largest)
        sagittal = axis[1:] if np.linalg.norm(axis[1:]) > 1e-6 else np.array([1.0, 0.0])
        signs.update({"acl_length_mm": extent, "length_to_footprints": extent / signs["footprint_distance_mm"],
                      "angle_to_blumensaat_deg": _angle(sagittal, blumensaat),
                      "angle_to_plateau_deg": _angle(sagittal, plateau)})
    else:  # no ligament at all: lengths 0, orientation that of a fallen stump (flat on the plateau)
        signs.update({"acl_length_mm": 0.0, "length_to_footprints": 0.0,
                      "angle_to_blumensaat_deg": _angle(plateau, blumensaat), "angle_to_plateau_deg": 0.0})
    if image is not None:
        pcl_signal = float(np.median(image[masks["pcl"]]))
        acl_signal = float(np.median(image[masks["acl"]])) if masks["acl"].any() else pcl_signal
        signs["signal_to_pcl"] = acl_signal / max(abs(pcl_signal), 1e-6)
    landmarks = {"frame": frame, "acl_femur": lm["acl_femur"], "acl_tibia": lm["acl_tibia"],
                 "blumensaat": _blumensaat_points(lm), "lateral": lm["lateral"]}
    return {"signs": {k: round(float(signs[k]), 4) for k in SIGN_NAMES if k in signs}, "landmarks": landmarks}


def _blumensaat_points(lm: dict) -> np.ndarray:
    """The roof line's two ends (knee frame mm, at the notch centre): a markup for the viewer."""
    roof = lm["roof"]
    j = np.array(sorted(roof))
    y, z = j * FRAME_MM, np.array([roof[k] for k in j])
    slope, intercept = np.polyfit(y, z, 1) if len(y) > 1 and np.ptp(y) > 0 else (0.0, z[0])
    return np.array([[lm["notch_x"], end, intercept + slope * end] for end in (y[0], y[-1])])


def frame_to_lps(frame: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Knee-frame mm points (N, 3) in patient LPS mm."""
    ijk = np.asarray(points_mm, dtype=float) / FRAME_MM
    return ijk @ frame[:3, :3].T + frame[:3, 3]


def signs_of_volume(labels: Volume, image: Volume | None, values: dict) -> dict:
    """``tear_signs`` of a label map Volume; ``values``: label value of "acl", "pcl", "femur", "tibia"."""
    masks = {name: np.asarray(labels.array) == value for name, value in values.items()}
    return tear_signs(masks, labels.affine_lps, None if image is None else np.asarray(image.array, dtype=np.float32))
