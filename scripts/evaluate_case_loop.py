"""How far a few corrected cases take the shipped bone model on a site it handles poorly (`mskai cases improve`).

    python scripts/evaluate_case_loop.py [--ks 1,3,5,10] [--minutes 10] [--heldout 4] [--out DIR]

The site: hip MR (axial or coronal, 300-400 mm wide, 1-5 mm slices) rendered from the real hip shapes of the hip CT
people (``mskai.synth.hip_ct``), whom the shipped model never saw (it learned hips from three manual pelves). The
corrections are the true labels of k scans of the hip CT training people (the sacrum, not a bone of the shipped
model's table, is background there, as a radiologist correcting in that table would leave it); the held-out scans are
of the hip CT test people, never used for corrections. For each k: a fresh case library and models folder, the
very ``improve`` the module and CLI run (its own held-out share of the k cases, the time budget, bf16), then Dice per
bone of the new package and of the shipped one on the held-out scans, through `mskai segment`'s path. Writes
``case_loop.json``, ``case_loop.md`` (the README's table) and ``case_loop.png`` into --out.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.cases import CaseLibrary  # noqa: E402
from mskai.models.registry import find_model  # noqa: E402
from mskai.segment.labels import labels_from_table  # noqa: E402
from mskai.synth.hip_ct import HipCTSource, hip_ct_split  # noqa: E402
from mskai.synth.real_pelves import hip_cases  # noqa: E402
from mskai.training.local import improve, score  # noqa: E402
from mskai.volume import Volume  # noqa: E402

SHIPPED = "mskai-bones-demo@0.3.0"
CORRECTION_SEED, HELDOUT_SEED = 700_000, 800_000


def scans(n, seed, people, values, folder: Path):
    """(library, case ids in order): n hip scans of ``people`` saved as cases in ``folder`` (labels outside
    ``values`` -> 0)."""
    library, ids = CaseLibrary(folder), []
    for _, image, labels in hip_cases(n, seed, people, make_source=HipCTSource):
        kept = np.where(np.isin(labels.array, values), labels.array, 0).astype(np.uint8)
        ids.append(library.add(image, Volume(kept, labels.affine_lps), values).id)
    return library, ids


def copy_cases(source: CaseLibrary, ids, folder: Path) -> CaseLibrary:
    """A library holding the cases ``ids`` of ``source`` (the first k corrections)."""
    library = CaseLibrary(folder)
    for case in source.cases()[0]:
        if case.id in ids:
            library.add(case.image(), case.labels(), [int(v) for v in case.record["bone_voxels"]])
    return library


def rebuild(out: Path, work: Path):
    """The table again, the library's held-out figures read from the local packages the run left in ``work``."""
    record = json.loads((out / "case_loop.json").read_text())
    for r in record["rows"]:
        (metadata,) = (work / f"models-{r['k']}").glob("*/metadata.json")
        local = json.loads(metadata.read_text())["local"]
        r["library_before"] = {b: v["dice"] for b, v in local["before"].items()}
        r["library_after"] = {b: v["dice"] for b, v in local["after"].items()}
    write_table(record["rows"], out)
    (out / "case_loop.json").write_text(json.dumps(record, indent=2))
    overlays(work, out, [r["k"] for r in record["rows"]])


def overlays(work: Path, out: Path, ks):
    """The first held-out scan (truth), as the shipped model and the k-case fine-tunes segment it."""
    from mskai.models.package import load_package
    from mskai.segment.figures import three_planes_png
    from mskai.segment.infer import SegmentOptions, segment_volume

    case = sorted(CaseLibrary(work / "heldout").cases()[0], key=lambda c: c.id)[0]
    image = case.image()
    three_planes_png(image, case.labels(), out / "heldout_truth.png", "held-out hip scan: truth")
    for name, package in [("shipped", find_model(SHIPPED))] + [
            (f"k{k}", load_package(next((work / f"models-{k}").glob("*/metadata.json")).parent)) for k in ks]:
        labels = segment_volume(image, package, SegmentOptions(check_compatibility=False)).labels
        three_planes_png(image, labels, out / f"heldout_{name}.png", f"held-out hip scan: {package.id}@{package.version}")


