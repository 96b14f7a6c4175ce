"""Held-out evaluation of a bone model on synthetic cases never used in training.

    python scripts/evaluate_demo_model.py [--model mskai-bones-demo] [--cases 8] [--oai-cases 30] [--pd-cases 4]
        [--vh-cases 12] [--hip-cases 2 --hip-subjects 005] [--hipct-cases 7] [--out heldout]

Real-shape knee cases (--oai-cases): femur and tibia of OAI test-split subjects (``split_subjects``: never
used for training or validation), rendered as whole scans with realistic fields of view: the knee off-centre
by up to 30 mm, 120-200 mm tall so the shafts are cut by the border at random heights, sagittal, coronal or
axial, half of them with thick (3-4 mm) slices. Only femur and tibia are scored there (nothing else is
labelled in those subjects).

PD knee cases (--pd-cases): the manually corrected femur/patella/tibia map of one real PD knee, never trained on
(the held-out knee with a patella), in its own sagittal 4 mm acquisition and in other planes.

Visible Human cases (--vh-cases): the patellae and fibulae of the Visible Human Male (never trained on), each in
place of the bundled knee's own, sagittal, coronal and axial, thin and thick (3-4 mm) slices; only patella and
fibula are scored there (femur and tibia are the bundled knee's, which is trained on).

Knee cases: the real knee label map under new random deformations, poses and acquisition grids.
Lower-limb cases: procedural phantoms from seeds the training never drew (new shapes), imaged at the
hip (every other case: the pelvis is the hardest bone), knee and shank. Each case runs through the same
`segment_volume` as `mskai segment`, and is scored with `mskai.segment.metrics.evaluate` against its
own label map. Prints a table per bone.
"""

import argparse
import itertools
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
from mskai.segment.plausibility import plausibility, solidity  # noqa: E402
from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, KneeLabelSource, LowerLimbPhantom, synthetic_case  # noqa: E402

KNEE = BUNDLED_KNEE_LABELS  # a copy of ../shared/data/knee_bones_cartilage_label.nrrd (pymskt, MIT)
HELDOUT_SEED = 900_000  # training draws its shapes and poses from seed 0, validation from 10_000
OAI = REPO.parent / "shared" / "data" / "oai_knee_bone_masks"
PD_KNEE = REPO.parent / "shared" / "data" / "knee_pd_sagittal_label" / "knee_pd_sagittal_label.nrrd"


def oai_cases(n, seed):
    """(name, image, labels) of n real-shape knee scans of OAI test subjects, with realistic fields of view."""
    from mskai.synth.real_shapes import (RealKneeSource, cached_split, oai_subjects, spacing_of, split_quality,
                                         split_subjects)

    rng = np.random.default_rng(seed)
    shapes = {}
    for subject in split_subjects(oai_subjects(OAI))["test"]:
        labels, affine = cached_split(OAI / f"{subject}.nii.gz")
        if split_quality(labels)["ok"]:  # a broken source mask is no reference
            shapes[subject] = labels, affine
        else:
            print(f"oai-{subject}: source mask unusable as a reference, left out")
    test = sorted(shapes)
    planes = ["sagittal", "coronal", "axial"]
    for i in range(n):
        subject = test[i % len(test)]
        labels, affine = shapes[subject]
        source = RealKneeSource(labels, spacing_of(affine), affine, rng=rng)
        thick = i % 2 == 1
        plane = planes[i % 3]
        in_plane = rng.uniform(0.4, 0.8, 2) if thick else rng.uniform(0.5, 0.8, 2)
        spacing = (*in_plane, rng.uniform(3.0, 4.0) if thick else rng.uniform(0.7, 1.5))
        extent = (rng.uniform(140, 180), rng.uniform(140, 180), rng.uniform(120, 200))
        centre = source.centre_mm + rng.uniform(-30, 30, 3)
        image, labels = synthetic_case(source, rng, spacing, extent_mm=extent, plane=plane, centre=centre)
        yield f"oai-{subject}-{plane}{'-thick' if thick else ''}", image, labels


