"""AutoSegMSK's engine jobs: `mskai segment` on a volume node and `mskai batch segment` (see SlicerMSKCommon.jobs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mskai import MskaiError
from SlicerMSKCommon.jobs import EngineBatchJob, VolumeEngineJob
from SlicerMSKCommon.nodes import new_table

from SlicerMSKCommon.segmentations import load_segmentation

from .cases import MODEL_ATTRIBUTE, keep_draft
from .segmentations import add_confidence_node, least_certain, statistics_rows

CONFIDENCE_REFERENCE = "AutoSegMSK.confidence"  # node reference: segmentation -> its confidence map
LEAST_CERTAIN = "AutoSegMSK.leastCertain"  # segmentation attribute: bone names, least certain first


@dataclass
class SegmentationOptions:
    """What the user chose; turned into `mskai segment` arguments."""

    model: str | None = None  # id[@version] or package path; None: the default bone model
    device: str = "auto"  # auto | cpu | cuda
    fast: bool = False
    confidence: bool = False
    slab: tuple | None = None  # (low, high) patient S coordinate in mm
    postprocess: bool = True
    fillHoles: bool = True
    anatomical: bool = True
    smoothing: float = 0.5  # closed-surface smoothing factor (0-1)

    def engine_arguments(self) -> list[str]:
        if self.device not in ("auto", "cpu", "cuda"):
            raise MskaiError(f"Device must be auto, cpu or cuda, not {self.device!r}")
        if not 0.0 <= float(self.smoothing) <= 1.0:
            raise MskaiError(f"Surface smoothing must be from 0 to 1, not {self.smoothing!r}")
        args = ["--device", self.device]
        if self.model:
            args += ["--model", str(self.model)]
        if self.slab is not None:
            low, high = (float(v) for v in self.slab)
            args += [f"--slab={low:g}:{high:g}mm"]  # '=': a negative bound is not read as an option
        flags = {"--fast": self.fast, "--confidence": self.confidence, "--no-postprocess": not self.postprocess,
                 "--no-fill-holes": not self.fillHoles, "--no-anatomical-cleanup": not self.anatomical}
        return args + [flag for flag, on in flags.items() if on]


class SegmentationJob(VolumeEngineJob):
    """Runs `mskai segment` on a volume node in another process; ``poll()`` (from a GUI timer) reports progress and,
    once finished, adds the result to the scene and calls ``onFinished(result)``.

    result: {"segmentation", "confidence", "table", "leastCertain", "report"}, or {"error": message}, or
    {"cancelled": True}. Nothing is added to the scene unless the run succeeds.
    """

    failure = "The segmentation engine failed"

    def __init__(self, scene, volumeNode, options: SegmentationOptions, onProgress=None, onFinished=None):
        self.options = options
        arguments = options.engine_arguments()  # bad options fail here, before anything is written
        super().__init__(scene, volumeNode, "segment", ["--formats", "seg.nrrd,report", *arguments],
                         self._load_segmentation, onProgress, onFinished, prefix="AutoSegMSK-")

    def _load_segmentation(self, output: Path, keep) -> dict:
        scene, volume, name = self.scene, self.volumeNode, self.volumeNode.GetName()
        report = json.loads((output / "report.json").read_text())
        segmentation = load_segmentation(scene, output / "segmentation.seg.nrrd", f"{name} bones", volume,
                                          self.options.smoothing)
        keep(segmentation)
        model = report["model"]
        segmentation.SetAttribute(MODEL_ATTRIBUTE, f"{model['id']}@{model['version']}")
        keep(keep_draft(scene, segmentation, volume))  # to count what the radiologist changes when saved as a case
        segmentation.SetAttribute("AutoSegMSK.demo", str(bool(model["demo"])).lower())
        confidence = None
        if self.options.confidence:
            confidence = add_confidence_node(scene, output / "confidence.nrrd", f"{name} confidence", volume)
            keep(confidence)
        rows = statistics_rows(scene, segmentation, confidence)
        table = new_table(scene, f"{name} bone statistics", rows)
        keep(table)
        if confidence is not None:  # saved with the scene: the module finds them again for any result
            segmentation.SetNodeReferenceID(CONFIDENCE_REFERENCE, confidence.GetID())
        segmentation.SetAttribute(LEAST_CERTAIN, ",".join(least_certain(rows)))
        return {"segmentation": segmentation, "confidence": confidence, "table": table,
                "leastCertain": least_certain(rows), "report": report}


class BatchJob(EngineBatchJob):
    """`mskai batch segment` over a DICOM database in another process (see EngineBatchJob)."""

    def __init__(self, databaseDir, outputDir, resume=True, onProgress=None, onFinished=None, **options):
        arguments = SegmentationOptions(**options).engine_arguments()
        super().__init__("segment", databaseDir, outputDir, resume, arguments, onProgress, onFinished)
