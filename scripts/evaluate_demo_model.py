"""Held-out evaluation of a bone model on synthetic cases never used in training.

    python scripts/evaluate_demo_model.py [--model mskai-bones-demo] [--cases 8] [--out heldout]

Knee cases: the real knee label map under new random deformations, poses and acquisition grids.
Lower-limb cases: procedural phantoms from seeds the training never drew (new shapes), imaged at the
hip (every other case: the pelvis is the hardest bone), knee and shank. Each case runs through the same
`segment_volume` as `mskai segment`, and is scored with `mskai.segment.metrics.evaluate` against its
own label map. Prints a table per bone.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.models.registry import find_model  # noqa: E402
from mskai.segment.infer import SegmentOptions, segment_volume  # noqa: E402
from mskai.segment.labels import BONES  # noqa: E402
from mskai.segment.metrics import evaluate  # noqa: E402
from mskai.segment.plausibility import plausibility  # noqa: E402
from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, KneeLabelSource, LowerLimbPhantom, synthetic_case  # noqa: E402

KNEE = BUNDLED_KNEE_LABELS  # a copy of ../shared/data/knee_bones_cartilage_label.nrrd (pymskt, MIT)
HELDOUT_SEED = 900_000  # training draws its shapes and poses from seed 0, validation from 10_000


def cases(n, seed):
    """(name, image, labels) of n knee cases and n lower-limb cases (hip, knee, hip, shank, cycling)."""
    rng = np.random.default_rng(seed)
    knee = KneeLabelSource(KNEE)
    planes = ["sagittal", "coronal", "axial"]
    for i in range(n):
        spacing = (rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.8), rng.uniform(0.8, 1.5))
        plane = planes[i % 3]
        image, labels = synthetic_case(knee, rng, spacing, extent_mm=(150, 150, 120), plane=plane,
                                       centre=knee.centre_mm + rng.normal(0, 5, 3))
        yield f"knee-{i}-{plane}", image, labels
    for i in range(n):
        phantom = LowerLimbPhantom(rng)
        region, centre = [("hip", np.array([0.0, 0.0, 20.0])), ("knee", phantom.knee + [0, 0, 10]),
                          ("hip", np.array([0.0, 0.0, 20.0])), ("shank", phantom.knee + [0, 0, -150])][i % 4]
        spacing = (rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), rng.uniform(1.0, 2.0))
        image, labels = synthetic_case(phantom, rng, spacing, extent_mm=(170, 170, 170), plane=planes[(i + 1) % 3],
                                       centre=centre)
        yield f"limb-{i}-{region}", image, labels


def overlay_png(image, labels, prediction, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([(0, 0, 0, 0)] + [(*b.color, 1.0) for b in BONES])
    k = int(np.argmax((labels.array > 0).sum(axis=(0, 1))))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, lab, title in ((axes[0], labels, "synthetic truth"), (axes[1], prediction, "model")):
        ax.imshow(image.array[:, :, k].T, cmap="gray")
        ax.imshow(np.ma.masked_equal(lab.array[:, :, k].T, 0), cmap=cmap, vmin=0, vmax=len(BONES), alpha=0.45,
                  interpolation="nearest")
        ax.set_title(title), ax.axis("off")
    fig.suptitle("Held-out synthetic case (demo model, not for clinical use)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mskai-bones-demo")
    parser.add_argument("--cases", type=int, default=8, help="knee cases and lower-limb cases, each")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--out", default="heldout", help="folder for the JSON results and overlay PNGs")
    args = parser.parse_args()
    package = find_model(args.model, task="segmentation")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, image, labels in cases(args.cases, args.seed):
        prediction = segment_volume(image, package, SegmentOptions()).labels
        rows = [r for r in evaluate(prediction, labels) if r["reference_volume_ml"] > 0]
        failed = [c["check"] for c in plausibility(prediction) if c["passed"] is False]
        truth_failed = [c["check"] for c in plausibility(labels) if c["passed"] is False]  # the checks' own errors
        results.append({"case": name, "spacing_mm": [round(float(s), 2) for s in image.spacing], "bones": rows,
                        "implausible": failed, "truth_implausible": truth_failed})
        print(name, " ".join(f"{r['name']} {r['dice']:.3f}" for r in rows),
              f"checks: {'pass' if not failed else 'FAIL ' + '; '.join(failed)}",
              f"(truth: {'pass' if not truth_failed else 'FAIL ' + '; '.join(truth_failed)})", flush=True)
        overlay_png(image, labels, prediction, out / f"{name}.png")
    summary = {}
    for bone in BONES:
        dice = [r["dice"] for case in results for r in case["bones"] if r["name"] == bone.name]
        hd95 = [r["hd95_mm"] for case in results for r in case["bones"] if r["name"] == bone.name]
        if dice:
            summary[bone.name] = {"cases": len(dice), "mean_dice": round(float(np.mean(dice)), 3),
                                  "min_dice": round(float(np.min(dice)), 3),
                                  "median_hd95_mm": round(float(np.median(hd95)), 2)}
    print(f"plausibility: {sum(not r['implausible'] for r in results)} of {len(results)} predictions pass every check; "
          f"{sum(not r['truth_implausible'] for r in results)} of {len(results)} truths do")
    print(f"\n{'bone':<8} {'cases':>5} {'mean Dice':>10} {'min Dice':>9} {'median HD95 mm':>15}")
    for name, s in summary.items():
        print(f"{name:<8} {s['cases']:>5} {s['mean_dice']:>10.3f} {s['min_dice']:>9.3f} {s['median_hd95_mm']:>15.2f}")
    (out / "heldout_evaluation.json").write_text(json.dumps(
        {"model": f"{package.id}@{package.version}", "seed": args.seed, "summary": summary, "cases": results},
        indent=2))


if __name__ == "__main__":
    main()
