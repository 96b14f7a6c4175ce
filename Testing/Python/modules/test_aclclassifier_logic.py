"""ACLClassifierLogic on a real MRML scene (slicer-core): volume node in, probabilities table, evidence volume and
bar chart out; studies picked from a real ctkDICOM.sql; the batch over it.

Nothing here is a test double: the scene, slice and plot nodes, subject hierarchy and colour legend are Slicer's own
(slicer-core), the engine runs as a real `python -m mskai` process with a small real ACL package (random weights),
the database is a real ctkDICOM.sql. What this cannot cover (Qt, the application) is listed in the README.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, make_acl_package, mrml_scene_with_views

sys.path[:0] = [str(REPO), str(REPO / "ACLClassifier")]  # SlicerMSKCommon, ACLClassifierLib

import slicer  # noqa: E402  (the slicer-core wheel: a test dependency, installed by the README command)

from ACLClassifierLib import ACLClassifierLogic  # noqa: E402
from SlicerMSKCommon.nodes import add_volume_node, ijk_to_ras, node_array, same_geometry, table_rows  # noqa: E402
from mskai import MskaiError  # noqa: E402
from mskai.acl import GRADES  # noqa: E402
from mskai.dicom import DicomDatabase, index_folder, plan_volumes, read_volume, scan_folder  # noqa: E402


@pytest.fixture(scope="module")
def acl_package(tmp_path_factory):
    """Attention pooling: the evidence spreads over several slices, as a trained model's does."""
    return make_acl_package(tmp_path_factory.mktemp("acl") / "package", pooling="attention")


@pytest.fixture(scope="module")
def knee_volume(knee_dicom):
    """Echo 1 of the real knee series: an oblique-sagittal acquisition (about 8 degrees)."""
    (series,) = scan_folder(knee_dicom).series
    return read_volume(plan_volumes(series)[0])


def _scene(volume=None, name="knee PD"):
    """A scene like the application's (slice views, legend support) holding ``volume`` under patient > study in the
    subject hierarchy, as Slicer's DICOM loading places a series."""
    scene = mrml_scene_with_views()
    if volume is None:
        return scene, None, None
    node = add_volume_node(scene, volume, name)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    hierarchy.CreateItem(study, node)
    return scene, node, study


def _nodes(scene, class_name):
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


@pytest.fixture(scope="module")
def classified(knee_volume, acl_package):
    """One classification of the real oblique knee through the logic (the engine in its own process)."""
    scene, node, study = _scene(knee_volume)
    logic = ACLClassifierLogic(scene)
    count = scene.GetNumberOfNodes()
    start = time.perf_counter()
    result = logic.classifyVolume(node, model=str(acl_package))
    return scene, node, study, logic, result, count, time.perf_counter() - start


def test_probabilities_table_chart_and_verdict(classified):
    scene, node, study, logic, result, _, _ = classified
    assert list(result["probabilities"]) == list(GRADES)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert result["predicted"] == max(result["probabilities"], key=result["probabilities"].get)
    rows = table_rows(result["table"])
    assert [r["class"] for r in rows] == list(GRADES)
    assert [r["probability"] for r in rows] == pytest.approx(list(result["probabilities"].values()))
    chart = result["chart"]
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetPlotType() == slicer.vtkMRMLPlotSeriesNode.PlotTypeBar
    assert series.GetTableNode() is result["table"] and series.GetYColumnName() == "probability"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    for made in (result["cam"], result["table"]):  # beside the input, under its study
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(made)) == study
    verdict = logic.verdict(result["probabilities"], result["predicted"])
    torn = result["probabilities"]["partial rupture"] + result["probabilities"]["complete rupture"]
    assert verdict.startswith(result["predicted"]) and f"torn (partial or complete rupture): {torn:.0%}" in verdict
    report = result["report"]
    assert report["model"] == {"id": "test-acl", "version": "1.0.0", "demo": True}
    assert report["series"]["reason"] == "a volume chosen in the scene"  # not the temporary file's name
    assert "knee PD" not in json.dumps(report)  # node names may name the patient: never in the report


def test_evidence_volume_lies_on_exactly_the_input_grid_and_the_key_slice_inside_it(classified, knee_volume):
    _, node, _, _, result, _, _ = classified
    cam = result["cam"]
    assert cam.IsA("vtkMRMLScalarVolumeNode") and cam is not node
    assert cam.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
    assert np.array_equal(ijk_to_ras(cam), ijk_to_ras(node))  # equal, not merely close: voxel-aligned
    assert same_geometry(cam, node) and abs(knee_volume.directions_lps[0, 0]) < 0.999  # oblique, and kept so
    values = node_array(cam)
    assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0 and values.max() > 0
    axis, key = result["keySliceAxis"], result["keySlice"]
    assert axis == 2 and 0 <= key < node.GetImageData().GetDimensions()[axis]
    sums = values.sum(axis=(0, 1))
    assert sums[key] == pytest.approx(sums.max())  # the engine's key slice: the most evidence
    display = cam.GetDisplayNode()
    assert display.GetColorNode().GetName() == "mskai evidence" and display.GetApplyThreshold()
    assert (display.GetLowerThreshold(), display.GetUpperThreshold()) == pytest.approx((0.2, 1.0))


