"""The `mskai` command line (also `python -m mskai`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mskai import MskaiError, __version__, check_range
from mskai.text import escape_controls


def _series_summary(index, series, patient_number, study_number, show_identifiers) -> dict:
    from mskai.dicom.series import plan_volumes

    entry = {
        "index": index,
        "patient": patient_number,  # numbered in listing order: groups series without naming anyone
        "study": study_number,
        "number": series.number,
        "modality": series.modality,
        "files": len(series.files),
        "kind": "image" if series.is_image else series.sop_class_name or "non-image",
    }
    if show_identifiers:  # descriptions are free text that may name the patient (PS3.15 removes them too)
        entry.update(patient_name=series.patient_name, patient_id=series.patient_id, study_date=series.study_date,
                     study_uid=series.study_uid, series_uid=series.uid, study_description=series.study_description,
                     description=series.description)
    if series.is_image:
        try:
            plans = plan_volumes(series)
        except MskaiError as exc:
            entry["problem"] = str(exc)
            plans = []
        entry["volumes"] = [
            {"label": p.label, "plane": p.plane.name if p.plane else None,
             "obliquity_deg": round(p.plane.obliquity_deg, 1) if p.plane else None,
             "size": list(p.shape), "problem": p.problem or p.uneven_gaps}
            for p in plans
        ]
    return entry


def _print_listing(entries):
    last_patient = last_study = None
    for e in entries:
        if e["patient"] != last_patient:
            name = f"  {e['patient_name']} ({e['patient_id']})" if "patient_name" in e else ""
            print(f"Patient {e['patient']}{name}")
            last_patient, last_study = e["patient"], None
        if e["study"] != last_study:
            date = f" {e['study_date']}" if e.get("study_date") else ""
            text = f" {e['study_description']!r}" if "study_description" in e else ""
            print(f"  Study {e['study']}{date}{text}")
            last_study = e["study"]
        text = f" {e['description']!r}" if "description" in e else ""
        head = f"    [{e['index']}] #{e['number'] if e['number'] is not None else '-'} {e['modality']:<3}{text}"
        if e["kind"] != "image":
            print(f"{head}  {e['kind']}, {e['files']} files (not an image series)")
            continue
        vols = e.get("volumes", [])
        planes = sorted({v["plane"] for v in vols if v["plane"]})
        sizes = sorted({"x".join(map(str, v["size"])) for v in vols})
        print(f"{head}  {'/'.join(planes) or '?'}  {', '.join(sizes)}  {len(vols)} volume(s), {e['files']} files")
        if "series_uid" in e:
            print(f"        UID {e['series_uid']}")
        if e.get("problem"):
            print(f"        problem: {e['problem']}")
        if len(vols) > 1 or any(v["problem"] for v in vols):
            for n, v in enumerate(vols, 1):
                note = f"  problem: {v['problem']}" if v["problem"] else ""
                print(f"        v{n}: {v['label']}{note}")


def _print_problems(problems):
    if problems:
        print(f"Skipped {len(problems)} file(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)


def cmd_ls(args):
    from mskai.dicom import scan_source

    report = scan_source(args.source)
    patients, studies = {}, {}
    entries = [_series_summary(i, s, patients.setdefault((s.patient_id, s.patient_name), len(patients) + 1),
                               studies.setdefault(s.study_uid, len(studies) + 1), args.show_identifiers)
               for i, s in enumerate(report.require_series(args.source), 1)]
    if args.json:
        print(json.dumps({"series": entries, "problems": [vars(p) for p in report.problems]}, indent=2))
    else:
        _print_listing(entries)
    _print_problems(report.problems)
    return 0


def _select_series(report, source, key):
    series = report.require_series(source)
    if key:
        return report.find(key)
    images = [s for s in series if s.is_image]
    if len(images) != 1:
        raise MskaiError(f"{source} holds {len(images)} image series; choose one with --series (see `mskai dicom ls`)")
    return images[0]


def _output_paths(out: Path, count: int):
    if count == 1:
        return [out]
    name = out.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else out.suffix
    stem = name[: len(name) - len(suffix)]
    return [out.with_name(f"{stem}_v{n}{suffix}") for n in range(1, count + 1)]


def _select_plans(args):
    """The volume plans of the chosen series (all, or the one --volume names) and the scan report."""
    from mskai.dicom import plan_volumes, scan_source

    report = scan_source(args.source)
    series = _select_series(report, args.source, args.series)
    plans = plan_volumes(series)
    if args.volume is not None:
        if not 1 <= args.volume <= len(plans):
            raise MskaiError(f"--volume must be 1-{len(plans)} for this series")
        plans = [plans[args.volume - 1]]
    return plans, report


def _input_volume(args):
    """The one volume a command works on: a volume file, or a DICOM series (first volume unless --volume)."""
    from mskai.dicom import read_volume
    from mskai.io import VOLUME_SUFFIXES, read_volume_file, suffix_of

    if suffix_of(args.source) in VOLUME_SUFFIXES and Path(args.source).is_file():
        return read_volume_file(args.source)
    plans, report = _select_plans(args)
    _print_problems(report.problems)
    return read_volume(plans[0], resample=args.resample)


def cmd_convert(args):
    """All volumes of the series, or none: every plan is checked first, the files appear together."""
    from mskai.dicom import read_volume
    from mskai.io import atomic_outputs, check_volume_path, write_volume

    check_volume_path(args.output)
    plans, report = _select_plans(args)
    for plan in plans:
        plan.check(resample=args.resample)
    outputs = _output_paths(Path(args.output), len(plans))
    lines = []
    with atomic_outputs(outputs) as temps:
        for plan, out, tmp in zip(plans, outputs, temps):
            volume = read_volume(plan, resample=args.resample)
            write_volume(volume, tmp)
            note = f" (resampled: {volume.meta['resampled']})" if volume.meta.get("resampled") else ""
            lines.append(f"{out}: {plan.label}, {'x'.join(map(str, volume.shape))}, "
                         f"spacing {' x '.join(f'{s:.3g}' for s in volume.spacing)} mm{note}")
            del volume
    print("\n".join(lines))
    _print_problems(report.problems)
    return 0


def cmd_index(args):
    from mskai.dicom import index_folder

    report = index_folder(args.folder, args.database)
    print(f"Indexed {args.folder} into {args.database}")
    _print_problems(report.problems)
    return 0


def cmd_anonymise(args):
    from mskai.dicom.anonymise import anonymise_folder

    report = anonymise_folder(args.source, args.output, seed=args.seed, retain_descriptors=args.retain_descriptors,
                              retain_safe_private=args.retain_safe_private)
    print(f"Wrote {len(report.written)} de-identified file(s) to {args.output}")
    if report.warnings:
        print(f"Warning for {len(report.warnings)} written file(s):", file=sys.stderr)
        for w in report.warnings[:5]:
            print(f"  {w}", file=sys.stderr)
        if len(report.warnings) > 5:
            print(f"  ... and {len(report.warnings) - 5} more", file=sys.stderr)
    _print_problems(report.problems)
    return 0 if report.written or not report.problems else 1


def cmd_synth_series(args):
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    volume = phantom(shape=tuple(args.shape), spacing=tuple(args.spacing), plane=args.plane, tilt_deg=args.tilt)
    paths = write_series(volume, args.folder, transfer_syntax=args.syntax, multiframe=args.multiframe,
                         description=f"SYNTHETIC {args.plane} phantom")
    print(f"Wrote {len(paths)} file(s) of a synthetic {args.plane} series to {args.folder}")
    return 0


def _parse_slab(text):
    if not text:
        return None
    unit = "slices" if text.endswith("slices") else "mm"
    low, _, high = text.removesuffix(unit).partition(":")
    try:
        return float(low), float(high), unit
    except ValueError:
        raise MskaiError(f"--slab must look like -400:-50mm or 10:120slices, not {text!r}") from None


def _progress_printer(mode):
    """progress(stage, fraction): tqdm bars on a terminal, or JSON lines for the Slicer modules."""
    if mode == "json":
        return lambda stage, fraction: print(json.dumps({"stage": stage, "progress": round(fraction, 4)}),
                                             file=sys.stderr, flush=True)
    if mode == "none":
        return None
    from tqdm import tqdm

    bars = {}

    def show(stage, fraction):
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=100, desc=stage, unit="%", leave=False,
                                                             file=getattr(sys.stderr, "raw", sys.stderr)))
        bar.update(round(fraction * 100) - bar.n)
        if fraction >= 1:
            bar.close()

    return show


def _segment_options(args):
    from mskai.segment.infer import SegmentOptions
    from mskai.segment.postprocess import PostprocessOptions

    post = PostprocessOptions.from_settings(enabled=not args.no_postprocess, fill_holes=not args.no_fill_holes,
                                            anatomical=not args.no_anatomical_cleanup,
                                            min_island_fraction=args.min_island_fraction,
                                            max_components=args.max_components,
                                            min_extra_fraction=args.min_extra_fraction,
                                            min_volume_ml=args.min_volume_ml)
    return SegmentOptions(device=args.device, threads=args.threads, fast=args.fast, overlap=args.overlap,
                          batch_size=args.batch_size, slab=_parse_slab(args.slab),
                          check_compatibility=not args.no_input_check, confidence=args.confidence, postprocess=post)


def cmd_segment(args):
    """Options, the output folder and the model are checked before the series is read and segmented."""
    from mskai.segment.outputs import parse_formats
    from mskai.segment.run import segment_to_folder

    formats = parse_formats(args.formats)
    options = _segment_options(args)
    out = segment_to_folder(lambda: _input_volume(args), args.model, args.output, options=options, formats=formats,
                            dicom_seg=args.dicom_seg, progress=_progress_printer(args.progress), inputs=[args.source])
    report = out["report"]
    if report["model"]["demo"]:
        print("NOTE: demo model trained on synthetic data - not for clinical use.", file=sys.stderr)
    with_confidence = report.get("confidence") is not None
    print(f"{'bone':<8} {'volume mL':>10} {'surface cm2':>12}" + (f" {'confidence':>10}" if with_confidence else ""))
    for bone in report["bones"]:
        area = bone["surface_area_cm2"]
        line = f"{bone['name']:<8} {bone['volume_ml']:>10.1f} {area if area is not None else '-':>12}"
        if with_confidence:
            mean = bone["mean_confidence"]
            line += f" {f'{mean:.2f}' if mean is not None else '-':>10}"
        print(line)
    print(f"Wrote {sum(len(v) if isinstance(v, list) else 1 for v in out['files'].values())} files to {args.output} "
          f"in {sum(report['timings_s'].values()):.1f} s")
    return 0


def _batch_progress(mode, unit):
    """After each finished unit, on stderr: a progress bar with counts and throughput, or a JSON line for the
    Slicer modules' launcher."""
    def show(row, counts):
        finished = counts["done"] + counts["failed"] + counts["skipped"]
        if mode == "json":
            print(json.dumps({"stage": "batch", "progress": round(finished / counts["total"], 4), unit: row[unit],
                              "status": row["status"], **{k: counts[k] for k in ("done", "failed", "pending")}}),
                  file=sys.stderr, flush=True)
        elif mode == "bar":
            filled = round(30 * finished / counts["total"])
            error = f": {row['error']}" if row.get("error") else ""
            took = f" in {row['seconds']:.1f} s" if isinstance(row.get("seconds"), (int, float)) else ""
            print(f"[{'#' * filled}{'.' * (30 - filled)}] {counts['done']} done, {counts['failed']} failed, "
                  f"{counts['pending']} left, {counts['per_minute']:.1f} {unit}/min | {row[unit]} {row['status']}"
                  f"{took}{error}", file=sys.stderr, flush=True)
    return show


