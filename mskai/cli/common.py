"""What several command groups share: problems, progress, the series and volume a command works on."""

from __future__ import annotations

import sys

from mskai import MskaiError
from mskai.protocol import progress_line


def print_problems(problems):
    if problems:
        print(f"Skipped {len(problems)} file(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)


def progress_printer(mode):
    """progress(stage, fraction): tqdm bars on a terminal, or JSON lines for the Slicer modules."""
    if mode == "json":
        return lambda stage, fraction: print(progress_line(stage, fraction), file=sys.stderr, flush=True)
    if mode == "none":
        return None
    from tqdm import tqdm

    bars = {}

    def show(stage, fraction):
        bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=100, desc=stage, unit="%", leave=False,
                                                             file=getattr(sys.stderr, "raw", sys.stderr)))
        bar.update(round(fraction * 100) - bar.n)
        if fraction >= 1:
            bar.close()

    return show


def add_series_arguments(p, volume_help):
    p.add_argument("--series", help="Series Instance UID or the number `mskai dicom ls` shows in brackets")
    p.add_argument("--volume", type=int, help=volume_help)
    p.add_argument("--resample", action="store_true",
                   help="resample unequally spaced slices onto an even grid instead of refusing")


def _select_series(report, source, key):
    series = report.require_series(source)
    if key:
        return report.find(key)
    images = [s for s in series if s.is_image]
    if len(images) != 1:
        raise MskaiError(f"{source} holds {len(images)} image series; choose one with --series (see `mskai dicom ls`)")
    return images[0]


def select_plans(args):
    """The volume plans of the chosen series (all, or the one --volume names) and the scan report."""
    from mskai.dicom import chosen_plans, scan_source

    report = scan_source(args.source)
    return chosen_plans(_select_series(report, args.source, args.series), args.volume), report


def input_volume(args):
    """The one volume a command works on: a volume file, or a DICOM series (first volume unless --volume)."""
    from mskai.dicom import read_volume
    from mskai.volume_files import is_volume_file, read_volume_file

    if is_volume_file(args.source):
        return read_volume_file(args.source)
    plans, report = select_plans(args)
    print_problems(report.problems)
    return read_volume(plans[0], resample=args.resample)


def print_demo_note(report):
    if report["model"]["demo"]:
        print("NOTE: demo model trained on synthetic data - not for clinical use.", file=sys.stderr)
