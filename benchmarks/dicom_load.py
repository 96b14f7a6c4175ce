"""Benchmark: load a 512x512x1000 synthetic MR series with mskai and with SimpleITK's ImageSeriesReader.

Each reader runs in its own fresh process (so peak RSS is its own), several times, alternating, with
the files already in the page cache. Prints a table and the mskai/SimpleITK ratios.

    python benchmarks/dicom_load.py [--slices 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"

# Each snippet prints {"seconds": load time, "peak_mb": peak RSS, "base_mb": RSS after imports, "sum": checksum}.
_MEASURE = """
import json, sys, time
sys.path.insert(0, {bench_dir!r})
from peak_rss import peak_mb as rss_mb
{imports}
base = rss_mb()
t = time.perf_counter()
{load}
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "peak_mb": rss_mb(), "base_mb": base, "sum": float(array.sum(dtype="float64")),
                  "shape": list(array.shape)}}))
"""

READERS = {
    "mskai": dict(
        imports="from mskai.dicom import scan_folder, plan_volumes, read_volume",
        load="(plan,) = plan_volumes(scan_folder(sys.argv[1]).series[0]); array = read_volume(plan).array",
    ),
    "SimpleITK": dict(
        imports="import SimpleITK as sitk",
        load=("r = sitk.ImageSeriesReader(); r.SetFileNames(r.GetGDCMSeriesFileNames(sys.argv[1])); "
              "image = r.Execute(); array = sitk.GetArrayViewFromImage(image)"),
    ),
}


def make_series(slices: int) -> Path:
    """Write (once) a 512x512xN int16 sagittal series, one uncompressed file per slice."""
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import ORIENTATIONS, grid_affine
    from mskai.volume import Volume

    folder = CACHE / f"series_512x512x{slices}"
    if folder.is_dir() and len(list(folder.iterdir())) == slices:
        return folder
    yy, xx = np.mgrid[0:512, 0:512]
    base = (1000 + 800 * (((xx - 256) ** 2 + (yy - 240) ** 2) < 150**2) + xx).astype(np.int16)
    array = np.empty((512, 512, slices), dtype=np.int16)
    for k in range(slices):
        array[:, :, k] = base.T + (k % 97)
    volume = Volume(array, grid_affine(ORIENTATIONS["axial"], (0.5, 0.5, 1.0), (-128, -128, -500)))
    print(f"writing {slices} files to {folder} ...", flush=True)
    write_series(volume, folder, description="SYNTHETIC benchmark")
    return folder


def measure(name: str, folder: Path) -> dict:
    code = _MEASURE.format(bench_dir=str(Path(__file__).resolve().parent), **READERS[name])
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = make_series(args.slices)
    for f in folder.iterdir():  # warm the page cache for both readers alike
        f.read_bytes()
    runs = {name: [] for name in READERS}
    for _ in range(args.repeats):
        for name in READERS:
            runs[name].append(measure(name, folder))
    sums = {name: runs[name][0]["sum"] for name in READERS}
    assert len(set(sums.values())) == 1, f"readers disagree on the voxels: {sums}"

    print(f"\nLoading a 512x512x{args.slices} int16 series ({args.repeats} runs each, median)")
    print(f"{'reader':<10} {'wall s':>8} {'peak RSS MB':>12} {'RSS above imports MB':>21}")
    rows = {}
    for name, results in runs.items():
        wall = statistics.median(r["seconds"] for r in results)
        peak = statistics.median(r["peak_mb"] for r in results)
        above = statistics.median(r["peak_mb"] - r["base_mb"] for r in results)
        rows[name] = (wall, peak, above)
        print(f"{name:<10} {wall:>8.2f} {peak:>12.0f} {above:>21.0f}")
    m, s = rows["mskai"], rows["SimpleITK"]
    print(f"\nratio mskai/SimpleITK: wall {m[0] / s[0]:.2f}x, peak RSS {m[1] / s[1]:.2f}x, "
          f"RSS above imports {m[2] / s[2]:.2f}x   (goals: wall <= 1.0x, memory <= 2.0x)")


if __name__ == "__main__":
    main()
