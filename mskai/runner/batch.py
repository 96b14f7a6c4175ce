"""The batch runner: every matching series (segmentation) or study (ACL classification) of a Slicer DICOM database
or folder tree, one output folder each, run as Dask tasks (``mskai.runner.cluster``: a local cluster or an existing one).

Shared by `mskai batch segment|classify` and the modules' processDatabase. One unit (series or study) is one task;
the worker reads its files itself and loads the model package once. Each unit is written into a staging folder and
renamed into place when complete, so a unit has one whole result or none, even when a worker dies and Dask runs
the task again elsewhere. The manifest (batch.json + batch.csv) is rewritten atomically as tasks finish; a failing
unit is recorded with its error and the batch goes on; resume skips the units whose folder is complete. Keys,
folder names and the manifest use pseudonyms of the UIDs, never patient data, unless identifiers are asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from mskai import MskaiError
from mskai.models.tasks import ACL_CLASSIFICATION, SEGMENTATION
from mskai.outputs import (OUTPUT_MARKER, atomic_output, check_output_folder, read_marker, remove_stale, write_csv,
                           write_marker)
from mskai.runner.cluster import ClusterOptions, check_main_guard, open_client, usable_cores

BATCH_MARKER = ".mskai-batch.json"
MANIFEST = "batch.json"
MANIFEST_BYTES = 1 << 30  # a million series rows
MANIFEST_CSV = "batch.csv"


def series_key(uid: str) -> str:
    """A stable pseudonym for a series: the same series always maps to the same folder; the UID is not shown."""
    return "series-" + hashlib.sha256(uid.encode()).hexdigest()[:16]


def study_key(uid: str) -> str:
    return "study-" + hashlib.sha256(uid.encode()).hexdigest()[:16]


def series_summary(series) -> dict:
    """What a series filter sees (in memory only): UID, modality, description, number, files."""
    return {"seriesUID": series.uid, "modality": series.modality, "description": series.description,
            "number": series.number, "files": len(series.files), "studyUID": series.study_uid}


def _without_identity(series):
    """The series as a worker gets it: its files and geometry, not who the patient is."""
    return dataclasses.replace(series, patient_name="", patient_id="", study_date="", study_description="")


def _check_output(folder, source) -> Path:
    """The output must be new, empty, or an earlier batch's, and apart from the input: a batch never writes among
    the user's own files nor replaces its input. Checked before the source is scanned."""
    folder = check_output_folder(folder, "batch", inputs=[source], marker=BATCH_MARKER)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if read_marker(folder / BATCH_MARKER) is None:
            write_marker(folder / BATCH_MARKER, {"kind": "batch"})
    except OSError as exc:
        raise MskaiError(f"Cannot write {folder}: {exc.strerror or exc}") from None
    return folder


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- the manifest -----------------------------------------------------------------------------------------------

_VALUE = {"type": ["string", "number", "boolean", "null"], "maxLength": 2000}
_ROW = {"type": "object", "required": ["status"], "additionalProperties": _VALUE,
        "properties": {"status": {"enum": ["done", "failed", "skipped", "pending"]},
                       "series": {"type": ["string", "null"], "pattern": "^series-[0-9a-f]{16}$"},
                       "study": {"type": "string", "pattern": "^study-[0-9a-f]{16}$"}}}
