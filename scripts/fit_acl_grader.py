"""Fit the ACL tear-sign grader on synthetic knees of the training subjects, choose its operating point on the
validation subjects' and evaluate it on the test subjects'.

    python scripts/fit_acl_grader.py --train 200 --val 60 --test 80 --out build/acl_grader [--segmenter PACKAGE]
        [--package-from Resources/Models/mskai-acl-demo --version 0.4.0 --package-out build/mskai-acl-demo-0.4.0]

Signs are measured on the generator's own masks, or with --segmenter on the masks a knee segmentation package
predicts (what users meet). The operating point: the most sensitive P(torn) threshold whose specificity on the
validation knees is at least --min-specificity. Writes signs_{train,val,test}.json (measured once, reused with --reuse),
grader.json (the model, plain numbers) and evaluation.json, and prints the held-out figures. With --package-from,
also an ACL package that reads anatomy: that package's image classifier, the --segmenter package named as its
ligament model and this grader (metadata "anatomy"), as --version, in --package-out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.training.acl_signs import choose_threshold, evaluate_grader, fit_grader, measure_cases  # noqa: E402


def _rows(out: Path, name: str, n: int, split: str, seed: int, args) -> list:
    path = out / f"signs_{name}.json"
    if args.reuse and path.is_file():
        return json.loads(path.read_text())
    rows = measure_cases(n, split, seed, segmenter=args.segmenter, workers=args.workers,
                         progress=lambda i, k: print(f"{name} {i}/{k}", end="\r", flush=True))
    path.write_text(json.dumps(rows, indent=1))
    print()
    return rows


def _write_package(args, grader: dict, figures: dict):
    from mskai.models.package import load_package, save_package

    source, ligaments = load_package(args.package_from), load_package(args.segmenter)
    metadata = {k: v for k, v in source.metadata.items() if k not in ("format_version", "weights")}
    metadata.update(version=args.version, anatomy={
        "ligament_model": f"{ligaments.id}@{ligaments.version}", "grader": grader,
        "evaluation": {"val": figures["val"], "test": figures["test"], "masks": figures["masks"]}},
        description="ACL grade from anatomy: the cruciate ligaments segmented (" + ligaments.id + "), tear signs "
                    "measured on them and graded by a small logistic model; the image classifier's vote is kept "
                    "beside it. Synthetic training data: demo, not for clinical use.")
    save_package(args.package_out, metadata, source.state_dict())
    print(f"wrote {args.package_out} ({metadata['id']} {args.version}, ligament model {ligaments.id}@{ligaments.version})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=60, help="validation knees (choose the operating point)")
    parser.add_argument("--test", type=int, default=80)
    parser.add_argument("--min-specificity", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--segmenter", help="knee ligament segmentation package (default: the generator's masks)")
    parser.add_argument("--reuse", action="store_true", help="reuse the signs measured by an earlier run")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "acl_grader")
    parser.add_argument("--package-from", help="ACL package whose image classifier the new package keeps")
    parser.add_argument("--package-out", type=Path, help="where to write the ACL package that reads anatomy")
    parser.add_argument("--version", default="0.4.0")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering and measuring knees")
    args = parser.parse_args()
    if args.package_from and not (args.segmenter and args.package_out):
        parser.error("--package-from needs --segmenter (the ligament model it names) and --package-out")
    args.out.mkdir(parents=True, exist_ok=True)
    train = _rows(args.out, "train", args.train, "train", args.seed, args)
    val = _rows(args.out, "val", args.val, "val", args.seed + 2, args)
    test = _rows(args.out, "test", args.test, "test", args.seed + 1, args)
    grader = fit_grader(train)
    grader["threshold"] = choose_threshold(val, grader, args.min_specificity)
    figures = {split: evaluate_grader(rows, grader) for split, rows in (("train", train), ("val", val), ("test", test))}
    figures["masks"] = args.segmenter or "generator truth"
    (args.out / "grader.json").write_text(json.dumps(grader, indent=1))
    (args.out / "evaluation.json").write_text(json.dumps(figures, indent=1))
    if args.package_from:
        _write_package(args, grader, figures)
    print(f"operating point: P(torn) >= {grader['threshold']} (chosen on the validation knees)")
    print("| split | cases | graded | indeterminate | AUC torn | macro F1 | sensitivity | specificity |")
    print("|---|---|---|---|---|---|---|---|")
    for split in ("train", "val", "test"):
        f = figures[split]
        print(f"| {split} | {f['cases']} | {f['graded']} | {f['indeterminate']} | {f['auc_torn']} | {f['macro_f1']} | "
              f"{f['sensitivity']} | {f['specificity']} |")


if __name__ == "__main__":
    main()
