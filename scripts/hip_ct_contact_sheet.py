"""A contact sheet of the 30 hip CT label maps (../shared/data/hip_ct_labels), as cleaned for training.

    python scripts/hip_ct_contact_sheet.py --out build/hip_ct_sheet

For each person: a coronal and an axial projection of the labels (femurs, hip bones, sacrum in their colours),
and per label what cleaning does (pieces dropped, holes filled, in mL), as ``mskai.synth.hip_ct.clean_hip_labels``
does it. Writes contact_sheet.png and cleaning.json; look at the picture before trusting a subject.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.synth.hip_ct import HIP_CT_FOLDER, clean_hip_labels, hip_ct_subjects, load_hip_ct  # noqa: E402

COLOURS = np.array([[0, 0, 0], [0.87, 0.51, 0.37], [0.95, 0.7, 0.5], [0.42, 0.61, 0.85], [0.3, 0.45, 0.8],
                    [0.6, 0.85, 0.4]])


def projection(labels: np.ndarray, axis: int) -> np.ndarray:
    """The label seen first along ``axis`` (the front-most), as RGB."""
    seen = labels > 0
    first = np.argmax(seen, axis=axis)
    picked = np.take_along_axis(labels, np.expand_dims(first, axis), axis).squeeze(axis)
    return COLOURS[np.where(seen.any(axis=axis), picked, 0)]


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/hip_ct_sheet")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = hip_ct_subjects()
    fig, axes = plt.subplots(6, 10, figsize=(20, 15))
    report = {}
    for n, subject in enumerate(subjects):
        labels, affine = load_hip_ct(subject, HIP_CT_FOLDER)
        cleaned, notes = clean_hip_labels(labels, np.linalg.norm(affine[:3, :3], axis=0))
        report[subject] = notes
        for k, (axis, name) in enumerate(((1, "coronal"), (2, "axial"))):
            ax = axes[n // 5, (n % 5) * 2 + k]
            image = projection(cleaned, axis)
            ax.imshow(np.rot90(image) if axis == 1 else np.rot90(image), interpolation="nearest")
            ax.set_title(f"{subject} {name}", fontsize=7)
            ax.axis("off")
    for ax in axes.ravel()[len(subjects) * 2:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "contact_sheet.png", dpi=70)
    (out / "cleaning.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'contact_sheet.png'} and cleaning.json for {len(subjects)} people")


if __name__ == "__main__":
    main()
