"""Bone segmentation nodes: statistics, confidence overlay, export and comparison (loading and reading masks back:
``SlicerMSKCommon.segmentations``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk

from mskai import MskaiError
from mskai.volume import LPS_TO_RAS, Volume
from SlicerMSKCommon.nodes import add_volume_node, ijk_to_ras, node_array, place_beside
from SlicerMSKCommon.segmentations import label_volume, reference_volume, segment_ids, segment_masks

CERTAIN = 0.9  # confidence overlays leave voxels at or above this clear


def statistics_rows(scene, node, confidence=None) -> list[dict]:
    """Per segment: volume (mL), surface area (cm2, of the closed surface shown) and, with a confidence volume, its
    mean and the fraction of voxels below 0.5 inside the segment. The numbers are the engine's (``bone_statistics``,
    as in report.json), of the node as it is now (after any edits); each segment is measured on its own (segments
    may overlap)."""
    from mskai.segment.labels import Label
    from mskai.segment.outputs import bone_statistics

    reference = confidence if confidence is not None else reference_volume(node)
    affine = LPS_TO_RAS @ ijk_to_ras(reference)
    values = Volume(node_array(confidence), affine) if confidence is not None else None
    if not node.GetSegmentation().ContainsRepresentation("Closed surface"):
        node.CreateClosedSurfaceRepresentation()
    rows = []
    for segment_id, (name, code, mask) in zip(segment_ids(node), segment_masks(scene, node, reference)):
        surface = vtk.vtkPolyData()
        shown = node.GetClosedSurfaceRepresentation(segment_id, surface) and surface.GetNumberOfPoints() > 0
        (numbers,) = bone_statistics(Volume(mask.astype(np.uint8), affine), (Label(1, name, (0, 0, 0), code or "", name),),
                                     surfaces={1: surface} if shown else None, confidence=values)
        row = {"segment": name, "snomed_code": code or "", "volume_ml": numbers["volume_ml"],
               "surface_area_cm2": numbers["surface_area_cm2"] if numbers["voxels"] else None}
        if values is not None:
            row.update(mean_confidence=numbers["mean_confidence"], uncertain_fraction=numbers["uncertain_fraction"])
        rows.append(row)
    return rows


def least_certain(rows) -> list[str]:
    """Segment names ordered from the least to the most certain (segments without a value left out)."""
    scored = [r for r in rows if r.get("mean_confidence") is not None]
    return [r["segment"] for r in sorted(scored, key=lambda r: r["mean_confidence"])]


def add_confidence_node(scene, path, name: str, reference):
    """The engine's confidence map as a volume node beside ``reference``, coloured red (uncertain) to green."""
    from mskai.volume_files import read_volume_file
    from SlicerMSKCommon.nodes import confidence_colors

    node = add_volume_node(scene, read_volume_file(path), name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(confidence_colors(scene).GetID())
    high = 100.0 if node_array(node).max(initial=0) > 1.0 else 1.0
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, high)
    display.AutoThresholdOff()  # show only where the model was unsure: certain voxels and outside a slab (0) stay clear
    display.SetThreshold(0.01 * high, CERTAIN * high)
    display.SetApplyThreshold(1)
    place_beside(scene, node, reference)
    return node


def export_models(node, folder, segment_names=None, formats=("stl",)) -> list[str]:
    """Write the closed surfaces of the chosen segments (all by default) as STL / OBJ / PLY in LPS millimetres,
    like `mskai segment` and Slicer's own model export; all files appear together or none does."""
    from mskai.outputs import atomic_outputs
    from mskai.segment.meshes import write_mesh

    unknown = [f for f in formats if f not in ("stl", "obj", "ply")]
    if unknown or not formats:
        raise MskaiError(f"Model formats must be among stl, obj, ply (got {', '.join(formats) or 'none'})")
    if not node.GetSegmentation().ContainsRepresentation("Closed surface"):
        node.CreateClosedSurfaceRepresentation()
    chosen = [(i, node.GetSegmentation().GetSegment(i).GetName()) for i in segment_ids(node)]
    if segment_names is not None:
        missing = set(segment_names) - {name for _, name in chosen}
        if missing:
            raise MskaiError(f"No segment named {', '.join(sorted(missing))} in {node.GetName()!r}")
        chosen = [(i, name) for i, name in chosen if name in segment_names]
    to_lps = vtk.vtkTransform()
    to_lps.Scale(-1, -1, 1)
    surfaces, taken = [], set()
    for segment_id, name in chosen:
        polydata = vtk.vtkPolyData()
        if not node.GetClosedSurfaceRepresentation(segment_id, polydata) or polydata.GetNumberOfPoints() == 0:
            continue
        flip = vtk.vtkTransformPolyDataFilter()
        flip.SetTransform(to_lps)
        flip.SetInputData(polydata)
        flip.Update()
        stem = _unique_stem(_file_name(name), taken)
        surfaces += [(flip.GetOutput(), Path(folder) / f"{stem}.{ext}") for ext in formats]
    if not surfaces:
        raise MskaiError(f"None of the chosen segments of {node.GetName()!r} has a surface: nothing exported")
    with atomic_outputs([path for _, path in surfaces]) as temporary:
        for (polydata, _), tmp in zip(surfaces, temporary):
            write_mesh(polydata, tmp)
    return [str(path) for _, path in surfaces]


def _unique_stem(stem: str, taken: set) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... : the first not in ``taken`` (compared without case, as on macOS and
    Windows file systems), which it joins. Segments whose names look alike as files get files of their own."""
    candidate, n = stem, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}_{n}"
    taken.add(candidate.lower())
    return candidate


def _file_name(name: str) -> str:
    """A segment name made safe as a file name (segment names are user-editable text)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_.")
    return safe[:64] or "segment"


def write_seg_nrrd(scene, node, path) -> str:
    """Save a segmentation node with Slicer's own storage node (.seg.nrrd)."""
    from mskai.outputs import atomic_output, suffix_of

    if suffix_of(path) != ".seg.nrrd":
        raise MskaiError(f"{Path(path).name}: a segmentation file name must end in .seg.nrrd")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    try:
        with atomic_output(path) as tmp:
            temporary = Path(str(tmp) + ".seg.nrrd")
            storage.SetFileName(str(temporary))
            if not storage.WriteData(node):
                raise MskaiError(f"Slicer could not write {Path(path).name}")
            temporary.replace(tmp)
    finally:
        scene.RemoveNode(storage)
    return str(path)


def compare_rows(scene, node, reference_node) -> list[dict]:
    """Dice, HD95, surface distance and volume error per bone of ``node`` against ``reference_node``."""
    from mskai.segment.metrics import evaluate

    prediction = label_volume(scene, node, reference_volume(node))
    reference = label_volume(scene, reference_node, reference_volume(reference_node))
    return [{"bone": r["name"], "dice": r["dice"], "hd95_mm": r["hd95_mm"], "asd_mm": r["asd_mm"],
             "volume_ml": r["volume_ml"], "reference_volume_ml": r["reference_volume_ml"],
             "volume_error_ml": r["volume_error_ml"]} for r in evaluate(prediction, reference)]

