"""Corrected segmentations saved as training cases, and "Improve the model" in the background (slicer-core, no Qt).

The case library and the fine-tuning are the engine's (``mskai.cases``, `mskai cases improve`); this is the MRML side:
the model's first draft kept beside each result (to count what the radiologist changed), a segmentation node turned
into a case on its source volume's grid, and the fine-tuning job polled like every other engine job.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from mskai import MskaiError
from mskai.runner.engine import EngineJob
from SlicerMSKCommon.jobs import PolledEngineJob
from SlicerMSKCommon.nodes import add_volume_node, same_geometry, volume_from_node
from SlicerMSKCommon.segmentations import label_volume, reference_volume

DRAFT_REFERENCE = "AutoSegMSK.draft"  # node reference: segmentation -> the model's first draft (a hidden labelmap)
MODEL_ATTRIBUTE = "AutoSegMSK.model"  # segmentation attribute: id@version of the model that drew it


def bone_table(segmentationNode):
    """The label table of the model that drew ``segmentationNode`` (the current bone table if it is not known)."""
    from mskai.models.registry import find_model
    from mskai.segment.labels import BONES, labels_from_table

    model = segmentationNode.GetAttribute(MODEL_ATTRIBUTE)
    try:
        return labels_from_table(find_model(model).metadata["labels"]) if model else BONES
    except MskaiError:
        return BONES


def keep_draft(scene, segmentationNode, volumeNode):
    """Store the segmentation as it is now (the model's output) as a hidden labelmap referenced by the node."""
    labels = label_volume(scene, segmentationNode, volumeNode, bone_table(segmentationNode))
    draft = add_volume_node(scene, labels, f"{segmentationNode.GetName()} first draft", "vtkMRMLLabelMapVolumeNode")
    draft.SetHideFromEditors(True)
    segmentationNode.SetNodeReferenceID(DRAFT_REFERENCE, draft.GetID())
    return draft


def save_case(scene, segmentationNode, volumeNode=None, library=None) -> dict:
    """Save ``segmentationNode`` (as corrected now) with its source volume as a case of the model's library.

    volumeNode: the source (default: the segmentation's reference volume); library: a ``mskai.cases.CaseLibrary``
    (default: the library of the model that drew it). Returns the case record (id, voxels changed per bone).
    """
    from mskai.cases import CaseLibrary

    volumeNode = volumeNode or reference_volume(segmentationNode)
    table = bone_table(segmentationNode)
    model = segmentationNode.GetAttribute(MODEL_ATTRIBUTE) or None
    image = volume_from_node(volumeNode)
    labels = label_volume(scene, segmentationNode, volumeNode, table)
    if not labels.array.any():
        raise MskaiError(f"Segmentation {segmentationNode.GetName()!r} holds no bone on {volumeNode.GetName()!r}")
    draft_node = segmentationNode.GetNodeReference(DRAFT_REFERENCE)
    draft = volume_from_node(draft_node) if draft_node is not None and same_geometry(draft_node, volumeNode) else None
    if library is None:
        from mskai.models.tasks import BONE_MODEL

        library = CaseLibrary.for_model(model.partition("@")[0] if model else BONE_MODEL)
    return library.add(image, labels, [b.value for b in table], model=model, draft=draft).record


class ImproveJob(PolledEngineJob):
    """`mskai cases improve` in another process (see PolledEngineJob): ``onFinished(result)`` gets the engine's result
    (model, accepted, before, after, ...), {"error": message} or {"cancelled": True}. ``cancel()`` ends it; no package
    and no partial file is left."""

    failure = "Improving the model failed"

    def __init__(self, model=None, minutes=10.0, library=None, onProgress=None, onFinished=None):
        from mskai.models.registry import user_dir
        from mskai.training.local import STAGING_NAME

        self.onProgress, self.onFinished, self.result = onProgress, onFinished, None
        self._work = Path(tempfile.mkdtemp(prefix="AutoSegMSK-improve-"))
        arguments = ["cases", "improve", "--minutes", f"{float(minutes):g}", "--progress", "json",
                     "--json", str(self._work / "result.json")]
        arguments += ["--model", str(model)] if model else []
        arguments += ["--library", str(library)] if library else []
        # the engine stages its package as .<STAGING_NAME>.mskai-*, which cancel() removes as a run's partial output
        self._engine = EngineJob(arguments, output=user_dir() / STAGING_NAME)
        try:
            self._engine.start()
        except BaseException:
            shutil.rmtree(self._work, ignore_errors=True)
            raise

    def done(self) -> dict:
        return json.loads((self._work / "result.json").read_text())

    def cleanup(self):
        shutil.rmtree(self._work, ignore_errors=True)
