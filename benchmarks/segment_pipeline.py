"""Benchmark: `mskai segment` stage by stage on a knee volume and a lower-limb stack, on 2 CPU threads.

    python benchmarks/segment_pipeline.py [--threads 2] [--cases knee,limb] [--fast-limb]

Inputs are synthetic MR-like volumes (written once under benchmarks/.cache): the knee rendered on the
real knee label map's own 384x384x160 grid, and a 512x512x1000 procedural hip-to-ankle phantom.
Each run is a fresh process running the real CLI; its report gives the per-stage times and the
process reports its peak RSS. Goals: knee <= 20 s, lower limb <= 120 s, peak RSS <= 4 GB.

Mesh generation is compared in the same run with 3D Slicer's own closed-surface conversion
(slicer-core: vtkSlicerSegmentationsModuleLogic + CreateClosedSurfaceRepresentation) on the same label map.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CACHE = Path(__file__).resolve().parent / ".cache"
from mskai.synth.synthseg import BUNDLED_KNEE_LABELS  # noqa: E402
KNEE = BUNDLED_KNEE_LABELS  # a copy of ../shared/data/knee_bones_cartilage_label.nrrd (pymskt, MIT)

_RUN = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
        "from peak_rss import peak_mb; from mskai.cli import main; rc = main(sys.argv[1:]); "
        "print(json.dumps({'rc': rc, 'peak_mb': peak_mb()}))")


def knee_volume() -> tuple[Path, Path]:
    """Synthetic knee image on the label map's own grid, and its bone label map."""
    from mskai.volume_files import write_volume
    from mskai.synth.synthseg import KneeLabelSource, bone_labels_of, render
    from mskai.volume import Volume

    image_path, label_path = CACHE / "knee_384x384x160.nrrd", CACHE / "knee_384x384x160_bones.nrrd"
    if not image_path.exists():
        source = KneeLabelSource(KNEE)
        rng = np.random.default_rng(1)
        image = render(source.tissue, rng, np.linalg.norm(source.affine[:3, :3], axis=0)).numpy()
        write_volume(Volume(np.rint(image * 1000).astype(np.int16), source.affine), image_path)
        write_volume(Volume(bone_labels_of(source.tissue, source.owner).numpy(), source.affine), label_path)
    return image_path, label_path


def limb_volume() -> Path:
    """A hip-to-ankle phantom rendered at 1.6 x 1.6 x 2 mm, upsampled to 512 x 512 x 1000 (0.8 x 0.8 x 1 mm)."""
    import torch.nn.functional as F

    from mskai.volume_files import write_volume
    from mskai.synth.phantom import ORIENTATIONS, grid_affine
    from mskai.synth.synthseg import LowerLimbPhantom, make_sample
    from mskai.volume import Volume

    path = CACHE / "limb_512x512x1000.nrrd"
    if not path.exists():
        rng = np.random.default_rng(2)
        phantom = LowerLimbPhantom(rng)
        centre = np.array([0.0, 0.0, 100.0 - 500.0])
        coarse, _ = make_sample(phantom, rng, (256, 256, 500), (1.6, 1.6, 2.0), directions=ORIENTATIONS["axial"],
                                centre=centre, max_rotation=0.0, scale=0.0, elastic_mm=0.0)
        fine = F.interpolate(coarse[None], size=(512, 512, 1000), mode="trilinear", align_corners=False)[0, 0]
        array = np.rint(fine.numpy() * 1000).astype(np.int16)
        del fine, coarse
        spacing = np.array([0.8, 0.8, 1.0])
        origin = centre - spacing * (np.array(array.shape) - 1) / 2
        write_volume(Volume(array, grid_affine(ORIENTATIONS["axial"], spacing, origin)), path)
    return path


