"""ACL case sets for training and evaluation (synthetic knees on the OAI subject split, or a dataset's cases split
by subject) and the evaluation of a package on one of them (evaluation.json, ROC and confusion figures)."""

from __future__ import annotations

import functools
import json

import numpy as np

from mskai import MskaiError
from mskai.models.tasks import ACL_CLASSIFICATION


def synthetic_items(n: int, split: str, seed: int, classes: str = "four"):
    """``n`` synthetic sagittal knees, grades balanced, on the real bone shapes of one subject split
    ("train", "val" or "test": the OAI subject split of the bone model, never mixed)."""
    from mskai.acl import to_binary
    from mskai.synth.acl_knee import acl_shape_subjects

    subjects = tuple(acl_shape_subjects(split))
    items = []
    for i in range(n):
        grade = i % 4
        case_seed = seed * 1_000_003 + i
        load = functools.partial(synthetic_acl_knee_seeded, grade, case_seed, subjects)  # picklable: worker processes
        label = grade if classes == "four" else to_binary(grade)
        items.append((f"synthetic-{split}-{seed}-{i}-{grade}", load, label, f"{split}-{case_seed}"))
    return items


def synthetic_acl_knee_seeded(grade: int, seed: int, subjects):
    from mskai.synth.acl_knee import synthetic_acl_knee

    return synthetic_acl_knee(grade, np.random.default_rng(seed), subjects=list(subjects))


def dataset_items(args_source: dict, classes: str):
    """Cases from exactly one of csv / mrnet / kneemri ({"csv": path} ...) as training items."""
    from mskai.acl import to_binary
    from mskai.training.acl_data import read_csv, read_kneemri, read_mrnet

    kind, where = next(iter(args_source.items()))
    n_classes = 4 if classes == "four" else 2
    if kind == "csv":
        cases = read_csv(where, classes=n_classes)
    elif kind == "mrnet":
        if classes != "binary":
            raise MskaiError("MRNet labels ACL tears as yes/no: train it with --classes binary")
        cases = read_mrnet(where, split="train") + read_mrnet(where, split="valid")
    else:
        cases = read_kneemri(where, classes=4)
        if classes == "binary":
            cases = [type(c)(c.source, to_binary(c.label), c.subject) for c in cases]
    return cases


def items_of(cases):
    return [(c.source, c.load, c.label, c.subject) for c in cases]


def case_sets(source: dict, classes: str, seed: int = 0, synthetic=None) -> dict:
    """{"train", "val", "test"} item lists: synthetic cases on disjoint shape subjects (``synthetic``: number of
    training cases; a quarter as many for validation and for test), or a dataset split by subject (70/15/15)."""
    if synthetic:
        n_held = max(8, synthetic // 4)
        return {"train": synthetic_items(synthetic, "train", seed, classes),
                "val": synthetic_items(n_held, "val", seed + 1, classes),
                "test": synthetic_items(n_held, "test", seed + 2, classes)}
    from mskai.training.acl_data import stratified_subject_split

    parts = stratified_subject_split(dataset_items(source, classes), seed=seed)
    return {name: items_of(cases) for name, cases in parts.items()}


def evaluate_package(package, items, output, n_boot: int = 1000, cache_dir=None, progress=print, workers=1) -> dict:
    """Per-class precision/recall/F1, confusion matrix, AUC with bootstrap CI of ``package`` on ``items``;
    evaluation.json, roc.png and confusion.png in ``output`` (one unit)."""
    from mskai.acl.infer import bone_segmenter_for, preprocessing_of
    from mskai.models.registry import check_task
    from mskai.outputs import atomic_output, output_folder
    from mskai.training.acl import PreparedSet, scores
    from mskai.training.acl_metrics import classification_report, confusion_png, roc_png

    check_task(package, ACL_CLASSIFICATION)
    config = preprocessing_of(package)
    classes = package.metadata["classes"]
    with output_folder(output, "acl-evaluation") as staging:
        data = PreparedSet.build(items, config, cache_dir, bone_segmenter_for(config), progress, workers)
        if data.labels.max() >= len(classes):
            raise MskaiError(f"Labels go up to {data.labels.max()}, but {package.id} has {len(classes)} classes "
                             f"({', '.join(classes)})")
        net = package.build_network()
        _, probabilities = scores(net, data.images, data.labels, batch_size=8)
        report = classification_report(data.labels, probabilities, classes, n_boot=n_boot)
        if len(classes) == 4:  # the binary question (torn: partial or complete rupture) answered by the same model
            from mskai.acl import to_binary

            torn = np.stack([probabilities[:, :2].sum(1), probabilities[:, 2:].sum(1)], axis=1)
            binary = classification_report(np.array([to_binary(v) for v in data.labels]), torn, ["intact", "torn"],
                                           n_boot=n_boot)
            report["binary"] = {k: binary[k] for k in ("accuracy", "macro_f1", "auc_positive", "auc_positive_ci",
                                                       "confusion_matrix")}
        report["model"] = {"id": package.id, "version": package.version, "demo": package.metadata["demo"]}
        with atomic_output(staging / "evaluation.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2))
        roc_png(data.labels, probabilities, classes, staging / "roc.png")
        confusion_png(report["confusion_matrix"], classes, staging / "confusion.png")
    return report
