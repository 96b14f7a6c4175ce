"""`mskai batch segment | classify`: every series or study of a database, on Dask."""

from __future__ import annotations

import sys
from pathlib import Path

from mskai.cli.segment import add_segment_options, segment_options
from mskai.models.tasks import ACL_MODEL
from mskai.protocol import error_line, progress_line


def _batch_progress(mode, unit):
    """After each finished unit, on stderr: a progress bar with counts and throughput, or a JSON line for the
    Slicer modules' launcher."""
    def show(row, counts):
        finished = counts["done"] + counts["failed"] + counts["skipped"]
        if mode == "json":
            print(progress_line("batch", finished / counts["total"], **{unit: row[unit]}, status=row["status"],
                                **{k: counts[k] for k in ("done", "failed", "pending")}), file=sys.stderr, flush=True)
        elif mode == "bar":
            filled = round(30 * finished / counts["total"])
            error = f": {row['error']}" if row.get("error") else ""
            took = f" in {row['seconds']:.1f} s" if isinstance(row.get("seconds"), (int, float)) else ""
            print(f"[{'#' * filled}{'.' * (30 - filled)}] {counts['done']} done, {counts['failed']} failed, "
                  f"{counts['pending']} left, {counts['per_minute']:.1f} {unit}/min | {row[unit]} {row['status']}"
                  f"{took}{error}", file=sys.stderr, flush=True)
    return show


def _batch_start(mode):
    def show(where, count):
        if mode == "bar":
            engine = "a local Dask cluster" if where["scheduler"] == "local" else f"the Dask cluster {where['scheduler']}"
            dashboard = f"; dashboard: {where['dashboard']}" if where["dashboard"] else ""
            workers = f"{where['workers']} worker{'s' * (where['workers'] != 1)}"
            print(f"{count} to run on {engine} of {workers}{dashboard}", file=sys.stderr, flush=True)
    return show


def _cluster_options(args):
    from mskai.runner.cluster import ClusterOptions

    return ClusterOptions(workers=args.workers, threads_per_worker=args.threads_per_worker,
                          memory_limit=args.memory_limit, scheduler=args.scheduler, retries=args.retries)


def _finish_batch(run, output):
    try:
        summary = run()
    except KeyboardInterrupt:
        print(error_line("interrupted; finished units are kept and listed in batch.json, run again with "
                         "--resume to do the rest"), file=sys.stderr)
        return 130
    print(f"{len(summary['done'])} done, {len(summary['skipped'])} skipped (already done), "
          f"{len(summary['failed'])} failed; manifest: {Path(output) / 'batch.json'}")
    return 1 if summary["failed"] else 0


def cmd_batch_classify(args):
    """The ACL of every study: its sagittal series chosen as `mskai classify` does; failures reported."""
    from mskai.runner.batch import run_batch_classify

    return _finish_batch(lambda: run_batch_classify(args.source, args.output, resume=args.resume, model=args.model,
                                                    identifiers=args.show_identifiers,
                                                    progress=_batch_progress(args.progress, "study"),
                                                    on_start=_batch_start(args.progress),
                                                    cluster=_cluster_options(args)), args.output)


def cmd_batch_segment(args):
    """Every matching series into its own folder; failures are reported and the batch goes on."""
    from mskai.runner.batch import run_batch
    from mskai.segment.outputs import parse_formats

    formats, options, cluster = parse_formats(args.formats), segment_options(args), _cluster_options(args)
    return _finish_batch(lambda: run_batch(args.source, args.output, resume=args.resume,
                                           modality=args.modality or None, model=args.model,
                                           identifiers=args.show_identifiers,
                                           progress=_batch_progress(args.progress, "series"),
                                           on_start=_batch_start(args.progress), formats=formats,
                                           options=options, cluster=cluster), args.output)


def _add_batch_arguments(p, unit):
    units = {"series": "series", "study": "studies"}[unit]
    p.add_argument("source", help="Slicer DICOM database (folder or ctkDICOM.sql) or a folder tree of DICOM files")
    p.add_argument("-o", "--output", required=True,
                   help=f"output folder: one sub-folder per {unit}, the manifest batch.json/.csv")
    p.add_argument("--resume", action="store_true", help=f"skip {units} whose output folder is complete")
    p.add_argument("--show-identifiers", action="store_true",
                   help=f"also put each {unit.title()} Instance UID in the manifest (it identifies the examination)")
    p.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                   help=f"a progress line per {unit} (bar), JSON lines (json) or nothing")
    g = p.add_argument_group("where it runs (Dask)")
    g.add_argument("--workers", type=int, help="local worker processes (default: one per core, ~3 GB each)")
    g.add_argument("--threads-per-worker", type=int, default=1, help=f"{units} a local worker runs at once")
    g.add_argument("--memory-limit", default="auto",
                   help="per local worker, e.g. 4GB; a worker above it is restarted and its task retried "
                        "(auto: the machine's memory shared; 0: no limit)")
    g.add_argument("--retries", type=int, default=2,
                   help=f"times a local worker's {unit} is run again after the worker died, before it is failed")
    g.add_argument("--scheduler", help="tcp://host:port of an existing Dask cluster to run on instead (workers need "
                                       "mskai and the same paths to the input and output)")


def add_commands(top):
    """`mskai batch ...`"""
    batch = top.add_parser("batch", help="process every series of a DICOM database or folder tree").add_subparsers(
        dest="batch_command", required=True)
    p = batch.add_parser("segment", help="segment each series into its own folder (pseudonymous names), with a report")
    _add_batch_arguments(p, "series")
    p.add_argument("--modality", default="MR", help="only series of this modality ('' for all; default MR)")
    add_segment_options(p)
    p.set_defaults(func=cmd_batch_segment)
    p = batch.add_parser("classify", help="classify the ACL of each study (its sagittal series), with a report")
    _add_batch_arguments(p, "study")
    p.add_argument("--model", default=ACL_MODEL, help="ACL model id[@version] or package path")
    p.set_defaults(func=cmd_batch_classify)

