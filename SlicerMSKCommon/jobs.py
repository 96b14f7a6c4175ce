"""The engine run in a background process, and its result brought into the scene (slicer-core, no Qt).

``PolledEngineJob`` is what every such job shares (poll, wait, cancel, the result made once). ``VolumeEngineJob`` runs
one `mskai <command>` on a volume node (temporary folder, the node written to a fixed-name NRRD, output loaded into
the scene all or nothing, cleanup); ``EngineBatchJob`` runs one `mskai batch <command>` over a DICOM database.
AutoSegMSKLib's SegmentationJob, BatchJob and ImproveJob and ACLClassifierLib's job build on them; the process
launcher itself is ``mskai.runner.engine.EngineJob`` (pure Python).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from mskai import MskaiError
from mskai.runner.engine import EngineJob
from mskai.volume_files import write_volume

from .nodes import remove_node, volume_from_node


def installed_models(task: str) -> list[dict]:
    """Installed model packages of ``task`` ("segmentation", "acl-classification"): id, version, description,
    demo flag, whether it is the default version of its id, a local fine-tune's lineage and held-out figures, and a
    display title that says all of it (DEMO - not for clinical use where it applies)."""
    from mskai.models.registry import list_models, local_summary, resolve_model

    packages = list_models(task=task)
    defaults = {p.id: resolve_model(p.id, task).version for p in packages}
    versions = {i: sum(p.id == i for p in packages) for i in defaults}
    return [{"id": p.id, "version": p.version, "description": p.metadata.get("description", ""),
             "demo": bool(p.metadata["demo"]), "default": defaults[p.id] == p.version,
             "local": local_summary(p.metadata["local"]) if "local" in p.metadata else "",
             "title": f"{p.id} {p.version}" + (" (DEMO - not for clinical use)" if p.metadata["demo"] else "")
             + (" [default]" if defaults[p.id] == p.version and versions[p.id] > 1 else "")
             + (f" [{local_summary(p.metadata['local'])}]" if "local" in p.metadata else "")}
            for p in packages]


class PolledEngineJob:
    """An engine process a GUI timer polls: ``poll()`` forwards progress as ``onProgress(stage, fraction)`` and, once
    the engine has ended, sets ``result`` from ``ended(state)`` (an MskaiError there becomes {"error": message}),
    runs ``cleanup()`` and calls ``onFinished(result)`` once. ``wait()`` blocks until then; ``cancel()`` ends the
    engine's process tree. Subclasses set ``_engine`` (a started EngineJob), ``onProgress`` and ``onFinished``."""

    failure = "The engine failed"  # the message when the engine ends without a one-line error of its own
    onProgress = onFinished = result = None

    def poll(self) -> bool:
        """Forward new progress; True once the job has finished (then ``result`` is set)."""
        if self.result is not None:
            return True
        for event in self._engine.poll():
            if self.onProgress and "stage" in event:
                self.onProgress(event["stage"], float(event.get("progress", 0.0)))
        if self._engine.running:
            return False
        self._engine.wait()
        try:
            self.result = self.ended(self._engine.state)
        except MskaiError as exc:
            self.result = {"error": str(exc)}
        finally:
            self.cleanup()
        if self.onFinished:
            self.onFinished(self.result)
        return True

    def ended(self, state: str) -> dict:
        """The result of a run that ended in ``state``; subclasses say what "done" gives (``done()``)."""
        if state == "done":
            return self.done()
        if state == "cancelled":
            return {"cancelled": True}
        return {"error": self._engine.error or self.failure}

    def done(self) -> dict:
        raise NotImplementedError

    def cleanup(self):
        """Called once the result is known, whatever it is."""

    def wait(self, poll_s: float = 0.1) -> dict:
        """Block until finished; returns the result."""
        while not self.poll():
            time.sleep(poll_s)
        return self.result

    def cancel(self):
        """End the engine process tree; ``onFinished`` reports the cancel."""
        if self.result is None:
            self._engine.cancel()
            self.poll()


class VolumeEngineJob(PolledEngineJob):
    """`mskai <command> input.nrrd -o <output> --progress json <arguments>` on a volume node, in another process.

    The node is written to a private temporary folder under a fixed name (node names may name the patient).
    ``poll()`` (from a GUI timer) forwards progress as ``onProgress(stage, fraction)`` and, once the engine has
    finished, calls ``load(output_folder, keep)`` to bring its files into the scene: ``keep(node)`` records each
    node it adds, and if loading fails every recorded node is removed again (all or nothing). Then it calls
    ``onFinished(result)`` once: load's dict, or {"error": message}, or {"cancelled": True}. The temporary folder
    is removed in every case.
    """

    def __init__(self, scene, volumeNode, command, arguments, load, onProgress=None, onFinished=None,
                 prefix="mskai-"):
        self.scene, self.volumeNode = scene, volumeNode
        self.onProgress, self.onFinished, self._load_output = onProgress, onFinished, load
        self.result = None
        volume = volume_from_node(volumeNode)  # a bad input fails here, before anything is written
        self._work = Path(tempfile.mkdtemp(prefix=prefix))
        try:
            source = write_volume(volume, self._work / "input.nrrd")  # a fixed name: node names may name the patient
            self._output = self._work / "result"
            self._engine = EngineJob([*([command] if isinstance(command, str) else command), str(source),
                                      "-o", str(self._output), "--progress", "json", *arguments],
                                     output=self._output)
            self._engine.start()
        except BaseException:
            shutil.rmtree(self._work, ignore_errors=True)
            raise

    def cleanup(self):
        shutil.rmtree(self._work, ignore_errors=True)

    def done(self) -> dict:
        """Bring the engine's files into the scene, all or nothing."""
        added = []
        try:
            return self._load_output(self._output, added.append)
        except BaseException:
            for node in reversed(added):
                if self.scene.IsNodePresent(node):
                    remove_node(self.scene, node)
            raise


class EngineBatchJob(PolledEngineJob):
    """`mskai batch <command>` over a DICOM database in another process: the module's GUI stays usable.

    ``poll()`` calls ``onProgress("batch", fraction)`` per unit (series or study) and, once, ``onFinished(summary)``
    with the batch report ({"done", "skipped", "failed"}), or {"error": message}, or {"cancelled": True}. A cancelled
    batch keeps the units it finished (a later run with resume does the rest) and leaves no half-written unit.
    """

    failure = "The batch engine failed"

    def __init__(self, command, databaseDir, outputDir, resume=True, arguments=(), onProgress=None, onFinished=None):
        self.output = Path(outputDir).resolve()
        self.onProgress, self.onFinished, self.result = onProgress, onFinished, None
        self._engine = EngineJob(["batch", command, str(databaseDir), "-o", str(self.output), "--progress", "json",
                                  *(["--resume"] if resume else []), *arguments]).start()

    def ended(self, state: str) -> dict:
        report = self.output / "batch.json"
        if state == "cancelled":
            return {"cancelled": True}
        if report.is_file() and self._engine.returncode in (0, 1):  # 1: some units failed, the batch finished
            summary = json.loads(report.read_text())
            return {key: summary[key] for key in ("done", "skipped", "failed")}
        return {"error": self._engine.error or self.failure}

    def cancel(self):
        if self.result is None:
            self._engine.cancel()
            remove_half_written(self.output)
            self.poll()


def remove_half_written(folder: Path):
    """Remove the staging folders that a killed batch left beside its unit folders."""
    from mskai.outputs import remove_stale

    for entry in folder.glob(".*.mskai-*"):
        remove_stale(folder, f".{entry.name[1:].split('.mskai-')[0]}.mskai-")
