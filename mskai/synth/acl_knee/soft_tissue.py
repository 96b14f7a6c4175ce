"""The soft tissue of the knee model, in build order: tendons, the body outline (skin, fat, muscle), the
popliteal fossa, the fat of the joint and the notch, the anterior fat pads, the popliteal vessels, cartilage and
menisci, and the recesses that fill with joint fluid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mskai.synth.acl_knee.bones import KneeDraft
from mskai.synth.acl_knee.geometry import Band, _bezier, _box, _box_points, _edt, _edt_near
from mskai.synth.acl_knee.tissues import (AIR, ARTERY, CARTILAGE, FAT, MENISCUS, MUSCLE, NEVER, SKIN, TENDON,
                                          VEIN)


@dataclass
class Tendons:
    """The patellar and quadriceps tendons (mask) and the points the fat pads and the suprapatellar pouch follow."""

    mask: np.ndarray
    lower: np.ndarray  # the patella's lower pole (mm)
    upper: np.ndarray  # its upper pole
    tub: np.ndarray  # the tibial tuberosity
    gap_q: float  # gap between the femur's front and the quadriceps tendon
    quad_half: float  # half the quadriceps tendon's thickness
    top: float  # z (mm) above the grid where the quadriceps tendon ends
    quad_front: np.ndarray  # y (mm) of the femur's front per z, in the quadriceps tendon's column
    z_step: float  # the grid's z spacing

    def quad_y(self, z):
        """y (mm) of the quadriceps tendon's axis at height z."""
        return self.quad_front[min(int(round(z / self.z_step)), len(self.quad_front) - 1)] + self.gap_q + self.quad_half


@dataclass
class Joint:
    """The box around the joint and the distances (mm) to the femur and the patella in it."""

    box: tuple
    d_femur: np.ndarray
    d_patella: np.ndarray
    femoral_cartilage: float  # its thickness (mm)


def _tendons(knee: KneeDraft, rng) -> Tendons:
    """Patellar (lower pole -> tibial tuberosity) and quadriceps (upper pole, upwards) tendons, off the bones."""
    sp, shape = knee.sp, knee.shape
    pts = knee.patella_points
    lower = pts[pts[:, 2] <= pts[:, 2].min() + 3].mean(0)
    upper = pts[pts[:, 2] >= pts[:, 2].max() - 3].mean(0)
    tz = knee.zj - rng.uniform(22, 30)
    k = int(round(tz / sp[2]))
    cols = knee.tibia[int(round((lower[0]) / sp[0])), :, k]
    tub = np.array([lower[0], (np.nonzero(cols)[0].max() * sp[1] if cols.any() else knee.lm["plateau_y"][1]) + 1.5,
                    tz])
    tendon_t = rng.uniform(2.0, 3.0)
    patellar = Band(_bezier([lower + [0, 2, 3], (lower + tub) / 2 + [0, 1.5, 0], tub], 12),
                    np.full(12, tendon_t), np.linspace(12, 14, 12) * rng.uniform(0.9, 1.1), 0.5)
    top = shape[2] * sp[2] + 10
    xi = int(round(upper[0] / sp[0]))
    gap_q, quad_half = rng.uniform(10, 16), rng.uniform(3.0, 4.0)
    found = Tendons(np.zeros(shape, dtype=bool), lower, upper, tub, gap_q, quad_half, top, knee.femur_front[xi],
                    sp[2])
    q_mid = min(upper[2] + 30, top - 12)
    quad_path = [upper + [0, 3, -4], [upper[0], found.quad_y(q_mid) + 2, q_mid],
                 [upper[0], found.quad_y(top - 12), top]]
    quad = Band(_bezier(quad_path, 12),
                np.full(12, quad_half), np.linspace(13, 16, 12), 0.5)
    for band in (patellar, quad):
        b = _box(*band.bounds(2), sp, shape)
        if b is not None:
            found.mask[b] |= (band.occupancy(_box_points(b, sp))[0] > 0.5).numpy()
    found.mask &= ~knee.bones
    return found


