"""Segmentation nodes both modules use: Slicer's segmentations logic, a .seg.nrrd loaded as a node, and the masks
and label map of a node on a volume's grid."""

from __future__ import annotations

from pathlib import Path

import slicer
import vtk

from mskai import MskaiError
from mskai.segment.labels import BONES
from mskai.volume import LPS_TO_RAS, Volume
from SlicerMSKCommon.nodes import add_node, ijk_to_ras, node_array, place_beside

_HEADLESS_LOGIC = {}


def segmentations_logic(scene):
    """Slicer's segmentations logic: the application's, or (outside the app) one bound to ``scene`` so that the
    conversion rules (labelmap -> closed surface) are registered."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "segmentations"):
        return modules.segmentations.logic()
    logic = _HEADLESS_LOGIC.get(id(scene))
    if logic is None or logic.GetMRMLScene() is not scene:
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(scene)
        _HEADLESS_LOGIC[id(scene)] = logic
    return logic


def load_segmentation(scene, path, name: str, reference, smoothing: float = 0.5):
    """A new segmentation node read from a .seg.nrrd by Slicer's own storage node (names, colours and
    terminology come from the file), on the geometry of ``reference``, placed beside it, with closed surfaces."""
    segmentations_logic(scene)
    node = add_node(scene, "vtkMRMLSegmentationNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    try:
        if not storage.ReadData(node):
            raise MskaiError(f"Slicer could not read the engine's segmentation {Path(path).name}")
    except MskaiError:
        scene.RemoveNode(node)
        raise
    finally:
        scene.RemoveNode(storage)  # the node is a new, unsaved result: it must not point at a temporary file
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    node.CreateDefaultDisplayNodes()
    node.GetSegmentation().SetConversionParameter("Smoothing factor", f"{smoothing:g}")
    node.CreateClosedSurfaceRepresentation()
    node.GetDisplayNode().SetPreferredDisplayRepresentationName3D("Closed surface")
    place_beside(scene, node, reference)
    return node


def segment_ids(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def snomed_type_code(segment) -> str | None:
    """The SNOMED code of a segment's terminology type (``...~SCT^71341001^Femur~...``), if any."""
    parts = (segment.GetTerminology() or "").split("~")
    fields = parts[2].split("^") if len(parts) > 2 else []
    return fields[1] if len(fields) > 1 and fields[1] else None


def segment_masks(scene, node, reference) -> list[tuple]:
    """[(name, SNOMED code, bool [i, j, k] mask on the grid of the volume node ``reference``)] per segment."""
    logic = segmentations_logic(scene)
    masks = []
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        for segment_id in segment_ids(node):
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not logic.ExportSegmentsToLabelmapNode(node, ids, labelmap, reference):
                raise MskaiError(f"Cannot export segment {segment_id!r} of {node.GetName()!r}")
            segment = node.GetSegmentation().GetSegment(segment_id)
            masks.append((segment.GetName(), snomed_type_code(segment), node_array(labelmap) > 0))
    finally:
        if labelmap.GetDisplayNode() is not None:
            scene.RemoveNode(labelmap.GetDisplayNode())
        scene.RemoveNode(labelmap)
    return masks


def label_volume(scene, node, reference, table=BONES) -> Volume:
    """The label map (values of ``table``: the bones by default; segments matched by SNOMED code or name) on
    ``reference``'s grid."""
    from mskai.segment.outputs import label_map_from_segments

    return label_map_from_segments(segment_masks(scene, node, reference), LPS_TO_RAS @ ijk_to_ras(reference), table)


def reference_volume(node):
    """The volume a segmentation node takes its geometry from."""
    reference = node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    if reference is None:
        raise MskaiError(f"Segmentation {node.GetName()!r} has no reference volume (its geometry is unknown)")
    return reference
