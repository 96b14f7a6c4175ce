"""Fine-tune a bone model on the user's case library ("Improve the model"), on the CPU, within a time budget.

Held-out cases (at least one, about a fifth) are segmented by the current model before and by the new one after
training, through the same path as `mskai segment`; the new package is installed as ``<id>@<version>+local.<n>``
with both sets of figures in its metadata (``local``), and becomes the default only if it is better: no bone's mean
held-out Dice lower by more than ``TOLERANCE`` and the mean over bones higher. Otherwise it is kept aside. Training
writes into a staging folder beside the user's models that is swapped in at the very end, so a cancelled or failed
run leaves no package and no partial files (``STAGING`` folders of dead runs are removed at the next start).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from mskai import MskaiError, check_range
from mskai.cases import CaseLibrary
from mskai.models.tasks import SEGMENTATION

TOLERANCE = 0.05  # a bone may lose this much mean held-out Dice (one or two cases: noisy) and still count
STAGING_NAME = "local-training"
STAGING = f".{STAGING_NAME}.mskai-"  # in the user models folder: .local-training.mskai-new-<pid>-<random>


def split_heldout(cases) -> tuple[list, list]:
    """(training, held-out) cases: about a fifth held out (at least one), chosen by a hash of the case id so that
    the same cases stay held out as the library grows. A single case is trained on and nothing is held out."""
    if not cases:
        raise MskaiError("The case library is empty: save corrected segmentations as training cases first")
    if len(cases) == 1:
        return list(cases), []
    ranked = sorted(cases, key=lambda c: hashlib.sha256(c.id.encode()).hexdigest())
    n_held = max(1, round(len(cases) * 0.2))
    return sorted(ranked[n_held:], key=lambda c: c.id), sorted(ranked[:n_held], key=lambda c: c.id)


def score(package, cases, progress=None, cancel=None) -> dict:
    """Dice and HD95 per bone of ``package`` on each case (the `mskai segment` path, clean-up included), and their
    means over cases: {"cases": {id: {bone: {"dice", "hd95_mm"}}}, "mean": {bone: {"dice", "hd95_mm"}}}."""
    from mskai.segment.infer import SegmentOptions, segment_volume
    from mskai.segment.labels import labels_from_table
    from mskai.segment.metrics import evaluate

    table = labels_from_table(package.metadata["labels"])
    per_case = {}
    for n, case in enumerate(cases):
        if progress:
            progress(n / len(cases))
        image, reference = case.image(), case.labels()
        result = segment_volume(image, package, SegmentOptions(check_compatibility=False), cancel=cancel)
        per_case[case.id] = {row["name"]: {"dice": row["dice"], "hd95_mm": _finite(row["hd95_mm"])}  # None: missed
                             for row in evaluate(result.labels, reference, table) if np.isfinite(row["dice"])}
    mean = {}
    for bone in {b for rows in per_case.values() for b in rows}:
        values = [rows[bone] for rows in per_case.values() if bone in rows]
        distances = [v["hd95_mm"] for v in values if v["hd95_mm"] is not None]
        mean[bone] = {"dice": round(float(np.mean([v["dice"] for v in values])), 4),
                      "hd95_mm": round(float(np.median(distances)), 3) if distances else None}
    return {"cases": per_case, "mean": dict(sorted(mean.items()))}


def _finite(value):
    return value if value is not None and np.isfinite(value) else None


def is_better(before: dict, after: dict) -> bool:
    """Better on the held-out cases: the mean Dice over bones higher, no bone lower by more than TOLERANCE. A bone
    scored on one side only was absent from both prediction and reference on the other: perfect there (1.0), so a
    bone drawn where there is none counts against a model."""
    bones = sorted(set(before["mean"]) | set(after["mean"]))
    if not bones:
        return False
    dice = lambda figures, bone: figures["mean"][bone]["dice"] if bone in figures["mean"] else 1.0  # noqa: E731
    drops = [dice(before, b) - dice(after, b) for b in bones]
    return bool(max(drops) <= TOLERANCE and np.mean(drops) < 0)


def local_version(package, installed) -> str:
    """The next local version of ``package``'s line: ``<shipped version>+local.<n>``, n one more than any
    installed local version of the same id and shipped version."""
    base = package.version.split("+local.")[0]
    taken = [int(p.version.rpartition("+local.")[2]) for p in installed
             if p.id == package.id and p.version.startswith(base + "+local.")
             and p.version.rpartition("+local.")[2].isdigit()]
    return f"{base}+local.{max(taken, default=0) + 1}"


def improve(model=None, minutes: float = 10.0, library: CaseLibrary | None = None, progress=None, threads=None,
            seed: int = 0, lr: float = 2e-4) -> dict:
    """Fine-tune ``model`` (id[@version], path or None: the default bone model) on its case library for about
    ``minutes`` of training; returns {"model", "parent", "accepted", "before", "after", "skipped", ...}."""
    from mskai.models.package import load_package
    from mskai.models.registry import list_models, resolve_model, set_default, user_dir
    from mskai.outputs import remove_stale, swap_in

    check_range("time budget (minutes)", minutes, 0.01, 24 * 60)
    say = progress or (lambda stage, fraction, message=None: None)
    base = resolve_model(model, SEGMENTATION)
    library = library or CaseLibrary.for_model(base.id)
    cases, skipped = _readable(library)
    train_cases, held = split_heldout(cases)
    checked = held or train_cases  # one case: checked on itself, and never made the default
    version = local_version(base, list_models(SEGMENTATION))
    say("before", 0.0, f"{len(train_cases)} training and {len(held)} held-out cases; checking {base.id}@{base.version}"
        + ("" if held else " (one case: nothing to hold out, so the new model will be kept aside)"))
    before = score(base, checked, lambda f: say("before", f))
    root = user_dir()
    root.mkdir(parents=True, exist_ok=True)
    remove_stale(root, STAGING)
    staging = root / f"{STAGING}new-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        started = time.monotonic()
        _train(base, version, train_cases, held, staging, minutes, threads, seed, lr, say)
        train_minutes = (time.monotonic() - started) / 60
        say("after", 0.0, "checking the new model on the held-out cases")
        after = score(load_package(staging), checked, lambda f: say("after", f))
        accepted = bool(held) and is_better(before, after)
        _write_local(staging, base, held, train_cases, before, after, accepted, train_minutes)
        (staging / "checkpoint.pt").unlink(missing_ok=True)
        target = root / f"{base.id}-{version}"
        swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if accepted:
        set_default(base.id, version)
    say("done", 1.0)
    return {"model": f"{base.id}@{version}", "parent": f"{base.id}@{base.version}", "accepted": accepted,
            "before": before["mean"], "after": after["mean"], "training_cases": len(train_cases),
            "heldout_cases": [c.id for c in held], "skipped": skipped, "train_minutes": round(train_minutes, 2),
            "path": str(target)}


def _readable(library: CaseLibrary) -> tuple[list, list[str]]:
    """The library's cases whose files read back (image and labels on one grid); the others by name and reason."""
    cases, problems = library.cases()
    good = []
    for case in cases:
        try:
            image, labels = case.image(), case.labels()
            if image.shape != labels.shape:
                raise MskaiError("image and labels differ in size")
            good.append(case)
        except MskaiError as exc:
            problems.append(f"{case.id}: {exc}")
    return good, problems