def _batch_start(mode):
    def show(where, count):
        if mode == "bar":
            engine = "a local Dask cluster" if where["scheduler"] == "local" else f"the Dask cluster {where['scheduler']}"
            dashboard = f"; dashboard: {where['dashboard']}" if where["dashboard"] else ""
            workers = f"{where['workers']} worker{'s' * (where['workers'] != 1)}"
            print(f"{count} to run on {engine} of {workers}{dashboard}", file=sys.stderr, flush=True)
    return show


def _cluster_options(args):
    from mskai.cluster import ClusterOptions

    return ClusterOptions(workers=args.workers, threads_per_worker=args.threads_per_worker,
                          memory_limit=args.memory_limit, scheduler=args.scheduler, retries=args.retries)


def _finish_batch(run, output):
    try:
        summary = run()
    except KeyboardInterrupt:
        print("mskai: error: interrupted; finished units are kept and listed in batch.json, run again with "
              "--resume to do the rest", file=sys.stderr)
        return 130
    print(f"{len(summary['done'])} done, {len(summary['skipped'])} skipped (already done), "
          f"{len(summary['failed'])} failed; manifest: {Path(output) / 'batch.json'}")
    return 1 if summary["failed"] else 0


def cmd_batch_classify(args):
    """The ACL of every study: its sagittal series chosen as `mskai classify` does; failures reported."""
    from mskai.batch import run_batch_classify

    return _finish_batch(lambda: run_batch_classify(args.source, args.output, resume=args.resume, model=args.model,
                                                    identifiers=args.show_identifiers,
                                                    progress=_batch_progress(args.progress, "study"),
                                                    on_start=_batch_start(args.progress),
                                                    cluster=_cluster_options(args)), args.output)


