"""Clean a label map per bone, in 3D: islands, connected components, holes; then make it anatomically consistent.

The anatomical clean-up (on by default when the grid's affine is known) looks at the whole field of view in
patient LPS millimetres (superior is +S): a piece of a bone that is not kept joins the bone it touches most
instead of vanishing, the femur kept lies above the tibia kept, a second large piece is kept only beside the
first (the other leg), no hip bone or sacrum is kept below the femur's centre, no patella behind it, the sacrum is
one piece, and hip bone (or sacrum) and tibia never both within 250 mm (the smaller goes: a "hip bone" in a knee's
field of view, a "tibia" in a hip scan).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from mskai import check_range
from mskai.segment.labels import BONE_VALUES

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
BESIDE_MM = 60.0  # the other leg's bone lies at least this far to the side (knees are ~150 mm apart)
HIP_ABOVE_TIBIA_MM = 250.0  # a femur is longer: no hip bone's centre lies closer above the tibia's top


@dataclass
class Cleanup:
    """How one label is cleaned.

    min_island_fraction: remove components smaller than this fraction of the label's volume (the seed's 1 %).
    max_components: keep at most this many of the largest components (2 covers scans of both legs); 0 keeps all.
    min_extra_fraction: a component beyond the largest is kept only if it is at least this fraction of the
        largest (the same bone of the other leg is about as large; a stray blob is not).
    min_volume_ml: remove components smaller than this, even a label's only one (a stray "pelvis" in a knee).
    fill_holes: fill enclosed background cavities.
    """

    min_island_fraction: float = 0.01
    max_components: int = 2
    min_extra_fraction: float = 0.25
    min_volume_ml: float = 1.0
    fill_holes: bool = True

    def __post_init__(self):
        check_range("min island fraction", self.min_island_fraction, 0, 1)
        check_range("max components", self.max_components, 0, 1000, integer=True)
        check_range("min extra fraction", self.min_extra_fraction, 0, 1)
        check_range("min volume (mL)", self.min_volume_ml, 0, 1e6)


@dataclass
class PostprocessOptions:
    default: Cleanup = field(default_factory=Cleanup)
    per_label: dict = field(default_factory=dict)  # label value -> Cleanup
    enabled: bool = True
    anatomical: bool = True  # the anatomical clean-up (when clean_labels is given the grid's affine)

    def for_label(self, value: int) -> Cleanup:
        return self.per_label.get(value, self.default)

    @classmethod
    def from_settings(cls, enabled=True, anatomical=True, **kwargs):
        """Options with the default Cleanup's fields overridden by keyword (e.g. max_components=1)."""
        return cls(default=replace(Cleanup(), **{k: v for k, v in kwargs.items() if v is not None}), enabled=enabled,
                   anatomical=anatomical)


def clean_labels(labels: np.ndarray, values, options: PostprocessOptions | None = None,
                 voxel_ml: float = 0.0, in_place: bool = False, affine: np.ndarray | None = None) -> np.ndarray:
    """A cleaned copy of ``labels`` (any integer dtype), or ``labels`` itself cleaned when in_place.

    voxel_ml: the volume of one voxel in mL, for ``min_volume_ml`` (0 leaves that rule out).
    affine: the grid's 4x4 IJK->LPS; with it (and ``options.anatomical``) the clean-up is anatomical (see
    ``clean_anatomical``), without it voxels removed from a bone become background.
    """
    options = options or PostprocessOptions()
    out = labels if in_place else labels.copy()
    if not options.enabled:
        return out
    if options.anatomical and affine is not None:
        clean_anatomical(out, values, options, affine, voxel_ml)
        return out
    boxes = ndimage.find_objects(out)
    for value in values:
        if value > len(boxes) or boxes[value - 1] is None:
            continue
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in boxes[value - 1])
        region = out[box]
        _clean_one(region, value, options.for_label(value), voxel_ml)
    return out


def _shifted(d: int, n: int) -> slice:
    """Indices i + d for the i where both i and i + d lie in 0..n-1."""
    return slice(max(0, d), n + min(0, d))


