"""Output files read back by their real consumers: Slicer's MRML storage nodes (slicer-core), VTK, highdicom."""

import json

import numpy as np
import pydicom
import pytest

from mskai import MskaiError
from mskai.dicom import load_series, scan_folder
from mskai.segment.labels import BONES
from mskai.segment.metrics import evaluate
from mskai.segment.outputs import merge_binary_masks, read_segmentation, write_outputs
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom
from mskai.volume import Volume


def _ball(shape, centre, radius):
    g = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(g - np.asarray(centre), axis=-1) <= radius


def _bones_on(volume: Volume) -> Volume:
    labels = np.zeros(volume.shape, np.uint8)
    n = np.array(volume.shape)
    labels[_ball(volume.shape, n * [0.3, 0.5, 0.5], min(n[:2]) * 0.2)] = 2  # femur
    labels[_ball(volume.shape, n * [0.7, 0.5, 0.5], min(n[:2]) * 0.15)] = 5  # patella
    return Volume(labels, volume.affine_lps.copy(), meta=dict(volume.meta))


@pytest.fixture
def dicom_case(tmp_path):
    truth = phantom(shape=(48, 40, 16), spacing=(0.7, 0.6, 3.0), plane="sagittal", tilt_deg=8)
    write_series(truth, tmp_path / "dicom", patient=("DOE^JANE", "MRN-4711"), description="SAG PD")
    (series,) = scan_folder(tmp_path / "dicom").series
    volume = load_series(series)[0]
    return volume, _bones_on(volume), series


class _Model:
    id, version, metadata = "test-bones", "1.0.0", {"demo": True}


def test_all_outputs_and_privacy(tmp_path, dicom_case):
    volume, labels, series = dicom_case
    out = write_outputs(labels, tmp_path / "out", model=_Model(), timings={"infer": 1.0}, settings={},
                        formats=("nii.gz", "nrrd", "seg.nrrd", "stl", "ply", "obj", "report"))
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert names == ["labels.nii.gz", "labels.nrrd", "meshes/femur.obj", "meshes/femur.ply", "meshes/femur.stl",
                     "meshes/patella.obj", "meshes/patella.ply", "meshes/patella.stl", "report.csv", "report.json",
                     "segmentation.seg.nrrd"]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in ("DOE", "JANE", "MRN-4711", series.uid, series.study_uid, "SAG PD"):
                assert secret.encode() not in data, f"{secret} in {path.name}"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    femur = next(b for b in report["bones"] if b["name"] == "femur")
    voxel_ml = 0.7 * 0.6 * 3.0 / 1000
    assert femur["volume_ml"] == pytest.approx((labels.array == 2).sum() * voxel_ml, abs=1e-3)
    assert femur["surface_area_cm2"] > 0 and report["model"] == {"id": "test-bones", "version": "1.0.0", "demo": True}
    assert "not for clinical use" in report["notice"]
    for ext in ("nii.gz", "nrrd", "seg.nrrd"):
        back = read_segmentation(tmp_path / "out" / ("segmentation.seg.nrrd" if ext == "seg.nrrd" else f"labels.{ext}"))
        np.testing.assert_array_equal(back.array, labels.array)
        np.testing.assert_allclose(back.affine_lps, labels.affine_lps, atol=1e-5)
    assert out["files"]["seg_nrrd"].endswith("segmentation.seg.nrrd")


def test_slicer_reads_the_seg_nrrd_with_names_colours_and_terminology(tmp_path, dicom_case):
    import slicer

    volume, labels, _ = dicom_case
    write_outputs(labels, tmp_path, model=_Model(), timings={}, settings={}, formats=("seg.nrrd",))
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(tmp_path / "segmentation.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == [b.name for b in BONES]
    femur = segmentation.GetSegment("femur")
    assert femur.GetColor() == pytest.approx(BONES[1].color, abs=1e-3)
    assert "SCT^71341001^Femur" in femur.GetTerminology()
    # the voxels Slicer sees for "femur" are ours
    from vtk.util import numpy_support

    layer = femur.GetRepresentation("Binary labelmap")
    voxels = numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars())
    assert int((voxels == femur.GetLabelValue()).sum()) == int((labels.array == 2).sum())


def test_meshes_are_in_lps_and_slicer_loads_them_in_ras(tmp_path, dicom_case):
    import slicer
    import vtk

    volume, labels, _ = dicom_case
    write_outputs(labels, tmp_path, model=_Model(), timings={}, settings={}, formats=("stl",))
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(tmp_path / "meshes" / "femur.stl"))
    reader.Update()
    bounds = np.array(reader.GetOutput().GetBounds()).reshape(3, 2)
    points = labels.ijk_to_lps(np.argwhere(labels.array == 2))
    half_voxel = 0.5 * labels.spacing.max() + 0.1  # the surface runs between inside and outside voxel centres
    np.testing.assert_allclose(bounds[:, 0], points.min(0), atol=half_voxel)
    np.testing.assert_allclose(bounds[:, 1], points.max(0), atol=half_voxel)

    scene = slicer.vtkMRMLScene()
    model = scene.AddNewNodeByClass("vtkMRMLModelNode")
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(str(tmp_path / "meshes" / "femur.stl"))
    assert storage.ReadData(model)
    ras = np.array(model.GetPolyData().GetBounds()).reshape(3, 2)
    np.testing.assert_allclose(ras[0], -bounds[0][::-1], atol=1e-3)  # L -> R
    np.testing.assert_allclose(ras[2], bounds[2], atol=1e-3)