_NAME = {"type": "string", "maxLength": 200}
MANIFEST_SCHEMA = {
    "type": "object", "required": ["kind", "task", "model", "settings"],
    "properties": {
        "kind": {"const": "mskai-batch"},
        "task": {"enum": ["segment", "classify"]},
        "model": {"type": "object", "required": ["id", "version", "label", "sha256"],
                  "properties": {"id": _NAME, "version": _NAME, "label": _NAME,
                                 "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "demo": {"type": "boolean"}}},
        "settings": {"type": "object"},
        "series": {"type": "array", "items": _ROW, "maxItems": 10_000_000},
        "studies": {"type": "array", "items": _ROW, "maxItems": 10_000_000},
    },
}


class Manifest:
    """batch.json ({"done", "skipped", "failed", "pending", run, <rows_key>: rows}) and batch.csv (one row per unit),
    rewritten atomically; ``update`` writes at most every ``interval`` seconds, ``write`` always."""

    interval = 0.5

    def __init__(self, folder: Path, unit: str, rows_key: str, fields, run: dict):
        self.folder, self.unit, self.rows_key, self.fields, self.run = folder, unit, rows_key, tuple(fields), run
        self.rows: dict[str, dict] = {}
        self._written = 0.0

    @staticmethod
    def previous(folder: Path) -> dict:
        """The manifest an earlier run left here, checked against MANIFEST_SCHEMA ({} if there is none);
        MskaiError when it is damaged or forged (a symbolic link, not JSON, not the schema)."""
        import jsonschema

        found = read_marker(folder / MANIFEST, limit=MANIFEST_BYTES)
        if found is None:
            return {}
        try:
            jsonschema.validate(found, MANIFEST_SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)[:60] or "the top level"
            raise MskaiError(f"{folder / MANIFEST} is not a manifest mskai wrote ({where}: "
                             f"{exc.validator} check failed); remove it or choose a new output folder") from None
        return found

    def summary(self) -> dict:
        rows = self.rows.values()
        return {status: [r[self.unit] for r in rows if r["status"] == status] for status in ("done", "skipped")} | {
            "failed": [{self.unit: r[self.unit], "error": r["error"]} for r in rows if r["status"] == "failed"],
            "pending": [r[self.unit] for r in rows if r["status"] == "pending"]}

    def counts(self) -> dict:
        return {k: len(v) for k, v in self.summary().items()} | {"total": len(self.rows)}

    def update(self, row: dict):
        self.rows[row[self.unit]] = row
        if time.monotonic() - self._written >= self.interval:
            self.write()

    def write(self) -> dict:
        summary = self.summary()
        rows = [{k: r.get(k) for k in self.fields} for r in self.rows.values()]
        with atomic_output(self.folder / MANIFEST) as tmp:
            tmp.write_text(json.dumps({**summary, **self.run, "updated": _now(), self.rows_key: rows}, indent=1))
        write_csv(self.folder / MANIFEST_CSV, rows, self.fields)
        self._written = time.monotonic()
        return summary


# --- what runs on a worker --------------------------------------------------------------------------------------

_PACKAGES: dict = {}
_PACKAGES_LOCK = threading.Lock()


def _worker_package(model: dict):
    """The model package, loaded once per worker process (and checked to be the one the client chose)."""
    from mskai.models.registry import find_model

    key = (model["source"], model["sha256"])
    with _PACKAGES_LOCK:
        if key not in _PACKAGES:
            package = find_model(model["source"], task=model["task"])
            if package.metadata["weights"]["sha256"] != model["sha256"]:
                raise MskaiError(f"The model package at {model['source']} on {socket.gethostname()} is not the one "
                                 "the batch was started with")
            _PACKAGES[key] = package
        return _PACKAGES[key]


def _segment_unit(spec: dict) -> dict:
    from mskai.dicom import chosen_plans, read_volume
    from mskai.segment.run import segment_to_folder

    found = {}

    def load():
        volume = read_volume(chosen_plans(spec["series"])[0])
        found["volume"] = volume.label
        return volume

    segment_to_folder(load, _worker_package(spec["model"]), spec["folder"], options=spec["options"],
                      **({"formats": spec["formats"]} if spec["formats"] else {}))
    return found


def _classify_unit(spec: dict) -> dict:
    from mskai.acl.run import classify_to_folder

    package = _worker_package(spec["model"])
    result = classify_to_folder(None, spec["folder"], model=package, series_list=spec["series"])
    return {"series": series_key(result["series_uid"]), "predicted": result["predicted"],
            **{f"p_{name}": result["probabilities"][name] for name in package.metadata["classes"]}}


_UNITS = {"segment": _segment_unit, "classify": _classify_unit}


def _scrub(message: str, spec: dict) -> str:
    """An error message without the unit's file paths and UIDs (they can name the patient or the examination)."""
    series_list = spec["series"] if isinstance(spec["series"], list) else [spec["series"]]
    private = {}
    for series in series_list:
        private.update({path: "<file>" for path in series.files})
        private.update({str(Path(path).parent): "<folder>" for path in series.files})
        private.update({series.uid: "<series UID>", series.study_uid: "<study UID>"})
    for text in sorted((t for t in private if t), key=len, reverse=True):
        message = message.replace(text, private[text])
    return message


def _share_of_cores(threads_by_host: dict) -> int:
    """Torch threads for a task: this machine's cores divided by the tasks its workers run at once."""
    from urllib.parse import urlparse

    from distributed import get_worker

    return max(1, usable_cores() // threads_by_host.get(urlparse(get_worker().address).hostname, 1))


def run_unit(kind: str, spec: dict) -> dict:
    """One Dask task: the unit's folder written whole, or its error; it never raises (a dead worker is Dask's)."""
    start = time.perf_counter()
    row = {"status": "done", "error": None}
    try:
        import torch

        torch.set_num_threads(spec["torch_threads"] or _share_of_cores(spec["threads_by_host"]))
        row.update(_UNITS[kind](spec) or {})
    except MskaiError as exc:
        row.update(status="failed", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad unit never stops the batch
        row.update(status="failed", error=f"{exc.__class__.__name__}: {exc}")
    if row["error"] and not spec.get("identifiers"):
        row["error"] = _scrub(row["error"], spec)
    return row | {"seconds": round(time.perf_counter() - start, 2), "finished": _now(),
                  "worker": f"{socket.gethostname()}:{os.getpid()}"}


# --- the client side ---------------------------------------------------------------------------------------------

def _failed_task(future, retries: int | None, unit: str) -> str:
    """Why a task gave no row: its worker died (``retries + 1`` times), or the cluster cancelled or lost it."""
    from distributed import KilledWorker

    if future.status == "cancelled":
        return f"the cluster cancelled the task (a worker or the scheduler went away); the {unit} was not finished"
    try:
        exc = future.exception()
    except Exception as error:  # noqa: BLE001 - whatever the cluster says, it becomes this unit's failure
        exc = error
    if isinstance(exc, KilledWorker):
        times = f" {retries + 1} times" if retries is not None else ""
        return (f"the worker running it died{times} (killed, or out of memory: see --memory-limit); "
                f"the {unit} was not finished")
    return f"{exc.__class__.__name__}: {exc}"


def _earlier_manifest(output: Path, run: dict) -> dict:
    """The manifest an earlier batch left in ``output`` ({} if none), checked before the source is scanned.

    Another task, model (weights checksum) or other settings are refused, with or without --resume: one output
    folder holds the results of one model and one set of settings, and its manifest lists them all.
    """
    earlier = Manifest.previous(output)
    if not earlier:
        return {}
    theirs, ours = earlier["model"], run["model"]
    if (earlier["task"], theirs["sha256"], earlier["settings"]) != (run["task"], ours["sha256"], run["settings"]):
        what = "a different task" if earlier["task"] != run["task"] else (
            "a different model" if theirs["sha256"] != ours["sha256"] else "other settings")
        raise MskaiError(f"{output} holds batch results of {earlier['task']} with {theirs['label']} and {what} than "
                         f"this run ({run['task']} with {ours['label']}): one folder holds one model's results; "
                         "resume it with the same model and settings, or choose a new output folder")
    return earlier


def _known_rows(earlier: dict, unit: str, rows_key: str, fields) -> dict:
    """{key: row} of an earlier manifest, with only the columns in ``fields`` (nothing else is carried over)."""
    return {row[unit]: {k: row.get(k) for k in fields if k in row} for row in earlier.get(rows_key, []) if row.get(unit)}


def _plan(manifest, units, earlier_rows, resume, identifiers, torch_threads) -> list:
    """Fill the manifest's rows (earlier units this run does not touch stay listed; with resume, complete unit folders
    are skipped) and return the (key, spec) of the units to run."""
    output, unit, run = manifest.folder, manifest.unit, manifest.run
    ours = {key for key, _, _ in units}
    for key, row in earlier_rows.items():
        if key not in ours and (output / key).is_dir():
            manifest.rows[key] = row | {unit: key}
    todo = []
    for key, uid, spec in units:
        if resume and (output / key / OUTPUT_MARKER).is_file():
            row = {**earlier_rows.get(key, {}), "status": "skipped", "error": None}
        else:
            row = {"status": "pending", "error": None}
            todo.append((key, spec | {"folder": str(output / key), "torch_threads": torch_threads,
                                      "identifiers": identifiers}))
        manifest.rows[key] = {**row, unit: key, "output": key, "model": run["model"]["label"],
                              **({"note": spec["note"]} if spec.get("note") else {}),
                              **({f"{unit}_uid": uid} if identifiers else {})}
    return todo


def _run_on(client, where, kind, todo, manifest, cluster: ClusterOptions, progress):
    """Run ``todo`` on the cluster, updating the manifest as each unit ends; unfinished tasks are cancelled if this
    is interrupted.

    As many tasks in flight as the cluster has threads: a worker holds only what it runs, so one that dies (out of
    memory on one series) takes no queued series with it, and Dask's allowed-failures counts the deaths of the task
    that was running only."""
    from distributed import as_completed

    token, start = uuid.uuid4().hex[:8], time.perf_counter()
    waiting, futures, running = iter(todo), {}, as_completed()

    def submit_next():
        item = next(waiting, None)
        if item is not None:
            key, spec = item
            future = client.submit(run_unit, kind, spec | {"threads_by_host": where["threads_by_host"]},
                                   key=f"mskai-{key}-{token}", pure=False)
            futures[future] = key
            running.add(future)

    for _ in range(max(1, sum(where["threads_by_host"].values()))):
        submit_next()
    finished = False
    try:
        for future in running:
            key = futures[future]
            submit_next()
            if future.status == "finished":
                result = future.result()
            else:  # the task never returned a row: its worker died (or the cluster lost it)
                retries = None if cluster.scheduler else cluster.retries
                result = {"status": "failed", "error": _failed_task(future, retries, manifest.unit),
                          "seconds": None, "finished": _now(), "worker": None}
            row = manifest.rows[key] | result
            manifest.update(row)
            if progress:
                counts = manifest.counts()
                minutes = max(time.perf_counter() - start, 1e-3) / 60
                progress(row, counts | {"per_minute": (counts["done"] + counts["failed"]) / minutes})
        finished = True
    finally:
        if not finished:
            client.cancel(list(futures))


def _run_units(kind: str, units, output: Path, *, unit: str, rows_key: str, fields, run: dict, earlier: dict,
               resume: bool, identifiers: bool, progress, on_start, cluster: ClusterOptions,
               torch_threads: int | None) -> dict:
    """units: [(key, uid, spec)]; one folder and one manifest row per key. ``earlier``: the manifest already in
    ``output`` (``_earlier_manifest``), of which only the known columns are carried over."""
    fields = tuple(fields) + ((f"{unit}_uid",) if identifiers else ())
    earlier_rows = _known_rows(earlier, unit, rows_key, fields)
    manifest = Manifest(output, unit, rows_key, fields, run | {"started": _now()})
    todo = _plan(manifest, units, earlier_rows, resume, identifiers, torch_threads)
    manifest.write()
    if not todo:
        return manifest.summary()
    if not cluster.scheduler:  # no more local workers than series to run
        cluster = dataclasses.replace(cluster, workers=min(cluster.local_workers(), len(todo)))
    finished = False
    try:
        with open_client(cluster) as (client, where):
            manifest.run["engine"] = where
            if on_start:
                on_start(where, len(todo))
            _run_on(client, where, kind, todo, manifest, cluster, progress)
            finished = True
    finally:
        for key, _ in todo:  # interrupted: tasks that were finishing may have put their folder in place meanwhile
            if manifest.rows[key]["status"] == "pending" and (output / key / OUTPUT_MARKER).is_file():
                manifest.rows[key]["status"] = "done"
        summary = manifest.write()
        if finished or not cluster.scheduler:  # nothing runs any more: staging folders of dead workers go
            for key, _ in todo:
                remove_stale(output, f".{key}.mskai-")
    return summary


def _cluster(cluster: ClusterOptions | None) -> ClusterOptions:
    """The cluster options (default: local); a local cluster's worker processes must be able to start."""
    cluster = cluster or ClusterOptions()
    if not cluster.scheduler:
        check_main_guard()
    return cluster


def _worker_model(package) -> dict:
    """What a worker needs to load the client's model package itself (``_worker_package``)."""
    return {"source": str(Path(package.source).resolve()), "sha256": package.metadata["weights"]["sha256"],
            "task": package.metadata["task"]}


def _model_run(package, task: str, settings: dict) -> dict:
    """The manifest's description of the run; with --resume the model and settings must be the same."""
    return {"kind": "mskai-batch", "task": task, "settings": settings,
            "model": {"id": package.id, "version": package.version, "label": f"{package.id}@{package.version}",
                      "sha256": package.metadata["weights"]["sha256"], "demo": bool(package.metadata.get("demo"))}}


def run_batch(source, output, *, resume: bool = True, series_filter=None, modality: str | None = "MR",
              model=None, identifiers: bool = False, progress=None, on_start=None, formats=None, options=None,
              cluster: ClusterOptions | None = None, **fields) -> dict:
    """Segment each image series of ``source`` (a Slicer DICOM database or a folder tree) into ``output``/<key>/.

    series_filter: callable(series_summary dict) -> bool, to choose series; modality: only series of this
    modality (None: all). options: a SegmentOptions, or its fields as keywords (fast, device, confidence, ...).
    cluster: where the tasks run (default: a local Dask cluster, one worker per core).
    progress: called as progress(row, counts) after each series (counts: done, skipped, failed, pending, total,
    per_minute); on_start(where, count) once the cluster is up (where: scheduler, workers, dashboard).
    Returns {"done": [keys], "skipped": [keys], "failed": [{"series", "error"}], "pending": []}; the manifest
    batch.json/.csv is in ``output``.
    """
    from mskai.dicom import scan_source
    from mskai.models.registry import resolve_model
    from mskai.segment.infer import SegmentOptions
    from mskai.segment.outputs import parse_formats

    cluster = _cluster(cluster)
    segment_options = options or SegmentOptions(**fields)  # bad options fail before anything is read or written
    formats = parse_formats(formats) if isinstance(formats, str) else formats
    package = resolve_model(model, SEGMENTATION)
    settings = {"options": json.loads(json.dumps(dataclasses.asdict(segment_options), default=str)),
                "formats": sorted(formats) if formats else None}
    run = _model_run(package, "segment", settings)
    output = _check_output(output, source)
    earlier = _earlier_manifest(output, run)  # another model or settings: refused before the scan
    report = scan_source(source)
    chosen = [s for s in report.require_series(str(source)) if s.is_image
              and (modality is None or s.modality == modality)
              and (series_filter is None or series_filter(series_summary(s)))]
    model_spec = _worker_model(package)
    units = [(series_key(s.uid), s.uid, {"series": _without_identity(s), "model": model_spec,
                                         "options": segment_options, "formats": formats}) for s in chosen]
    return _run_units("segment", units, output, unit="series", rows_key="series",
                      fields=("series", "status", "error", "seconds", "volume", "model", "worker", "finished",
                              "output"),
                      run=run, earlier=earlier, resume=resume, identifiers=identifiers,
                      progress=progress, on_start=on_start, cluster=cluster,
                      torch_threads=segment_options.threads)


def run_batch_classify(source, output, *, resume: bool = True, model=None, identifiers: bool = False,
                       progress=None, on_start=None, cluster: ClusterOptions | None = None) -> dict:
    """Classify the ACL of each study of ``source``: the study's sagittal series is chosen as `mskai classify` does,
    into ``output``/study-<pseudonym>/; manifest rows: study, chosen series (pseudonyms), predicted class and one
    probability column per class. A study without a usable sagittal series fails with the reason."""
    from mskai.dicom import scan_source
    from mskai.models.registry import resolve_model

    cluster = _cluster(cluster)
    package = resolve_model(model, ACL_CLASSIFICATION)
    classes = package.metadata["classes"]
    run = _model_run(package, "classify", {})
    output = _check_output(output, source)
    earlier = _earlier_manifest(output, run)  # another model: refused before the scan
    report = scan_source(source)
    studies = {}  # study UID -> patient -> series: a study is one patient's (as `mskai dicom index` requires)
    for series in report.require_series(str(source)):
        if series.is_image:
            studies.setdefault(series.study_uid, {}).setdefault(series.patient, []).append(_without_identity(series))
    model_spec = _worker_model(package)
    units = []
    for uid, by_patient in studies.items():
        shared = len(by_patient) > 1  # one Study Instance UID, several patients: each patient is its own unit
        for patient, series_list in by_patient.items():
            key = study_key(uid + "\0" + "\0".join(patient) if shared else uid)
            note = f"Study Instance UID shared by {len(by_patient)} patients: classified per patient" if shared else None
            units.append((key, uid, {"series": series_list, "model": model_spec, "note": note}))
    fields = ("study", "status", "error", "seconds", "series", "predicted", *(f"p_{c}" for c in classes), "model",
              "worker", "finished", "output", "note")
    return _run_units("classify", units, output, unit="study", rows_key="studies", fields=fields,
                      run=run, earlier=earlier, resume=resume, identifiers=identifiers,
                      progress=progress, on_start=on_start, cluster=cluster, torch_threads=None)
