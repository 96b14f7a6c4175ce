"""AutoSegMSKLogic on a real MRML scene (slicer-core): engine process in, segmentation node and tables out.

Nothing here is a test double: the scene, segmentations logic, storage nodes and subject hierarchy are Slicer's
own (slicer-core), the engine runs as a real `python -m mskai` process, the database is a real ctkDICOM.sql.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import REPO, make_package, run_mskai

sys.path[:0] = [str(REPO), str(REPO / "AutoSegMSK")]  # SlicerMSKCommon, AutoSegMSKLib

import slicer  # noqa: E402  (the slicer-core wheel: a test dependency, installed by the README command)

from AutoSegMSKLib import AutoSegMSKLogic  # noqa: E402
from SlicerMSKCommon.nodes import add_volume_node, ijk_to_ras, node_array, same_geometry, table_rows  # noqa: E402
from SlicerMSKCommon.segmentations import label_volume, segment_ids  # noqa: E402
from mskai.dicom import DicomDatabase, index_folder, plan_volumes, read_volume, scan_folder  # noqa: E402
from mskai.volume_files import read_volume_file, write_volume  # noqa: E402
from mskai.models.registry import resolve_model  # noqa: E402
from mskai.models.tasks import SEGMENTATION  # noqa: E402
from mskai.segment.labels import labels_from_table, terminology_tag  # noqa: E402

MODEL_SETTINGS = {"device": "cpu"}
BONES = labels_from_table(resolve_model(None, SEGMENTATION).metadata["labels"])  # the bundled model's own table


@pytest.fixture(scope="module")
def knee_volume(knee_dicom):
    """Echo 1 of the real knee series: an oblique-sagittal acquisition."""
    (series,) = scan_folder(knee_dicom).series
    return read_volume(plan_volumes(series)[0])


def _scene_with(volume, name="knee T2"):
    """A scene holding ``volume`` under patient > study in the subject hierarchy, as Slicer's DICOM loading does."""
    scene = slicer.vtkMRMLScene()
    node = add_volume_node(scene, volume, name)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(patient, "study")
    hierarchy.CreateItem(study, node)  # Slicer's DICOM plugin puts the loaded series under its study
    return scene, node, study


def _node_count(scene):
    return scene.GetNumberOfNodes()


@pytest.fixture(scope="module")
def knee_result(knee_volume, tmp_path_factory):
    """The bundled demo model on the real oblique knee, through the logic, with a confidence map."""
    scene, node, study = _scene_with(knee_volume)
    logic = AutoSegMSKLogic(scene)
    segmentation = logic.segmentVolume(node, confidence=True, **MODEL_SETTINGS)
    return scene, node, study, logic, segmentation, logic.lastResult


def test_segment_volume_names_colours_terminology_and_placement(knee_result):
    scene, node, study, _, segmentation, result = knee_result
    assert segmentation.IsA("vtkMRMLSegmentationNode") and segmentation.GetName() == "knee T2 bones"
    assert segmentation.GetAttribute("AutoSegMSK.demo") == "true"
    seg = segmentation.GetSegmentation()
    for segment_id, label in zip(segment_ids(segmentation), BONES):
        segment = seg.GetSegment(segment_id)
        assert segment.GetName() == label.name
        assert np.allclose(segment.GetColor(), label.color, atol=1e-3)
        assert segment.GetTerminology() == terminology_tag(label)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(segmentation)) == study
    reference = segmentation.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert reference is node
    # closed surfaces for the bones the model found on this knee
    import vtk

    assert seg.ContainsRepresentation("Closed surface")
    for name in ("femur", "tibia"):
        polydata = vtk.vtkPolyData()
        segmentation.GetClosedSurfaceRepresentation(seg.GetSegmentIdBySegmentName(name), polydata)
        assert polydata.GetNumberOfPoints() > 500, name
    # nothing left pointing at the engine's temporary files
    assert segmentation.GetStorageNode() is None


