"""`mskai segment`, `mskai evaluate` and `mskai train-seg`; the segmentation options `batch segment` shares."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mskai import MskaiError, check_range
from mskai.cli.common import add_series_arguments, input_volume, print_demo_note, progress_printer
from mskai.models.tasks import BONE_MODEL, SEGMENTATION


def _parse_slab(text):
    if not text:
        return None
    unit = "slices" if text.endswith("slices") else "mm"
    low, _, high = text.removesuffix(unit).partition(":")
    try:
        return float(low), float(high), unit
    except ValueError:
        raise MskaiError(f"--slab must look like -400:-50mm or 10:120slices, not {text!r}") from None


def segment_options(args):
    from mskai.segment.infer import SegmentOptions
    from mskai.segment.postprocess import PostprocessOptions

    post = PostprocessOptions.from_settings(enabled=args.postprocess, fill_holes=args.fill_holes,
                                            anatomical=args.anatomical,
                                            min_island_fraction=args.min_island_fraction,
                                            max_components=args.max_components,
                                            min_extra_fraction=args.min_extra_fraction,
                                            min_volume_ml=args.min_volume_ml)
    return SegmentOptions(device=args.device, threads=args.threads, fast=args.fast, overlap=args.overlap,
                          batch_size=args.batch_size, slab=_parse_slab(args.slab),
                          check_compatibility=args.check_compatibility, confidence=args.confidence, postprocess=post)


def add_segment_options(p):
    """Model, device, speed, slab, clean-up, output formats and confidence: shared by segment and batch segment.
    Each option's dest is the name of the engine option it fills (SegmentOptions, PostprocessOptions)."""
    p.add_argument("--model", default=BONE_MODEL, help="model id[@version] or package path")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--fast", action="store_true", help="coarser model spacing: faster on a CPU, less detail")
    p.add_argument("--overlap", type=float, default=0.25, help="sliding-window overlap (0-0.9)")
    p.add_argument("--batch-size", type=int, default=2, help="sliding windows per batch")
    p.add_argument("--slab", help="segment only an inferior-superior range: LOW:HIGHmm (patient S) or LOW:HIGHslices")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false", help="keep the raw network output")
    p.add_argument("--min-island-fraction", type=float, help="drop pieces below this fraction of a bone (0.01)")
    p.add_argument("--max-components", type=int, help="keep this many largest pieces per bone (2; 0 = all)")
    p.add_argument("--min-extra-fraction", type=float,
                   help="keep a further piece only if at least this fraction of the bone's largest (0.25)")
    p.add_argument("--min-volume-ml", type=float, help="drop pieces smaller than this many mL (1.0)")
    p.add_argument("--no-fill-holes", dest="fill_holes", action="store_false")
    p.add_argument("--no-anatomical-cleanup", dest="anatomical", action="store_false",
                   help="clean each bone on its own (stray pieces become background) instead of with the whole field "
                        "of view (stray pieces join the bone they touch, the femur kept above the tibia, a second "
                        "piece only beside the first, no hip bone below the femur or in a knee's field of view)")
    p.add_argument("--formats", default="nii.gz,nrrd,seg.nrrd,stl,ply,obj,report",
                   help="outputs: nii.gz, nrrd, seg.nrrd, stl, ply, obj, report")
    p.add_argument("--no-input-check", dest="check_compatibility", action="store_false", help="run even on a modality/plane the model does not expect")
    p.add_argument("--confidence", action="store_true",
                   help="also write confidence.nrrd (per voxel, percent: 100 = the network is sure of one class, "
                        "0 = unsure or outside --slab) and each bone's mean confidence in the report")


def cmd_segment(args):
    """Options, the output folder and the model are checked before the series is read and segmented."""
    from mskai.segment.outputs import parse_formats
    from mskai.segment.run import segment_to_folder

    formats = parse_formats(args.formats)
    options = segment_options(args)
    out = segment_to_folder(lambda: input_volume(args), args.model, args.output, options=options, formats=formats,
                            dicom_seg=args.dicom_seg, progress=progress_printer(args.progress), inputs=[args.source])
    report = out["report"]
    print_demo_note(report)
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


def cmd_evaluate(args):
    import contextlib

    from mskai.outputs import atomic_output
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
    from mskai.models.package import check_name
    from mskai.models.registry import find_model
    from mskai.training.segment import INTENSITY, TrainConfig, train
    from mskai.training.segment_data import FolderPatches, find_pairs, load_case, nnunet_label_remap, split_cases

    check_range("validation fraction", args.val_fraction, 0, 0.9)
    if args.threads is not None:
        check_range("--threads", args.threads, 1, 256, integer=True)
    check_name(args.id or "mskai-bones", args.version)
    init = find_model(args.init, task=SEGMENTATION) if args.init else None
    spacing = init.input["spacing_mm"] if init else [args.spacing] * 3
    intensity = init.input["intensity"] if init else INTENSITY
    config = TrainConfig(spacing_mm=float(spacing[0]), patch=args.patch, batch_size=args.batch_size,
                         iterations=args.iterations, eval_every=args.eval_every, lr=args.lr, patience=args.patience,
                         seed=args.seed, threads=args.threads, model_id=args.id or (init.id if init else "mskai-bones"),
                         version=args.version, training_data=args.training_data)
    pairs = find_pairs(args.data)
    remap = nnunet_label_remap(Path(args.data))
    train_idx, val_idx = split_cases(len(pairs), args.val_fraction, args.seed)
    print(f"{len(train_idx)} training and {len(val_idx)} validation cases from {args.data}")
    cases = [load_case(*pairs[i], spacing, intensity, remap) for i in train_idx]
    val = [load_case(*pairs[i], spacing, intensity, remap) for i in val_idx] or cases[:1]
    train(FolderPatches(cases, args.patch, args.seed), val, config, args.output, init_package=init)
    print(f"Model package written to {args.output}")
    return 0


def add_commands(top):
    """`mskai segment`, `mskai evaluate`, `mskai train-seg`"""
    p = top.add_parser("segment", help="segment the lower-limb bones of a DICOM series or a volume file")
    p.add_argument("source", help="DICOM folder, Slicer DICOM database, or .nrrd / .nii.gz volume")
    p.add_argument("-o", "--output", required=True, help="output folder")
    add_series_arguments(p, volume_help="which volume (1-based) of a multi-volume series (default: the first)")
    add_segment_options(p)
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM SEG referencing the source series (it carries the patient's identity)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    p.set_defaults(func=cmd_segment)

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

