"""`mskai batch segment` on a local Dask cluster (1 and 2 single-threaded workers) against `mskai segment` run
in a shell loop over the same series, in the same run.

    python benchmarks/batch.py [--series 20] [--model mskai-bones-demo]

The series are small synthetic knees (sagittal, coronal and axial in turn, 0.8 x 0.8 x 3 mm, about 1 M voxels),
written as DICOM and indexed into a Slicer DICOM database; every command writes the default outputs (label maps,
.seg.nrrd, meshes, report). Goals (issue 12): overhead per series <= 1 s against the loop; 2 workers >= 1.3x the
loop's throughput. "Dask overhead" is the batch's wall time minus the time its tasks ran (per worker), per series:
what the cluster, the scheduling and the manifest cost.
"""

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLANES = ("sagittal", "coronal", "axial")
GOAL_OVERHEAD_S = 1.0
GOAL_SPEEDUP = 1.3


def make_series(root: Path, n: int) -> list[Path]:
    from mskai.dicom import index_folder
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, KneeLabelSource, synthetic_case

    source = KneeLabelSource(BUNDLED_KNEE_LABELS)
    folders = []
    for i in range(n):
        image, _ = synthetic_case(source, np.random.default_rng(i), (0.8, 0.8, 3.0), extent_mm=(150, 150, 120),
                                  plane=PLANES[i % 3], centre=source.centre_mm)
        folders.append(root / "dicom" / f"s{i:02d}")
        write_series(image, folders[-1], patient=("SYNTHETIC^KNEE", f"SYNTH-{i}"), series_number=i + 1,
                     description=f"SYNTHETIC {PLANES[i % 3]} knee")
    index_folder(root / "dicom", root / "db")
    return folders


def timed(command) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=False, capture_output=True, text=True)
    return time.perf_counter() - start


def task_seconds(folder: Path) -> tuple[float, int]:
    with open(folder / "batch.csv") as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["seconds"]) for r in rows), sum(r["status"] == "done" for r in rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--model", default="mskai-bones-demo")
    args = parser.parse_args()
    mskai = str(Path(sys.executable).with_name("mskai"))
    n = args.series
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders = make_series(tmp, n)
        loop = " ; ".join(f"{mskai} segment {f} -o {tmp / 'loop' / f.name} --model {args.model} --progress none"
                          for f in folders)
        walls = {"mskai segment, shell loop": timed(["bash", "-c", loop])}
        done = {"mskai segment, shell loop": sum((tmp / "loop" / f.name / "report.json").is_file() for f in folders)}
        ran = {}
        for workers in (1, 2):
            name = f"mskai batch segment, {workers} worker{'s' * (workers > 1)}"
            out = tmp / f"batch{workers}"
            walls[name] = timed([mskai, "batch", "segment", str(tmp / "db"), "-o", str(out), "--model", args.model,
                                 "--workers", str(workers), "--progress", "none"])
            ran[name], done[name] = task_seconds(out)
            ran[name] /= workers
    loop_wall = walls["mskai segment, shell loop"]
    print(f"{n} synthetic knee series (~1 M voxels each), default outputs, {args.model}, this machine's cores")
    print(f"{'runner':<34} {'done':>5} {'wall s':>8} {'series/min':>11} {'s/series':>9} {'vs loop':>8} "
          f"{'overhead s/series':>18} {'Dask overhead s/series':>23}")
    for name, wall in walls.items():
        overhead = (wall - loop_wall) / n
        dask = f"{(wall - ran[name]) / n:>23.2f}" if name in ran else f"{'-':>23}"
        print(f"{name:<34} {done[name]:>5} {wall:>8.1f} {60 * n / wall:>11.1f} {wall / n:>9.2f} "
              f"{loop_wall / wall:>7.2f}x {overhead:>18.2f} {dask}")
    one, two = walls["mskai batch segment, 1 worker"], walls["mskai batch segment, 2 workers"]
    overhead = max(one - loop_wall, two - loop_wall) / n
    print(f"goal overhead per series <= {GOAL_OVERHEAD_S:.0f} s against the loop: "
          f"{'met' if overhead <= GOAL_OVERHEAD_S else 'NOT met'} ({overhead:+.2f} s)")
    print(f"goal 2 workers >= {GOAL_SPEEDUP}x the loop's throughput: "
          f"{'met' if loop_wall / two >= GOAL_SPEEDUP else 'NOT met'} ({loop_wall / two:.2f}x)")


if __name__ == "__main__":
    main()