def _chunk_pieces(block: np.ndarray, value: int):
    """(local piece numbers, count) of one chunk; both passes over a chunk must number pieces alike."""
    return ndimage.label(block == value, structure=_FULL)


def chunked_pieces(region: np.ndarray, value: int, chunk: int = 32, on_chunk=None):
    """The 26-connected pieces of ``region == value``, found chunk by chunk along the last axis.

    Returns (piece of each chunk's local component, as one array over all chunks; voxels per piece;
    box per piece as (lower corner, upper corner); components per chunk). Memory stays at one chunk's
    worth of labels. on_chunk(start, local, n), when given, sees each chunk's local components.
    """
    sizes, lower, upper, links, last_plane, counts = [], [], [], [], None, []
    for start in range(0, region.shape[2], chunk):
        local, n = _chunk_pieces(region[:, :, start:start + chunk], value)
        if on_chunk is not None:
            on_chunk(start, local, n)
        offset = len(sizes)
        counts.append(n)
        sizes.extend(np.bincount(local.ravel(), minlength=n + 1)[1:])
        for box in ndimage.find_objects(local):
            lower.append([box[0].start, box[1].start, box[2].start + start])
            upper.append([box[0].stop, box[1].stop, box[2].stop + start])
        if last_plane is not None:  # pieces touching across the chunk border (26-neighbours)
            first = np.where(local[:, :, 0] > 0, local[:, :, 0] + offset, 0)
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    a = last_plane[_shifted(di, first.shape[0]), _shifted(dj, first.shape[1])]
                    b = first[_shifted(-di, first.shape[0]), _shifted(-dj, first.shape[1])]
                    touching = (a > 0) & (b > 0)
                    links.append(np.unique(a[touching].astype(np.int64) << 32 | b[touching]))  # pairs as codes
        last_plane = np.where(local[:, :, -1] > 0, local[:, :, -1] + offset, 0)
    n = len(sizes)
    codes = np.unique(np.concatenate(links)) if links else np.zeros(0, dtype=np.int64)
    graph = csr_matrix((np.ones(len(codes)), ((codes >> 32) - 1, (codes & 0xFFFFFFFF) - 1)), shape=(n, n))
    _, piece = connected_components(graph, directed=False)
    count = piece.max() + 1 if n else 0
    lower_box = np.full((count, 3), np.iinfo(np.int64).max)
    upper_box = np.zeros((count, 3), dtype=np.int64)
    np.minimum.at(lower_box, piece, np.asarray(lower, dtype=np.int64).reshape(-1, 3))
    np.maximum.at(upper_box, piece, np.asarray(upper, dtype=np.int64).reshape(-1, 3))
    return piece, np.bincount(piece, weights=sizes, minlength=count), list(zip(lower_box, upper_box)), counts


def _clean_one(region: np.ndarray, value: int, rule: Cleanup, voxel_ml: float, chunk: int = 32):
    piece, sizes, boxes, counts = chunked_pieces(region, value, chunk)
    drop = ~_large_enough(sizes, rule, voxel_ml)
    if rule.max_components:
        drop[np.argsort(sizes, kind="stable")[::-1][rule.max_components:]] = True
    offsets = np.cumsum([0] + counts)
    for start, offset, n in zip(range(0, region.shape[2], chunk), offsets, counts):
        lookup = np.concatenate([[False], drop[piece[offset:offset + n]]])
        if lookup.any():  # label this chunk again (the same local numbering) to remove what is dropped
            block = region[:, :, start:start + chunk]
            block[lookup[_chunk_pieces(block, value)[0]]] = 0
    if rule.fill_holes:  # each kept piece in its own box: small arrays even when pieces lie far apart
        for (lo, hi), dropped in zip(boxes, drop):
            if not dropped:
                box = tuple(slice(max(0, a - 1), b + 1) for a, b in zip(lo, hi))
                _fill_holes(region[box], region[box] == value, value)


def _fill_holes(region: np.ndarray, mask: np.ndarray, value: int):
    """Holes: background pieces (6-connected, the complement of 26-connected bone) not touching the box border."""
    background, _ = ndimage.label(~mask)
    outside = np.unique(np.concatenate([face.ravel() for axis in range(3)
                                        for face in (np.take(background, 0, axis), np.take(background, -1, axis))]))
    is_hole = np.ones(background.max() + 1, dtype=bool)
    is_hole[outside] = False
    is_hole[0] = False
    region[is_hole[background] & (region == 0)] = value


