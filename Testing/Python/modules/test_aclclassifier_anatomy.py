"""The anatomy of an ACL result in a real MRML scene (slicer-core): the ligament segmentation as a segmentation node
on exactly the input's grid, the tear signs in a table, the Blumensaat line and footprints as markups, and the
signs measured again after the radiologist corrected the segmentation. The engine runs as a real `mskai` process
with small real packages; the "correction" is the synthetic knee's true ligaments, written where the engine's
segmentation was."""

import sys

import numpy as np
import pytest

from conftest import REPO, mrml_scene_with_views, torn_knee_with_packages

sys.path[:0] = [str(REPO), str(REPO / "ACLClassifier")]  # SlicerMSKCommon, ACLClassifierLib

from ACLClassifierLib import ACLClassifierLogic  # noqa: E402
from ACLClassifierLib.anatomy import LIGAMENTS_REFERENCE, load_anatomy  # noqa: E402
from SlicerMSKCommon.nodes import add_volume_node, table_rows  # noqa: E402
from SlicerMSKCommon.segmentations import label_volume, load_segmentation, segment_ids  # noqa: E402
from mskai.acl.ligaments import LIGAMENT_TABLE  # noqa: E402


@pytest.fixture(scope="module")
def knee(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anatomy")
    volume, truth, acl = torn_knee_with_packages(folder)
    return folder, volume, truth, acl


def test_result_brings_ligaments_signs_and_an_indeterminate_verdict(knee):
    folder, volume, truth, acl = knee
    scene = mrml_scene_with_views()
    node = add_volume_node(scene, volume, "knee")
    result = ACLClassifierLogic(scene).classifyVolume(node, model=str(acl))
    assert result["predicted"] == "indeterminate" and "posterior cruciate" in result["reason"]
    assert "indeterminate" in ACLClassifierLogic.verdict(result["probabilities"], result["predicted"], result["reason"])
    ligaments = result["ligaments"]
    assert ligaments is not None and [s for s in segment_ids(ligaments)] == ["femur", "tibia", "acl", "pcl"]
    assert not label_volume(scene, ligaments, node, LIGAMENT_TABLE).array.any()  # the network found nothing
    rows = table_rows(result["signs"])
    assert rows[-1]["sign"] == "grade from the signs" and "posterior cruciate" in rows[-1]["value"]


def test_signs_measured_again_on_the_corrected_segmentation(knee):
    folder, volume, truth, acl = knee
    scene = mrml_scene_with_views()
    node = add_volume_node(scene, volume, "knee")
    logic = ACLClassifierLogic(scene)
    cam = logic.classifyVolume(node, model=str(acl))["cam"]
    corrected = load_segmentation(scene, folder / "corrected.seg.nrrd", "corrected", node)  # the radiologist's edit
    cam.SetNodeReferenceID(LIGAMENTS_REFERENCE, corrected.GetID())
    np.testing.assert_array_equal(label_volume(scene, corrected, node, LIGAMENT_TABLE).array, truth)
    anatomy = logic.remeasureSigns(cam, model=str(acl))
    assert anatomy["grade"] == "complete rupture" and anatomy["signs"]["gap_mm"] >= 4
    rows = {r["sign"]: r["value"] for r in table_rows(logic.resultOf(cam)["signs"])}
    assert float(rows["gap_mm"]) == pytest.approx(anatomy["signs"]["gap_mm"], abs=1e-3)
    assert rows["grade from the signs"] == "complete rupture"
    assert logic.resultOf(cam)["anatomy"]["grade"] == "complete rupture"  # the result's report follows
    roof = cam.GetNodeReference("ACLClassifier.blumensaat")
    assert roof.GetNumberOfControlPoints() == 2
    ras = np.array([roof.GetNthControlPointPosition(i) for i in range(2)])
    lps = ras * [-1, -1, 1]
    expected = np.array(anatomy["landmarks"]["blumensaat_line_lps"])
    np.testing.assert_allclose(lps, expected, atol=1e-3)  # in patient space, where the roof is


def test_a_result_without_anatomy_loads_nothing_more(knee, tmp_path):
    folder, volume, truth, _ = knee
    (tmp_path / "report.json").write_text('{"files": {}}')
    scene = mrml_scene_with_views()
    node = add_volume_node(scene, volume, "knee")
    assert load_anatomy(scene, tmp_path, node, node, keep=lambda n: None) is None
