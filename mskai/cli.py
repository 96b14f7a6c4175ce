"""The `mskai` command line (also `python -m mskai`)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from mskai import MskaiError, __version__


def _patient_key(series) -> str:
    """A stable pseudonym for a patient, so listings group patients without showing who they are."""
    digest = hashlib.sha256(f"{series.patient_id}\x00{series.patient_name}".encode()).hexdigest()
    return f"P-{digest[:8]}"


def _series_summary(index, series, show_identifiers) -> dict:
    from mskai.dicom.series import plan_volumes

    entry = {
        "index": index,
        "patient": _patient_key(series),
        "study": series.study_description,
        "number": series.number,
        "modality": series.modality,
        "description": series.description,
        "files": len(series.files),
        "kind": "image" if series.is_image else series.sop_class_name or "non-image",
    }
    if show_identifiers:
        entry.update(patient_name=series.patient_name, patient_id=series.patient_id, study_date=series.study_date,
                     study_uid=series.study_uid, series_uid=series.uid)
    if series.is_image:
        try:
            plans = plan_volumes(series)
        except MskaiError as exc:
            entry["problem"] = str(exc)
            plans = []
        entry["volumes"] = [
            {"label": p.label, "plane": p.plane.name if p.plane else None,
             "obliquity_deg": round(p.plane.obliquity_deg, 1) if p.plane else None,
             "size": list(p.shape), "problem": p.problem or p.uneven_gaps}
            for p in plans
        ]
    return entry


def _print_listing(entries):
    last_patient = last_study = None
    for e in entries:
        if e["patient"] != last_patient:
            name = f"  {e['patient_name']} ({e['patient_id']})" if "patient_name" in e else ""
            print(f"Patient {e['patient']}{name}")
            last_patient, last_study = e["patient"], None
        study = (e.get("study_uid"), e["study"])
        if study != last_study:
            date = f" {e['study_date']}" if e.get("study_date") else ""
            print(f"  Study{date} {e['study']!r}")
            last_study = study
        head = f"    [{e['index']}] #{e['number'] if e['number'] is not None else '-'} {e['modality']:<3} {e['description']!r}"
        if e["kind"] != "image":
            print(f"{head}  {e['kind']}, {e['files']} files (not an image series)")
            continue
        vols = e.get("volumes", [])
        planes = sorted({v["plane"] for v in vols if v["plane"]})
        sizes = sorted({"x".join(map(str, v["size"])) for v in vols})
        print(f"{head}  {'/'.join(planes) or '?'}  {', '.join(sizes)}  {len(vols)} volume(s), {e['files']} files")
        if "series_uid" in e:
            print(f"        UID {e['series_uid']}")
        if e.get("problem"):
            print(f"        problem: {e['problem']}")
        if len(vols) > 1 or any(v["problem"] for v in vols):
            for n, v in enumerate(vols, 1):
                note = f"  problem: {v['problem']}" if v["problem"] else ""
                print(f"        v{n}: {v['label']}{note}")


def _print_problems(problems):
    if problems:
        print(f"Skipped {len(problems)} file(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)


def cmd_ls(args):
    from mskai.dicom import scan_source

    report = scan_source(args.source)
    entries = [_series_summary(i, s, args.show_identifiers) for i, s in enumerate(report.require_series(args.source), 1)]
    if args.json:
        print(json.dumps({"series": entries, "problems": [vars(p) for p in report.problems]}, indent=2))
    else:
        _print_listing(entries)
    _print_problems(report.problems)
    return 0


def _select_series(report, source, key):
    series = report.require_series(source)
    if key:
        return report.find(key)
    images = [s for s in series if s.is_image]
    if len(images) != 1:
        raise MskaiError(f"{source} holds {len(images)} image series; choose one with --series (see `mskai dicom ls`)")
    return images[0]


def _output_paths(out: Path, count: int):
    if count == 1:
        return [out]
    name = out.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else out.suffix
    stem = name[: len(name) - len(suffix)]
    return [out.with_name(f"{stem}_v{n}{suffix}") for n in range(1, count + 1)]


def cmd_convert(args):
    from mskai.dicom import plan_volumes, read_volume, scan_source
    from mskai.io import write_volume

    report = scan_source(args.source)
    series = _select_series(report, args.source, args.series)
    plans = plan_volumes(series)
    if args.volume:
        if not 1 <= args.volume <= len(plans):
            raise MskaiError(f"--volume must be 1-{len(plans)} for this series")
        plans = [plans[args.volume - 1]]
    for plan, out in zip(plans, _output_paths(Path(args.output), len(plans))):
        volume = read_volume(plan, resample=args.resample)
        write_volume(volume, out)
        note = f" (resampled: {volume.meta['resampled']})" if volume.meta.get("resampled") else ""
        print(f"{out}: {plan.label}, {'x'.join(map(str, volume.shape))}, "
              f"spacing {' x '.join(f'{s:.3g}' for s in volume.spacing)} mm{note}")
    _print_problems(report.problems)
    return 0


def cmd_index(args):
    from mskai.dicom import index_folder

    report = index_folder(args.folder, args.database)
    print(f"Indexed {args.folder} into {args.database}")
    _print_problems(report.problems)
    return 0


def cmd_anonymise(args):
    from mskai.dicom.anonymise import anonymise_folder

    report = anonymise_folder(args.source, args.output, seed=args.seed)
    print(f"Wrote {len(report.written)} de-identified file(s) to {args.output}")
    _print_problems(report.problems)
    return 0 if report.written or not report.problems else 1


def cmd_synth_series(args):
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    volume = phantom(shape=tuple(args.shape), spacing=tuple(args.spacing), plane=args.plane, tilt_deg=args.tilt)
    paths = write_series(volume, args.folder, transfer_syntax=args.syntax, multiframe=args.multiframe,
                         description=f"SYNTHETIC {args.plane} phantom")
    print(f"Wrote {len(paths)} file(s) of a synthetic {args.plane} series to {args.folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mskai", description="SlicerAutoSegMSK engine: MSK MRI tools.")
    parser.add_argument("--version", action="version", version=f"mskai {__version__}")
    top = parser.add_subparsers(dest="command", required=True)

    dicom = top.add_parser("dicom", help="find, convert, index and anonymise DICOM series").add_subparsers(
        dest="dicom_command", required=True)
    p = dicom.add_parser("ls", help="list patients, studies and series of a folder or a Slicer DICOM database")
    p.add_argument("source", help="folder, DICOM file, or Slicer DICOM database folder / ctkDICOM.sql")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--show-identifiers", action="store_true",
                   help="also show patient names, IDs, dates and UIDs (hidden by default)")
    p.set_defaults(func=cmd_ls)

    p = dicom.add_parser("convert", help="write a series' volume(s) as .nrrd / .nii / .nii.gz")
    p.add_argument("source", help="folder, DICOM file, or Slicer DICOM database")
    p.add_argument("output", help="out.nrrd | out.nii.gz; a series with several volumes gets _v1, _v2, ...")
    p.add_argument("--series", help="Series Instance UID or the number `mskai dicom ls` shows in brackets")
    p.add_argument("--volume", type=int, help="write only this volume (1-based) of a multi-volume series")
    p.add_argument("--resample", action="store_true",
                   help="resample unequally spaced slices onto an even grid instead of refusing")
    p.set_defaults(func=cmd_convert)

    p = dicom.add_parser("index", help="add a folder's DICOM files to a Slicer DICOM database (created if needed)")
    p.add_argument("folder")
    p.add_argument("database", help="database folder (ctkDICOM.sql is created inside)")
    p.set_defaults(func=cmd_index)

    p = dicom.add_parser("anonymise", aliases=["anonymize"], help="write de-identified copies (PS3.15 basic profile)")
    p.add_argument("source")
    p.add_argument("output")
    p.add_argument("--seed", help="secret that makes fake values and UID mapping repeatable")
    p.set_defaults(func=cmd_anonymise)

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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MskaiError as exc:
        print(f"mskai: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