# --- anatomical clean-up: the whole field of view in patient LPS millimetres ------------------------------


@dataclass
class _Bone:
    """The pieces of one label: voxels, box (global indices, upper corner exclusive), centroid (LPS mm),
    highest S of a voxel centre (mm), one voxel of each, and which are kept."""

    value: int
    sizes: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    centre: np.ndarray
    top: np.ndarray
    seed: np.ndarray
    keep: np.ndarray | None = None


def _bone(labels: np.ndarray, value: int, box: tuple, affine: np.ndarray, chunk: int) -> _Bone:
    """The pieces of ``labels[box] == value`` and their measures, in one chunked pass (memory: one chunk)."""
    origin = np.array([s.start for s in box])
    sums, tops, seeds = [], [], []

    def on_chunk(start, local, n):  # sums of voxel indices, top and one voxel of each local component
        idx = np.nonzero(local)
        comp = local[idx]
        corner = origin + [0, 0, start]
        sizes = np.bincount(comp, minlength=n + 1)[1:, None]
        sums.append(np.stack([np.bincount(comp, weights=i, minlength=n + 1)[1:] for i in idx], axis=1) + sizes * corner)
        top = np.full(n + 1, -np.inf)
        np.maximum.at(top, comp, sum(a * i for a, i in zip(affine[2, :3], idx)))
        tops.append(top[1:] + affine[2, :3] @ corner + affine[2, 3])
        where = np.zeros(n + 1, dtype=np.intp)
        where[comp] = np.arange(len(comp))  # any voxel of each component
        seeds.append(np.stack([i[where[1:]] for i in idx], axis=1) + corner)

    piece, sizes, boxes, _ = chunked_pieces(labels[box], value, chunk, on_chunk)
    n = len(sizes)
    sums = np.concatenate(sums)
    centre = np.stack([np.bincount(piece, weights=sums[:, a], minlength=n) for a in range(3)], axis=1) / sizes[:, None]
    top = np.full(n, -np.inf)
    np.maximum.at(top, piece, np.concatenate(tops))
    where = np.zeros(n, dtype=np.intp)
    where[piece] = np.arange(len(piece))
    lower, upper = (np.array([b[i] for b in boxes]).reshape(-1, 3) + origin for i in (0, 1))
    return _Bone(value, sizes, lower, upper, centre @ affine[:3, :3].T + affine[:3, 3], top,
                 np.concatenate(seeds)[where])


def _beside(a: np.ndarray, b: np.ndarray) -> bool:
    """Centroids side by side, as the same bone of two legs: far apart along L, and more along L than S."""
    left, up = abs(a[0] - b[0]), abs(a[2] - b[2])
    return left >= BESIDE_MM and left > up


def _large_enough(sizes: np.ndarray, rule: Cleanup, voxel_ml: float) -> np.ndarray:
    """Pieces (voxel counts) that pass ``Cleanup``'s size rules: island fraction, extra fraction, volume."""
    ok = (sizes >= rule.min_island_fraction * sizes.sum()) & (sizes >= rule.min_extra_fraction * sizes.max(initial=0))
    return ok & (sizes * voxel_ml >= rule.min_volume_ml) if voxel_ml else ok


