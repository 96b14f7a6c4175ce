"""Landmarks read from a knee's femur and tibia masks: the lateral side, the intercondylar notch (its roof: the
Blumensaat line), the joint line, the tibial plateau, and the attachments of the cruciate ligaments.

Masks are on a grid in the knee frame (axes LR, AP with anterior +, IS; ``spacing`` in mm, origin at voxel 0):
the synthetic knee generator builds its ligaments from them, and the tear signs measure a segmentation with them.
"""

import numpy as np
from scipy import ndimage


def sagittal_normal(direction) -> np.ndarray:
    """Unit vector in the sagittal plane, across ``direction`` (x is left-right)."""
    n = np.cross(direction, [1.0, 0.0, 0.0])
    return n / max(np.linalg.norm(n), 1e-9)


def lateral_side(femur: np.ndarray, tibia: np.ndarray, spacing, notch_x: float) -> int:
    """+1 when the lateral condyle lies towards +x (axis 0), else -1: read from the bone shapes.

    Three cues, each checked on the pymskt right knee (its fibula marks the lateral side) and agreeing with
    each other on most OAI knees: the femoral shaft leans laterally above the knee (valgus), the medial
    condyle reaches lower (the lateral one ends higher), and the plateau cross-section 4-7 mm below the
    tibia's top is larger on the lateral side (the medial plateau is concave, cut less).
    """
    sp = np.asarray(spacing, dtype=float)
    xc = int(round(notch_x / sp[0]))
    fz = np.nonzero(femur.any((0, 1)))[0]
    top = femur[:, :, fz.max() - int(15 / sp[2]):fz.max() + 1]
    shaft = (np.nonzero(top)[0].mean() - xc) * sp[0]
    tz = np.nonzero(tibia.any((0, 1)))[0].max()
    slab = np.nonzero(tibia[:, :, tz - int(7 / sp[2]):tz - int(4 / sp[2])])[0]
    area = ((slab > xc).sum() - (slab < xc).sum()) / max(len(slab), 1)

    def bottom(mask):
        found = np.nonzero(mask.any((0, 1)))[0]
        return found.min() * sp[2] if len(found) else np.nan

    higher = bottom(femur[xc + 3:]) - bottom(femur[:max(xc - 3, 1)])
    score = np.nansum([shaft / 5.0, area / 0.3, higher / 3.0])
    return 1 if score >= 0 else -1