def test_segmentation_is_voxel_for_voxel_the_engine_output(knee_result, knee_volume, tmp_path):
    scene, node, _, _, segmentation, _ = knee_result
    write_volume(knee_volume, tmp_path / "knee.nrrd")
    run_mskai("segment", tmp_path / "knee.nrrd", "-o", tmp_path / "out", "--formats", "nrrd", "--device", "cpu",
              "--progress", "none")
    engine = read_volume_file(tmp_path / "out" / "labels.nrrd")
    in_scene = label_volume(scene, segmentation, node)
    assert np.allclose(in_scene.affine_lps, engine.affine_lps, atol=1e-4)
    assert np.allclose(in_scene.affine_lps, knee_volume.affine_lps, atol=1e-4)  # oblique, and kept oblique
    assert abs(knee_volume.directions_lps[0, 0]) < 0.999
    assert np.array_equal(in_scene.array, engine.array)
    assert np.count_nonzero(engine.array == 2) > 1000  # the femur is there: not two empty maps


def test_confidence_map_table_and_least_certain_bones(knee_result):
    scene, node, _, logic, segmentation, result = knee_result
    confidence = result["confidence"]
    assert confidence is not None and same_geometry(confidence, node)
    values = node_array(confidence).astype(float)
    values = values / 100 if values.max() > 1 else values
    assert 0.0 <= values.min() and values.max() <= 1.0 and values.std() > 0
    rows = {r["segment"]: r for r in table_rows(result["table"])}
    assert set(rows) == {label.name for label in BONES}
    assert rows["femur"]["volume_ml"] > 10 and rows["femur"]["surface_area_cm2"] > 10
    labels = label_volume(scene, segmentation, node).array
    assert rows["femur"]["mean_confidence"] == pytest.approx(values[labels == 2].mean(), abs=2e-3)
    present = [r for r in rows.values() if r["volume_ml"] > 0]
    assert result["leastCertain"] == [r["segment"] for r in sorted(present, key=lambda r: r["mean_confidence"])]
    assert logic.confidenceNode(segmentation) is confidence  # linked, so any later session finds them again
    assert logic.leastCertainBones(segmentation) == result["leastCertain"]
    display = confidence.GetDisplayNode()  # the overlay shows only the uncertain voxels
    assert display.GetApplyThreshold() and 0 < display.GetLowerThreshold() < display.GetUpperThreshold() < 100
    assert display.GetColorNode().GetName() == "mskai confidence"
    logic.showConfidence(node, confidence)  # on a scene without slice views: no error, nothing to set
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    logic.showConfidence(node, confidence, opacity=0.5)
    assert composite.GetForegroundVolumeID() == confidence.GetID() and composite.GetForegroundOpacity() == 0.5


def test_rerun_makes_a_new_node_and_leaves_an_edited_result_alone(knee_volume, tmp_path):
    package = make_package(tmp_path / "model", constant_class=2)  # femur everywhere: fast and predictable
    scene, node, _ = _scene_with(knee_volume)
    logic = AutoSegMSKLogic(scene)
    first = logic.segmentVolume(node, model=str(package), **MODEL_SETTINGS)
    femur = first.GetSegmentation().GetSegmentIdBySegmentName("femur")
    edited = slicer.vtkOrientedImageData()
    first.GetBinaryLabelmapRepresentation(femur, edited)
    before = first.GetSegmentation().GetSegment(femur).GetRepresentation("Binary labelmap").GetMTime()
    first.SetName("knee T2 bones (corrected)")
    second = logic.segmentVolume(node, model=str(package), **MODEL_SETTINGS)
    assert second is not first and second.GetName() != first.GetName()
    assert first.GetSegmentation().GetSegment(femur).GetRepresentation("Binary labelmap").GetMTime() == before
    assert first.GetName() == "knee T2 bones (corrected)"


