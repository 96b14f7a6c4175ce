"""The batch runner: segment every matching series of a Slicer DICOM database or folder tree, one folder each.

Shared by `mskai batch segment` and the AutoSegMSK module's processDatabase. Each series is written into its
own folder under the output, swapped in whole when complete (an interrupted series leaves nothing); resume skips
the series whose folder is complete; a failing series is recorded with its error and the batch goes on. Folder
names and reports use pseudonyms of the Series Instance UIDs, never patient data, unless identifiers are asked for.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from pathlib import Path

from mskai import MskaiError
from mskai.io import OUTPUT_MARKER, atomic_output

BATCH_MARKER = ".mskai-batch.json"
REPORT_FIELDS = ("series", "status", "error", "seconds", "volume", "output")


def series_key(uid: str) -> str:
    """A stable pseudonym for a series: the same series always maps to the same folder; the UID is not shown."""
    return "series-" + hashlib.sha256(uid.encode()).hexdigest()[:16]


def series_summary(series) -> dict:
    """What a series filter sees (in memory only): UID, modality, description, number, files."""
    return {"seriesUID": series.uid, "modality": series.modality, "description": series.description,
            "number": series.number, "files": len(series.files), "studyUID": series.study_uid}


def _check_output(folder: Path):
    """The output must be new, empty, or an earlier batch's: a batch never writes among the user's own files."""
    if folder.exists() and not folder.is_dir():
        raise MskaiError(f"Output folder {folder} is a file")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / BATCH_MARKER).is_file():
        raise MskaiError(f"Output folder {folder} holds files that are not an earlier mskai batch; "
                         "choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BATCH_MARKER).write_text(json.dumps({"kind": "batch"}))


def write_batch_report(entries: list[dict], folder: Path, identifiers: bool = False) -> dict:
    """report.json ({"done", "skipped", "failed", "series"}) and report.csv (one row per series), atomically."""
    fields = REPORT_FIELDS + (("series_uid",) if identifiers else ())
    rows = [{k: e.get(k) for k in fields} for e in entries]
    summary = {"done": [e["series"] for e in entries if e["status"] == "done"],
               "skipped": [e["series"] for e in entries if e["status"] == "skipped"],
               "failed": [{"series": e["series"], "error": e["error"]} for e in entries if e["status"] == "failed"]}
    with atomic_output(folder / "report.json") as tmp:
        tmp.write_text(json.dumps({**summary, "series": rows}, indent=2))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(folder / "report.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    return summary


def _load_first_volume(series):
    from mskai.dicom import plan_volumes, read_volume

    plans = plan_volumes(series)
    if not plans:
        raise MskaiError("the series holds no volume")
    return read_volume(plans[0])


def run_batch(source, output, *, resume: bool = True, series_filter=None, modality: str | None = "MR",
              model=None, identifiers: bool = False, progress=None, formats=None, options=None, **fields) -> dict:
    """Segment each image series of ``source`` (a Slicer DICOM database or a folder tree) into ``output``/<key>/.

    series_filter: callable(series_summary dict) -> bool, to choose series; modality: only series of this
    modality (None: all). options: a SegmentOptions, or its fields as keywords (fast, device, confidence, ...).
    progress: called as progress(entry, done_count, total) after each series.
    Returns {"done": [keys], "skipped": [keys], "failed": [{"series", "error"}]}; report.json/.csv in ``output``.
    """
    from mskai.dicom import scan_source
    from mskai.models.registry import find_model
    from mskai.segment.infer import SegmentOptions
    from mskai.segment.run import segment_to_folder

    output = Path(output).resolve()
    segment_options = options or SegmentOptions(**fields)  # bad options fail before anything is read or written
    package = find_model(model or "mskai-bones-demo", task="segmentation")  # loaded once for the whole batch
    report = scan_source(source)
    chosen = [s for s in report.require_series(str(source)) if s.is_image
              and (modality is None or s.modality == modality)
              and (series_filter is None or series_filter(series_summary(s)))]
    _check_output(output)
    entries = []
    for n, series in enumerate(chosen, 1):
        key = series_key(series.uid)
        entry = {"series": key, "status": "", "error": None, "seconds": None, "volume": None, "output": key}
        if identifiers:
            entry["series_uid"] = series.uid
        if resume and (output / key / OUTPUT_MARKER).is_file():
            entry["status"] = "skipped"
        else:
            start = time.perf_counter()
            try:
                def load(series=series, entry=entry):
                    volume = _load_first_volume(series)
                    entry["volume"] = volume.label
                    return volume

                kwargs = {"formats": formats} if formats else {}
                segment_to_folder(load, package, output / key, options=segment_options, **kwargs)
                entry["status"] = "done"
            except MskaiError as exc:
                entry.update(status="failed", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad series never stops the batch
                entry.update(status="failed", error=f"{exc.__class__.__name__}: {exc}")
            entry["seconds"] = round(time.perf_counter() - start, 2)
        entries.append(entry)
        summary = write_batch_report(entries, output, identifiers)  # after every series: an interrupt loses nothing
        if progress:
            progress(entry, n, len(chosen))
    return summary if entries else write_batch_report([], output, identifiers)
