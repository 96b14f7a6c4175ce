"""The batch runner: every matching series (segmentation) or study (ACL classification) of a Slicer DICOM database
or folder tree, one output folder each.

Shared by `mskai batch segment|classify` and the modules' processDatabase. Each unit is written into its own
folder under the output, swapped in whole when complete (an interrupted unit leaves nothing); resume skips the
units whose folder is complete; a failing unit is recorded with its error and the batch goes on. Folder names and
reports use pseudonyms of the UIDs, never patient data, unless identifiers are asked for.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from mskai import MskaiError
from mskai.io import OUTPUT_MARKER, atomic_output, write_csv

BATCH_MARKER = ".mskai-batch.json"


def series_key(uid: str) -> str:
    """A stable pseudonym for a series: the same series always maps to the same folder; the UID is not shown."""
    return "series-" + hashlib.sha256(uid.encode()).hexdigest()[:16]


def study_key(uid: str) -> str:
    return "study-" + hashlib.sha256(uid.encode()).hexdigest()[:16]


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


def write_batch_report(entries: list[dict], folder: Path, fields, unit: str = "series", rows_key: str = "series") -> dict:
    """report.json ({"done", "skipped", "failed", <rows_key>}) and report.csv (one row per unit), atomically."""
    rows = [{k: e.get(k) for k in fields} for e in entries]
    summary = {"done": [e[unit] for e in entries if e["status"] == "done"],
               "skipped": [e[unit] for e in entries if e["status"] == "skipped"],
               "failed": [{unit: e[unit], "error": e["error"]} for e in entries if e["status"] == "failed"]}
    with atomic_output(folder / "report.json") as tmp:
        tmp.write_text(json.dumps({**summary, rows_key: rows}, indent=2))
    write_csv(folder / "report.csv", rows, fields)
    return summary


def _run_units(units, output: Path, *, unit: str, rows_key: str, fields, resume, identifiers, progress) -> dict:
    """units: [(key, uid, work(folder) -> dict of report fields)]; one folder per key, one report row per unit."""
    fields = tuple(fields) + ((f"{unit}_uid",) if identifiers else ())
    _check_output(output)
    entries = []
    for n, (key, uid, work) in enumerate(units, 1):
        entry = {unit: key, "status": "", "error": None, "seconds": None, "output": key}
        if identifiers:
            entry[f"{unit}_uid"] = uid
        if resume and (output / key / OUTPUT_MARKER).is_file():
            entry["status"] = "skipped"
        else:
            start = time.perf_counter()
            try:
                entry.update(work(output / key) or {})
                entry["status"] = "done"
            except MskaiError as exc:
                entry.update(status="failed", error=str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad unit never stops the batch
                entry.update(status="failed", error=f"{exc.__class__.__name__}: {exc}")
            entry["seconds"] = round(time.perf_counter() - start, 2)
        entries.append(entry)
        summary = write_batch_report(entries, output, fields, unit, rows_key)  # after each: an interrupt loses nothing
        if progress:
            progress(entry, n, len(units))
    return summary if entries else write_batch_report([], output, fields, unit, rows_key)


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

    def work(series):
        def run(folder):
            found = {}

            def load():
                volume = _load_first_volume(series)
                found["volume"] = volume.label
                return volume

            segment_to_folder(load, package, folder, options=segment_options,
                              **({"formats": formats} if formats else {}))
            return found
        return run

    units = [(series_key(s.uid), s.uid, work(s)) for s in chosen]
    return _run_units(units, output, unit="series", rows_key="series",
                      fields=("series", "status", "error", "seconds", "volume", "output"), resume=resume,
                      identifiers=identifiers, progress=progress)


def run_batch_classify(source, output, *, resume: bool = True, model=None, identifiers: bool = False,
                       progress=None) -> dict:
    """Classify the ACL of each study of ``source``: the study's sagittal series is chosen as `mskai classify` does,
    into ``output``/study-<pseudonym>/; report rows: study, chosen series (pseudonyms), predicted class and one
    probability column per class. A study without a usable sagittal series fails with the reason."""
    from mskai.acl.infer import TASK
    from mskai.acl.run import classify_to_folder
    from mskai.dicom import scan_source
    from mskai.models.registry import find_model

    output = Path(output).resolve()
    package = find_model(model or "mskai-acl-demo", task=TASK)
    classes = package.metadata["classes"]
    report = scan_source(source)
    studies = {}
    for series in report.require_series(str(source)):
        if series.is_image:
            studies.setdefault(series.study_uid, []).append(series)

    def work(series_list):
        def run(folder):
            result = classify_to_folder(None, folder, model=package, series_list=series_list)
            return {"series": series_key(result["series_uid"]), "predicted": result["predicted"],
                    **{f"p_{name}": result["probabilities"][name] for name in classes}}
        return run

    units = [(study_key(uid), uid, work(series_list)) for uid, series_list in studies.items()]
    fields = ("study", "status", "error", "seconds", "series", "predicted", *(f"p_{c}" for c in classes), "output")
    return _run_units(units, output, unit="study", rows_key="studies", fields=fields, resume=resume,
                      identifiers=identifiers, progress=progress)