def pd_cases(n, seed):
    """(name, image, labels) of n scans of the manually corrected PD knee (femur, patella, tibia): a subject never
    trained on, the only held-out knee with a patella; sagittal with its own 4 mm slices first, then other planes."""
    from mskai.synth.real_shapes import RealKneeSource, load_pd_knee, spacing_of

    rng = np.random.default_rng(seed + 1)
    labels, affine = load_pd_knee(PD_KNEE)
    acquisitions = [("sagittal", (0.42, 0.42, 4.0)), ("coronal", (0.6, 0.6, 3.0)), ("axial", (0.7, 0.7, 1.0)),
                    ("sagittal", (0.8, 0.8, 0.8))]
    for i in range(n):
        source = RealKneeSource(labels, spacing_of(affine), affine, rng=rng)
        plane, spacing = acquisitions[i % len(acquisitions)]
        extent = (rng.uniform(140, 170), rng.uniform(140, 170), rng.uniform(120, 160))
        image, truth = synthetic_case(source, rng, spacing, extent_mm=extent, plane=plane,
                                      centre=source.centre_mm + rng.uniform(-15, 15, 3))
        yield f"pd-{i}-{plane}-{spacing[2]:g}mm", image, truth


def vh_cases(n, seed):
    """(name, image, labels, {"scored": patella, fibula}) of n knee scans with held-out Visible Human bones."""
    from mskai.synth.visible_human import VH_TEST, visible_human_knee

    rng = np.random.default_rng(seed + 2)
    planes = ["sagittal", "coronal", "axial"]
    for i in range(n):
        side = ["Left", "Right"][i % 2]
        source = visible_human_knee(VH_TEST[0], side)
        plane, thick = planes[(i // 2) % 3], (i // 6) % 2 == 1
        in_plane = rng.uniform(0.4, 0.8, 2) if thick else rng.uniform(0.5, 0.8, 2)
        spacing = (*in_plane, rng.uniform(3.0, 4.0) if thick else rng.uniform(0.7, 1.5))
        extent = (rng.uniform(140, 170), rng.uniform(140, 170), rng.uniform(120, 160))
        image, truth = synthetic_case(source, rng, spacing, extent_mm=extent, plane=plane,
                                      centre=source.centre_mm + rng.uniform(-15, 15, 3))
        yield (f"vh-{VH_TEST[0]}{side[0]}-{plane}{'-thick' if thick else ''}", image, truth,
               {"scored": ("patella", "fibula")})


def hip_cases(n, seed, subjects, group="hip", make_source=None):
    """(name, image, labels, {"other_bone": sacrum and spine mask}) of n whole hip scans of real pelves (``subjects``:
    left out of training), axial or coronal, 1-5 mm slices; the mask is where a bone lies that must not be called hip
    bone.
    make_source: HipCTSource for the hip CT people (group "hipct")."""
    from mskai.synth.real_pelves import hip_cases as scans
    from mskai.synth.synthseg import OTHER_MARROW, SACRUM_MARROW

    for name, image, labels, tissue in scans(n, seed, subjects, with_tissue=True, make_source=make_source):
        other_bone = (tissue.array == OTHER_MARROW) | (tissue.array == SACRUM_MARROW)
        yield f"{group}-{name}", image, labels, {"other_bone": other_bone}


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
    parser.add_argument("--oai-cases", type=int, default=0, help="real-shape knee scans of OAI test subjects")
    parser.add_argument("--pd-cases", type=int, default=0, help="scans of the held-out PD knee (with patella)")
    parser.add_argument("--hip-cases", type=int, default=0, help="hip scans of the real pelves in --hip-subjects")
    parser.add_argument("--hip-subjects", default="005", help="pelvis subjects never trained on, e.g. 005")
    parser.add_argument("--hipct-cases", type=int, default=0,
                        help="hip scans of the hip CT test people (hip_ct_split: never trained on)")
    parser.add_argument("--vh-cases", type=int, default=0,
                        help="knee scans with the Visible Human Male's patellae and fibulae (never trained on)")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED)
    parser.add_argument("--out", default="heldout", help="folder for the JSON results and overlay PNGs")
    args = parser.parse_args()
    package = find_model(args.model, task="segmentation")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    from mskai.synth.hip_ct import HipCTSource, hip_ct_split

    hips = itertools.chain(hip_cases(args.hip_cases, args.seed, args.hip_subjects.split(",")),
                           hip_cases(args.hipct_cases, args.seed, hip_ct_split()["test"], "hipct", HipCTSource))
    for name, image, labels, *info in itertools.chain(cases(args.cases, args.seed), oai_cases(args.oai_cases, args.seed),
                                                      pd_cases(args.pd_cases, args.seed), vh_cases(args.vh_cases, args.seed),
                                                      hips):
        info = info[0] if info else {}
        prediction = segment_volume(image, package, SegmentOptions()).labels
        rows = [r for r in evaluate(prediction, labels) if r["reference_volume_ml"] > 0
                and r["name"] in info.get("scored", [r["name"]])]
        pelvis = prediction.array == next(b.value for b in BONES if b.name == "pelvis")
        extra = {"pelvis_ml": round(float(pelvis.sum() * np.prod(image.spacing) / 1000), 2)}
        if "other_bone" in info:  # sacrum and spine: how much of them the model calls hip bone
            other = info["other_bone"]
            extra["sacrum_spine_as_pelvis"] = round(float(pelvis[other].mean()), 4) if other.any() else 0
        extra["solidity"] = {b.name: [solidity(prediction, b.value), solidity(labels, b.value)]  # [model, truth]
                             for b in BONES if b.name in ("femur", "tibia", "pelvis")
                             and (labels.array == b.value).any()}
        failed = [c["check"] for c in plausibility(prediction) if c["passed"] is False]
        truth_failed = [c["check"] for c in plausibility(labels) if c["passed"] is False]  # the checks' own errors
        results.append({"case": name, "spacing_mm": [round(float(s), 2) for s in image.spacing], "bones": rows,
                        "implausible": failed, "truth_implausible": truth_failed, **extra})
        print(name, " ".join(f"{r['name']} {r['dice']:.3f}" for r in rows), extra,
              f"checks: {'pass' if not failed else 'FAIL ' + '; '.join(failed)}",
              f"(truth: {'pass' if not truth_failed else 'FAIL ' + '; '.join(truth_failed)})", flush=True)
        overlay_png(image, labels, prediction, out / f"{name}.png")
    summary = {}  # per group of cases (knee: bundled label map, limb: phantoms, oai: real test subjects)
    for group in dict.fromkeys(r["case"].split("-")[0] for r in results):
        cases_of = [r for r in results if r["case"].split("-")[0] == group]
        summary[group] = {"cases": len(cases_of), "plausible": sum(not r["implausible"] for r in cases_of),
                          "truth_plausible": sum(not r["truth_implausible"] for r in cases_of),
                          "max_pelvis_ml": max(r["pelvis_ml"] for r in cases_of), "bones": {}}
        if any("sacrum_spine_as_pelvis" in r for r in cases_of):
            summary[group]["max_sacrum_spine_as_pelvis"] = max(r.get("sacrum_spine_as_pelvis", 0) for r in cases_of)
        for bone in BONES:
            rows = [r for case in cases_of for r in case["bones"] if r["name"] == bone.name]
            if rows:
                dice = [r["dice"] for r in rows]
                summary[group]["bones"][bone.name] = {
                    "cases": len(dice), "mean_dice": round(float(np.mean(dice)), 3),
                    "min_dice": round(float(np.min(dice)), 3), "below_0.85": sum(d < 0.85 for d in dice),
                    "median_hd95_mm": round(float(np.median([r["hd95_mm"] for r in rows])), 2)}
    for group, g in summary.items():
        print(f"\n{group}: {g['cases']} cases, {g['plausible']} pass every plausibility check "
              f"(their truths: {g['truth_plausible']}); largest hip bone {g['max_pelvis_ml']} mL"
              + (f"; sacrum+spine called hip bone: at most {100 * g['max_sacrum_spine_as_pelvis']:.1f} %"
                 if "max_sacrum_spine_as_pelvis" in g else ""))
        print(f"{'bone':<8} {'cases':>5} {'mean Dice':>10} {'min Dice':>9} {'< 0.85':>7} {'median HD95 mm':>15}")
        for name, b in g["bones"].items():
            print(f"{name:<8} {b['cases']:>5} {b['mean_dice']:>10.3f} {b['min_dice']:>9.3f} {b['below_0.85']:>7} "
                  f"{b['median_hd95_mm']:>15.2f}")
    (out / "heldout_evaluation.json").write_text(json.dumps(
        {"model": f"{package.id}@{package.version}", "seed": args.seed, "summary": summary, "cases": results},
        indent=2))


if __name__ == "__main__":
    main()
