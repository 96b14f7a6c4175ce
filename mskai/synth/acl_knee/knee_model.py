"""One subject's knee model: the OAI shape subjects, ``build_anatomy`` (the build steps in order) and its cache
``anatomy`` (in memory, LRU, and on disk in the user's cache folder)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from scipy import ndimage

from mskai.cache import user_cache_dir
from mskai.synth import SHARED_DATA
from mskai.synth.acl_knee.bones import KneeDraft, _add_fibula, _add_patella, _bone_layers, _carve_acl_bed, _padded_bones
from mskai.acl.landmarks import knee_landmarks
from mskai.synth.acl_knee.soft_tissue import (_anterior_fat, _body_outline, _cartilage_and_menisci, _joint_fat,
                                              _popliteal_fossa, _recesses, _tendons, _vessels)
from mskai.synth.acl_knee.tissues import AIR, TENDON, KneeAnatomy

OAI_FOLDER = SHARED_DATA / "oai_knee_bone_masks"
ANATOMY_VERSION = 2  # bump whenever build_anatomy changes: the disk cache is keyed on it
ANATOMY_CACHE_SIZE = int(os.environ.get("MSKAI_ACL_ANATOMY_CACHE", "16"))  # subjects kept in memory per process


def acl_shape_subjects(split: str = "train", folder=None) -> list[str]:
    """OAI subject ids of one split, the same split as the bone model's (``real_shapes.split_subjects``).

    Train the classifier on "train", choose on "val", report on "test": the test knees are never trained on
    by either model.
    """
    from mskai.synth.real_shapes import oai_subjects, split_subjects

    ids = oai_subjects(Path(folder) if folder else OAI_FOLDER)
    if not ids:
        raise FileNotFoundError(f"no OAI knee masks (*.nii.gz) in {folder or OAI_FOLDER}")
    return split_subjects(ids)[split]


def build_anatomy(subject: str, folder=None, rng=None) -> KneeAnatomy:
    """The tissue model of one OAI knee (slow: a few seconds; ``anatomy`` caches it)."""
    from mskai.synth.real_shapes import cached_split, spacing_of, split_quality

    folder = Path(folder) if folder else OAI_FOLDER
    labels, affine = cached_split(folder / f"{subject}.nii.gz", user_cache_dir("oai-splits"))
    if not split_quality(labels)["ok"]:
        raise ValueError(f"OAI subject {subject}: femur and tibia do not split cleanly")
    rng = np.random.default_rng(int.from_bytes(subject.encode()[-8:], "little")) if rng is None else rng
    sp = spacing_of(affine)
    femur, tibia = _padded_bones(labels, sp)
    lm = knee_landmarks(femur, tibia, sp)
    _carve_acl_bed(femur, tibia, sp, lm)
    knee = KneeDraft(sp, lm, femur, tibia)
    # every step that draws from rng keeps its place: the same subject always gives the same model
    _add_patella(knee, rng)
    _add_fibula(knee, rng)
    tendons = _tendons(knee, rng)
    _body_outline(knee, tendons, rng)
    post = _popliteal_fossa(knee, rng)
    _joint_fat(knee)
    yquad, prefem_t = _anterior_fat(knee, tendons, rng)
    _vessels(knee, post, rng)
    knee.tissue[tendons.mask] = TENDON
    joint = _cartilage_and_menisci(knee, rng)
    _bone_layers(knee)
    recess = _recesses(knee, joint, yquad, prefem_t)
    return _cropped(subject, knee, recess)


def _cropped(subject: str, knee: KneeDraft, recess) -> KneeAnatomy:
    """The model cropped to the body (plus air) to keep the map small; landmarks move with it."""
    tissue, sp, lm = knee.tissue, knee.sp, knee.lm
    found = ndimage.find_objects((tissue > AIR).astype(np.uint8))[0]
    crop = tuple(slice(max(s.start - 4, 0), min(s.stop + 4, n)) for s, n in zip(found, knee.shape))
    shift = np.array([s.start for s in crop]) * sp
    for key in ("acl_femur", "acl_tibia", "pcl_femur", "pcl_tibia"):
        lm[key] = lm[key] - shift
    lm["notch_x"] -= shift[0]
    lm["notch_y"] = (lm["notch_y"][0] - shift[1], lm["notch_y"][1] - shift[1])
    lm["plateau_y"] = (lm["plateau_y"][0] - shift[1], lm["plateau_y"][1] - shift[1])
    lm["plateau_z"] -= shift[2]
    lm["femur_bottom"] -= shift[2]
    lm["roof_line"] = np.array([[j * sp[1] - shift[1], z - shift[2]] for j, z in sorted(lm["roof"].items())])
    for key in ("roof", "condyle_a", "condyle_b", "tibial_top"):
        lm.pop(key)
    return KneeAnatomy(subject, np.ascontiguousarray(tissue[crop]), np.ascontiguousarray(recess[crop]),
                       np.asarray(sp, dtype=float), lm)


_CACHE: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def anatomy(subject: str, folder=None) -> KneeAnatomy:
    """``build_anatomy`` of a subject, kept in memory (LRU) and on disk (``user_cache_dir("acl-anatomy-v*")``;
    the default shape folder only)."""
    key = (str(folder or OAI_FOLDER), subject)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    stored = user_cache_dir(f"acl-anatomy-v{ANATOMY_VERSION}") / f"{subject}.npz" if folder is None else None
    result = _load_stored(stored, subject) if stored is not None and stored.exists() else None
    if result is None:
        result = build_anatomy(subject, folder)
        if stored is not None:
            _store(stored, result)
    with _LOCK:
        _CACHE[key] = result
        while len(_CACHE) > max(ANATOMY_CACHE_SIZE, 1):
            _CACHE.popitem(last=False)
    return result


def _load_stored(stored: Path, subject: str) -> KneeAnatomy | None:
    """A model from the disk cache, or None when it cannot be read."""
    try:
        with np.load(stored, allow_pickle=False) as f:
            lm = {k[3:]: f[k] for k in f.files if k.startswith("lm_")}
            for k in ("notch_x", "plateau_z", "femur_bottom", "lateral"):
                lm[k] = float(lm[k])
            lm["lateral"] = int(lm["lateral"])
            for k in ("notch_y", "plateau_y"):
                lm[k] = tuple(float(v) for v in lm[k])
            return KneeAnatomy(subject, f["tissue"], f["recess"], f["spacing"], lm)
    except (OSError, ValueError, KeyError):
        return None


def _store(stored: Path, result: KneeAnatomy):
    """Keep a model in the disk cache, when it can be written."""
    try:
        from mskai.outputs import atomic_output

        stored.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(stored) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, tissue=result.tissue, recess=result.recess, spacing=result.spacing,
                                **{f"lm_{k}": np.asarray(v) for k, v in result.landmarks.items()})
    except OSError:
        pass  # a read-only cache folder: keep it in memory only