def _candidates(bone: _Bone, rule: Cleanup, voxel_ml: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Pieces large enough to keep by ``Cleanup``'s size rules (among the allowed ones)."""
    allowed = np.ones(len(bone.sizes), dtype=bool) if allowed is None else allowed
    return allowed & _large_enough(np.where(allowed, bone.sizes, 0), rule, voxel_ml)


def _femur_over_tibia(femur: _Bone, femur_ok: np.ndarray, tibia: _Bone, tibia_ok: np.ndarray) -> tuple:
    """The femur and tibia candidates, largest together, with the femur's centroid above the tibia's; or
    (None, None). The model may label the femur's upper shaft tibia and the tibia femur, in larger pieces."""
    pairs = [(femur.sizes[f] + tibia.sizes[t], f, t) for f in np.flatnonzero(femur_ok) for t in np.flatnonzero(tibia_ok)
             if femur.centre[f, 2] > tibia.centre[t, 2]]
    return max(pairs)[1:] if pairs else (None, None)


def _keep(bone: _Bone, rule: Cleanup, ok: np.ndarray, affine: np.ndarray, shape: tuple, first=None) -> np.ndarray:
    """The kept candidates (ok): ``first`` (by default the largest), then, largest first and up to max_components,
    those beside every kept piece (the other leg's) or cut from it by the same superior or inferior border face
    of the field of view (the two condyles below the notch's roof)."""
    axis = int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))  # the most superior one
    faces = np.stack([bone.lower[:, axis] == 0, bone.upper[:, axis] == shape[axis]], axis=1)
    order = np.argsort(-bone.sizes, kind="stable")
    if first is not None:
        order = [first] + [p for p in order if p != first]
    keep = np.zeros(len(bone.sizes), dtype=bool)
    for p in order:
        if ok[p] and not (rule.max_components and keep.sum() >= rule.max_components):
            keep[p] = all(_beside(bone.centre[p], bone.centre[q]) or (faces[p] & faces[q]).any()
                          for q in np.flatnonzero(keep))
    return keep


def _hip_allowed(pelvis: _Bone, femur: _Bone | None) -> np.ndarray:
    """Hip bone (or sacrum) pieces not below the femur's centroid (all when no femur is kept)."""
    if femur is None or not femur.keep.any():
        return np.ones(len(pelvis.sizes), dtype=bool)
    return pelvis.centre[:, 2] >= np.average(femur.centre[femur.keep, 2], weights=femur.sizes[femur.keep])


def _hip_or_tibia(pelvis: _Bone, tibia: _Bone):
    """No hip bone lies within HIP_ABOVE_TIBIA_MM above a tibia (a femur is longer): where kept pieces of both
    do, the side with fewer voxels is not kept (a "hip bone" behind a knee, or a "tibia" in a hip scan)."""
    near = pelvis.keep & (pelvis.centre[:, 2] < tibia.top[tibia.keep].max(initial=-np.inf) + HIP_ABOVE_TIBIA_MM)
    if not near.any():
        return
    close = tibia.keep & (tibia.top > pelvis.centre[near, 2].min() - HIP_ABOVE_TIBIA_MM)
    if pelvis.sizes[near].sum() > tibia.sizes[close].sum():
        tibia.keep &= ~close
    else:
        pelvis.keep &= ~near


def _patella_allowed(patella: _Bone, femur: _Bone | None) -> np.ndarray:
    """Patella pieces anterior to the femur's centroid (LPS: smaller P); all when no femur is kept."""
    if femur is None or not femur.keep.any():
        return np.ones(len(patella.sizes), dtype=bool)
    return patella.centre[:, 1] < np.average(femur.centre[femur.keep, 1], weights=femur.sizes[femur.keep])


def _padded(lower, upper, shape) -> tuple:
    return tuple(slice(max(0, a - 1), min(n, b + 1)) for a, b, n in zip(lower, upper, shape))