def notch_landmarks(femur: np.ndarray, tibia: np.ndarray, spacing) -> dict:
    """Intercondylar notch, joint line and tibial plateau of a knee (axes LR, AP with anterior +, IS), in mm.

    The notch centre is where the hull of axial femur sections 6-15 mm above its lowest point has its largest
    gap; per coronal section (each y) the roof is the femur's lowest point at that centre, the condyles the
    lowest points either side; the notch runs over the sections where the roof lies over 5 mm above both
    condyles (its posterior end is where the Blumensaat line meets the posterior cortex).
    """
    from skimage.morphology import convex_hull_image

    sp = np.asarray(spacing, dtype=float)
    fz = np.nonzero(femur.any((0, 1)))[0]
    bottom = fz.min()
    centres = []
    for dz in (6.0, 9.0, 12.0, 15.0):
        section = femur[:, :, bottom + int(round(dz / sp[2]))]
        if section.sum() < 50:
            continue
        gap = ndimage.binary_opening(convex_hull_image(section) & ~section, iterations=2)
        comps, n = ndimage.label(gap)
        if n:
            biggest = comps == 1 + int(np.argmax(ndimage.sum_labels(gap, comps, range(1, n + 1))))
            centres.append(np.nonzero(biggest)[0].mean())
    if not centres:
        raise ValueError("no intercondylar notch found")
    xc = float(np.median(centres))
    has = femur.any(2)
    zb = np.where(has, femur.argmax(2), np.nan).astype(float) * sp[2]  # lowest femur point per (x, y), mm
    x = np.arange(femur.shape[0])
    mid = np.abs(x * sp[0] - xc * sp[0]) <= 2.0
    side_a, side_b = x * sp[0] < xc * sp[0] - 4, x * sp[0] > xc * sp[0] + 4
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            roof = np.nanmedian(zb[mid], axis=0)
            cond_a, cond_b = np.nanmin(zb[side_a], axis=0), np.nanmin(zb[side_b], axis=0)
    depth = roof - np.maximum(cond_a, cond_b)
    low = bottom * sp[2] + 30.0  # condyles: within 30 mm of the femur's lowest point
    valid = np.isfinite(depth) & (cond_a < low) & (cond_b < low)
    if not valid.any() or np.nanmax(np.where(valid, depth, np.nan)) < 8:
        raise ValueError("no intercondylar notch found")
    ok = valid & (depth > max(6.0, 0.35 * np.nanmax(np.where(valid, depth, np.nan))))
    comps, n = ndimage.label(ok)
    run = np.nonzero(comps == 1 + int(np.argmax(ndimage.sum_labels(ok, comps, range(1, n + 1)))))[0]
    if (run[-1] - run[0]) * sp[1] < 5:
        raise ValueError("the intercondylar notch is implausibly short")
    zt = np.where(tibia.any(2), tibia.shape[2] - 1 - tibia[:, :, ::-1].argmax(2), np.nan) * sp[2]  # tibial top
    under = has & tibia.any(2) & ~(np.abs(x * sp[0] - xc * sp[0]) <= 8)[:, None]  # under the condyles
    plateau = float(np.nanmedian(zt[under])) if under.any() else float(np.nanmax(zt))
    front = np.nonzero(np.any(zt > plateau - 4, axis=0))[0]  # the plateau's AP extent (all columns)
    if len(front) < 5:
        raise ValueError("no tibial plateau under the notch")
    return {
        "notch_x": xc * sp[0],
        "roof": {int(j): float(roof[j]) for j in run},
        "condyle_a": {int(j): float(cond_a[j]) for j in run},
        "condyle_b": {int(j): float(cond_b[j]) for j in run},
        "notch_y": (run[0] * sp[1], run[-1] * sp[1]),
        "femur_bottom": bottom * sp[2],
        "plateau_z": plateau,
        "plateau_y": (front.min() * sp[1], front.max() * sp[1]),
        "tibial_top": zt,
    }


def knee_landmarks(femur: np.ndarray, tibia: np.ndarray, spacing, max_hits: int | None = 12) -> dict:
    """``notch_landmarks``, the lateral side (``"lateral"``: +1 or -1) and the cruciates' attachments of a knee.

    max_hits: bone samples the straight ACL may cross (the generator refuses knees needing more); None takes the
    freest path there is (measuring a segmentation, whose bones may reach into the notch)."""
    lm = notch_landmarks(femur, tibia, spacing)
    lateral = lateral_side(femur, tibia, spacing, lm["notch_x"])
    lm["lateral"] = lateral
    lm.update(_attachments(femur, tibia, spacing, lm, lateral, max_hits))
    return lm


def _wall_x(femur, sp, x_mm, y_mm, z_mm, towards: int) -> float:
    """x (mm) of the first femur voxel met going from x_mm towards +x (1) or -x (-1) at (y, z)."""
    j, k = int(round(y_mm / sp[1])), int(round(z_mm / sp[2]))
    row = femur[:, j, k]
    i0 = int(round(x_mm / sp[0]))
    idx = np.arange(i0, len(row)) if towards > 0 else np.arange(i0, -1, -1)
    hit = idx[row[idx]]
    return float(hit[0] * sp[0]) if len(hit) else float(x_mm + towards * 9.0)


