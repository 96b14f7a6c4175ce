"""The batch runner: every matching series (segmentation) or study (ACL classification) of a Slicer DICOM database
or folder tree, one output folder each, run as Dask tasks (``mskai.cluster``: a local cluster or an existing one).

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
from mskai.cluster import ClusterOptions, open_client, usable_cores
from mskai.io import OUTPUT_MARKER, _remove_stale, atomic_output, write_csv

BATCH_MARKER = ".mskai-batch.json"
MANIFEST = "batch.json"
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


def _check_output(folder: Path):
    """The output must be new, empty, or an earlier batch's: a batch never writes among the user's own files."""
    if folder.exists() and not folder.is_dir():
        raise MskaiError(f"Output folder {folder} is a file")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / BATCH_MARKER).is_file():
        raise MskaiError(f"Output folder {folder} holds files that are not an earlier mskai batch; "
                         "choose a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BATCH_MARKER).write_text(json.dumps({"kind": "batch"}))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- the manifest -----------------------------------------------------------------------------------------------

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
        """The manifest an earlier run left here ({} if none or unreadable: then the folders alone tell)."""
        try:
            found = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

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
    from mskai.dicom import plan_volumes, read_volume
    from mskai.segment.run import segment_to_folder

    found = {}

    def load():
        plans = plan_volumes(spec["series"])
        if not plans:
            raise MskaiError("the series holds no volume")
        volume = read_volume(plans[0])
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

def _failed_task(exc: BaseException, retries: int | None, unit: str) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        times = f" {retries + 1} times" if retries is not None else ""
        return (f"the worker running it died{times} (killed, or out of memory: see --memory-limit); "
                f"the {unit} was not finished")
    return f"{exc.__class__.__name__}: {exc}"


def _run_units(kind: str, units, output: Path, *, unit: str, rows_key: str, fields, run: dict, resume: bool,
               identifiers: bool, progress, on_start, cluster: ClusterOptions, torch_threads: int | None) -> dict:
    """units: [(key, uid, spec)]; one folder and one manifest row per key. ``run``: what must match to resume."""
    fields = tuple(fields) + ((f"{unit}_uid",) if identifiers else ())
    _check_output(output)
    earlier = Manifest.previous(output)
    if resume and earlier.get("model") and (earlier.get("model"), earlier.get("settings")) != (
            run["model"], run["settings"]):
        raise MskaiError(f"{output} was made with model {earlier['model'].get('id')}@"
                         f"{earlier['model'].get('version')} and other settings; resume it with the same model and "
                         "settings, or use a new output folder")
    earlier_rows = {r.get(unit): r for r in earlier.get(rows_key, []) if isinstance(r, dict)}
    manifest = Manifest(output, unit, rows_key, fields, run | {"started": _now()})
    todo = []
    for key, uid, spec in units:
        if resume and (output / key / OUTPUT_MARKER).is_file():
            row = {**earlier_rows.get(key, {}), "status": "skipped"}
        else:
            row = {"status": "pending"}
            todo.append((key, spec | {"folder": str(output / key), "torch_threads": torch_threads,
                                      "identifiers": identifiers}))
        manifest.rows[key] = {**row, unit: key, "output": key, "model": run["model"]["label"],
                              **({f"{unit}_uid": uid} if identifiers else {})}
    manifest.write()
    if not todo:
        return manifest.summary()
    if not cluster.scheduler:  # no more local workers than series to run
        cluster = dataclasses.replace(cluster, workers=min(cluster.local_workers(), len(todo)))
    finished = False
    try:
        with open_client(cluster) as (client, where):
            from distributed import as_completed

            manifest.run["engine"] = where
            if on_start:
                on_start(where, len(todo))
            token, start = uuid.uuid4().hex[:8], time.perf_counter()
            futures = {client.submit(run_unit, kind, spec | {"threads_by_host": where["threads_by_host"]},
                                     key=f"mskai-{key}-{token}", pure=False): key for key, spec in todo}
            try:
                for future in as_completed(futures):
                    key = futures[future]
                    if future.status == "finished":
                        result = future.result()
                    else:
                        retries = None if cluster.scheduler else cluster.retries
                        result = {"status": "failed", "error": _failed_task(future.exception(), retries, unit)}
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
    finally:
        for key, _ in todo:  # interrupted: tasks that were finishing may have put their folder in place meanwhile
            if manifest.rows[key]["status"] == "pending" and (output / key / OUTPUT_MARKER).is_file():
                manifest.rows[key]["status"] = "done"
        summary = manifest.write()
        if finished or not cluster.scheduler:  # nothing runs any more: staging folders of dead workers go
            for key, _ in todo:
                _remove_stale(output, f".{key}.mskai-")
    return summary


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
    from mskai.models.registry import find_model
    from mskai.segment.infer import SegmentOptions
    from mskai.segment.outputs import parse_formats

    output = Path(output).resolve()
    cluster = cluster or ClusterOptions()
    segment_options = options or SegmentOptions(**fields)  # bad options fail before anything is read or written
    formats = parse_formats(formats) if isinstance(formats, str) else formats
    package = find_model(model or "mskai-bones-demo", task="segmentation")
    report = scan_source(source)
    chosen = [s for s in report.require_series(str(source)) if s.is_image
              and (modality is None or s.modality == modality)
              and (series_filter is None or series_filter(series_summary(s)))]
    settings = {"options": json.loads(json.dumps(dataclasses.asdict(segment_options), default=str)),
                "formats": sorted(formats) if formats else None}
    model_spec = _worker_model(package)
    units = [(series_key(s.uid), s.uid, {"series": _without_identity(s), "model": model_spec,
                                         "options": segment_options, "formats": formats}) for s in chosen]
    return _run_units("segment", units, output, unit="series", rows_key="series",
                      fields=("series", "status", "error", "seconds", "volume", "model", "worker", "finished",
                              "output"),
                      run=_model_run(package, "segment", settings), resume=resume, identifiers=identifiers,
                      progress=progress, on_start=on_start, cluster=cluster,
                      torch_threads=segment_options.threads)


def run_batch_classify(source, output, *, resume: bool = True, model=None, identifiers: bool = False,
                       progress=None, on_start=None, cluster: ClusterOptions | None = None) -> dict:
    """Classify the ACL of each study of ``source``: the study's sagittal series is chosen as `mskai classify` does,
    into ``output``/study-<pseudonym>/; manifest rows: study, chosen series (pseudonyms), predicted class and one
    probability column per class. A study without a usable sagittal series fails with the reason."""
    from mskai.acl.infer import TASK
    from mskai.dicom import scan_source
    from mskai.models.registry import find_model

    output = Path(output).resolve()
    cluster = cluster or ClusterOptions()
    package = find_model(model or "mskai-acl-demo", task=TASK)
    classes = package.metadata["classes"]
    report = scan_source(source)
    studies = {}
    for series in report.require_series(str(source)):
        if series.is_image:
            studies.setdefault(series.study_uid, []).append(_without_identity(series))
    model_spec = _worker_model(package)
    units = [(study_key(uid), uid, {"series": series_list, "model": model_spec})
             for uid, series_list in studies.items()]
    fields = ("study", "status", "error", "seconds", "series", "predicted", *(f"p_{c}" for c in classes), "model",
              "worker", "finished", "output")
    return _run_units("classify", units, output, unit="study", rows_key="studies", fields=fields,
                      run=_model_run(package, "classify", {}), resume=resume, identifiers=identifiers,
                      progress=progress, on_start=on_start, cluster=cluster, torch_threads=None)
