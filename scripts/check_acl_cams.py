"""Does the ACL model look at the ligament? Grad-CAMs of held-out synthetic knees (test shape subjects) against the
generator's ligament masks, as numbers and as pictures.

    python scripts/check_acl_cams.py --model build/acl_demo --cases 24 -o build/acl_cams

Per case: the share of the CAM's mass within 10 mm of the ACL (and the share of the volume that region is, so the
ratio says how concentrated it is), and whether the key slice cuts the ligament (within one slice). Writes
cams.json and cams.png (key slice, CAM overlay, ACL outline, for the first 12 cases).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from mskai.acl import GRADES  # noqa: E402
from mskai.acl.infer import classify_volume, sagittal_view  # noqa: E402
from mskai.synth.acl_knee import acl_shape_subjects, synthetic_acl_knee  # noqa: E402
from mskai.models.registry import find_model  # noqa: E402

NEAR_MM = 10.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mskai-acl-demo")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    package = find_model(args.model, task="acl-classification")
    net = package.build_network()
    subjects = acl_shape_subjects("test")
    rows, shown = [], []
    for i in range(args.cases):
        grade = i % 4
        volume, masks = synthetic_acl_knee(grade, np.random.default_rng(args.seed + i), subjects=subjects,
                                           with_masks=True)
        result = classify_volume(volume, package, network=net)
        cam = np.asarray(result.cam.array, dtype=np.float64)
        near = ndimage.distance_transform_edt(~masks["acl"], sampling=volume.spacing) <= NEAR_MM
        mass = cam.sum()
        share = float(cam[near].sum() / mass) if mass > 0 else 0.0
        fraction = float(near.mean())
        axis = result.slice_axis
        acl_slices = np.nonzero(np.moveaxis(masks["acl"], axis, 0).reshape(masks["acl"].shape[axis], -1).any(1))[0]
        on_ligament = bool(len(acl_slices)) and bool(np.min(np.abs(acl_slices - result.key_slice)) <= 1)
        rows.append({"case": i, "grade": GRADES[grade], "predicted": result.predicted,
                     "cam_share_near_acl": round(share, 3), "region_share_of_volume": round(fraction, 4),
                     "concentration": round(share / fraction, 2) if fraction else None,
                     "key_slice_on_acl": on_ligament})
        if len(shown) < 12:
            shown.append((volume, result, masks["acl"], grade))
        print(rows[-1])
    summary = {"cases": len(rows), "median_cam_share_near_acl": float(np.median([r["cam_share_near_acl"] for r in rows])),
               "median_concentration": float(np.median([r["concentration"] for r in rows if r["concentration"]])),
               "key_slice_on_acl": sum(r["key_slice_on_acl"] for r in rows), "near_mm": NEAR_MM}
    (out / "cams.json").write_text(json.dumps({"summary": summary, "cases": rows}, indent=2))
    fig, axes = plt.subplots(3, 4, figsize=(16, 12.5))
    for ax, (volume, result, acl, grade) in zip(axes.flat, shown):
        k, axis = result.key_slice, result.slice_axis
        image = sagittal_view(volume, volume.array, axis, k)
        cam = sagittal_view(volume, result.cam.array, axis, k)
        ligament = sagittal_view(volume, acl.astype(np.float32), axis, k)
        ax.imshow(image, cmap="gray", vmin=np.percentile(image, 1), vmax=np.percentile(image, 99))
        ax.imshow(np.ma.masked_less(cam, 0.2), cmap="jet", vmin=0, vmax=1, alpha=0.4)
        if ligament.any():
            ax.contour(ligament, [0.5], colors="white", linewidths=0.8)
        ax.set_title(f"truth {GRADES[grade]} / predicted {result.predicted}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"Grad-CAM on held-out synthetic knees (white: ACL); median CAM share within {NEAR_MM:g} mm of the "
                 f"ACL {summary['median_cam_share_near_acl']:.2f}, key slice on the ACL in "
                 f"{summary['key_slice_on_acl']}/{len(rows)}")
    fig.savefig(out / "cams.png", dpi=70, bbox_inches="tight")
    print(summary)


if __name__ == "__main__":
    main()
