"""Train the bundled demo bone model on synthetic data (SynthSeg-style), on the CPU.

    python scripts/train_demo_model.py [--iterations 6000] [--out Resources/Models/mskai-bones-demo]

Training patches are rendered on the fly from the real knee label map (../shared/data, pymskt, MIT)
and from procedural lower-limb phantoms; validation patches come from other phantoms and other
deformations (a different seed). The result is a demo model: not for clinical use.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.models.package import load_package  # noqa: E402
from mskai.segment.train import TrainConfig, train  # noqa: E402
from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, CANONICAL_RAS, KneeLabelSource, LowerLimbPhantom, SyntheticPatches, make_sample  # noqa: E402, E501

KNEE = BUNDLED_KNEE_LABELS  # a copy of ../shared/data/knee_bones_cartilage_label.nrrd (pymskt, MIT)
TRAINING_DATA = (
    "Synthetic only: SynthSeg-style MR-like images rendered with random contrasts, blur, slice thickness, "
    "bias field and noise from (a) one real knee label map (pymskt project, MIT licence) under random "
    "elastic deformations and poses and (b) procedural lower-limb phantoms (pelvis, femur, patella, tibia, "
    "fibula) with random sizes, angles and knee flexion. No patient images. Demo model, not for clinical use."
)


def validation_patches(n, seed, patch, spacing):
    rng = np.random.default_rng(seed)
    knee = KneeLabelSource(KNEE)
    out = []
    regions = ["hip", "knee", "shank", "edge", "hip", "thigh"]  # every region, the pelvis most often
    for i in range(n):
        if i % 2 == 0:
            source, centre = knee, None
        else:
            source = LowerLimbPhantom(rng)
            centre = source.random_centre(rng, regions[(i // 2) % len(regions)])
        out.append(make_sample(source, rng, (patch,) * 3, (spacing,) * 3, directions=CANONICAL_RAS, centre=centre))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--spacing", type=float, default=1.5, help="model voxel size, mm")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--val-patches", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", help="continue from this package (e.g. the previous run's output)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--seed", type=int, default=0, help="training data stream (use a new one when continuing)")
    parser.add_argument("--out", default=str(REPO / "Resources" / "Models" / "mskai-bones-demo"))
    args = parser.parse_args()
    init = load_package(args.init) if args.init else None
    config = TrainConfig(spacing_mm=args.spacing, iterations=args.iterations, eval_every=args.eval_every, lr=args.lr,
                         threads=args.threads, patience=8, model_id="mskai-bones-demo", version=args.version,
                         demo=True, training_data=TRAINING_DATA, seed=args.seed)
    val = validation_patches(args.val_patches, seed=10_000, patch=config.patch, spacing=config.spacing_mm)
    data = SyntheticPatches(KNEE, patch=config.patch, spacing=config.spacing_mm, seed=config.seed)
    train(data, val, config, args.out, init_package=init, progress=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
    main()