def run_segment(volume: Path, threads: int, extra=()) -> dict:
    out = Path(tempfile.mkdtemp(prefix="mskai-bench-"))
    args = ["segment", str(volume), "-o", str(out), "--threads", str(threads), "--progress", "none",
            "--formats", "nii.gz,nrrd,seg.nrrd,stl,report", *extra]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"mskai segment failed:\n{result.stderr}")
    process = json.loads(result.stdout.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": wall, "peak_mb": process["peak_mb"], "timings": report["timings_s"], "out": out}


def compare_meshes(label_path: Path, threads: int) -> dict:
    """Seconds to build all bone surfaces: mskai (VTK flying edges + windowed sinc, one thread per bone up to
    ``threads``) vs Slicer's conversion."""
    import slicer

    from mskai.volume_files import read_volume_file
    from mskai.segment.labels import BONES
    from mskai.segment.meshes import surfaces

    labels = read_volume_file(label_path)
    array = np.asarray(labels.array, dtype=np.uint8)
    start = time.perf_counter()
    ours = surfaces(array, [b.value for b in BONES], labels.affine_lps, threads=threads)
    ours_s = time.perf_counter() - start
    triangles = sum(m.GetNumberOfPolys() for m in ours.values() if m is not None)

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    volume_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(label_path))
    storage.ReadData(volume_node)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    logic.ImportLabelmapToSegmentationNode(volume_node, segmentation)
    start = time.perf_counter()
    segmentation.CreateClosedSurfaceRepresentation()
    slicer_s = time.perf_counter() - start
    seg = segmentation.GetSegmentation()
    slicer_triangles = sum(seg.GetNthSegment(i).GetRepresentation("Closed surface").GetNumberOfPolys()
                           for i in range(seg.GetNumberOfSegments()))
    return {"mskai_s": ours_s, "slicer_s": slicer_s, "mskai_triangles": triangles, "slicer_triangles": slicer_triangles}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default="knee,limb")
    parser.add_argument("--fast-limb", action="store_true", help="run the lower-limb stack with --fast too")
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    runs = {}
    if "knee" in args.cases:
        image, labels = knee_volume()
        runs["knee 384x384x160"] = run_segment(image, args.threads)
    if "limb" in args.cases:
        limb = limb_volume()
        runs["limb 512x512x1000"] = run_segment(limb, args.threads)
        if args.fast_limb:
            runs["limb 512x512x1000 --fast"] = run_segment(limb, args.threads, ["--fast"])

    stages = ["load", "preprocess", "infer", "postprocess", "write_volumes", "meshes", "write_meshes_seg"]
    print(f"\nmskai segment, {args.threads} threads (seconds per stage; peak RSS of the process)")
    print(f"{'case':<26}" + "".join(f"{s[:11]:>12}" for s in stages) + f"{'total':>9}{'RSS MB':>9}")
    for name, r in runs.items():
        print(f"{name:<26}" + "".join(f"{r['timings'].get(s, 0):>12.2f}" for s in stages)
              + f"{r['wall_s']:>9.1f}{r['peak_mb']:>9.0f}")
    goals = {"knee 384x384x160": 10, "limb 512x512x1000": 90, "limb 512x512x1000 --fast": 90}  # issue 8: 1.2x of 0.2.0
    for name, r in runs.items():
        print(f"{name}: {r['wall_s']:.1f} s of {goals[name]} s goal ({r['wall_s'] / goals[name]:.2f}x), "
              f"peak RSS {r['peak_mb'] / 1024:.2f} GB of 4 GB ({r['peak_mb'] / 4096:.2f}x)")
    if "knee" in args.cases:
        m = compare_meshes(knee_volume()[1], args.threads)
        print("\nBone surfaces from the knee label map (4 bones, 384x384x160):")
        print(f"{'method':<44}{'seconds':>9}{'triangles':>11}")
        print(f"{'mskai (flying edges + windowed sinc, LPS)':<44}{m['mskai_s']:>9.2f}{m['mskai_triangles']:>11}")
        print(f"{'Slicer closed-surface conversion':<44}{m['slicer_s']:>9.2f}{m['slicer_triangles']:>11}")
        print(f"ratio mskai/Slicer: {m['mskai_s'] / m['slicer_s']:.2f}x time")


if __name__ == "__main__":
    main()
