"""Train the demo knee ligament model (femur, tibia, ACL, PCL on sagittal slices) on synthetic knees, on the CPU.

    python scripts/train_ligament_model.py --iterations 3000 --bf16 --workers 1 --max-minutes 45 \\
        --out Resources/Training/mskai-knee-ligaments-demo-0.1.0
    # to go on after it stops: the same command with --resume; --init PACKAGE starts a new phase from a package

Training knees come from the OAI training subjects, validation slices from the validation subjects; the test
subjects are left for ``scripts/fit_acl_grader.py`` and ``scripts/evaluate_ligament_model.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.acl.ligaments import CONTEXT, IN_PLANE_MM, LIGAMENT_TABLE, SIZE, input_section  # noqa: E402
from mskai.models.package import load_package  # noqa: E402
from mskai.models.tasks import KNEE_LIGAMENTS  # noqa: E402
from mskai.segment.labels import label_table  # noqa: E402
from mskai.synth.acl_knee import acl_shape_subjects  # noqa: E402
from mskai.training.ligaments import LigamentSlices, validation_slices  # noqa: E402
from mskai.training.segment import TrainConfig, train  # noqa: E402

TRAINING_DATA = (
    "Synthetic only: sagittal knee MR rendered by mskai.synth.acl_knee (femur and tibia shapes of OAI training "
    "subjects, Apache-2.0; the bundled pymskt patella, MIT; procedural soft tissue with texture, cruciate ligaments "
    "with graded lesions, half of them with the thickness and width profiles of the Visible Human Female's ACLs and "
    "PCLs, CC BY 4.0, Andreassen et al. 2022; random contrasts PD / PD fat-sat / T2 fat-sat / T1 / T2, 3-4.5 mm "
    "slices, noise). No patient images. "
    "Demo model, not for clinical use."
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--val-cases", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", default="16,32,64,128,256")
    parser.add_argument("--init", help="start from this package (a new phase)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast + channels_last (CPU)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering knees ahead")
    parser.add_argument("--max-minutes", type=float)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--class-weight", action="append", default=[], metavar="LABEL=WEIGHT",
                        help="a class's weight in the loss, e.g. 3=2 (the ACL); repeatable")
    parser.add_argument("--out", default=str(REPO / "Resources" / "Training" / "mskai-knee-ligaments-demo"))
    args = parser.parse_args()
    channels = tuple(int(c) for c in args.channels.split(","))
    network = {"class": "UNet", "args": {"spatial_dims": 2, "in_channels": 2 * CONTEXT + 1,
                                         "out_channels": len(LIGAMENT_TABLE) + 1, "channels": list(channels),
                                         "strides": [2] * (len(channels) - 1), "num_res_units": 2,
                                         "norm": "INSTANCE"}}
    config = TrainConfig(spacing_mm=IN_PLANE_MM, patch=SIZE, batch_size=args.batch, iterations=args.iterations,
                         eval_every=args.eval_every, lr=args.lr, threads=args.threads, patience=args.patience,
                         channels=channels, model_id="mskai-knee-ligaments-demo", version=args.version, demo=True,
                         training_data=TRAINING_DATA, seed=args.seed, bf16=args.bf16, max_minutes=args.max_minutes,
                         workers=args.workers,
                         class_weights={int(k): float(v) for k, v in (w.split("=") for w in args.class_weight)},
                         extra={"task": KNEE_LIGAMENTS, "title": "Knee cruciate ligaments (sagittal MR)",
                                "description": "Femur, tibia, ACL and PCL on sagittal knee MR, slice by slice (2.5D).",
                                "labels": label_table(LIGAMENT_TABLE),
                                "input": input_section(),
                                "training_sources": {"train_subjects": len(acl_shape_subjects("train")),
                                                     "val_subjects": acl_shape_subjects("val"),
                                                     "test_subjects": acl_shape_subjects("test")}})
    val = validation_slices(acl_shape_subjects("val"), n_cases=args.val_cases)
    data = LigamentSlices(acl_shape_subjects("train"), seed=args.seed)
    init = load_package(args.init) if args.init else None
    train(data, val, config, args.out, init_package=init, progress=lambda m: print(m, flush=True), resume=args.resume,
          table=LIGAMENT_TABLE, network=network)


if __name__ == "__main__":
    main()
