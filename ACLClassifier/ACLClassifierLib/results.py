"""An ACL classification in the scene: the evidence map (Grad-CAM) as a volume node on exactly the input's grid,
class probabilities in a table node and a bar chart, the overlay with its legend, the key slice and the slices with
the strongest evidence, and the result saved as report.json/.csv, cam.nrrd and key_slice.png.

Everything a result needs is kept in the scene (attributes and references of the evidence node), so a saved and
reopened scene still holds whole results.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import vtk

from mskai import MskaiError
from mskai.volume import LPS_TO_RAS
from SlicerMSKCommon.nodes import (add_node, add_volume_node, color_table, ijk_to_ras, jump_slices, new_table,
                                   node_array, place_beside, table_rows, volume_from_node, voxel_slice_centre_ras)

from .anatomy import load_anatomy

EVIDENCE = "ACLClassifier.evidence"  # attribute "true": an evidence (CAM) node this module made
REPORT = "ACLClassifier.report"  # attribute of the evidence node: the engine's report.json as JSON text
SERIES_REASON = "ACLClassifier.seriesReason"  # attribute of an input node read from a study: why that series
INPUT_REFERENCE = "ACLClassifier.input"  # evidence node -> the classified volume
TABLE_REFERENCE = "ACLClassifier.table"  # evidence node -> probabilities table
CHART_REFERENCE = "ACLClassifier.chart"  # evidence node -> bar chart
SHOW_FROM = 0.2  # evidence below this is transparent in the overlay (key_slice.png masks the same)
SCENE_REASON = "a volume chosen in the scene"  # what the report says of an input not read from a study


def evidence_colors(scene):
    """The colour table of evidence overlays: blue (little) through cyan and yellow to red (strong), like
    key_slice.png."""
    return color_table(scene, "mskai evidence",
                       lambda t: tuple(float(np.clip(1.5 - abs(4 * t - c), 0, 1)) for c in (3, 2, 1)))


def load_classification(scene, output: Path, volumeNode, keep) -> dict:
    """Bring `mskai classify`'s folder (report.json, cam.nrrd) into the scene beside ``volumeNode``.

    keep(node) is called for every node added (the shared job removes them again if a later step fails).
    The evidence map must lie on the input's voxel grid; the node then gets the input's IJK -> RAS matrix exactly.
    """
    from mskai.volume_files import read_volume_file

    report = json.loads((Path(output) / "report.json").read_text())
    report["series"]["reason"] = volumeNode.GetAttribute(SERIES_REASON) or SCENE_REASON
    cam = read_volume_file(Path(output) / "cam.nrrd")
    dims = volumeNode.GetImageData().GetDimensions()
    if tuple(cam.shape) != tuple(dims) or not np.allclose(LPS_TO_RAS @ cam.affine_lps, ijk_to_ras(volumeNode),
                                                          atol=1e-3):
        raise MskaiError("The engine's evidence map does not lie on the input volume's grid")
    axis, key = report["key_slice_axis"], report["key_slice"]
    if axis not in (0, 1, 2) or not 0 <= key < dims[axis]:
        raise MskaiError(f"The engine's key slice {key} (axis {axis}) is outside the input volume {dims}")
    name = volumeNode.GetName()
    node = add_volume_node(scene, cam, f"{name} ACL evidence")
    keep(node)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)  # exactly the input's geometry, not a round trip through the file's text
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(evidence_colors(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetThreshold(SHOW_FROM, 1.0)
    display.SetApplyThreshold(1)
    place_beside(scene, node, volumeNode)
    rows = [{"class": label, "probability": float(p)} for label, p in report["probabilities"].items()]
    table = new_table(scene, f"{name} ACL probabilities", rows)
    keep(table)
    place_beside(scene, table, volumeNode)
    chart = probability_chart(scene, table, f"{name} ACL probabilities", keep)
    node.SetAttribute(EVIDENCE, "true")
    node.SetAttribute(REPORT, json.dumps(report))
    node.SetNodeReferenceID(INPUT_REFERENCE, volumeNode.GetID())
    node.SetNodeReferenceID(TABLE_REFERENCE, table.GetID())
    node.SetNodeReferenceID(CHART_REFERENCE, chart.GetID())
    load_anatomy(scene, output, volumeNode, node, keep)
    return result_of(node)


def probability_chart(scene, table, name: str, keep=lambda node: None):
    """A bar chart (plot chart + bar series) of a probabilities table: one bar per class, 0 to 1."""
    import slicer

    series = add_node(scene, "vtkMRMLPlotSeriesNode", name)
    keep(series)
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetXColumnName("")  # bars at the class indexes (a bar chart needs no X column)
    series.SetYColumnName("probability")
    series.SetLabelColumnName("class")
    series.SetColor(0.85, 0.25, 0.1)
    chart = add_node(scene, "vtkMRMLPlotChartNode", name)
    keep(chart)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("ACL class probabilities")
    chart.SetXAxisTitle(" / ".join(r["class"] for r in table_rows(table)))
    chart.SetYAxisTitle("probability")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    chart.SetLegendVisibility(False)
    return chart


def is_result(node) -> bool:
    return node is not None and node.GetAttribute(EVIDENCE) == "true" and node.GetAttribute(REPORT) is not None


def result_of(camNode) -> dict:
    """A result, read back from its evidence node: probabilities (class -> p, in the model's class order),
    predicted, keySlice and keySliceAxis (0-based voxel slice index of the input, and its IJK axis), cam, table,
    chart, input (nodes; None when removed since), report (the engine's report.json), seriesReason."""
    if not is_result(camNode):
        raise MskaiError("Select an ACL evidence volume made by this module")
    from .anatomy import LIGAMENTS_REFERENCE, SIGNS_REFERENCE

    report = json.loads(camNode.GetAttribute(REPORT))
    return {"probabilities": dict(report["probabilities"]), "predicted": report["predicted"],
            "reason": report.get("indeterminate_reason"), "anatomy": report.get("anatomy"),
            "ligaments": camNode.GetNodeReference(LIGAMENTS_REFERENCE),
            "signs": camNode.GetNodeReference(SIGNS_REFERENCE),
            "keySlice": int(report["key_slice"]), "keySliceAxis": int(report["key_slice_axis"]),
            "cam": camNode, "table": camNode.GetNodeReference(TABLE_REFERENCE),
            "chart": camNode.GetNodeReference(CHART_REFERENCE), "input": camNode.GetNodeReference(INPUT_REFERENCE),
            "report": report, "seriesReason": report["series"]["reason"]}


def verdict(probabilities: dict, predicted: str, reason: str | None = None) -> str:
    """One line for the user: the predicted class and its probability; for the four grades also the probability of
    a tear (partial or complete rupture), the binary question MRNet and the seeds answer; "indeterminate" and why
    when the model gives no grade."""
    from mskai.acl import GRADES

    if predicted not in probabilities:
        return f"{predicted}: {reason or 'no grade'}"
    text = f"{predicted} ({probabilities[predicted]:.0%})"
    if tuple(probabilities) == GRADES:
        torn = probabilities["partial rupture"] + probabilities["complete rupture"]
        text += f"; torn (partial or complete rupture): {torn:.0%}"
    return text


def evidence_slices(camNode, count: int = 5) -> list[int]:
    """The input slices (along the key slice axis) with the strongest evidence, strongest first: the key slice, then
    the others by the sum of the evidence over the slice (the engine's measure); slices without evidence never."""
    result = result_of(camNode)
    axis = result["keySliceAxis"]
    sums = node_array(camNode).astype(np.float64).sum(axis=tuple(a for a in range(3) if a != axis))
    order = [int(s) for s in np.argsort(-sums, kind="stable") if sums[s] > 0 and s != result["keySlice"]]
    return ([result["keySlice"]] + order)[:max(0, int(count))]


def jump_to_slice(scene, camNode, index: int):
    """Centre the slice views on voxel slice ``index`` (along the key slice axis) of the result."""
    axis = result_of(camNode)["keySliceAxis"]
    if not 0 <= index < camNode.GetImageData().GetDimensions()[axis]:
        raise MskaiError(f"Slice {index} is outside the volume")
    jump_slices(scene, voxel_slice_centre_ras(camNode, axis, index))


def show_evidence(scene, camNode, opacity: float = 0.4, jump: bool = True):
    """The evidence as a coloured foreground over its input in every slice view, with a colour legend (where the
    scene knows legend nodes: always in the application), and the views on the key slice. Returns the legend."""
    import slicer

    from SlicerMSKCommon.nodes import show_overlay

    result = result_of(camNode)
    if result["input"] is None:
        raise MskaiError("The input volume of this result is no longer in the scene")
    show_overlay(scene, result["input"], camNode, opacity)
    legend = None
    if scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        legend = (slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(camNode)
                  or slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(camNode))
        legend.SetTitleText("ACL evidence (Grad-CAM)")
        legend.SetVisibility(True)
    if jump:
        jump_to_slice(scene, camNode, result["keySlice"])
    return legend


def save_result(camNode, folder) -> list[str]:
    """Write report.json, report.csv, cam.nrrd and key_slice.png (the key slice with the evidence overlay, drawn by
    the engine's own function) into ``folder`` as one unit. ``folder`` must be new, empty or an earlier mskai output
    (a folder of other files is refused). Nothing written names the patient."""
    from mskai.acl.infer import key_slice_png  # imports PyTorch: only when saving
    from mskai.outputs import atomic_output, output_folder, write_csv
    from mskai.volume_files import write_volume

    result = result_of(camNode)
    if result["input"] is None:
        raise MskaiError("The input volume of this result is no longer in the scene: the key slice cannot be drawn")
    volume, cam = volume_from_node(result["input"]), volume_from_node(camNode)
    folder = Path(folder).resolve()
    names = ("report.json", "report.csv", "cam.nrrd", "key_slice.png")
    with output_folder(folder, "acl-classification") as staging:
        write_volume(cam, staging / "cam.nrrd")
        with atomic_output(staging / "report.json") as tmp:
            tmp.write_text(json.dumps(result["report"], indent=2))
        row = {"predicted": result["predicted"],
               **{f"p_{name}": p for name, p in result["probabilities"].items()},
               "key_slice": result["keySlice"], "key_slice_axis": result["keySliceAxis"],
               "model": f"{result['report']['model']['id']}@{result['report']['model']['version']}",
               "demo": result["report"]["model"]["demo"]}
        write_csv(staging / "report.csv", [row])
        drawn = types.SimpleNamespace(key_slice=result["keySlice"], slice_axis=result["keySliceAxis"], cam=cam,
                                      probabilities=result["probabilities"], predicted=result["predicted"])
        key_slice_png(volume, drawn, staging / "key_slice.png")
    return [str(folder / name) for name in names]