def _train(base, version, train_cases, held, staging: Path, minutes, threads, seed, lr, say):
    from mskai.segment.labels import labels_from_table
    from mskai.training.segment import TrainConfig, train
    from mskai.training.segment_data import FolderPatches, load_case

    spacing, intensity, patch = base.input["spacing_mm"], base.input["intensity"], int(base.input["patch_size"][0])
    load = lambda case: load_case(case.folder / "image.nrrd", case.folder / "labels.nrrd", spacing, intensity)  # noqa: E731
    train_set = [load(c) for c in train_cases]
    val_set = [load(c) for c in held] or train_set[:1]  # one case: validated on itself (and kept aside)
    config = TrainConfig(spacing_mm=float(spacing[0]), patch=patch, batch_size=1, iterations=100_000,
                         eval_every=100, lr=lr, patience=4, seed=seed, threads=threads, model_id=base.id,
                         version=version, demo=bool(base.metadata["demo"]),
                         training_data=f"{base.metadata.get('training_data', '')} Fine-tuned on this computer on "
                                       f"{len(train_cases)} corrected cases.".strip(),
                         licence=base.metadata.get("licence", ""), bf16=True, max_minutes=minutes)
    start = time.monotonic()
    say("train", 0.0, f"training for up to {minutes:g} min on {len(train_set)} cases")

    def progress(message):
        say("train", min(1.0, (time.monotonic() - start) / (60 * minutes)), message)

    train(FolderPatches(train_set, patch, seed), val_set, config, staging, init_package=base, progress=progress,
          table=labels_from_table(base.metadata["labels"]))


def _write_local(staging: Path, base, held, train_cases, before, after, accepted, train_minutes):
    """Record the lineage and the held-out figures in the new package's metadata."""
    import json

    from mskai.models.package import METADATA, load_package
    from mskai.outputs import atomic_output

    metadata = json.loads((staging / METADATA).read_text())
    parent_local = base.metadata.get("local", {})
    metadata["local"] = {"parent": f"{base.id}@{base.version}",
                         "lineage": [*parent_local.get("lineage", []), f"{base.id}@{base.version}"],
                         "training_cases": len(train_cases), "heldout_cases": [c.id for c in held],
                         "before": before["mean"], "after": after["mean"], "accepted": accepted,
                         "train_minutes": round(train_minutes, 2)}  # wall clock
    with atomic_output(staging / METADATA) as tmp:
        tmp.write_text(json.dumps(metadata, indent=2))
    load_package(staging)  # what is installed is a valid package
