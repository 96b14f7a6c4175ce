"""`mskai classify` on a 160-slice sagittal knee series, CAM included, against `mskai segment --fast` on the same
series in the same run (the project's other per-series engine: a peer for what "fast" means on this machine).

    python benchmarks/acl_classify.py [--repeats 3] [--model mskai-acl-demo]

Each run is a fresh process (imports, model load, DICOM read, preprocessing, network, Grad-CAM, outputs), torch on
2 threads. Goal (issue 10): classify <= 10 s on 2 CPU threads.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLICES = 160
GOAL_S = 10.0


def make_series(folder: Path) -> Path:
    """A synthetic sagittal knee resliced to 160 thin slices (like a 3D DESS/PD-SPACE series), as DICOM files."""
    from mskai.synth.acl_knee import acl_shape_subjects, synthetic_acl_knee
    from mskai.synth.dicom_writer import write_series
    from mskai.volume import Volume

    volume = synthetic_acl_knee(3, np.random.default_rng(7), subjects=acl_shape_subjects("test"))
    n = volume.shape[2]
    position = np.linspace(0, n - 1, SLICES)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, n - 1)
    weight = (position - low).astype(np.float32)
    array = np.asarray(volume.array, dtype=np.float32)
    thin = array[:, :, low] * (1 - weight) + array[:, :, high] * weight
    affine = volume.affine_lps.copy()
    affine[:3, 2] *= (n - 1) / (SLICES - 1)
    write_series(Volume(thin.astype(np.int16), affine, meta=dict(volume.meta)), folder, description="SAG PD FS 3D")
    return folder


def timed(command, env) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="mskai-acl-demo")
    args = parser.parse_args()
    mskai = str(Path(sys.executable).with_name("mskai"))
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        series = make_series(tmp / "series")
        rows = {"classify (CAM included)": [], "segment --fast (peer)": []}
        for r in range(args.repeats):
            rows["classify (CAM included)"].append(timed(
                [mskai, "classify", str(series), "-o", str(tmp / f"acl{r}"), "--model", args.model], env))
            rows["segment --fast (peer)"].append(timed(
                [mskai, "segment", str(series), "-o", str(tmp / f"seg{r}"), "--fast", "--threads", "2",
                 "--formats", "report", "--progress", "none"], env))
        stages = json.loads((tmp / "acl0" / "report.json").read_text())["timings_s"]
    print(f"{SLICES}-slice sagittal series, medians of {args.repeats} fresh processes, 2 threads")
    print(f"{'command':<26} {'median s':>9} {'min s':>7}")
    medians = {}
    for name, values in rows.items():
        medians[name] = statistics.median(values)
        print(f"{name:<26} {medians[name]:>9.2f} {min(values):>7.2f}")
    ratio = medians["classify (CAM included)"] / medians["segment --fast (peer)"]
    print(f"ratio classify / segment --fast: {ratio:.2f}")
    print("classify stages (first run, s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    verdict = "met" if medians["classify (CAM included)"] <= GOAL_S else "NOT met"
    print(f"goal classify <= {GOAL_S:.0f} s: {verdict}")


if __name__ == "__main__":
    main()