def test_cancel_leaves_the_scene_as_it_was(knee_volume, tmp_path):
    import time

    import psutil

    scene, node, _ = _scene_with(knee_volume)
    logic = AutoSegMSKLogic(scene)
    count, stages, finished = _node_count(scene), [], []
    job = logic.startSegmentation(node, onProgress=lambda s, f: stages.append(s), onFinished=finished.append,
                                  **MODEL_SETTINGS)
    engine_pid = job._engine._proc.pid
    deadline = time.time() + 120
    while "infer" not in stages and time.time() < deadline:  # cancel in the middle of the inference
        assert not job.poll(), job.result
        time.sleep(0.05)
    job.cancel()
    assert finished == [{"cancelled": True}] and job.poll() is True
    assert _node_count(scene) == count
    assert not psutil.pid_exists(engine_pid) or psutil.Process(engine_pid).status() == psutil.STATUS_ZOMBIE
    assert not job._work.exists()


def test_a_failing_engine_run_reports_its_error_and_adds_nothing(knee_volume):
    scene, node, _ = _scene_with(knee_volume)
    count = _node_count(scene)
    with pytest.raises(Exception, match="No model 'no-such-model'") as info:
        AutoSegMSKLogic(scene).segmentVolume(node, model="no-such-model", **MODEL_SETTINGS)
    assert "Traceback" not in str(info.value)
    assert _node_count(scene) == count


def test_exports_seg_nrrd_models_statistics_and_comparison(knee_result, tmp_path):
    import slicerio
    import vtk

    scene, node, _, logic, segmentation, result = knee_result
    path = logic.exportSegNrrd(segmentation, tmp_path / "bones.seg.nrrd")
    read = slicerio.read_segmentation(path)
    by_name = {s["name"]: s for s in read["segments"]}
    assert by_name["femur"]["terminology"]["type"][1] == "71341001"
    assert np.count_nonzero(slicerio.extract_segments(read, [("femur", 1)])["voxels"]) == \
        np.count_nonzero(label_volume(scene, segmentation, node).array == 2)

    files = logic.exportModels(segmentation, tmp_path / "models", ["femur", "tibia"], ("stl", "obj", "ply"))
    assert sorted(Path(f).name for f in files) == sorted(f"{b}.{e}" for b in ("femur", "tibia")
                                                         for e in ("stl", "obj", "ply"))
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(tmp_path / "models" / "femur.stl"))
    reader.Update()
    low, high = np.array(reader.GetOutput().GetBounds()).reshape(3, 2).T
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in node_array(node).shape], indexing="ij")).reshape(3, -1).T
    lps = (np.diag([-1, -1, 1, 1]) @ ijk_to_ras(node) @ np.c_[corners, np.ones(8)].T)[:3].T
    assert np.all(low >= lps.min(0) - 5) and np.all(high <= lps.max(0) + 5)  # the mesh is in LPS, in the FOV
    with pytest.raises(Exception, match="No segment named"):
        logic.exportModels(segmentation, tmp_path / "more", ["tibia; rm -rf"], ("stl",))

    table = logic.statisticsTable(segmentation, result["confidence"], csvPath=tmp_path / "stats.csv")
    assert (tmp_path / "stats.csv").read_text().splitlines()[0].startswith("segment,snomed_code,volume_ml")
    assert len(table_rows(table)) == len(BONES)

    same = {r["bone"]: r for r in table_rows(logic.compare(segmentation, segmentation))}
    assert same["femur"]["dice"] == pytest.approx(1.0) and same["femur"]["volume_error_ml"] == pytest.approx(0.0)


