"""Evaluate a knee ligament package on synthetic knees of the held-out OAI test subjects (Dice per structure and
grade) and look at it on the real sagittal knee series in ../shared/data (overlays of the slices through the notch,
the tear signs or why there are none).

    python scripts/evaluate_ligament_model.py --model Resources/Training/mskai-knee-ligaments-demo-0.1.0 \\
        --cases 16 --out build/ligament_eval

Writes evaluation.json, synthetic-*.png and real-echo*.png into --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.acl.ligaments import (LIGAMENT_TABLE, LIGAMENT_VALUES, ligament_label_map, segment_ligaments,  # noqa: E402
                                 slice_axis)
from mskai.acl.signs import SignsUnavailable, signs_of_volume  # noqa: E402
from mskai.models.package import load_package  # noqa: E402

REAL_SERIES = REPO.parent / "shared" / "data" / "knee_mese_t2_dicom"


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else None


def overlay_png(volume, labels, path, title, truth=None):
    """The three sagittal slices with the most ACL + PCL (or the middle ones), model (and truth) coloured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from mskai.acl.infer import sagittal_view

    axis = slice_axis(volume)
    ligament = np.isin(labels.array, [LIGAMENT_VALUES["acl"], LIGAMENT_VALUES["pcl"]])
    amount = ligament.sum(axis=tuple(a for a in range(3) if a != axis))
    order = np.argsort(-amount, kind="stable")[:3] if amount.any() else [volume.shape[axis] // 2 + d for d in (-2, 0, 2)]
    cmap = ListedColormap([(0, 0, 0, 0)] + [(*label.color, 1.0) for label in LIGAMENT_TABLE])
    rows = 2 if truth is not None else 1
    fig, axes = plt.subplots(rows, 3, figsize=(12, 4.3 * rows), squeeze=False)
    for col, k in enumerate(sorted(int(k) for k in order)):
        image = sagittal_view(volume, volume.array, axis, k)
        low, high = np.percentile(image, (1, 99.5))
        for row, (name, lab) in enumerate([("model", labels.array)] + ([("truth", truth)] if truth is not None else [])):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=low, vmax=high)
            shown = sagittal_view(volume, lab.astype(np.float32), axis, k)
            ax.imshow(np.ma.masked_equal(np.rint(shown), 0), cmap=cmap, vmin=0, vmax=len(LIGAMENT_TABLE),
                      alpha=0.45, interpolation="nearest")
            ax.set_title(f"{name}, slice {k + 1}", fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=label.color) for label in LIGAMENT_TABLE]
    fig.legend(handles, [label.name for label in LIGAMENT_TABLE], loc="lower center", ncol=4)
    fig.suptitle(f"{title} (demo model, not for clinical use)", fontsize=10)
    fig.savefig(path, dpi=70, bbox_inches="tight")
    plt.close(fig)


def synthetic(package, net, n, seed, out) -> list:
    from mskai.synth.acl_knee import acl_shape_subjects, synthetic_acl_knee

    rows = []
    for i in range(n):
        grade = i % 4
        volume, masks = synthetic_acl_knee(grade, np.random.default_rng(seed * 1_000_003 + i),
                                           subjects=acl_shape_subjects("test"), with_masks=True)
        labels = segment_ligaments(volume, package, net)
        row = {"case": i, "grade": grade, **{f"dice_{name}": _dice(labels.array == value, masks[name])
                                             for name, value in LIGAMENT_VALUES.items()}}
        rows.append(row)
        print(row, flush=True)
        if i < 4:
            overlay_png(volume, labels, out / f"synthetic-{i}-grade{grade}.png", f"synthetic test knee, grade {grade}",
                        ligament_label_map(masks))
    return rows


def real(package, net, out) -> list:
    from mskai.dicom import plan_volumes, read_volume, scan_folder

    (series,) = scan_folder(REAL_SERIES).series
    rows = []
    for echo, plan in enumerate(plan_volumes(series), start=1):
        volume = read_volume(plan)
        labels = segment_ligaments(volume, package, net)
        voxel_ml = float(np.prod(volume.spacing)) / 1000
        row = {"echo": echo, **{f"{name}_ml": round(float((labels.array == v).sum() * voxel_ml), 3)
                                for name, v in LIGAMENT_VALUES.items()}}
        try:
            row["signs"] = signs_of_volume(labels, volume, LIGAMENT_VALUES)["signs"]
        except SignsUnavailable as exc:
            row["signs_unavailable"] = str(exc)
        rows.append(row)
        print(row, flush=True)
        if echo in (1, 4, 8):
            overlay_png(volume, labels, out / f"real-echo{echo}.png", f"real sagittal T2 knee, echo {echo}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "ligament_eval")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    package = load_package(args.model)
    net = package.build_network()
    rows = synthetic(package, net, args.cases, args.seed, args.out)
    summary = {}
    for name in LIGAMENT_VALUES:
        values = [r[f"dice_{name}"] for r in rows if r[f"dice_{name}"] is not None]
        summary[name] = {"mean_dice": round(float(np.mean(values)), 3), "min_dice": round(float(np.min(values)), 3)}
        per_grade = {g: [r[f"dice_{name}"] for r in rows if r["grade"] == g and r[f"dice_{name}"] is not None]
                     for g in range(4)}
        summary[name]["by_grade"] = {g: round(float(np.mean(v)), 3) for g, v in per_grade.items() if v}
    real_rows = real(package, net, args.out) if REAL_SERIES.is_dir() else []
    (args.out / "evaluation.json").write_text(json.dumps({"model": f"{package.id}@{package.version}",
                                                          "synthetic_test": {"cases": rows, "summary": summary},
                                                          "real_series": real_rows}, indent=1))
    print("| structure | mean Dice | min | healthy | strain | partial | complete |")
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        grades = " | ".join(str(s["by_grade"].get(g, "-")) for g in range(4))
        print(f"| {name} | {s['mean_dice']} | {s['min_dice']} | {grades} |")


if __name__ == "__main__":
    main()