def _attachments(femur, tibia, sp, lm, lateral, max_hits=12) -> dict:
    """Attachment centres (mm) of the ACL and the PCL on this knee."""
    y0, y1 = lm["notch_y"]
    xc = lm["notch_x"]

    def roof_at(y):
        keys = np.array(sorted(lm["roof"]))
        j = keys[np.argmin(np.abs(keys * sp[1] - y))]
        return lm["roof"][int(j)], min(lm["condyle_a"][int(j)], lm["condyle_b"][int(j)])

    # tibia: anterior intercondylar area, ~40 % of the plateau's depth behind its anterior edge.
    # femur: inner wall of the lateral condyle near the posterior end of the roof (Blumensaat line). The pair
    # whose straight band crosses the least bone is taken (in extension the ACL lies just under the roof),
    # preferring the highest femoral point; bone still in the way (segmentation errors of the masks, up to a
    # few samples) is carved away by build_anatomy, knees needing more are refused.
    ty0, ty1 = lm["plateau_y"]
    roof, cond = roof_at(y0)
    bones = femur | tibia
    tibials = []
    for fraction in (0.42, 0.36, 0.48):
        for shift in (1.5, 3.0, 0.0):
            x_t, y_t = xc - lateral * shift, ty1 - fraction * (ty1 - ty0)
            tibials.append(np.array([x_t, y_t, _top_at(lm["tibial_top"], sp, x_t, y_t, lm["plateau_z"])]))
    best, best_cost = None, np.inf
    for z_f in np.arange(roof - 1.5, cond + 0.25 * (roof - cond), -1.0):
        for y_f in (y0 - 1.5, y0 - 4.0, y0 + 1.0, y0 - 6.5, y0 + 3.5):
            x_f = _wall_x(femur, sp, xc, y_f, z_f, lateral) - lateral * 1.0
            if lateral * (x_f - xc) < 2.5:
                continue
            point = np.array([x_f, y_f, z_f])
            for tib in tibials:
                d = point - tib
                if not 18 <= np.linalg.norm(d) <= 40 or not 35 <= np.degrees(np.arctan2(d[2], abs(d[1]))) <= 75:
                    continue  # the ACL is 30-38 mm long, 45-60 degrees to the plateau in extension
                cost = _segment_hits(bones, sp, point, tib, 1.8)
                if cost < best_cost:
                    best, best_cost = (point, tib), cost
        if best_cost == 0:
            break
    if best is None or (max_hits is not None and best_cost > max_hits):
        raise ValueError("no free path for the ACL through this knee's notch")
    acl_f, tib = best
    # PCL: inner wall of the medial condyle, anterior part of the notch; posterior tibia below the plateau
    y_pf = y1 - 0.3 * (y1 - y0)
    roof, cond = roof_at(y_pf)
    z_pf = roof - 0.4 * (roof - cond)
    x_pf = _wall_x(femur, sp, xc, y_pf, z_pf, -lateral) + lateral * 1.0
    z_pt = lm["plateau_z"] - 9.0
    row = tibia[int(round(xc / sp[0])), :, int(round(z_pt / sp[2]))]
    y_pt = (np.nonzero(row)[0].min() * sp[1] + 1.0) if row.any() else ty0
    return {"acl_femur": acl_f, "acl_tibia": tib,
            "pcl_femur": np.array([x_pf, y_pf, z_pf]), "pcl_tibia": np.array([xc, y_pt, z_pt])}


def _segment_hits(bone, sp, a, b, half, skip=0.12) -> int:
    """Bone samples on the straight band a -> b (its axis and edges ``half`` mm either side), ends excepted."""
    d = np.asarray(b, dtype=float) - a
    t = d / np.linalg.norm(d)
    n = sagittal_normal(t)
    m = np.cross(t, n)
    pts = a + np.linspace(skip, 1 - skip, 16)[:, None] * d
    pts = (pts[None] + np.stack([0 * n, n * half, -n * half, m * half, -m * half])[:, None]).reshape(-1, 3)
    idx = np.clip(np.rint(pts / sp).astype(int), 0, np.array(bone.shape) - 1)
    return int(bone[idx[:, 0], idx[:, 1], idx[:, 2]].sum())


def _top_at(zt, sp, x, y, default):
    i, j = int(round(x / sp[0])), int(round(y / sp[1]))
    block = zt[max(i - 2, 0):i + 3, max(j - 2, 0):j + 3]
    return float(np.nanmax(block)) if np.isfinite(block).any() else float(default)