def test_dicom_seg_goes_into_the_database_and_references_the_series(knee_dicom, knee_volume, tmp_path):
    index_folder(knee_dicom, tmp_path / "db")
    package = make_package(tmp_path / "model", constant_class=2)
    scene, node, _ = _scene_with(knee_volume)
    files = knee_volume.meta["frame_files"]
    node.SetAttribute("DICOM.instanceUIDs", " ".join(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
                                                      for f in files))  # what Slicer's DICOM loading records
    logic = AutoSegMSKLogic(scene)
    segmentation = logic.segmentVolume(node, model=str(package), **MODEL_SETTINGS)
    path = logic.exportDicomSeg(segmentation, node, tmp_path / "db")
    seg = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == \
        pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    assert "DOE" not in Path(path).as_posix() and Path(path).is_relative_to(tmp_path / "db")
    with DicomDatabase(tmp_path / "db") as db:
        assert any(s["Modality"] == "SEG" for s in db.all_series())
    from mskai.segment.outputs import read_segmentation

    back = read_segmentation(path)
    assert np.count_nonzero(back.array == 2) == np.count_nonzero(label_volume(scene, segmentation, node).array == 2)
    plain = add_volume_node(scene, knee_volume, "no DICOM")
    with pytest.raises(Exception, match="not loaded from the DICOM database"):
        logic.exportDicomSeg(segmentation, plain, tmp_path / "db")


def _database_with_a_broken_series(tmp_path):
    """A real ctkDICOM.sql with three synthetic MR series of one patient; a file of the third is gone."""
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    for n, plane in enumerate(("sagittal", "coronal", "axial")):
        write_series(phantom(shape=(48, 48, 16), plane=plane), tmp_path / "in" / plane, series_number=n + 1,
                     patient=("DOE^JANE", "PID-12345"), description=f"SYN {plane}")
    index_folder(tmp_path / "in", tmp_path / "db")
    broken = sorted((tmp_path / "in" / "axial").iterdir())
    broken[len(broken) // 2].unlink()  # a file listed in the database is gone: a gap in the slices
    return make_package(tmp_path / "model", constant_class=1)


def test_process_database_two_done_one_failed_then_all_skipped(tmp_path):
    package = _database_with_a_broken_series(tmp_path)
    report = AutoSegMSKLogic.processDatabase(tmp_path / "db", tmp_path / "out", model=str(package), device="cpu")
    assert len(report["done"]) == 2 and report["skipped"] == [] and len(report["failed"]) == 1
    assert report["failed"][0]["error"] and "Traceback" not in report["failed"][0]["error"]
    written = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert written["done"] == report["done"] and (tmp_path / "out" / "batch.csv").is_file()
    for key in report["done"]:
        assert (tmp_path / "out" / key / "segmentation.seg.nrrd").is_file()
    text = "".join(p.read_text(errors="ignore") for p in (tmp_path / "out").rglob("*.json")) + \
        "".join(p.name for p in (tmp_path / "out").rglob("*"))
    assert "DOE" not in text and "PID-12345" not in text and "SYN" not in text
    again = AutoSegMSKLogic.processDatabase(tmp_path / "db", tmp_path / "out", model=str(package), device="cpu")
    assert sorted(again["skipped"]) == sorted(report["done"]) and again["done"] == []
    assert [f["series"] for f in again["failed"]] == [f["series"] for f in report["failed"]]


def test_database_series_list_mr_series_with_plane_size_and_problems(tmp_path):
    _database_with_a_broken_series(tmp_path)
    rows = {r["plane"]: r for r in AutoSegMSKLogic.databaseSeries(tmp_path / "db")}
    assert set(rows) == {"sagittal", "coronal", "axial"}
    assert rows["sagittal"]["size"] == "48x48x16" and rows["sagittal"]["problem"] == ""
    assert rows["axial"]["size"] == "48x48x15" and "not equally spaced" in rows["axial"]["problem"]
    assert AutoSegMSKLogic.databaseSeries(tmp_path / "db", modality="CT") == []


def test_batch_in_the_background_reports_progress_and_its_summary(tmp_path):
    import time

    package = _database_with_a_broken_series(tmp_path)
    progress, finished = [], []
    job = AutoSegMSKLogic.startBatch(tmp_path / "db", tmp_path / "out", model=str(package), device="cpu",
                                     onProgress=lambda stage, f: progress.append(f), onFinished=finished.append)
    deadline = time.time() + 300
    while not job.poll() and time.time() < deadline:
        time.sleep(0.1)
    (summary,) = finished
    assert len(summary["done"]) == 2 and len(summary["failed"]) == 1, summary
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-3)
    assert not list((tmp_path / "out").glob(".*staging*"))