def _body_outline(knee: KneeDraft, tendons: Tendons, rng):
    """Skin, subcutaneous fat and muscle around the bones and tendons: their footprints over +-20 mm of height,
    swept posteriorly, with half-resolution distances in the axial plane. Starts the tissue map."""
    sp, shape, Y, Z = knee.sp, knee.shape, knee.Y, knee.Z
    fem_front = knee.femur_front
    # the thigh's front: quadriceps over the femur, thickening upwards from the patella's upper pole
    thick = np.clip((Z - tendons.upper[2]) / 50.0, 0, 1) * rng.uniform(20, 35)
    has_front = knee.femur.any(1)
    thigh = has_front[:, None, :] & (Y[None, :, None] > fem_front[:, None, :]) & \
        (Y[None, :, None] < fem_front[:, None, :] + thick[None, None, :])
    foot = ndimage.maximum_filter1d(knee.bones | tendons.mask | thigh, int(40 / sp[2]) + 1, axis=2)
    back = rng.uniform(25, 40)
    nb = int(back / sp[1])
    foot = ndimage.maximum_filter1d(foot, nb + 1, axis=1, origin=-(nb // 2))  # spreads to lower y: posterior
    dist = _edt(foot[::2, ::2, ::2], np.asarray(sp) * [2, 2, 1e3])
    dist = ndimage.gaussian_filter(dist, (0.7, 0.7, 3.0))
    idx = [np.minimum(np.arange(n) // 2, c - 1) for n, c in zip(shape, dist.shape)]
    dist = dist[np.ix_(*idx)]
    body_r, fat_r = rng.uniform(10, 16), rng.uniform(4, 9)
    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[dist <= body_r] = SKIN
    tissue[dist <= body_r - 1.2] = FAT
    knee.deep = dist <= body_r - fat_r
    tissue[knee.deep] = MUSCLE
    knee.tissue = tissue


def _popliteal_fossa(knee: KneeDraft, rng) -> np.ndarray:
    """Popliteal fossa fat and the popliteus; returns the posterior bone profile near the midline per height."""
    sp, X, Y, Z, xc, zj = knee.sp, knee.X, knee.Y, knee.Z, knee.xc, knee.zj
    tissue, deep, bones = knee.tissue, knee.deep, knee.bones
    by = bones[np.abs(X - xc) < 12].any(0)  # (y, z)
    post = np.where(by.any(0), by.argmax(0), np.nan) * sp[1]
    post = ndimage.uniform_filter1d(np.nan_to_num(post, nan=np.nanmean(post)), int(15 / sp[2]))
    # popliteal fossa fat (diamond: widest above the joint line), vessels in it
    # (in axial sections an ellipse behind the bones between the hamstrings and gastrocnemius heads, widest
    # a little above the joint line, its outline gently irregular)
    w0, zc_f, hz = rng.uniform(18, 26), zj + rng.uniform(10, 20), rng.uniform(45, 60)
    depth = rng.uniform(30, 45)
    wobble = 1 + 0.12 * np.sin(Z / rng.uniform(9, 15) + rng.uniform(0, 6)) \
        + 0.08 * np.sin(Z / rng.uniform(4, 7) + rng.uniform(0, 6))
    width = w0 * np.clip(1 - ((Z - zc_f) / hz) ** 2, 0, 1) * wobble
    fy = (Y[None, :, None] - (post - 2 - depth / 2)[None, None, :]) / (depth / 2)
    fx = (X - xc - knee.lateral * 3)[:, None, None] / np.maximum(width, 1e-3)[None, None, :]
    fossa = (fx**2 + fy**2 <= 1) | ((np.abs(fx) <= 1) & (fy > 0) & (Y[None, :, None] < post[None, None, :] - 2))
    tissue[deep & fossa] = FAT
    # popliteus: a thin muscle on the back of the tibia below the plateau
    popl = (Y[None, :, None] > post[None, None, :] - 7) & (Z[None, None, :] < zj - 6) & \
           (np.abs(X - xc)[:, None, None] < 25)
    tissue[deep & popl & ~bones & ndimage.binary_dilation(knee.tibia, iterations=10)] = MUSCLE
    return post


def _joint_fat(knee: KneeDraft):
    """Fat in the joint region (bones closed by 8 mm) and in the notch and its posterior outlet (bones closed by
    13 mm between the condyles), where the cruciates run."""
    sp, X, Y, Z, xc, zj, lm = knee.sp, knee.X, knee.Y, knee.Z, knee.xc, knee.zj, knee.lm
    tissue, bones = knee.tissue, knee.bones
    d_bone = _edt(bones, sp, step=2)
    closed = _edt(d_bone > 8.0, sp, step=2) > 8.0
    tissue[closed & (tissue > AIR)] = FAT
    wide = _edt(d_bone > 13.0, sp, step=2) > 13.0
    notch = wide & (np.abs(X - xc) < 16)[:, None, None] & \
        ((Z > zj - 4) & (Z < lm["femur_bottom"] + 40))[None, None, :] & (Y < lm["notch_y"][1] + 8)[None, :, None]
    tissue[notch & (tissue > AIR) & ~bones] = FAT


def _anterior_fat(knee: KneeDraft, tendons: Tendons, rng):
    """Hoffa's fat pad behind the patellar tendon, prefemoral and suprapatellar fat above the patella.

    Returns the back of the quadriceps tendon per height (y, mm) and the prefemoral fat's thickness.
    """
    sp, X, Y, Z, xc = knee.sp, knee.X, knee.Y, knee.Z, knee.xc
    tissue, deep, bones, front = knee.tissue, knee.deep, knee.bones, knee.knee_front
    lower, upper, tub = tendons.lower, tendons.upper, tendons.tub
    ytend = np.interp(Z, [tub[2], lower[2]], [tub[1], lower[1]])
    z_lo, z_hi = tub[2] + 3, lower[2] + 4
    half_w = 22 * np.sqrt(np.clip(1 - ((Z - (z_lo + z_hi) / 2) / ((z_hi - z_lo) / 2 + 4)) ** 2, 0, 1))
    hoffa = (Y[None, :, None] > front[:, None, :]) & (Y[None, :, None] < ytend[None, None, :]) & \
            (np.abs(X - lower[0])[:, None, None] < half_w[None, None, :]) & ((Z > z_lo) & (Z < z_hi))[None, None, :]
    tissue[hoffa & (tissue > AIR)] = FAT
    qz = np.linspace(upper[2], tendons.top, 12)
    yquad = np.interp(Z, qz, [tendons.quad_y(z) - tendons.quad_half for z in qz])  # back of the quadriceps tendon
    yquad[Z < upper[2]] = upper[1]
    prefem_t = rng.uniform(3, 6)
    pz_lo, pz_hi = lower[2], upper[2] + 45
    half_p = 25 * np.sqrt(np.clip(1 - ((Z - (pz_lo + pz_hi) / 2) / ((pz_hi - pz_lo) / 2 + 4)) ** 2, 0, 1))
    prefem = (Y[None, :, None] > front[:, None, :]) & (Y[None, :, None] < front[:, None, :] + prefem_t) & \
        (np.abs(X - xc)[:, None, None] < half_p[None, None, :]) & ((Z > pz_lo) & (Z < pz_hi))[None, None, :]
    tissue[prefem & deep & ~bones] = FAT
    gap_q = tendons.gap_q
    pad_c = np.array([upper[0], yquad[int(round((upper[2] + 8) / sp[2]))] - gap_q / 3, upper[2] + 8])
    pad_r = np.array([rng.uniform(12, 18), gap_q / 3, rng.uniform(9, 14)])
    qpad = ((X - pad_c[0])[:, None, None] / pad_r[0]) ** 2 + ((Y - pad_c[1])[None, :, None] / pad_r[1]) ** 2 + \
        ((Z - pad_c[2])[None, None, :] / pad_r[2]) ** 2 <= 1
    tissue[qpad & deep & ~bones] = FAT
    return yquad, prefem_t


def _vessels(knee: KneeDraft, post, rng):
    """The popliteal artery and (posterior, lateral) vein, following the back of the bones (``post``)."""
    X, Y, xc, tissue = knee.X, knee.Y, knee.xc, knee.tissue
    course = ndimage.uniform_filter1d(post, int(45 / knee.sp[2]), mode="nearest")  # the vessels run straighter
    for kind, off, dx, r in ((ARTERY, rng.uniform(6, 10), rng.uniform(-3, 3), rng.uniform(2.8, 3.6)),
                             (VEIN, rng.uniform(11, 16), knee.lateral * rng.uniform(3, 7), rng.uniform(3.5, 5.0))):
        yv = np.minimum(course, post) - off - r
        tube = ((X - (xc + dx))[:, None, None] ** 2 + (Y[None, :, None] - yv[None, None, :]) ** 2) <= r * r
        tissue[tube & (tissue > AIR) & ~knee.bones] = kind


def _cartilage_and_menisci(knee: KneeDraft, rng) -> Joint:
    """Cartilage and menisci in a box around the joint (full-resolution distances)."""
    sp, X, Z, xc, zj, lm = knee.sp, knee.X, knee.Z, knee.xc, knee.zj, knee.lm
    femur, tibia, patella = knee.femur, knee.tibia, knee.patella
    found = ndimage.find_objects((femur | tibia | patella).astype(np.uint8))[0]
    lo_xy = [found[0].start * sp[0] - 12, found[1].start * sp[1] - 12]
    hi_xy = [found[0].stop * sp[0] + 12, found[1].stop * sp[1] + 12]
    jbox = _box([*lo_xy, zj - 25], [*hi_xy, zj + 70], sp, knee.shape)
    dF = _edt(femur[jbox], sp)
    dT = _edt(tibia[jbox], sp)
    dP = _edt_near(patella[jbox], sp, 15.0)
    t_view = knee.tissue[jbox]
    soft = ~knee.bones[jbox]
    cf, ct = rng.uniform(1.8, 2.6), rng.uniform(1.6, 2.4)
    condyles = (Z[jbox[2]] < lm["femur_bottom"] + 26)[None, None, :] & (np.abs(X[jbox[0]] - xc) > 9)[:, None, None]
    fem_cart = soft & (dF <= cf) & ((dT < 10) | (dP < 12) | condyles)
    tib_cart = soft & (dT <= ct) & (dF < 10) & (np.abs(X[jbox[0]] - xc) > 6)[:, None, None]
    # menisci: the wedge between condyle and plateau at the plateau's rim, outside the notch
    zt = lm["tibial_top"]
    footprint = np.isfinite(zt) & (zt > zj - 12)
    rim = ndimage.distance_transform_edt(footprint, sampling=sp[:2]) < rng.uniform(8, 11)
    rim &= (np.abs(X - xc) > 7)[:, None] & footprint
    gap = dF + dT
    men = soft & (dT > ct * 0.6) & (dT < 7) & (dF < 7) & (gap > 5.5) & (gap < 13) & rim[jbox[0], jbox[1]][:, :, None]
    men &= Z[jbox[2]][None, None, :] > zj - 6
    t_view[men & (t_view != TENDON)] = MENISCUS
    t_view[fem_cart | tib_cart] = CARTILAGE
    t_view[knee.pat_cart[jbox] & soft] = CARTILAGE
    knee.tissue[jbox] = t_view
    return Joint(jbox, dF, dP, cf)


def _recesses(knee: KneeDraft, joint: Joint, yquad, prefem_t) -> np.ndarray:
    """The level (0-254; NEVER: not at all) at which each voxel fills with joint fluid: the patellofemoral joint,
    the suprapatellar pouch and the posterior recesses behind the condyles."""
    X, Y, Z, xc, lm = knee.X, knee.Y, knee.Z, knee.xc, knee.lm
    jbox, dF, dP, cf = joint.box, joint.d_femur, joint.d_patella, joint.femoral_cartilage
    recess = np.full(knee.shape, NEVER, dtype=np.uint8)
    r_view = recess[jbox]
    t_view = knee.tissue[jbox]
    fillable = np.isin(t_view, (FAT, MUSCLE))
    xr = np.abs(X[jbox[0]] - xc)[:, None, None]
    zz = Z[jbox[2]][None, None, :]
    # patellofemoral joint: a thin film at the slightest effusion
    pf = (dF < 6) & (dP < 6) & fillable
    # suprapatellar pouch: between prefemoral fat and the quadriceps, above the patella's middle
    fr = knee.knee_front[jbox[0], jbox[2]][:, None, :]
    yy = Y[jbox[1]][None, :, None]
    yq = yquad[jbox[2]][None, None, :]
    z0 = knee.patella_points[:, 2].mean()
    low_y, high_y = fr + prefem_t, yq - 1.0
    mid_y = (low_y + high_y) / 2
    half_y = np.maximum((high_y - low_y) / 2, 1.0)
    level = np.maximum(np.maximum(np.abs(yy - mid_y) / half_y, (zz - z0) / 60.0), xr / 30.0)
    pouch = (yy > low_y) & (yy < high_y) & (zz > z0 - 5) & (level < 1) & fillable
    # posterior recesses behind the condyles
    cond_back = Y[jbox[1]][None, :, None] < (lm["notch_y"][0] + 10)
    postr = fillable & cond_back & (dF < 9) & (dF > cf) & (zz < lm["femur_bottom"] + 40) & (xr > 8)
    lev_post = (dF - cf) / 7.0
    r_view[postr] = np.clip(lev_post[postr] * 254, 0, 254).astype(np.uint8)
    r_view[pouch] = np.minimum(r_view[pouch], np.clip(level[pouch] * 254, 0, 254).astype(np.uint8))
    r_view[pf] = np.minimum(r_view[pf], 8)
    recess[jbox] = r_view
    return recess