def cmd_batch_segment(args):
    """Every matching series into its own folder; failures are reported and the batch goes on."""
    from mskai.batch import run_batch
    from mskai.segment.outputs import parse_formats

    formats, options, cluster = parse_formats(args.formats), _segment_options(args), _cluster_options(args)
    return _finish_batch(lambda: run_batch(args.source, args.output, resume=args.resume,
                                           modality=args.modality or None, model=args.model,
                                           identifiers=args.show_identifiers,
                                           progress=_batch_progress(args.progress, "series"),
                                           on_start=_batch_start(args.progress), formats=formats,
                                           options=options, cluster=cluster), args.output)


def cmd_classify(args):
    from mskai.acl.run import classify_to_folder

    report = classify_to_folder(args.source, args.output, model=args.model, series_key=args.series,
                                show_descriptions=args.show_descriptions, progress=_progress_printer(args.progress))
    if report["model"]["demo"]:
        print("NOTE: demo model trained on synthetic data - not for clinical use.", file=sys.stderr)
    print(f"Series: {report['series']['reason']}")
    for name, p in sorted(report["probabilities"].items(), key=lambda item: -item[1]):
        print(f"  {name:<17} {p:6.3f}")
    print(f"ACL: {report['predicted']} (key slice {report['key_slice'] + 1}); wrote report.json, cam.nrrd and "
          f"key_slice.png to {args.output}")
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
    from mskai.acl.train import prepared_cache_dir

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
    from mskai.acl.preprocess import fit_histogram_landmarks
    from mskai.acl.run import case_sets
    from mskai.acl.train import PreparedSet, TrainAclConfig, train_acl
    from mskai.models.package import check_name

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
        from mskai.acl.model import load_backbone
        from mskai.acl.train import network_spec
        from mskai.models.networks import build_network

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
    from mskai.acl.infer import TASK
    from mskai.acl.metrics import format_table
    from mskai.acl.run import case_sets, evaluate_package
    from mskai.models.registry import find_model

    source = _acl_source(args)
    check_range("--bootstrap", args.bootstrap, 0, 100_000, integer=True)
    package = find_model(args.model, task=TASK)
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