def test_dicom_seg_references_the_source_series(tmp_path, dicom_case):
    volume, labels, series = dicom_case
    write_outputs(labels, tmp_path, model=_Model(), timings={}, settings={}, formats=(), dicom_seg=True)
    seg = pydicom.dcmread(tmp_path / "segmentation.dcm")
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert seg.StudyInstanceUID == series.study_uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["femur", "patella"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "71341001"
    back = read_segmentation(tmp_path / "segmentation.dcm")
    rows = evaluate(back, labels)
    assert all(r["dice"] == 1.0 for r in rows if r["name"] in ("femur", "patella"))


def test_evaluate_numbers_on_known_shapes():
    shape = (60, 60, 60)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    ref = np.zeros(shape, np.uint8)
    ref[_ball(shape, (30, 30, 30), 12)] = 1
    pred = np.zeros(shape, np.uint8)
    pred[_ball(shape, (34, 30, 30), 12)] = 1  # shifted 4 voxels = 2 mm along i
    rows = {r["name"]: r for r in evaluate(Volume(pred, affine), Volume(ref, affine))}
    tibia = rows["tibia"]
    inter = np.logical_and(pred == 1, ref == 1).sum()
    assert tibia["dice"] == pytest.approx(2 * inter / (2 * (ref == 1).sum()), abs=1e-4)
    assert tibia["volume_error_ml"] == pytest.approx(0.0, abs=1e-6)
    assert 1.5 <= tibia["hd95_mm"] <= 2.0 + 1e-6 and 0 < tibia["asd_mm"] < 2.0
    assert np.isnan(rows["femur"]["dice"])
    rows = {r["name"]: r for r in evaluate(Volume(np.zeros(shape, np.uint8), affine), Volume(ref, affine))}
    assert rows["tibia"]["dice"] == 0.0 and rows["tibia"]["hd95_mm"] == float("inf")


def test_evaluate_measures_each_side_on_its_own_grid_and_flags_or_refuses_other_fields_of_view():
    shape = (40, 40, 40)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    ref = np.zeros(shape, np.uint8)
    ref[_ball(shape, (20, 20, 20), 8)] = 2
    truth_ml = (ref == 2).sum() / 1000.0
    # the same ball on a grid rotated 90 degrees about S and with 2 mm voxels: same anatomy, other grid
    rotated = np.eye(4)
    rotated[:3, :3] = np.array([[0, -2.0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    rotated[:3, 3] = [59, -20, -20]
    coarse = np.zeros((30, 30, 30), np.uint8)
    ijk = np.stack(np.meshgrid(*[np.arange(30)] * 3, indexing="ij"), -1).reshape(-1, 3)
    lps = ijk @ rotated[:3, :3].T + rotated[:3, 3]
    coarse.reshape(-1)[np.linalg.norm(lps - 20, axis=1) <= 8] = 2
    row = {r["name"]: r for r in evaluate(Volume(ref, affine), Volume(coarse, rotated))}["femur"]
    assert row["dice"] > 0.85 and row["reference_inside"] == 1.0 and row["prediction_inside"] == 1.0
    assert row["reference_volume_ml"] == pytest.approx((coarse == 2).sum() * 8 / 1000.0)  # its own voxels
    assert row["volume_ml"] == pytest.approx(truth_ml)
    # half of the reference lies beyond the segmentation's field of view: flagged, volume still whole
    shifted = affine.copy()
    shifted[0, 3] = 20
    row = {r["name"]: r for r in evaluate(Volume(ref, affine), Volume(ref, shifted))}["femur"]
    assert 0.4 < row["reference_inside"] < 0.6 and row["reference_volume_ml"] == pytest.approx(truth_ml)
    # no overlap at all: refused, not "Dice 0"
    far = affine.copy()
    far[:3, 3] = [500, 0, 0]
    with pytest.raises(MskaiError, match="do not overlap"):
        evaluate(Volume(ref, affine), Volume(ref, far))


def test_merge_binary_masks_overlaps_become_background():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b[1:3] = True
    merged = merge_binary_masks({1: a, 2: b})
    assert np.all(merged[0] == 1) and np.all(merged[1] == 0) and np.all(merged[2] == 2) and np.all(merged[3] == 0)


@pytest.mark.parametrize("handedness", [1, -1])
def test_mesh_normals_point_outward_for_either_grid_handedness(handedness):
    from vtk.util import numpy_support

    from mskai.segment.meshes import surface

    labels = _ball((40, 40, 40), (20, 20, 20), 12).astype(np.uint8)
    mesh = surface(labels, 1, np.diag([0.5, 0.6, 2.0 * handedness, 1.0]))
    points = numpy_support.vtk_to_numpy(mesh.GetPoints().GetData())
    normals = numpy_support.vtk_to_numpy(mesh.GetPointData().GetNormals())
    outward = np.sum((points - points.mean(0)) * normals, axis=1)
    assert (outward > 0).mean() > 0.99
