"""`mskai classify`, `mskai acl-signs`, `mskai train-acl` and `mskai evaluate-acl`."""

from __future__ import annotations

import sys
from pathlib import Path

from mskai import MskaiError, check_range
from mskai.cli.common import print_demo_note, progress_printer
from mskai.models.tasks import ACL_CLASSIFICATION, ACL_MODEL


def cmd_classify(args):
    from mskai.acl.run import classify_to_folder

    report = classify_to_folder(args.source, args.output, model=args.model, series_key=args.series,
                                show_descriptions=args.show_descriptions, progress=progress_printer(args.progress))
    print_demo_note(report)
    print(f"Series: {report['series']['reason']}")
    for name, p in sorted(report["probabilities"].items(), key=lambda item: -item[1]):
        print(f"  {name:<17} {p:6.3f}")
    if "anatomy" in report:
        print(f"  (from the {report['probabilities_source']})")
        _print_signs(report["anatomy"])
    if report["predicted"] == "indeterminate":
        print(f"ACL: indeterminate: {report['indeterminate_reason']}")
    print(f"ACL: {report['predicted']} (key slice {report['key_slice'] + 1}); wrote "
          f"{', '.join(report['files'].values())} and report.json to {args.output}")
    return 0


def _print_signs(anatomy: dict):
    for name, value in (anatomy["signs"] or {}).items():
        print(f"  {name:<24} {value:10.3f}")


def cmd_acl_signs(args):
    """Grade a (corrected) ligament segmentation of an image again from its tear signs."""
    import json

    from mskai.acl.anatomy import describe, reread_anatomy
    from mskai.models.registry import resolve_model
    from mskai.volume_files import read_volume_file

    package = resolve_model(args.model, ACL_CLASSIFICATION)
    anatomy = reread_anatomy(args.segmentation, read_volume_file(args.image), package)
    _print_signs(anatomy)
    print(f"ACL from the tear signs: {describe(anatomy)}")
    if args.json:
        from mskai.outputs import atomic_output

        with atomic_output(Path(args.json)) as tmp:
            tmp.write_text(json.dumps(anatomy, indent=2))
    return 0


def _acl_source(args) -> dict:
    """The one dataset option given, after the options every ACL data command shares are checked."""
    given = {k: v for k, v in (("csv", args.csv), ("mrnet", args.mrnet), ("kneemri", args.kneemri)) if v}
    if len(given) + bool(args.synthetic) != 1:
        raise MskaiError("Give exactly one of --csv, --mrnet, --kneemri or --synthetic N")
    if args.synthetic:
        check_range("--synthetic", args.synthetic, 1, 1_000_000, integer=True)
    check_range("--workers", args.workers, 1, 256, integer=True)
    return given


def _acl_cache(args):
    """Where prepared cases are cached (the user's cache folder unless --cache), or None with --no-cache; said
    on stderr, so that a user knows what to remove."""
    from mskai.training.acl import prepared_cache_dir

    if args.no_cache:
        return None
    cache = Path(args.cache).expanduser() if args.cache else prepared_cache_dir()
    print(f"Prepared cases are cached in {cache} (--no-cache: not at all; --cache DIR: elsewhere)", file=sys.stderr)
    return cache


