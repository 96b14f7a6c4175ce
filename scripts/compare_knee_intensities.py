"""Compare the intensities of synthetic sagittal knees with the real knee series in ../shared/data, as pictures.

    python scripts/compare_knee_intensities.py --model Resources/Training/mskai-knee-ligaments-demo-0.1.0 \\
        --knees 16 --out build/knee_intensities

Both are normalised as the ligament network sees them (0.5-99.5 percentiles to 0-1). Regions: femur and tibia
marrow (the bone masks eroded in-plane), ACL, PCL, and the soft tissue around the joint (neither bone nor ligament,
within 20 mm of the bones); on the synthetic knees from the generator's masks, on the real series (all echoes of a
multi-echo T2 spin echo) from the ligament model's segmentation. Writes intensities.json (10th, 50th, 90th
percentile per region and image), intensities.png (one panel per region: real echoes beside the synthetic knees of
each contrast) and slices.png (the middle sagittal slice of real echoes and of one synthetic knee per contrast).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.acl.ligaments import ligament_masks, normalised, segment_ligaments, slice_axis  # noqa: E402

REAL_SERIES = REPO.parent / "shared" / "data" / "knee_mese_t2_dicom"
REGIONS = ("femur marrow", "tibia marrow", "acl", "pcl", "soft tissue")


def regions(volume, masks) -> dict:
    """Bool masks of REGIONS on the volume's grid."""
    axis = slice_axis(volume)
    in_plane = np.zeros((3, 3, 3), bool)  # erode within each slice only: the slices are thick
    in_plane[tuple(1 if a == axis else slice(None) for a in range(3))] = True
    bone = masks["femur"] | masks["tibia"]
    near = ndimage.distance_transform_edt(~bone, sampling=volume.spacing) <= 20.0
    return {"femur marrow": ndimage.binary_erosion(masks["femur"], in_plane, iterations=2),
            "tibia marrow": ndimage.binary_erosion(masks["tibia"], in_plane, iterations=2),
            "acl": masks["acl"], "pcl": masks["pcl"], "soft tissue": near & ~bone & ~masks["acl"] & ~masks["pcl"]}


def statistics(volume, masks) -> dict:
    image = normalised(volume.array)
    return {name: [round(float(v), 3) for v in np.percentile(image[m], (10, 50, 90))] if m.any() else None
            for name, m in regions(volume, masks).items()}


def _middle(volume):
    from mskai.acl.infer import sagittal_view

    axis = slice_axis(volume)
    return sagittal_view(volume, normalised(volume.array), axis, volume.shape[axis] // 2)


def plot(rows: list, pictures: list, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r["group"] for r in rows}, key=lambda g: (not g.startswith("real"), g))
    fig, axes = plt.subplots(1, len(REGIONS), figsize=(4.2 * len(REGIONS), 4.6), sharey=True)
    for ax, region in zip(axes, REGIONS):
        for x, group in enumerate(groups):
            stats = [r["stats"][region] for r in rows if r["group"] == group and r["stats"][region]]
            for k, (p10, p50, p90) in enumerate(stats):
                dx = (k - (len(stats) - 1) / 2) * min(0.08, 0.6 / max(len(stats), 1))
                colour = "tab:red" if group.startswith("real") else "tab:blue"
                ax.plot([x + dx] * 2, [p10, p90], color=colour, alpha=0.5)
                ax.plot(x + dx, p50, "o", color=colour, ms=3)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=40, ha="right", fontsize=8)
        ax.set_title(region)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("normalised intensity (10th-90th percentile, median)")
    fig.suptitle("real series (red: one line per echo) vs synthetic knees (blue: one line per knee)")
    fig.tight_layout()
    fig.savefig(out / "intensities.png", dpi=90)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(pictures), figsize=(3.2 * len(pictures), 3.6))
    for ax, (title, image) in zip(np.atleast_1d(axes), pictures):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "slices.png", dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="knee ligament package (segments the real series)")
    parser.add_argument("--knees", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--grades", default="0,1,2,3", help="ACL grades drawn in turn (the real series: intact)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "knee_intensities")
    args = parser.parse_args()
    from mskai.dicom import plan_volumes, read_volume, scan_folder
    from mskai.models.package import load_package
    from mskai.synth.acl_knee import acl_shape_subjects, synthetic_acl_knee

    args.out.mkdir(parents=True, exist_ok=True)
    package = load_package(args.model)
    net = package.build_network()
    rows, pictures = [], []
    (series,) = scan_folder(REAL_SERIES).series
    for echo, plan in enumerate(plan_volumes(series), start=1):
        volume = read_volume(plan)
        masks = ligament_masks(segment_ligaments(volume, package, net))
        rows.append({"group": "real T2 MESE", "echo": echo, "stats": statistics(volume, masks)})
        if echo in (1, 4, 8):
            pictures.append((f"real, echo {echo}", _middle(volume)))
    seen, grades = set(), [int(g) for g in args.grades.split(",")]
    for i in range(args.knees):
        grade = grades[i % len(grades)]
        volume, masks = synthetic_acl_knee(grade, np.random.default_rng(args.seed * 1_000_003 + i),
                                           subjects=acl_shape_subjects("test"), with_masks=True)
        contrast = volume.meta["series_description"].removeprefix("SYNTHETIC ").removesuffix(" sagittal knee")
        rows.append({"group": f"synthetic {contrast}", "grade": grade, "stats": statistics(volume, masks)})
        if contrast not in seen:
            seen.add(contrast)
            pictures.append((f"synthetic {contrast}", _middle(volume)))
    (args.out / "intensities.json").write_text(json.dumps(rows, indent=1))
    plot(rows, pictures, args.out)
    print("| image | " + " | ".join(REGIONS) + " |")
    print("|---|" + "---|" * len(REGIONS))
    for group in dict.fromkeys(r["group"] for r in rows):
        medians = [[r["stats"][name][1] for r in rows if r["group"] == group and r["stats"][name]] for name in REGIONS]
        print(f"| {group} | " + " | ".join(f"{np.median(m):.2f}" if m else "-" for m in medians) + " |")
    print(f"wrote {args.out / 'intensities.png'} and {args.out / 'slices.png'}")


if __name__ == "__main__":
    main()