def plot(rows, bones, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ks = [r["k"] for r in rows]
    for bone in bones:
        ax.plot([0, *ks], [rows[0]["shipped"][bone], *(r["after"][bone] for r in rows)], "o-", label=bone)
    ax.set_xticks([0, *ks]), ax.set_xlabel("corrected cases k"), ax.set_ylabel("held-out mean Dice"), ax.set_ylim(0, 1)
    ax.set_title("Shipped model fine-tuned on k corrected hip scans"), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,3,5,10")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each fine-tune")
    parser.add_argument("--heldout", type=int, default=4, help="held-out scans of the test people")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "Resources" / "Training" / "case-loop"))
    parser.add_argument("--rebuild", help="only rebuild the table from --out's case_loop.json and this work folder's "
                                           "local packages (their held-out figures)")
    args = parser.parse_args()
    ks = sorted(int(k) for k in args.ks.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.rebuild:
        return rebuild(out, Path(args.rebuild))
    work = Path(tempfile.mkdtemp(prefix="mskai-case-loop-"))
    os.environ["MSKAI_MODELS_DIR"] = str(work / "models-none")
    import torch

    torch.set_num_threads(args.threads)
    shipped = find_model(SHIPPED)
    values = [b.value for b in labels_from_table(shipped.metadata["labels"])]
    split = hip_ct_split()
    t = time.perf_counter()
    corrections, order = scans(max(ks), CORRECTION_SEED, split["train"], values, work / "corrections")
    heldout, _ = scans(args.heldout, HELDOUT_SEED, split["test"], values, work / "heldout")
    print(f"rendered {max(ks)} correction and {args.heldout} held-out scans in {time.perf_counter() - t:.0f} s",
          flush=True)
    held_cases = heldout.cases()[0]
    baseline = score(shipped, held_cases)
    print(f"shipped on the held-out scans: {json.dumps(baseline['mean'])}", flush=True)
    rows = []
    for k in ks:
        os.environ["MSKAI_MODELS_DIR"] = str(work / f"models-{k}")
        library = copy_cases(corrections, set(order[:k]), work / f"library-{k}")
        started = time.perf_counter()
        result = improve(SHIPPED, args.minutes, library, threads=args.threads,
                         progress=lambda stage, f, message=None: message and print(f"  k={k} {message}", flush=True))
        wall = (time.perf_counter() - started) / 60
        after = score(find_model(result["model"]), held_cases)
        rows.append({"k": k, "train_minutes": result["train_minutes"], "total_minutes": round(wall, 2),
                     "library_before": {b: v["dice"] for b, v in result["before"].items()},
                     "library_after": {b: v["dice"] for b, v in result["after"].items()},
                     "accepted": result["accepted"], "library_heldout": len(result["heldout_cases"]),
                     "shipped": {b: v["dice"] for b, v in baseline["mean"].items()},
                     "after": {b: v["dice"] for b, v in after["mean"].items()},
                     "hd95_after": {b: v["hd95_mm"] for b, v in after["mean"].items()}})
        print(f"k={k}: {json.dumps(rows[-1])}", flush=True)
        (out / "case_loop.json").write_text(json.dumps({"shipped": SHIPPED, "minutes": args.minutes,
                                                        "heldout_scans": args.heldout, "rows": rows}, indent=2))
    write_table(rows, out)
    overlays(work, out, ks)


def write_table(rows, out: Path):
    """case_loop.md and case_loop.png from the rows; "made the default" by the shipped rule (``is_better`` on the
    library's own held-out cases)."""
    from mskai.training.local import is_better

    for r in rows:
        figures = [{"mean": {b: {"dice": d} for b, d in r[key].items()}} for key in ("library_before", "library_after")]
        r["accepted"] = bool(r["library_heldout"]) and is_better(*figures)
    shipped = rows[0]["shipped"]
    bones = sorted(b for b in shipped if all(b in r["after"] for r in rows))
    absent = sorted(b for b in shipped if not any(b in r["after"] for r in rows))
    lines = ["| corrected cases k | " + " | ".join(f"{b} Dice" for b in bones) + " | bones drawn where there are "
             "none | training min | total min | made the default |", "|---:|" + "---:|" * len(bones) + "---|---:|---:|---|",
             "| 0 (shipped 0.3.0) | " + " | ".join(f"{shipped[b]:.3f}" for b in bones) + f" | {', '.join(absent)} | | | |"]
    for r in rows:
        extra = sorted(set(r["after"]) - set(bones))
        lines.append(f"| {r['k']} | " + " | ".join(f"{r['after'][b]:.3f}" for b in bones)
                     + f" | {', '.join(extra) or 'none'} | {r['train_minutes']:.1f} | {r['total_minutes']:.1f} | "
                     f"{'yes' if r['accepted'] else 'no'} |")
    (out / "case_loop.md").write_text("\n".join(lines) + "\n")
    plot(rows, bones, out / "case_loop.png")
    print("\n".join(lines))

if __name__ == "__main__":
    main()