def _stage_numbers(text: str, name: str) -> tuple:
    """"1,1,1,1" -> (1, 1, 1, 1); a clear error for anything else."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MskaiError(f"--{name} takes whole numbers separated by commas (e.g. "
                         f"{'1,1,1,1' if name == 'layers' else '16,32,64,128'}), not {text[:40]!r}") from None


def _acl_preprocessing(args, landmarks=None):
    from mskai.acl.preprocess import AclPreprocessing

    return AclPreprocessing(intensity=args.intensity, landmarks=landmarks, slices=args.slices,
                            depth=args.depth if args.depth is not None else (10 if args.slices == "nmf" else 16),
                            size=args.size, field_mm=args.field_mm or None, foreground_mask=args.foreground_mask,
                            kmeans_channel=args.kmeans_channel, joint_crop=args.joint_crop)


def cmd_train_acl(args):
    """Cases are split by subject (train/val/test) before anything is prepared; the package goes to --output."""
    from mskai.acl.infer import bone_segmenter_for
    from mskai.acl.intensity import fit_histogram_landmarks
    from mskai.training.acl_sets import case_sets
    from mskai.models.package import check_name
    from mskai.training.acl import PreparedSet, TrainAclConfig, train_acl

    source = _acl_source(args)
    config = TrainAclConfig(classes=args.classes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            patience=args.patience, pooling=args.pooling, layers=_stage_numbers(args.layers, "layers"),
                            widths=_stage_numbers(args.widths, "widths"), balance=args.balance,
                            augment=not args.no_augment, seed=args.seed, threads=args.threads)
    check_name(args.id, args.version)
    if args.backbone_weights and not Path(args.backbone_weights).is_file():
        raise MskaiError(f"--backbone-weights {args.backbone_weights} is not a file")
    preprocessing = _acl_preprocessing(args, [float(v) for v in range(11)] if args.intensity == "histogram" else None)
    if args.backbone_weights:  # the weights must fit the network before hours of preparing and training
        from mskai.models.mrnet import load_backbone
        from mskai.models.networks import build_network
        from mskai.training.acl import network_spec

        load_backbone(build_network(network_spec(config, preprocessing.channels)), args.backbone_weights)
    cache = _acl_cache(args)
    sets = case_sets(source, args.classes, args.seed, args.synthetic)
    landmarks = None
    if args.intensity == "histogram":  # learned on training cases only
        landmarks = fit_histogram_landmarks([load() for _, load, _, _ in sets["train"][:60]])
    preprocessing = _acl_preprocessing(args, landmarks)
    segmenter = bone_segmenter_for(preprocessing)
    train = PreparedSet.build(sets["train"], preprocessing, cache, segmenter, workers=args.workers)
    val = PreparedSet.build(sets["val"], preprocessing, cache, segmenter, workers=args.workers)
    described = (f"synthetic sagittal knees on real OAI bone shapes: {len(train.labels)} training cases of training "
                 f"subjects, {len(val.labels)} validation cases of other subjects" if args.synthetic
                 else f"{next(iter(source))} dataset")
    result = train_acl(train, val, config, preprocessing, args.output, package_id=args.id, version=args.version,
                       demo=bool(args.synthetic) or args.demo, training_data=described,
                       backbone_weights=args.backbone_weights)
    best = result["best"]
    print(f"Best epoch {best['epoch']}: validation AUC {best['auc']}, macro F1 {best['macro_f1']:.3f}; "
          f"package written to {args.output}")
    return 0


def cmd_evaluate_acl(args):
    from mskai.training.acl_sets import case_sets, evaluate_package
    from mskai.models.registry import find_model
    from mskai.training.acl_metrics import format_table

    source = _acl_source(args)
    check_range("--bootstrap", args.bootstrap, 0, 100_000, integer=True)
    package = find_model(args.model, task=ACL_CLASSIFICATION)
    classes = "four" if len(package.metadata["classes"]) == 4 else "binary"
    cache = _acl_cache(args)
    sets = case_sets(source, classes, args.seed, args.synthetic)
    items = sets["test"] if args.split == "test" else sets["train"] + sets["val"] + sets["test"]
    report = evaluate_package(package, items, args.output, n_boot=args.bootstrap, cache_dir=cache, workers=args.workers)
    print(format_table(report))
    if "binary" in report:
        ci = report["binary"]["auc_positive_ci"]
        print(f"Torn (partial or complete) vs intact: AUC {report['binary']['auc_positive']:.3f}"
              + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""))
    print(f"Wrote evaluation.json, roc.png and confusion.png to {args.output}")
    return 0


def _add_acl_data_arguments(p):
    p.add_argument("--csv", help="CSV of series path, label[, subject]")
    p.add_argument("--mrnet", help="MRNet-v1.0 folder (train/sagittal/NNNN.npy + train-acl.csv)")
    p.add_argument("--kneemri", help="KneeMRI folder (metadata.csv + .pck volumes)")
    p.add_argument("--synthetic", type=int, help="N synthetic training cases (held-out cases on other subjects)")
    p.add_argument("--seed", type=int, default=0, help="split and synthetic seed")
    p.add_argument("--cache", help="folder for prepared cases (default: the user's cache folder, "
                                   "$MSKAI_CACHE_DIR or ~/.cache/mskai)")
    p.add_argument("--no-cache", action="store_true", help="do not cache prepared cases")
    p.add_argument("--workers", type=int, default=1, help="processes preparing cases (not with --joint-crop)")


def add_commands(top):
    """`mskai classify`, `mskai acl-signs`, `mskai train-acl`, `mskai evaluate-acl`"""
    p = top.add_parser("classify", help="classify the ACL on the sagittal series of a study (or a series, database)")
    p.add_argument("source", help="study or series folder, Slicer DICOM database, or a sagittal .nrrd/.nii.gz volume")
    p.add_argument("-o", "--output", required=True, help="output folder: report.json, cam.nrrd, key_slice.png")
    p.add_argument("--series", help="use this series (UID or the number `mskai dicom ls` shows) instead of choosing")
    p.add_argument("--model", default=ACL_MODEL, help="ACL model id[@version] or package path")
    p.add_argument("--show-descriptions", action="store_true",
                   help="name the chosen series by its description (free text that may identify the patient)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="none")
    p.set_defaults(func=cmd_classify)

    p = top.add_parser("acl-signs", help="the ACL's tear signs and grade from a (corrected) ligament segmentation")
    p.add_argument("image", help="the sagittal volume (.nrrd/.nii.gz) the segmentation was drawn on")
    p.add_argument("segmentation", help="femur, tibia, acl, pcl: ligaments.seg.nrrd as `mskai classify` wrote it and "
                                        "Slicer saved it, a label map, or a DICOM SEG")
    p.add_argument("--model", default=ACL_MODEL, help="ACL model id[@version] or package path (its grader)")
    p.add_argument("--json", help="also write the signs and the grade to this JSON file")
    p.set_defaults(func=cmd_acl_signs)

    p = top.add_parser("train-acl", help="train an ACL classifier package (MRNet-style) from a dataset or synthetic knees")
    _add_acl_data_arguments(p)
    p.add_argument("-o", "--output", required=True, help="package folder to write")
    p.add_argument("--classes", choices=["four", "binary"], default="four")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=8, help="stop after this many epochs without a better val AUC")
    p.add_argument("--pooling", choices=["max", "attention"], default="max")
    p.add_argument("--layers", default="1,1,1,1", help="ResNet blocks per stage (2,2,2,2: ResNet-18)")
    p.add_argument("--widths", default="16,32,64,128", help="channels per stage (64,128,256,512: ResNet-18)")
    p.add_argument("--balance", choices=["sampler", "weights"], default="sampler")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--backbone-weights", help="safetensors file of ImageNet ResNet weights (torchvision layout)")
    p.add_argument("--threads", type=int)
    p.add_argument("--intensity", choices=["percentile", "histogram"], default="percentile")
    p.add_argument("--slices", choices=["central", "nmf"], default="central")
    p.add_argument("--depth", type=int, help="slices the network sees (16 central, 10 NMF)")
    p.add_argument("--size", type=int, default=128, help="in-plane pixels")
    p.add_argument("--field-mm", type=float, default=160.0, help="in-plane field of view (0: whole slice)")
    p.add_argument("--foreground-mask", action="store_true")
    p.add_argument("--kmeans-channel", action="store_true")
    p.add_argument("--joint-crop", action="store_true", help="crop around the notch found by the bone model")
    p.add_argument("--id", default="mskai-acl", help="package id")
    p.add_argument("--version", default="0.1.0", help="package version")
    p.add_argument("--demo", action="store_true", help="mark the package as a demo (always so for synthetic data)")
    p.set_defaults(func=cmd_train_acl)

    p = top.add_parser("evaluate-acl", help="evaluate an ACL package: per-class table, confusion matrix, AUC with CI")
    _add_acl_data_arguments(p)
    p.add_argument("--model", default=ACL_MODEL, help="ACL model id[@version] or package path")
    p.add_argument("-o", "--output", required=True, help="folder for evaluation.json, roc.png, confusion.png")
    p.add_argument("--split", choices=["test", "all"], default="test",
                   help="the held-out test part of the subject split (default) or every case")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC confidence intervals")
    p.set_defaults(func=cmd_evaluate_acl)

