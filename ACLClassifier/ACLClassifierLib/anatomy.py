"""The anatomy behind an ACL verdict in the scene: the ligament segmentation (femur, tibia, ACL, PCL) the radiologist
can correct in the Segment Editor, the tear signs in a table, the Blumensaat line (intercondylar roof) and the ACL's
footprints as markups; and the signs measured again, with their grade, on the corrected segmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mskai import MskaiError
from SlicerMSKCommon.nodes import add_node, fill_table, new_table, place_beside, volume_from_node

LIGAMENTS_REFERENCE = "ACLClassifier.ligaments"  # evidence node -> ligament segmentation
SIGNS_REFERENCE = "ACLClassifier.signs"  # evidence node -> tear signs table
ROOF_REFERENCE = "ACLClassifier.blumensaat"  # evidence node -> Blumensaat line markup
FOOTPRINTS_REFERENCE = "ACLClassifier.footprints"  # evidence node -> the ACL's footprints (markup points)


def _ras(points_lps) -> np.ndarray:
    return np.asarray(points_lps, dtype=float) * [-1.0, -1.0, 1.0]


def sign_rows(anatomy: dict) -> list[dict]:
    """The table's rows: every sign (a value; empty when it was not measured), the probability of a tear and the
    grade the signs give, or indeterminate with the reason."""
    rows = [{"sign": name, "value": f"{value:.3f}"} for name, value in (anatomy.get("signs") or {}).items()]
    if anatomy["p_torn"] is not None:
        rows.append({"sign": "P(torn) from the signs", "value": f"{anatomy['p_torn']:.2f}"})
    return rows + [{"sign": "grade from the signs", "value": anatomy["grade"] + (f": {anatomy['reason']}"
                                                                                if anatomy.get("reason") else "")}]


def _markups(scene, camNode, anatomy: dict, name: str, keep):
    """The Blumensaat line and the footprints as markups (made once, moved on a new measurement)."""
    landmarks = anatomy.get("landmarks")
    roof, feet = camNode.GetNodeReference(ROOF_REFERENCE), camNode.GetNodeReference(FOOTPRINTS_REFERENCE)
    if landmarks is None:
        for node in (roof, feet):
            if node is not None:
                node.RemoveAllControlPoints()
        return
    if roof is None:
        roof = add_node(scene, "vtkMRMLMarkupsLineNode", f"{name} Blumensaat line")
        feet = add_node(scene, "vtkMRMLMarkupsFiducialNode", f"{name} ACL footprints")
        keep(roof), keep(feet)
        camNode.SetNodeReferenceID(ROOF_REFERENCE, roof.GetID())
        camNode.SetNodeReferenceID(FOOTPRINTS_REFERENCE, feet.GetID())
    roof.RemoveAllControlPoints()
    for point in _ras(landmarks["blumensaat_line_lps"]):
        roof.AddControlPoint(*point)
    feet.RemoveAllControlPoints()
    for label in ("femoral", "tibial"):
        feet.AddControlPoint(*_ras(landmarks[f"acl_{label}_footprint_lps"]), f"{label} footprint")


def load_anatomy(scene, output: Path, volumeNode, camNode, keep):
    """Bring the anatomy of `mskai classify`'s folder (ligaments.seg.nrrd, report.json's "anatomy") into the scene,
    referenced from the evidence node. Nothing when the model read no anatomy."""
    from SlicerMSKCommon.segmentations import load_segmentation

    report = json.loads((Path(output) / "report.json").read_text())
    if "anatomy" not in report:
        return None
    name = volumeNode.GetName()
    ligaments = load_segmentation(scene, Path(output) / report["files"]["ligaments"], f"{name} ACL ligaments",
                                  volumeNode)
    keep(ligaments)
    table = new_table(scene, f"{name} ACL tear signs", sign_rows(report["anatomy"]))
    keep(table)
    place_beside(scene, table, volumeNode)
    camNode.SetNodeReferenceID(LIGAMENTS_REFERENCE, ligaments.GetID())
    camNode.SetNodeReferenceID(SIGNS_REFERENCE, table.GetID())
    _markups(scene, camNode, report["anatomy"], name, keep)
    return ligaments


def remeasure(scene, camNode, package) -> dict:
    """The tear signs and their grade measured again on the (corrected) ligament segmentation of a result: the
    table, the markups and the result's report are updated; returns the new anatomy."""
    from mskai.acl.anatomy import anatomy_of, grade_anatomy
    from mskai.acl.ligaments import LIGAMENT_TABLE
    from SlicerMSKCommon.segmentations import label_volume

    from .results import REPORT, result_of

    result = result_of(camNode)
    ligaments, volumeNode = camNode.GetNodeReference(LIGAMENTS_REFERENCE), result["input"]
    if ligaments is None or volumeNode is None:
        raise MskaiError("This result has no ligament segmentation and input volume to measure (removed, or a model "
                         "that reads no anatomy)")
    section = anatomy_of(package)
    if section is None:
        raise MskaiError(f"{package.id} {package.version} reads no anatomy: it cannot grade a segmentation")
    anatomy = grade_anatomy(label_volume(scene, ligaments, volumeNode, LIGAMENT_TABLE), volume_from_node(volumeNode),
                            section["grader"])
    report = dict(result["report"], anatomy=anatomy)
    camNode.SetAttribute(REPORT, json.dumps(report))
    table = camNode.GetNodeReference(SIGNS_REFERENCE)
    if table is not None:
        fill_table(table, sign_rows(anatomy))
    _markups(scene, camNode, anatomy, volumeNode.GetName(), lambda node: None)
    return anatomy