def test_the_lib_imports_with_slicer_core_alone_and_without_torch():
    code = ("import sys; sys.modules.update(qt=None, ctk=None); sys.path[:0] = ['.', 'AutoSegMSK']; "
            "import AutoSegMSKLib; import slicer; assert not hasattr(slicer, 'app'); "
            "assert 'torch' not in sys.modules and 'monai' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_segments_whose_names_collide_as_files_get_one_surface_file_each(tmp_path):
    from SlicerMSKCommon.nodes import add_node
    from AutoSegMSKLib.segmentations import export_models
    from SlicerMSKCommon.segmentations import segmentations_logic
    from mskai.volume import Volume

    scene = slicer.vtkMRMLScene()
    segmentations_logic(scene)
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[1:5, 5:25, 5:25], labels[8:14, 5:20, 5:25], labels[17:22, 3:27, 8:22], labels[24:29, 9:20, 9:20] = 1, 2, 3, 4
    labelmap = add_volume_node(scene, Volume(labels, np.eye(4)), "labels", "vtkMRMLLabelMapVolumeNode")
    node = add_node(scene, "vtkMRMLSegmentationNode", "bones")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node)
    for segment_id, name in zip(segment_ids(node), ("a", "a_3", "a", "A")):  # "A" is "a" on macOS and Windows
        node.GetSegmentation().GetSegment(segment_id).SetName(name)
    files = export_models(node, tmp_path / "models", None, ("stl", "ply"))
    assert sorted(Path(f).name for f in files) == sorted(f"{stem}.{ext}" for stem in ("a", "a_3", "a_2", "A_4")
                                                         for ext in ("stl", "ply"))
    assert len({Path(f).stat().st_size for f in files if f.endswith(".stl")}) == 4  # four different surfaces


NUL_SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {acl!r}]
import slicer
from ACLClassifierLib import ACLClassifierLogic
from SlicerMSKCommon.nodes import add_node
scene = slicer.vtkMRMLScene()
add_node(scene, "vtkMRMLScalarVolumeNode", "1: KNEE")  # what MRML keeps of "1: KNEE\\0 PD"
node, _ = ACLClassifierLogic(scene).loadStudy({db!r}, {study!r})
print("NAME", repr(node.GetName()))
"""


def test_a_nul_in_a_dicom_description_never_hangs_node_naming(tmp_path):
    from pydicom.uid import generate_uid

    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    study = generate_uid()
    write_series(phantom(shape=(48, 48, 16)), tmp_path / "in", series_number=1, study_uid=study,
                 description="KNEE\0 PD\x1b[2J")
    index_folder(tmp_path / "in", tmp_path / "db")
    script = NUL_SCRIPT.format(repo=str(REPO), acl=str(REPO / "ACLClassifier"),
                               db=str(tmp_path / "db"), study=study)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NAME '1: KNEE PD [2J'" in result.stdout  # control characters gone, the rest kept


def test_a_corrected_segmentation_is_saved_as_a_case_on_its_source_grid(knee_result, knee_dicom, tmp_path):
    """The first draft is kept beside the result; a correction (a bone deleted) is counted, the case's geometry is the
    volume node's, and no identifier of the real series reaches the library."""
    from AutoSegMSKLib.cases import DRAFT_REFERENCE, MODEL_ATTRIBUTE
    from mskai.cases import CaseLibrary
    from SlicerMSKCommon.nodes import volume_from_node

    scene, node, _, logic, segmentation, _ = knee_result
    draft = segmentation.GetNodeReference(DRAFT_REFERENCE)
    assert draft is not None and draft.GetHideFromEditors() and same_geometry(draft, node)
    drawn = label_volume(scene, segmentation, node, BONES).array
    assert np.array_equal(node_array(draft), drawn)
    corrected = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "knee T2 bones corrected")
    corrected.GetSegmentation().DeepCopy(segmentation.GetSegmentation())
    corrected.SetReferenceImageGeometryParameterFromVolumeNode(node)
    corrected.SetAttribute(MODEL_ATTRIBUTE, segmentation.GetAttribute(MODEL_ATTRIBUTE))
    corrected.SetNodeReferenceID(DRAFT_REFERENCE, draft.GetID())
    present = sorted({int(v) for v in np.unique(drawn) if v})
    removed = next(b for b in BONES if b.value == present[-1])
    corrected.GetSegmentation().RemoveSegment(corrected.GetSegmentation().GetSegmentIdBySegmentName(removed.name))

    record = logic.saveTrainingCase(corrected, node, libraryDir=tmp_path / "lib")
    assert record["changed_voxels"][str(removed.value)] == np.count_nonzero(drawn == removed.value)
    assert sum(record["changed_voxels"].values()) == np.count_nonzero(drawn == removed.value)
    assert record["model"] == segmentation.GetAttribute(MODEL_ATTRIBUTE)
    (case,), problems = CaseLibrary(tmp_path / "lib").cases()
    assert not problems and case.id == record["case"]
    source = volume_from_node(node)
    assert np.array_equal(case.image().array, source.array) and np.allclose(case.image().affine_lps, source.affine_lps)
    expected = np.where(drawn == removed.value, 0, drawn)
    assert np.array_equal(case.labels().array, expected)
    again = logic.saveTrainingCase(corrected, node, libraryDir=tmp_path / "lib")  # the same series: replaced
    assert again["case"] == record["case"] and len(logic.trainingCases(libraryDir=tmp_path / "lib")[0]) == 1
    ds = pydicom.dcmread(sorted(knee_dicom.iterdir())[0], stop_before_pixels=True)
    identifiers = [str(ds.get(k)) for k in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                            "StudyDate") if str(ds.get(k, "")) not in ("", "None")]
    for path in (tmp_path / "lib").rglob("*"):
        for identifier in [*identifiers, node.GetName()]:
            assert identifier not in str(path.relative_to(tmp_path))
            assert not path.is_file() or identifier.encode() not in path.read_bytes()