def cmd_evaluate(args):
    import contextlib

    from mskai.io import atomic_output
    from mskai.segment.metrics import evaluate
    from mskai.segment.outputs import read_segmentation

    with atomic_output(args.json) if args.json else contextlib.nullcontext() as json_tmp:
        rows = evaluate(read_segmentation(args.segmentation), read_segmentation(args.reference))
        print(f"{'bone':<8} {'Dice':>6} {'vol mL':>8} {'ref mL':>8} {'err mL':>8} {'HD95 mm':>8} {'ASD mm':>7}")
        for r in rows:
            print(f"{r['name']:<8} {r['dice']:>6.3f} {r['volume_ml']:>8.1f} {r['reference_volume_ml']:>8.1f} "
                  f"{r['volume_error_ml']:>8.1f} {r['hd95_mm']:>8.2f} {r['asd_mm']:>7.2f}")
        for r in rows:
            for side, key in (("reference", "reference_inside"), ("segmentation", "prediction_inside")):
                if r[key] is not None and r[key] < 0.999:
                    print(f"warning: {100 * (1 - r[key]):.1f} % of the {side}'s {r['name']} lies outside the other's "
                          "field of view: Dice covers the overlap only", file=sys.stderr)
        if json_tmp:
            json_tmp.write_text(json.dumps(rows, indent=2))
    return 0


