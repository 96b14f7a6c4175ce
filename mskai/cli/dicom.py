"""`mskai dicom ls | convert | index | anonymise`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mskai import MskaiError
from mskai.cli.common import add_series_arguments, print_problems, select_plans


def _series_summary(index, series, patient_number, study_number, show_identifiers) -> dict:
    from mskai.dicom.series import plan_volumes

    entry = {
        "index": index,
        "patient": patient_number,  # numbered in listing order: groups series without naming anyone
        "study": study_number,
        "number": series.number,
        "modality": series.modality,
        "files": len(series.files),
        "kind": "image" if series.is_image else series.sop_class_name or "non-image",
    }
    if show_identifiers:  # descriptions are free text that may name the patient (PS3.15 removes them too)
        entry.update(patient_name=series.patient_name, patient_id=series.patient_id, study_date=series.study_date,
                     study_uid=series.study_uid, series_uid=series.uid, study_description=series.study_description,
                     description=series.description)
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
        if e["study"] != last_study:
            date = f" {e['study_date']}" if e.get("study_date") else ""
            text = f" {e['study_description']!r}" if "study_description" in e else ""
            print(f"  Study {e['study']}{date}{text}")
            last_study = e["study"]
        text = f" {e['description']!r}" if "description" in e else ""
        head = f"    [{e['index']}] #{e['number'] if e['number'] is not None else '-'} {e['modality']:<3}{text}"
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


def cmd_ls(args):
    from mskai.dicom import scan_source

    report = scan_source(args.source)
    patients, studies = {}, {}
    entries = [_series_summary(i, s, patients.setdefault((s.patient_id, s.patient_name), len(patients) + 1),
                               studies.setdefault(s.study_uid, len(studies) + 1), args.show_identifiers)
               for i, s in enumerate(report.require_series(args.source), 1)]
    if args.json:
        print(json.dumps({"series": entries, "problems": [vars(p) for p in report.problems]}, indent=2))
    else:
        _print_listing(entries)
    print_problems(report.problems)
    return 0


def _output_paths(out: Path, count: int):
    if count == 1:
        return [out]
    name = out.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else out.suffix
    stem = name[: len(name) - len(suffix)]
    return [out.with_name(f"{stem}_v{n}{suffix}") for n in range(1, count + 1)]


def cmd_convert(args):
    """All volumes of the series, or none: every plan is checked first, the files appear together."""
    from mskai.dicom import read_volume
    from mskai.outputs import atomic_outputs
    from mskai.volume_files import check_volume_path, write_volume

    check_volume_path(args.output)
    plans, report = select_plans(args)
    for plan in plans:
        plan.check(resample=args.resample)
    outputs = _output_paths(Path(args.output), len(plans))
    lines = []
    with atomic_outputs(outputs) as temps:
        for plan, out, tmp in zip(plans, outputs, temps):
            volume = read_volume(plan, resample=args.resample)
            write_volume(volume, tmp)
            note = f" (resampled: {volume.meta['resampled']})" if volume.meta.get("resampled") else ""
            lines.append(f"{out}: {plan.label}, {'x'.join(map(str, volume.shape))}, "
                         f"spacing {' x '.join(f'{s:.3g}' for s in volume.spacing)} mm{note}")
            del volume
    print("\n".join(lines))
    print_problems(report.problems)
    return 0


def cmd_index(args):
    from mskai.dicom import index_folder

    report = index_folder(args.folder, args.database)
    print(f"Indexed {args.folder} into {args.database}")
    print_problems(report.problems)
    return 0


def cmd_anonymise(args):
    from mskai.dicom.anonymise import anonymise_folder

    report = anonymise_folder(args.source, args.output, seed=args.seed, retain_descriptors=args.retain_descriptors,
                              retain_safe_private=args.retain_safe_private)
    print(f"Wrote {len(report.written)} de-identified file(s) to {args.output}")
    if report.warnings:
        print(f"Warning for {len(report.warnings)} written file(s):", file=sys.stderr)
        for w in report.warnings[:5]:
            print(f"  {w}", file=sys.stderr)
        if len(report.warnings) > 5:
            print(f"  ... and {len(report.warnings) - 5} more", file=sys.stderr)
    print_problems(report.problems)
    return 0 if report.written or not report.problems else 1


def add_commands(top):
    """`mskai dicom ...`"""
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
    add_series_arguments(p, volume_help="write only this volume (1-based) of a multi-volume series")
    p.set_defaults(func=cmd_convert)

    p = dicom.add_parser("index", help="add a folder's DICOM files to a Slicer DICOM database (created if needed)")
    p.add_argument("folder")
    p.add_argument("database", help="database folder (ctkDICOM.sql is created inside)")
    p.set_defaults(func=cmd_index)

    p = dicom.add_parser("anonymise", aliases=["anonymize"], help="write de-identified copies (PS3.15 basic profile)")
    p.add_argument("source")
    p.add_argument("output")
    p.add_argument("--seed", help="secret that makes fake values and UID mapping repeatable")
    p.add_argument("--retain-descriptors", action="store_true",
                   help="keep study/series descriptions and protocol names, patient names masked (Clean Descriptors)")
    p.add_argument("--retain-safe-private", action="store_true",
                   help="keep private attributes the files themselves declare safe (Retain Safe Private)")
    p.set_defaults(func=cmd_anonymise)