def test_overlay_legend_and_views_on_the_key_slice_then_the_next_strongest(classified):
    scene, node, _, logic, result, _, _ = classified
    cam = result["cam"]
    assert logic.resultOf(cam)["probabilities"] == result["probabilities"]  # a result is read back from the scene
    legend = logic.showResult(cam, opacity=0.5)
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == node.GetID()
        assert composite.GetForegroundVolumeID() == cam.GetID() and composite.GetForegroundOpacity() == 0.5
    assert legend.IsA("vtkMRMLColorLegendDisplayNode") and legend.GetVisibility()
    assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(cam) is legend

    def on_plane(slice_node, index):  # the key slice's centre lies in this view's plane
        ijk = (np.array(node.GetImageData().GetDimensions()) - 1) / 2
        ijk[result["keySliceAxis"]] = index
        ras = (ijk_to_ras(node) @ np.append(ijk, 1))[:3]
        m = np.array([[slice_node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
        return abs(np.dot(ras - m[:3, 3], m[:3, 2])) < 1e-3

    sagittal = next(s for s in _nodes(scene, "vtkMRMLSliceNode") if s.GetOrientation() == "Sagittal")
    assert all(on_plane(s, result["keySlice"]) for s in _nodes(scene, "vtkMRMLSliceNode"))
    slices = logic.evidenceSlices(cam)
    sums = node_array(cam).sum(axis=(0, 1))
    assert slices[0] == result["keySlice"] and len(slices) == 5
    assert list(sums[slices[1:]]) == sorted(sums[slices[1:]], reverse=True) and all(sums[slices] > 0)
    logic.jumpToSlice(cam, slices[1])
    assert on_plane(sagittal, slices[1]) and not on_plane(sagittal, slices[0])
    with pytest.raises(MskaiError, match="outside"):
        logic.jumpToSlice(cam, 99)
    logic.showResult(cam)  # again: the same legend, no second one
    assert len(_nodes(scene, "vtkMRMLColorLegendDisplayNode")) == 1


def test_save_writes_report_csv_cam_and_png_as_one_unit(classified, tmp_path):
    import csv

    from mskai.volume_files import read_volume_file

    _, node, _, logic, result, _, _ = classified
    files = logic.saveResult(result["cam"], tmp_path / "saved")
    assert sorted(Path(p).name for p in files) == ["cam.nrrd", "key_slice.png", "report.csv", "report.json"]
    report = json.loads((tmp_path / "saved" / "report.json").read_text())
    assert report["probabilities"] == result["probabilities"] and report["key_slice"] == result["keySlice"]
    (row,) = csv.DictReader((tmp_path / "saved" / "report.csv").open())
    assert row["predicted"] == result["predicted"] and float(row["p_healthy"]) == pytest.approx(
        result["probabilities"]["healthy"])
    cam = read_volume_file(tmp_path / "saved" / "cam.nrrd")
    assert np.array_equal(cam.array, node_array(result["cam"]))
    assert (tmp_path / "saved" / "key_slice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = (tmp_path / "saved" / "report.json").read_text() + (tmp_path / "saved" / "report.csv").read_text()
    assert "knee PD" not in written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    with pytest.raises(MskaiError, match="new or empty folder"):
        logic.saveResult(result["cam"], tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_non_sagittal_volume_is_refused_naming_its_plane_before_any_work(acl_package):
    from mskai.synth.phantom import phantom

    scene, _, _ = _scene()
    coronal = add_volume_node(scene, phantom(shape=(48, 48, 12), plane="coronal"), "knee COR")
    axial = add_volume_node(scene, phantom(plane="axial"), "knee AX")
    logic = ACLClassifierLogic(scene)
    count = scene.GetNumberOfNodes()
    assert logic.planeOf(coronal) == "coronal"
    with pytest.raises(MskaiError, match="reads sagittal slices; 'knee COR' is coronal"):
        logic.classifyVolume(coronal, model=str(acl_package))
    with pytest.raises(MskaiError, match="'knee AX' is axial"):
        logic.startClassification(axial)
    assert scene.GetNumberOfNodes() == count


def test_cancel_leaves_the_scene_as_it_was_and_the_engine_gone(knee_volume, acl_package):
    import psutil

    scene, node, _ = _scene(knee_volume)
    count, finished = scene.GetNumberOfNodes(), []
    job = ACLClassifierLogic(scene).startClassification(node, model=str(acl_package), onFinished=finished.append)
    pid = job._engine._proc.pid
    job.cancel()
    assert finished == [{"cancelled": True}] and job.poll() is True
    assert scene.GetNumberOfNodes() == count and not job._work.exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_an_engine_error_is_one_line_and_adds_nothing(knee_volume):
    scene, node, _ = _scene(knee_volume)
    count = scene.GetNumberOfNodes()
    with pytest.raises(MskaiError, match="No model 'no-such-acl-model'") as info:
        ACLClassifierLogic(scene).classifyVolume(node, model="no-such-acl-model")
    assert "Traceback" not in str(info.value) and scene.GetNumberOfNodes() == count


# --- the DICOM database: a study picked, and the batch --------------------------------------------------------

@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A real ctkDICOM.sql with three studies of one patient: sagittal + coronal series; coronal only; a sagittal
    series with a file gone (a gap in its slices)."""
    from pydicom.uid import generate_uid

    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    root = tmp_path_factory.mktemp("acl-db")
    studies = {"both": generate_uid(), "coronal": generate_uid(), "broken": generate_uid()}
    for n, (folder, plane, study) in enumerate((("both/sag", "sagittal", "both"), ("both/cor", "coronal", "both"),
                                                ("coronal/cor", "coronal", "coronal"),
                                                ("broken/sag", "sagittal", "broken"))):
        write_series(phantom(shape=(64, 56, 16), plane=plane, seed=n), root / "in" / folder, series_number=n + 1,
                     patient=("DOE^JANE", "PID-12345"), study_uid=studies[study], description=f"SYN {plane}")
    index_folder(root / "in", root / "db")
    files = sorted((root / "in" / "broken" / "sag").iterdir())
    files[len(files) // 2].unlink()
    return root, studies


def test_databases_studies_and_a_picked_sagittal_series_with_its_reason(database):
    root, studies = database
    rows = {r["studyUID"]: r for r in ACLClassifierLogic.databaseStudies(root / "db")}
    assert set(rows) == set(studies.values())
    assert rows[studies["both"]]["series"] == 2 and rows[studies["both"]]["modalities"] == "MR"
    scene, _, _ = _scene()
    logic = ACLClassifierLogic(scene)
    node, reason = logic.loadStudy(root / "db", studies["both"])
    assert logic.planeOf(node) == "sagittal" and node.GetImageData().GetDimensions() == (64, 56, 16)
    assert reason.startswith("picked series #1 (sagittal, 16 slices") and "the only sagittal series" in reason
    assert "SYN" not in reason and "DOE" not in reason  # no description quoted unless asked
    assert node.GetName() == "1: SYN sagittal"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study_item = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))
    assert hierarchy.GetItemUID(study_item, "DICOM") == studies["both"]
    again, _ = logic.loadStudy(root / "db", studies["both"])  # the same study item is reused
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(again)) == study_item
    uid, same = logic.chooseStudySeries(root / "db", studies["both"])  # what the widget hands Slicer's DICOM loader
    with DicomDatabase(root / "db") as db:
        sagittal = [s["SeriesInstanceUID"] for s in db.series(studies["both"]) if s["SeriesDescription"] == "SYN sagittal"]
    assert same == reason and [uid] == sagittal
    assert logic.chooseStudySeries(root / "db", studies["both"], showDescriptions=True)[1].count("SYN sagittal") == 1
    with pytest.raises(MskaiError, match="no sagittal series: found coronal"):
        logic.loadStudy(root / "db", studies["coronal"])
    with pytest.raises(MskaiError, match="not equally spaced"):
        logic.loadStudy(root / "db", studies["broken"])


def test_process_database_keeps_going_past_failures_and_resumes(database, acl_package, tmp_path):
    import csv

    root, studies = database
    out = tmp_path / "out"
    report = ACLClassifierLogic.processDatabase(root / "db", out, model=str(acl_package))
    assert len(report["done"]) == 1 and report["skipped"] == [] and len(report["failed"]) == 2
    errors = " | ".join(f["error"] for f in report["failed"])
    assert "no sagittal series: found coronal" in errors and "not equally spaced" in errors
    rows = {r["status"]: r for r in csv.DictReader((out / "batch.csv").open())}
    done = rows["done"]
    assert done["study"] == report["done"][0] and done["series"].startswith("series-")
    assert sum(float(done[f"p_{c}"]) for c in GRADES) == pytest.approx(1.0, abs=1e-3)
    assert done["predicted"] in GRADES and (out / done["study"] / "cam.nrrd").is_file()
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*.json")) + (out / "batch.csv").read_text()
    assert not any(s in written for s in ("DOE", "PID-12345", "SYN", *studies.values()))
    again = ACLClassifierLogic.processDatabase(root / "db", out, model=str(acl_package))
    assert again["skipped"] == report["done"] and again["done"] == [] and len(again["failed"]) == 2

    progress, finished = [], []  # the same batch in the background, as the module's Batch section runs it
    job = ACLClassifierLogic.startBatch(root / "db", out, resume=True, model=str(acl_package),
                                        onProgress=lambda stage, f: progress.append(f), onFinished=finished.append)
    deadline = time.time() + 120
    while not job.poll() and time.time() < deadline:
        time.sleep(0.1)
    assert finished == [again] and progress == pytest.approx([2 / 3, 1.0], abs=1e-3)  # the done study skipped


def test_the_lib_imports_with_slicer_core_alone_and_without_torch():
    code = ("import sys; sys.modules.update(qt=None, ctk=None); sys.path[:0] = ['.', 'ACLClassifier']; "
            "import ACLClassifierLib; import slicer; assert not hasattr(slicer, 'app'); "
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
