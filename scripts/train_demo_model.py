"""Train the bundled demo bone model on synthetic data (SynthSeg-style), on the CPU or a GPU.

    python scripts/train_demo_model.py [--iterations 2000] [--patch 96] [--init PACKAGE] [--pelves 001,002,004]
        [--hip-ct-weight 0.3] [--bf16] [--max-minutes 60] [--workers 1] [--resume] [--out build/bones]

A run stops cleanly after --max-minutes and ``--resume`` (the same command with --resume added) goes on from
its checkpoint: network, optimiser, schedule, iteration, log and the best state so far.

Training patches are rendered on the fly from shape sources, each drawn by weight:
- real knees: femur/tibia of the OAI training subjects (``split_subjects``: the test and validation subjects
  never appear), split by ``cached_split`` (cached under build/oai_splits), mirrored at random; patella and
  fibula are not annotated there and are left out of the loss (``marginal_dice_focal``);
- the bundled knee label map (pymskt, MIT) under random deformations;
- procedural hip-to-ankle phantoms, new ones every few samples;
- real pelves (``--pelves``: the subjects trained on; the others stay for testing), when available;
- real hips of 20 more people (``--hip-ct-weight``): the training part of ``hip_ct_split`` (hip CT label maps,
  muscles grown around the bones), alone or continued into procedural legs; sacrum as bone that is not hip bone;
- real patellae and fibulae of the Visible Human Female (``--vh-weight``), each in place of the bundled knee's own
  (``visible_human.VisibleHumanKnee``); the Male's are left for testing.
Validation patches come from the OAI validation subjects, the hip CT validation people, other phantoms and other
deformations (another seed).
The result is a demo model: not for clinical use.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.models.package import load_package  # noqa: E402
from mskai.synth.hip_ct import HipCTSource, hip_ct_split  # noqa: E402
from mskai.training.segment import TrainConfig, train  # noqa: E402
from mskai.synth.real_shapes import (RealKneeSource, cached_split, oai_subjects, spacing_of, split_quality,  # noqa: E402
                                     split_subjects)
from mskai.synth.synthseg import (BUNDLED_KNEE_LABELS, CANONICAL_RAS, KneeLabelSource, LowerLimbPhantom,  # noqa: E402
                                  SyntheticPatches, labelled_classes, make_sample)
from mskai.synth.visible_human import VH_TRAIN, visible_human_knee  # noqa: E402

KNEE = BUNDLED_KNEE_LABELS  # a copy of ../shared/data/knee_bones_cartilage_label.nrrd (pymskt, MIT)
OAI = REPO.parent / "shared" / "data" / "oai_knee_bone_masks"
SPLIT_CACHE = REPO / "build" / "oai_splits"
TRAINING_DATA = (
    "Synthetic only: SynthSeg-style MR-like images rendered with random contrasts per tissue (cortex, fatty or red "
    "marrow, fat with and without fat suppression, muscle, cartilage, fluid, vessels, tendons), blur, thick slices, "
    "ringing, bias field and noise from (a) femur/tibia shapes of real knees (OAI bone masks, Apache-2.0, "
    "training subjects only), (b) one real knee label map (pymskt project, MIT licence) under random elastic "
    "deformations, (c) procedural lower-limb phantoms, (d) real pelvis label maps (pelvic-annonation, MIT; "
    "CT of TCIA Pelvic Reference Data) and (e) hip label maps of 20 people (AuToSeg predictions on CT, MIT) where "
    "listed under training_sources, (f) patellae and fibulae of the Visible Human Female (CC BY 4.0, Andreassen et "
    "al. 2022) in place of the bundled knee's when vh_train_people is not empty. No patient images were used as training images. Demo model, not for clinical use."
)


def oai_source_maker(subjects):
    def make(rng):
        labels, affine = cached_split(OAI / f"{rng.choice(subjects)}.nii.gz", SPLIT_CACHE)
        return RealKneeSource(labels[::-1] if rng.random() < 0.5 else labels, spacing_of(affine), affine, rng=rng)
    return make


def pelvis_source_maker(subjects, kind=None):
    """Real pelves (``kind``: RealPelvisSource, or HipCTSource for the hip CT people), alone or with legs."""
    from mskai.synth.real_pelves import RealHipLimb, RealPelvisSource

    kind = kind or RealPelvisSource

    def make(rng):
        pelvis = kind(str(rng.choice(subjects)), rng=rng)
        return RealHipLimb(pelvis, rng) if rng.random() < 0.5 else pelvis
    return make


def validation_patches(n, seed, patch, spacing, oai_val, pelves=(), hip_ct_val=()):
    """n patches: bundled knee, OAI validation subjects and phantoms (hip most often), in turn; with ``pelves``,
    every fourth patch is a hip of a training pelvis (no pelvis subject is left for validation: other renders),
    of a hip CT validation person when ``hip_ct_val`` is given."""
    rng = np.random.default_rng(seed)
    make_pelvis = (pelvis_source_maker(hip_ct_val, HipCTSource) if hip_ct_val
                   else pelvis_source_maker(pelves) if pelves else None)
    knee = KneeLabelSource(KNEE)
    regions = ["hip", "knee", "shank", "hip", "edge", "thigh"]
    out = []
    for i in range(n):
        centre = None
        if make_pelvis is not None and i % 4 == 3:
            source = make_pelvis(rng)
            centre = source.random_centre(rng, "hip") if hasattr(source, "REGIONS") else None
        elif i % 3 == 0:
            source = knee
        elif i % 3 == 1:
            labels, affine = cached_split(OAI / f"{oai_val[(i // 3) % len(oai_val)]}.nii.gz", SPLIT_CACHE)
            source = RealKneeSource(labels, spacing_of(affine), affine, rng=rng)
        else:
            source = LowerLimbPhantom(rng)
            centre = source.random_centre(rng, regions[(i // 3) % len(regions)])
        image, labels = make_sample(source, rng, (patch,) * 3, (spacing,) * 3, directions=CANONICAL_RAS, centre=centre)
        out.append((image, labels, labelled_classes(source)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--patch", type=int, default=96, help="training patch edge, voxels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--spacing", type=float, default=1.5, help="model voxel size, mm")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--val-patches", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init", help="continue from this package (e.g. the previous run's output)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--pelves", default="", help="real pelvis subjects to train on, e.g. 001,002,004")
    parser.add_argument("--pelvis-weight", type=float, default=0.15, help="share of patches from the real pelves")
    parser.add_argument("--hip-ct-weight", type=float, default=0.0,
                        help="share of patches from the hip CT training people (0: none)")
    parser.add_argument("--vh-weight", type=float, default=0.0,
                        help="share of patches from the bundled knee with Visible Human Female patellae/fibulae")
    parser.add_argument("--phantom-weight", type=float,
                        help="share of procedural phantoms (default: what the real pelves and hips leave of 0.4)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast + channels_last_3d (CPU)")
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes (then --resume)")
    parser.add_argument("--workers", type=int, default=0, help="processes rendering patches ahead")
    parser.add_argument("--resume", action="store_true", help="go on from --out's checkpoint")
    parser.add_argument("--class-weight", action="append", default=[], metavar="LABEL=WEIGHT",
                        help="a class's weight in the loss, e.g. 6=5 for the sacrum (repeatable)")
    parser.add_argument("--head-lr-factor", type=float, default=1.0,
                        help="the output layers learn this many times faster (a newly added class)")
    parser.add_argument("--version", default="0.3.0")
    parser.add_argument("--seed", type=int, default=0, help="training data stream (use a new one when continuing)")
    parser.add_argument("--out", default=str(REPO / "Resources" / "Models" / "mskai-bones-demo"))
    args = parser.parse_args()
    subjects = split_subjects(oai_subjects(OAI))
    pelves = [s for s in args.pelves.split(",") if s]
    usable = [s for s in subjects["train"] if split_quality(cached_split(OAI / f"{s}.nii.gz", SPLIT_CACHE)[0])["ok"]]
    print(f"{len(usable)} of {len(subjects['train'])} OAI training subjects split plausibly", flush=True)
    mixture = [(0.45, oai_source_maker(usable), 6), (0.15, lambda rng: KneeLabelSource(KNEE), 10**9),
               (0.4 - args.pelvis_weight if pelves else 0.4, LowerLimbPhantom, 20)]
    if pelves:
        mixture.append((args.pelvis_weight, pelvis_source_maker(pelves), 10))
    hip_ct = hip_ct_split()
    if args.hip_ct_weight:
        mixture[2] = (max(0.05, mixture[2][0] - args.hip_ct_weight), LowerLimbPhantom, 20)
        mixture.append((args.hip_ct_weight, pelvis_source_maker(hip_ct["train"], HipCTSource), 30))
    if args.phantom_weight is not None:
        mixture[2] = (args.phantom_weight, LowerLimbPhantom, 20)
    if args.vh_weight:
        mixture.append((args.vh_weight, lambda rng: visible_human_knee(VH_TRAIN[0], str(rng.choice(["Left", "Right"]))),
                        40))
    init = load_package(args.init) if args.init else None
    config = TrainConfig(spacing_mm=args.spacing, patch=args.patch, batch_size=args.batch, iterations=args.iterations,
                         eval_every=args.eval_every, lr=args.lr, threads=args.threads, patience=args.patience,
                         model_id="mskai-bones-demo", version=args.version, demo=True, training_data=TRAINING_DATA,
                         seed=args.seed, bf16=args.bf16, max_minutes=args.max_minutes, workers=args.workers,
                         class_weights={int(k): float(v) for k, v in (w.split("=") for w in args.class_weight)},
                         head_lr_factor=args.head_lr_factor,
                         extra={"training_sources": {
                             "oai_train_subjects": len(usable), "oai_val_subjects": subjects["val"],
                             "oai_test_subjects": subjects["test"], "pelvis_subjects": pelves,
                             "hip_ct_train_people": hip_ct["train"] if args.hip_ct_weight else [],
                             "hip_ct_val_people": hip_ct["val"], "hip_ct_test_people": hip_ct["test"],
                             "vh_train_people": list(VH_TRAIN) if args.vh_weight else [],
                             "mixture": [round(w, 3) for w, _, _ in mixture]}})
    val = validation_patches(args.val_patches, seed=10_000, patch=args.patch, spacing=args.spacing,
                             oai_val=subjects["val"], pelves=pelves,
                             hip_ct_val=hip_ct["val"] if args.hip_ct_weight else ())
    data = SyntheticPatches(mixture, patch=args.patch, spacing=args.spacing, seed=args.seed)
    train(data, val, config, args.out, init_package=init, progress=lambda msg: print(msg, flush=True),
          resume=args.resume)


if __name__ == "__main__":
    main()
