"""`mskai synth series | knee | acl`: synthetic sample data."""

from __future__ import annotations

from pathlib import Path

from mskai import MskaiError


def cmd_synth_series(args):
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    volume = phantom(shape=tuple(args.shape), spacing=tuple(args.spacing), plane=args.plane, tilt_deg=args.tilt)
    paths = write_series(volume, args.folder, transfer_syntax=args.syntax, multiframe=args.multiframe,
                         description=f"SYNTHETIC {args.plane} phantom")
    print(f"Wrote {len(paths)} file(s) of a synthetic {args.plane} series to {args.folder}")
    return 0


def cmd_synth_knee(args):
    import numpy as np

    from mskai.synth.dicom_writer import write_series
    from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, KneeLabelSource, synthetic_case
    from mskai.volume_files import write_volume

    source = KneeLabelSource(args.labels or BUNDLED_KNEE_LABELS)
    rng = np.random.default_rng(args.seed)
    image, labels = synthetic_case(source, rng, tuple(args.spacing), extent_mm=(150, 150, 120), plane=args.plane,
                                   centre=source.centre_mm)
    paths = write_series(image, args.folder, patient=("SYNTHETIC^KNEE", "SYNTH-KNEE"),
                         description=f"SYNTHETIC {args.plane} knee")
    print(f"Wrote {len(paths)} file(s) of a synthetic {args.plane} knee series to {args.folder}")
    if args.truth:
        write_volume(labels, args.truth)
        print(f"Wrote its true bone labels to {args.truth}")
    return 0


def cmd_synth_acl(args):
    from mskai.synth.acl_knee import GRADES, acl_shape_subjects, write_acl_study

    planes = [p.strip() for p in args.planes.split(",") if p.strip()]
    bad = [p for p in planes if p not in ("sagittal", "coronal", "axial")]
    if bad or not planes:
        raise MskaiError(f"--planes takes sagittal, coronal and/or axial, not {','.join(bad) or 'nothing'}")
    try:
        subjects = acl_shape_subjects(args.split)
        written = write_acl_study(args.folder, args.grade, args.seed, planes=planes, subjects=subjects)
    except (FileNotFoundError, ValueError) as exc:
        raise MskaiError(str(exc)) from None
    for plane, paths in written.items():
        print(f"Wrote {len(paths)} file(s) of a synthetic {plane} knee series to {Path(paths[0]).parent}")
    print(f"ACL grade {args.grade} ({GRADES[args.grade]}), seed {args.seed}, knee shapes of the OAI {args.split} "
          "subjects. Synthetic: demo, not for clinical use.")
    return 0


def add_commands(top):
    """`mskai synth ...`"""
    synth = top.add_parser("synth", help="synthetic sample data").add_subparsers(dest="synth_command", required=True)
    p = synth.add_parser("series", help="write a synthetic MR phantom series")
    p.add_argument("folder")
    p.add_argument("--plane", choices=["sagittal", "coronal", "axial"], default="sagittal")
    p.add_argument("--tilt", type=float, default=0.0, help="rotate the slices by this many degrees (oblique)")
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 24])
    p.add_argument("--spacing", type=float, nargs=3, default=[0.6, 0.6, 3.0])
    p.add_argument("--syntax", default="explicit-le", help="explicit-le, explicit-be, rle, jpeg-ls, jpeg2000, ...")
    p.add_argument("--multiframe", action="store_true", help="one Enhanced MR file instead of one file per slice")
    p.set_defaults(func=cmd_synth_series)
    p = synth.add_parser("knee", help="write a synthetic knee MR series rendered from the bundled knee label map")
    p.add_argument("folder")
    p.add_argument("--plane", choices=["sagittal", "coronal", "axial"], default="sagittal")
    p.add_argument("--spacing", type=float, nargs=3, default=[0.6, 0.6, 1.5], help="voxel size in mm (i j k)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", help="also write the true bone label map here (.nii.gz / .nrrd)")
    p.add_argument("--labels", help="another knee label map (pymskt encoding) to render from")
    p.set_defaults(func=cmd_synth_knee)
    p = synth.add_parser("acl", help="write a synthetic knee MR study with an ACL of a given grade (a series per plane)")
    p.add_argument("folder")
    p.add_argument("--grade", type=int, choices=range(4), required=True,
                   help="0 healthy, 1 minor strain, 2 partial rupture, 3 complete rupture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--planes", default="sagittal", help="comma-separated: sagittal, coronal, axial")
    p.add_argument("--split", choices=["train", "val", "test"], default="test",
                   help="OAI subjects whose knee shapes may be used (test: never trained on)")
    p.set_defaults(func=cmd_synth_acl)