def clean_anatomical(labels: np.ndarray, values, options: PostprocessOptions, affine: np.ndarray,
                     voxel_ml: float = 0.0, chunk: int = 32):
    """Clean ``labels`` in place, bone by bone, with the whole field of view (affine: IJK->LPS).

    Per bone the largest piece is kept (of femur and tibia: the largest pair with the femur above the tibia),
    and further large pieces (``Cleanup``'s size rules) only beside it (the other leg's: BESIDE_MM apart along
    L, more than along S) or cut from it by the same superior or inferior border face. Hip bone pieces below
    the femur's centroid are not kept, nor patella pieces behind it; the sacrum (one bone on the midline) keeps one
    piece under the hip bone's rules; where hip bone or sacrum lies less than HIP_ABOVE_TIBIA_MM above the tibia's
    top, the smaller of the two is not kept. A piece that is
    not kept joins the bone whose kept voxels it touches most (26-neighbours; see ``_join``), or becomes
    background. Then holes are filled in the kept pieces.
    """
    boxes = ndimage.find_objects(labels)
    bones = {value: _bone(labels, value, boxes[value - 1], affine, chunk) for value in values
             if value <= len(boxes) and boxes[value - 1] is not None}
    femur, tibia, pelvis, patella, sacrum = (bones.get(BONE_VALUES[name])
                                             for name in ("femur", "tibia", "pelvis", "patella", "sacrum"))
    ok = {value: _candidates(bone, options.for_label(value), voxel_ml) for value, bone in bones.items()}
    first = {}
    if femur is not None and tibia is not None:
        first = dict(zip((femur.value, tibia.value), _femur_over_tibia(femur, ok[femur.value], tibia, ok[tibia.value])))
    later = [b for b in (pelvis, patella, sacrum) if b is not None]  # their rules need the kept femur
    for value, bone in bones.items():
        if not any(bone is b for b in later):
            bone.keep = _keep(bone, options.for_label(value), ok[value], affine, labels.shape, first.get(value))
    for bone, where in ((pelvis, lambda: _hip_allowed(pelvis, femur)), (sacrum, lambda: _hip_allowed(sacrum, femur)),
                        (patella, lambda: _patella_allowed(patella, femur))):
        if bone is not None:
            rule = options.for_label(bone.value)
            rule = replace(rule, max_components=1) if bone is sacrum else rule
            bone.keep = _keep(bone, rule, _candidates(bone, rule, voxel_ml, where()), affine, labels.shape)
    for hip in (pelvis, sacrum):
        if hip is not None and tibia is not None:
            _hip_or_tibia(hip, tibia)
    moved = []  # (padded box, mask) of each piece not kept
    for bone in bones.values():
        for p in np.flatnonzero(~bone.keep):
            box = _padded(bone.lower[p], bone.upper[p], labels.shape)
            pieces, _ = ndimage.label(labels[box] == bone.value, structure=_FULL)
            moved.append((box, pieces == pieces[tuple(bone.seed[p] - [s.start for s in box])]))
    _join(labels, moved, values, max([len(boxes), *values]) + 1)  # pending: a value no voxel has
    for bone in bones.values():
        if options.for_label(bone.value).fill_holes:
            for p in np.flatnonzero(bone.keep):
                box = _padded(bone.lower[p], bone.upper[p], labels.shape)
                _fill_holes(labels[box], labels[box] == bone.value, bone.value)


def _join(labels: np.ndarray, moved: list, values, pending: int):
    """Each moved piece (padded box, mask) joins the bone it touches most, or becomes background.

    Moved pieces are marked ``pending`` first (a value no voxel has) and join in rounds: a piece whose contact
    with a kept bone is at least its contact with pending pieces joins at once; when none is, the one with the
    most contact does. A bone cut in two by a stray piece thus joins up again once the stray piece has joined.
    """
    if pending > np.iinfo(labels.dtype).max:
        pending = 0  # no free value: pending pieces look like background
    for box, mask in moved:
        labels[box][mask] = pending
    while moved:
        touches = [_touches(labels[box], mask, values, pending) for box, mask in moved]
        now = [count > 0 and count >= waiting for _, count, waiting in touches]
        if not any(now):
            best = max(range(len(moved)), key=lambda i: touches[i][1])
            if not touches[best][1]:
                break
            now[best] = True
        waiting_pieces = []
        for (box, mask), (value, count, waiting), join in zip(moved, touches, now):
            if join:
                labels[box][mask] = value
            elif count or waiting:
                waiting_pieces.append((box, mask))
            else:
                labels[box][mask] = 0  # touches no bone
        moved = waiting_pieces
    for box, mask in moved:
        labels[box][mask] = 0


def _touches(region: np.ndarray, mask: np.ndarray, values, pending: int) -> tuple:
    """(the bone of values with the most voxels 26-adjacent to mask, their count, adjacent pending voxels)."""
    ring = region[ndimage.binary_dilation(mask, structure=_FULL) & ~mask]
    counts = {value: int(np.count_nonzero(ring == value)) for value in values}
    best = max(counts, key=counts.get, default=0)
    return best, counts.get(best, 0), int(np.count_nonzero(ring == pending)) if pending else 0
