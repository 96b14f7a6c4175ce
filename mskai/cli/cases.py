"""`mskai cases ls | add | rm | export | improve`: the library of corrected cases and fine-tuning on it."""

from __future__ import annotations

import json
import sys

from mskai.cli.common import add_series_arguments, input_volume, print_problems
from mskai.models.tasks import BONE_MODEL
from mskai.protocol import progress_line


def _library(args):
    """The library of --library (a folder), else of the model --model names (default: the bone model)."""
    from mskai.cases import CaseLibrary

    if args.library:
        return CaseLibrary(args.library)
    return CaseLibrary.for_model(_model_id(args.model))


def _model_id(name: str | None) -> str:
    from mskai.models.registry import find_model, is_path

    name = name or BONE_MODEL
    return find_model(name).id if is_path(name) else name.partition("@")[0]


def cmd_cases_ls(args):
    library = _library(args)
    cases, problems = library.cases()
    if args.json:
        print(json.dumps({"library": str(library.folder), "cases": [c.record for c in cases], "damaged": problems},
                         indent=2))
        return 0
    print(f"{len(cases)} case(s) in {library.folder}")
    for case in cases:
        r = case.record
        changed = "?" if r.get("changed_voxels") is None else sum(r["changed_voxels"].values())
        print(f"{case.id}  saved {r.get('saved_utc')}  draft {r.get('model') or '?'}  "
              f"{'x'.join(map(str, r.get('shape', [])))} voxels  changed {changed}")
    for problem in problems:
        print(f"damaged: {problem}", file=sys.stderr)
    return 0


def cmd_cases_add(args):
    from mskai.models.registry import find_model
    from mskai.segment.labels import labels_from_table
    from mskai.segment.outputs import read_segmentation

    package = find_model(args.model or BONE_MODEL)
    table = labels_from_table(package.metadata["labels"])
    image = input_volume(args)
    labels = read_segmentation(args.labels, table)
    draft = read_segmentation(args.draft, table) if args.draft else None
    library = _library(args)
    case = library.add(image, labels, [b.value for b in table], model=args.drawn_by, draft=draft)
    print(f"Saved {case.id} in {library.folder}")
    return 0


def cmd_cases_rm(args):
    library = _library(args)
    library.remove(args.case)
    print(f"Removed {args.case} from {library.folder}")
    return 0


def cmd_cases_export(args):
    library = _library(args)
    n = library.export(args.zip)
    print(f"Exported {n} case(s) to {args.zip} (images/ + labels/: `mskai train-seg` reads it)")
    return 0


def cmd_cases_improve(args):
    from mskai.cases import CaseLibrary
    from mskai.training.local import improve

    def progress(stage, fraction, message=None):
        if args.progress == "json":
            print(progress_line(stage, fraction, **({"message": message} if message else {})), file=sys.stderr,
                  flush=True)
        elif message and args.progress == "bar":
            print(message, file=sys.stderr, flush=True)

    library = CaseLibrary(args.library) if args.library else None
    result = improve(args.model, args.minutes, library, progress, threads=args.threads, seed=args.seed)
    print_problems(result["skipped"])
    print(f"{result['model']} (from {result['parent']}, {result['training_cases']} cases, "
          f"{result['train_minutes']:.1f} min of training), checked on {len(result['heldout_cases']) or 'its one'} "
          "held-out case(s):")
    print(f"  {'bone':<8} {'Dice before':>11} {'after':>7}")
    for bone in sorted(set(result["before"]) | set(result["after"])):
        before, after = (result[k].get(bone, {}).get("dice", float("nan")) for k in ("before", "after"))
        print(f"  {bone:<8} {before:>11.3f} {after:>7.3f}")
    if not result["heldout_cases"]:
        print("One case: nothing was held out to check the new model, so it is kept aside (use it by naming its "
              "version); save more cases.")
    else:
        print("Better on the held-out cases: now the default." if result["accepted"] else
              "NOT better on the held-out cases: kept aside (use it by naming its version), the default is unchanged.")
    if args.json:
        from mskai.outputs import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
    return 0


def add_commands(top):
    """`mskai cases ...`"""
    cases = top.add_parser("cases", help="corrected cases kept for fine-tuning, and fine-tuning on them")
    sub = cases.add_subparsers(dest="cases_command", required=True)

    def common(p):
        p.add_argument("--model", help="the model whose library is meant (id; default: the bone model)")
        p.add_argument("--library", help="a case library folder instead of the model's own under ~/.mskai/cases")
        return p

    p = common(sub.add_parser("ls", help="list the cases"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cases_ls)
    p = common(sub.add_parser("add", help="save a corrected segmentation of a volume as a case (replaces its case)"))
    p.add_argument("source", help="the source volume: DICOM folder, Slicer DICOM database, or .nrrd / .nii.gz")
    p.add_argument("labels", help="the corrected label map (.nrrd, .nii.gz, .seg.nrrd) on the source's grid")
    p.add_argument("--draft", help="the model's first draft, to count the voxels the correction changed")
    p.add_argument("--drawn-by", help="id@version of the model that drew the first draft")
    add_series_arguments(p, volume_help="which volume (1-based) of a multi-volume series (default: the first)")
    p.set_defaults(func=cmd_cases_add)
    p = common(sub.add_parser("rm", help="remove a case"))
    p.add_argument("case", help="case id (case-...), as `mskai cases ls` shows")
    p.set_defaults(func=cmd_cases_rm)
    p = common(sub.add_parser("export", help="write the cases into a zip that `mskai train-seg` reads"))
    p.add_argument("zip")
    p.set_defaults(func=cmd_cases_export)
    p = common(sub.add_parser("improve", help="fine-tune the model on its cases; the result is the default only "
                                              "if it is better on held-out cases"))
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget (default 10)")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the result (figures, lineage) to this JSON file")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    p.set_defaults(func=cmd_cases_improve)

