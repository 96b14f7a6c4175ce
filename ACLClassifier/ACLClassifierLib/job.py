"""One ACL classification (`mskai classify`) of a volume node in a background process, on the shared engine job."""

from __future__ import annotations

from pathlib import Path

from SlicerMSKCommon.jobs import VolumeEngineJob

from .results import load_classification


class ClassificationJob(VolumeEngineJob):
    """Runs `mskai classify` on a volume node in another process; ``poll()`` (from a GUI timer) forwards progress as
    ``onProgress(stage, fraction)`` and, once finished, adds the result to the scene and calls ``onFinished(result)``.

    result: {"probabilities", "predicted", "keySlice", "keySliceAxis", "cam", "table", "chart", "input", "report",
    "seriesReason"} (see results.result_of), or {"error": message}, or {"cancelled": True}. Nothing is added to the
    scene unless the run succeeds; ``cancel()`` ends the engine's process tree.
    """

    failure = "The ACL classification engine failed"

    def __init__(self, scene, volumeNode, model=None, onProgress=None, onFinished=None):
        arguments = [f"--model={model}"] if model else []  # '=': a value starting with '-' is not read as an option
        super().__init__(scene, volumeNode, "classify", arguments, self._load_classification, onProgress, onFinished,
                         prefix="ACLClassifier-")

    def _load_classification(self, output: Path, keep) -> dict:
        return load_classification(self.scene, output, self.volumeNode, keep)