def test_improve_from_the_module_cancels_cleanly_then_installs_a_selectable_local_model(model_dirs, tmp_path):
    import time

    from mskai.cases import CaseLibrary
    from mskai.models.registry import user_dir
    from mskai.synth.synthseg import LowerLimbPhantom, synthetic_case

    make_package(model_dirs / "bundled" / "test-bones", seed=1)
    library, rng = CaseLibrary(tmp_path / "lib"), np.random.default_rng(3)
    for _ in range(3):
        phantom = LowerLimbPhantom(rng)
        image, labels = synthetic_case(phantom, rng, (2.0, 2.0, 2.5), extent_mm=(64, 64, 64),
                                       centre=phantom.knee + [0, 0, 20])
        library.add(image, labels, [b.value for b in BONES])
    stages = []
    job = AutoSegMSKLogic.startImprove("test-bones", 5, tmp_path / "lib", onProgress=lambda s, f: stages.append(s))
    deadline = time.monotonic() + 120
    while "train" not in stages and not job.poll() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    job.cancel()
    assert job.result == {"cancelled": True} and time.monotonic() - started < 3.0
    assert not user_dir().exists() or list(user_dir().iterdir()) == []
    result = AutoSegMSKLogic.startImprove("test-bones", 0.05, tmp_path / "lib").wait()
    assert result["model"] == "test-bones@1.0.0+local.1", result
    listed = {f"{m['id']}@{m['version']}": m for m in AutoSegMSKLogic.models()}
    assert "local: 1.0.0 -> this" in listed["test-bones@1.0.0+local.1"]["title"]
    assert listed["test-bones@1.0.0+local.1"]["default"] == result["accepted"]
    assert AutoSegMSKLogic.useShippedModel("test-bones") == "1.0.0"
    defaults = [f"{m['id']}@{m['version']}" for m in AutoSegMSKLogic.models() if m["default"]]
    assert defaults == ["test-bones@1.0.0"]