def cmd_train_seg(args):
    import numpy as np

    from mskai.models.registry import find_model
    from mskai.segment.dataset import FolderPatches, nnunet_label_remap, find_pairs, load_case
    from mskai.models.package import check_name
    from mskai.segment.train import INTENSITY, TrainConfig, train

    check_range("validation fraction", args.val_fraction, 0, 0.9)
    if args.threads is not None:
        check_range("--threads", args.threads, 1, 256, integer=True)
    check_name(args.id or "mskai-bones", args.version)
    init = find_model(args.init, task="segmentation") if args.init else None
    spacing = init.input["spacing_mm"] if init else [args.spacing] * 3
    intensity = init.input["intensity"] if init else INTENSITY
    config = TrainConfig(spacing_mm=float(spacing[0]), patch=args.patch, batch_size=args.batch_size,
                         iterations=args.iterations, eval_every=args.eval_every, lr=args.lr, patience=args.patience,
                         seed=args.seed, threads=args.threads, model_id=args.id or (init.id if init else "mskai-bones"),
                         version=args.version, training_data=args.training_data)
    pairs = find_pairs(args.data)
    remap = nnunet_label_remap(Path(args.data))
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, round(len(pairs) * args.val_fraction)) if len(pairs) > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:] if len(pairs) > 1 else order
    print(f"{len(train_idx)} training and {len(val_idx)} validation cases from {args.data}")
    cases = [load_case(*pairs[i], spacing, intensity, remap) for i in train_idx]
    val = [load_case(*pairs[i], spacing, intensity, remap) for i in val_idx] or cases[:1]
    train(FolderPatches(cases, args.patch, args.seed), val, config, args.output, init_package=init)
    print(f"Model package written to {args.output}")
    return 0


def cmd_models_list(args):
    from mskai.models.registry import bundled_dir, list_models, user_dir

    models = list_models()
    for m in models:
        demo = "  [demo, synthetic training data]" if m.metadata["demo"] else ""
        print(f"{m.id}@{m.version}  {m.metadata['task']}  {m.source}{demo}")
    if not models:
        print(f"No models in {user_dir()} or {bundled_dir()}")
    return 0


def cmd_models_install(args):
    from mskai.models.registry import install_model

    package = install_model(args.source, sha256=args.sha256)
    print(f"Installed {package.id}@{package.version} into {package.source}")
    return 0


def cmd_synth_knee(args):
    import numpy as np

    from mskai.io import write_volume
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, KneeLabelSource, synthetic_case

    source = KneeLabelSource(args.labels or BUNDLED_KNEE_LABELS)
    rng = np.random.default_rng(args.seed)
    image, labels = synthetic_case(source, rng, tuple(args.spacing), extent_mm=(150, 150, 120), plane=args.plane,
                                   centre=source.centre_mm)
    paths = write_series(image, args.folder, patient=("SYNTHETIC^KNEE", "SYNTH-KNEE"),
                         description=f"SYNTHETIC {args.plane} knee")
    print(f"Wrote {len(paths)} file(s) of a synthetic {args.plane} knee series to {args.folder}")
    if args.truth:
        write_volume(labels, args.truth)
        print(f"Wrote its true bone labels to {args.truth}")
    return 0


def cmd_synth_acl(args):
    from mskai.acl.synth import GRADES, acl_shape_subjects, write_acl_study

    planes = [p.strip() for p in args.planes.split(",") if p.strip()]
    bad = [p for p in planes if p not in ("sagittal", "coronal", "axial")]
    if bad or not planes:
        raise MskaiError(f"--planes takes sagittal, coronal and/or axial, not {','.join(bad) or 'nothing'}")
    try:
        subjects = acl_shape_subjects(args.split)
        written = write_acl_study(args.folder, args.grade, args.seed, planes=planes, subjects=subjects)
    except (FileNotFoundError, ValueError) as exc:
        raise MskaiError(str(exc)) from None
    for plane, paths in written.items():
        print(f"Wrote {len(paths)} file(s) of a synthetic {plane} knee series to {Path(paths[0]).parent}")
    print(f"ACL grade {args.grade} ({GRADES[args.grade]}), seed {args.seed}, knee shapes of the OAI {args.split} "
          "subjects. Synthetic: demo, not for clinical use.")
    return 0


def _add_series_arguments(p, volume_help):
    p.add_argument("--series", help="Series Instance UID or the number `mskai dicom ls` shows in brackets")
    p.add_argument("--volume", type=int, help=volume_help)
    p.add_argument("--resample", action="store_true",
                   help="resample unequally spaced slices onto an even grid instead of refusing")


def _add_batch_arguments(p, unit):
    units = {"series": "series", "study": "studies"}[unit]
    p.add_argument("source", help="Slicer DICOM database (folder or ctkDICOM.sql) or a folder tree of DICOM files")
    p.add_argument("-o", "--output", required=True,
                   help=f"output folder: one sub-folder per {unit}, the manifest batch.json/.csv")
    p.add_argument("--resume", action="store_true", help=f"skip {units} whose output folder is complete")
    p.add_argument("--show-identifiers", action="store_true",
                   help=f"also put each {unit.title()} Instance UID in the manifest (it identifies the examination)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help=f"a progress line per {unit} (bar), JSON lines (json) or nothing")
    g = p.add_argument_group("where it runs (Dask)")
    g.add_argument("--workers", type=int, help="local worker processes (default: one per core, ~3 GB each)")
    g.add_argument("--threads-per-worker", type=int, default=1, help=f"{units} a local worker runs at once")
    g.add_argument("--memory-limit", default="auto",
                   help="per local worker, e.g. 4GB; a worker above it is restarted and its task retried "
                        "(auto: the machine's memory shared; 0: no limit)")
    g.add_argument("--retries", type=int, default=2,
                   help=f"times a local worker's {unit} is run again after the worker died, before it is failed")
    g.add_argument("--scheduler", help="tcp://host:port of an existing Dask cluster to run on instead (workers need "
                                       "mskai and the same paths to the input and output)")


def _add_segment_options(p):
    """Model, device, speed, slab, clean-up, output formats and confidence: shared by segment and batch segment."""
    p.add_argument("--model", default="mskai-bones-demo", help="model id[@version] or package path")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--fast", action="store_true", help="coarser model spacing: faster on a CPU, less detail")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (0-0.9)")
    p.add_argument("--batch-size", type=int, default=2, help="sliding windows per batch")
    p.add_argument("--slab", help="segment only an inferior-superior range: LOW:HIGHmm (patient S) or LOW:HIGHslices")
    p.add_argument("--no-postprocess", action="store_true", help="keep the raw network output")
    p.add_argument("--min-island-fraction", type=float, help="drop pieces below this fraction of a bone (0.01)")
    p.add_argument("--max-components", type=int, help="keep this many largest pieces per bone (2; 0 = all)")
    p.add_argument("--min-extra-fraction", type=float,
                   help="keep a further piece only if at least this fraction of the bone's largest (0.25)")
    p.add_argument("--min-volume-ml", type=float, help="drop pieces smaller than this many mL (1.0)")
    p.add_argument("--no-fill-holes", action="store_true")
    p.add_argument("--no-anatomical-cleanup", action="store_true",
                   help="clean each bone on its own (stray pieces become background) instead of with the whole field "
                        "of view (stray pieces join the bone they touch, the femur kept above the tibia, a second "
                        "piece only beside the first, no hip bone below the femur or in a knee's field of view)")
    p.add_argument("--formats", default="nii.gz,nrrd,seg.nrrd,stl,ply,obj,report",
                   help="outputs: nii.gz, nrrd, seg.nrrd, stl, ply, obj, report")
    p.add_argument("--no-input-check", action="store_true", help="run even on a modality/plane the model does not expect")
    p.add_argument("--confidence", action="store_true",
                   help="also write confidence.nrrd (per voxel, percent: 100 = the network is sure of one class, "
                        "0 = unsure or outside --slab) and each bone's mean confidence in the report")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mskai", description="SlicerAutoSegMSK engine: MSK MRI tools.")
    parser.add_argument("--version", action="version", version=f"mskai {__version__}")
    top = parser.add_subparsers(dest="command", required=True)

    dicom = top.add_parser("dicom", help="find, convert, index and anonymise DICOM series").add_subparsers(
        dest="dicom_command", required=True)
    p = dicom.add_parser("ls", help="list patients, studies and series of a folder or a Slicer DICOM database")
    p.add_argument("source", help="folder, DICOM file, or Slicer DICOM database folder / ctkDICOM.sql")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show-identifiers", action="store_true",
                   help="also show patient names, IDs, dates and UIDs (hidden by default)")
    p.set_defaults(func=cmd_ls)

    p = dicom.add_parser("convert", help="write a series' volume(s) as .nrrd / .nii / .nii.gz")
    p.add_argument("source", help="folder, DICOM file, or Slicer DICOM database")
    p.add_argument("output", help="out.nrrd | out.nii.gz; a series with several volumes gets _v1, _v2, ...")
    _add_series_arguments(p, volume_help="write only this volume (1-based) of a multi-volume series")
    p.set_defaults(func=cmd_convert)

    p = dicom.add_parser("index", help="add a folder's DICOM files to a Slicer DICOM database (created if needed)")
    p.add_argument("folder")
    p.add_argument("database", help="database folder (ctkDICOM.sql is created inside)")
    p.set_defaults(func=cmd_index)

    p = dicom.add_parser("anonymise", aliases=["anonymize"], help="write de-identified copies (PS3.15 basic profile)")
    p.add_argument("source")
    p.add_argument("output")
    p.add_argument("--seed", help="secret that makes fake values and UID mapping repeatable")
    p.add_argument("--retain-descriptors", action="store_true",
                   help="keep study/series descriptions and protocol names, patient names masked (Clean Descriptors)")
    p.add_argument("--retain-safe-private", action="store_true",
                   help="keep private attributes the files themselves declare safe (Retain Safe Private)")
    p.set_defaults(func=cmd_anonymise)

    p = top.add_parser("segment", help="segment the lower-limb bones of a DICOM series or a volume file")
    p.add_argument("source", help="DICOM folder, Slicer DICOM database, or .nrrd / .nii.gz volume")
    p.add_argument("-o", "--output", required=True, help="output folder")
    _add_series_arguments(p, volume_help="which volume (1-based) of a multi-volume series (default: the first)")
    _add_segment_options(p)
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM SEG referencing the source series (it carries the patient's identity)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    p.set_defaults(func=cmd_segment)

    batch = top.add_parser("batch", help="process every series of a DICOM database or folder tree").add_subparsers(
        dest="batch_command", required=True)
    p = batch.add_parser("segment", help="segment each series into its own folder (pseudonymous names), with a report")
    _add_batch_arguments(p, "series")
    p.add_argument("--modality", default="MR", help="only series of this modality ('' for all; default MR)")
    _add_segment_options(p)
    p.set_defaults(func=cmd_batch_segment)
    p = batch.add_parser("classify", help="classify the ACL of each study (its sagittal series), with a report")
    _add_batch_arguments(p, "study")
    p.add_argument("--model", default="mskai-acl-demo", help="ACL model id[@version] or package path")
    p.set_defaults(func=cmd_batch_classify)

    p = top.add_parser("classify", help="classify the ACL on the sagittal series of a study (or a series, database)")
    p.add_argument("source", help="study or series folder, Slicer DICOM database, or a sagittal .nrrd/.nii.gz volume")
    p.add_argument("-o", "--output", required=True, help="output folder: report.json, cam.nrrd, key_slice.png")
    p.add_argument("--series", help="use this series (UID or the number `mskai dicom ls` shows) instead of choosing")
    p.add_argument("--model", default="mskai-acl-demo", help="ACL model id[@version] or package path")
    p.add_argument("--show-descriptions", action="store_true",
                   help="name the chosen series by its description (free text that may identify the patient)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="none")
    p.set_defaults(func=cmd_classify)

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
    p.add_argument("--model", default="mskai-acl-demo", help="ACL model id[@version] or package path")
    p.add_argument("-o", "--output", required=True, help="folder for evaluation.json, roc.png, confusion.png")
    p.add_argument("--split", choices=["test", "all"], default="test",
                   help="the held-out test part of the subject split (default) or every case")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC confidence intervals")
    p.set_defaults(func=cmd_evaluate_acl)

    p = top.add_parser("evaluate", help="Dice, volume error, HD95 and surface distance per bone against a reference")
    p.add_argument("segmentation", help="label map (.nii.gz/.nrrd), .seg.nrrd or DICOM SEG")
    p.add_argument("reference", help="the reference, in any of the same formats")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = top.add_parser("train-seg", help="train or fine-tune a bone model from image + label pairs")
    p.add_argument("data", help="folder: nnU-Net raw layout, images/ + labels/, or <case>_image + <case>_label")
    p.add_argument("-o", "--output", required=True, help="folder for the model package, log and curves")
    p.add_argument("--init", help="fine-tune this model (id or package path) instead of starting from scratch")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--patience", type=int, default=6, help="evaluations without improvement before stopping")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--spacing", type=float, default=1.0, help="model voxel size in mm (new models)")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id", help="model id of the new package")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--training-data", default="", help="a description of the training data for the package")
    p.set_defaults(func=cmd_train_seg)

    models = top.add_parser("models", help="list and install model packages").add_subparsers(dest="models_command",
                                                                                             required=True)
    p = models.add_parser("list", help="bundled and user-installed models")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("install", help="install a package folder, .zip, or http(s) URL into the user models folder")
    p.add_argument("source")
    p.add_argument("--sha256", help="expected sha256: of the file for a URL (required) or a .zip, of the weights "
                                    "file for a package folder")
    p.set_defaults(func=cmd_models_install)

    synth = top.add_parser("synth", help="synthetic sample data").add_subparsers(dest="synth_command", required=True)
    p = synth.add_parser("series", help="write a synthetic MR phantom series")
    p.add_argument("folder")
    p.add_argument("--plane", choices=["sagittal", "coronal", "axial"], default="sagittal")
    p.add_argument("--tilt", type=float, default=0.0, help="rotate the slices by this many degrees (oblique)")
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 24])
    p.add_argument("--spacing", type=float, nargs=3, default=[0.6, 0.6, 3.0])
    p.add_argument("--syntax", default="explicit-le", help="explicit-le, explicit-be, rle, jpeg-ls, jpeg2000, ...")
    p.add_argument("--multiframe", action="store_true", help="one Enhanced MR file instead of one file per slice")
    p.set_defaults(func=cmd_synth_series)
    p = synth.add_parser("knee", help="write a synthetic knee MR series rendered from the bundled knee label map")
    p.add_argument("folder")
    p.add_argument("--plane", choices=["sagittal", "coronal", "axial"], default="sagittal")
    p.add_argument("--spacing", type=float, nargs=3, default=[0.6, 0.6, 1.5], help="voxel size in mm (i j k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", help="also write the true bone label map here (.nii.gz / .nrrd)")
    p.add_argument("--labels", help="another knee label map (pymskt encoding) to render from")
    p.set_defaults(func=cmd_synth_knee)
    p = synth.add_parser("acl", help="write a synthetic knee MR study with an ACL of a given grade (a series per plane)")
    p.add_argument("folder")
    p.add_argument("--grade", type=int, choices=range(4), required=True,
                   help="0 healthy, 1 minor strain, 2 partial rupture, 3 complete rupture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--planes", default="sagittal", help="comma-separated: sagittal, coronal, axial")
    p.add_argument("--split", choices=["train", "val", "test"], default="test",
                   help="OAI subjects whose knee shapes may be used (test: never trained on)")
    p.set_defaults(func=cmd_synth_acl)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with mskai's one-line error format."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"mskai: error: {message}\n")


class _EscapingWriter:
    """A text stream wrapper that escapes control characters; ``raw`` is the wrapped stream."""

    def __init__(self, raw):
        self.raw = raw

    def write(self, text):
        return self.raw.write(escape_controls(text))

    def __getattr__(self, name):
        return getattr(self.raw, name)


def _run(args) -> int:
    try:
        return args.func(args)
    except MskaiError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        print("mskai: error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        message = "out of memory; try --fast, a slab (--slab) or a machine with more memory"
    except RecursionError:
        message = "input nested too deeply to process"
    except OSError as exc:  # disk full, permissions, vanished files
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
    except Exception as exc:  # a bug: still one line; MSKAI_DEBUG=1 shows the traceback
        if os.environ.get("MSKAI_DEBUG"):
            raise
        message = f"unexpected {exc.__class__.__name__}: {exc} (please report it; MSKAI_DEBUG=1 shows details)"
    print(f"mskai: error: {message}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _EscapingWriter(sys.stdout), _EscapingWriter(sys.stderr)
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        sys.stdout, sys.stderr = streams


if __name__ == "__main__":
    sys.exit(main())
