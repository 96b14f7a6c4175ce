"""MRML nodes <-> mskai volumes and files: the glue both modules use (imports with slicer-core alone).

Slicer's world frame is RAS; mskai volumes and files are LPS. Arrays here are indexed [i, j, k] like mskai's
``Volume``; VTK image data is stored k-major, so they are transposed on the way in and out.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from mskai import MskaiError
from mskai.text import clean_name
from mskai.volume import LPS_TO_RAS, Volume


def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _array_to_matrix(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def ijk_to_ras(node) -> np.ndarray:
    """A volume node's IJK -> RAS matrix (its own frame; a parent transform is not applied)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _matrix_to_array(matrix)


def volume_from_node(node) -> Volume:
    """The voxels and geometry of a scalar volume node as an mskai Volume (a copy)."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise MskaiError("Select a scalar volume as input")
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise MskaiError(f"Volume {node.GetName()!r} holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise MskaiError(f"Volume {node.GetName()!r} has {image.GetNumberOfScalarComponents()} components per voxel; "
                         "select a single-component (grey-scale) volume")
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array = flat.reshape(dims[::-1]).transpose(2, 1, 0).copy()
    return Volume(array, LPS_TO_RAS @ ijk_to_ras(node), label=node.GetName())


def set_node_voxels(node, volume: Volume):
    """Put a Volume's voxels and geometry into a volume node (labelmap or scalar)."""
    array = np.ascontiguousarray(np.asarray(volume.array).transpose(2, 1, 0))
    image = vtk.vtkImageData()
    image.SetDimensions(*volume.shape)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.reshape(-1), deep=True))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_array_to_matrix(volume.affine_ras))


def unique_name(scene, name: str) -> str:
    """A node name not yet in ``scene``, from free text (DICOM descriptions and names pass here, cleaned by
    ``mskai.text.clean_name``: a NUL would make MRML's unique naming loop forever)."""
    return scene.GenerateUniqueName(clean_name(name))


def add_node(scene, class_name: str, name: str):
    """A new node of ``class_name`` with a unique, clean name: every node either module makes is made here."""
    return scene.AddNewNodeByClass(class_name, unique_name(scene, name))


def add_volume_node(scene, volume: Volume, name: str, class_name="vtkMRMLScalarVolumeNode"):
    """A new volume node (with display node) holding ``volume``."""
    node = add_node(scene, class_name, name)
    set_node_voxels(node, volume)
    node.CreateDefaultDisplayNodes()
    return node


def node_array(node) -> np.ndarray:
    """A volume node's voxels as an [i, j, k] array (a view when possible)."""
    image = node.GetImageData()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return flat.reshape(image.GetDimensions()[::-1]).transpose(2, 1, 0)


def same_geometry(a, b, tolerance_mm=1e-3) -> bool:
    """True when two volume nodes share voxel grid and IJK -> RAS (voxel-aligned)."""
    return (a.GetImageData().GetDimensions() == b.GetImageData().GetDimensions()
            and np.allclose(ijk_to_ras(a), ijk_to_ras(b), atol=tolerance_mm))


def place_beside(scene, node, reference):
    """Put ``node`` in the subject hierarchy under the study (the parent) of ``reference``, and (when it can be
    transformed) under the same parent transform, so it overlays the input and is exported with its study (DICOM
    SEG needs that). Tables and charts go beside their volume too."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    reference_item = hierarchy.GetItemByDataNode(reference)
    parent = hierarchy.GetItemParent(reference_item) if reference_item else hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(node)  # the application's plugins make items for new nodes; slicer-core not
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)
    if node.IsA("vtkMRMLTransformableNode"):
        node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())


def voxel_slice_centre_ras(node, axis: int, index: int) -> np.ndarray:
    """World RAS of the centre of voxel slice ``index`` across IJK ``axis`` of a volume node (with the node's parent
    transform, when it has one)."""
    ijk = (np.array(node.GetImageData().GetDimensions(), dtype=float) - 1) / 2
    ijk[axis] = index
    ras = (ijk_to_ras(node) @ np.append(ijk, 1.0))[:3]
    parent = node.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(to_world)
        ras = np.array(to_world.TransformPoint(*ras))
    return ras


def jump_slices(scene, ras):
    """Centre every slice view of the scene on a RAS point (each view's slice then passes through it).
    A scene without slice views (a script, a test) is left alone."""
    for slice_node in _nodes(scene, "vtkMRMLSliceNode"):
        slice_node.JumpSliceByCentering(*(float(v) for v in ras))


def dicom_study_item(scene, study_uid: str, study_name: str, patient_name: str = ""):
    """The subject hierarchy item of a DICOM study (found by its UID, as Slicer's DICOM loading makes it; else made,
    under a patient item, so nodes placed there are exported with their study)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    uid_name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()
    item = hierarchy.GetItemByUID(uid_name, study_uid)
    if not item:
        patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), clean_name(patient_name, "Patient"))
        item = hierarchy.CreateStudyItem(patient, clean_name(study_name, "Study"))
        hierarchy.SetItemUID(item, uid_name, study_uid)
    return item


def new_table(scene, name: str, rows: list[dict]):
    """A table node with one column per key of ``rows`` (numbers as double columns, the rest as text)."""
    table = add_node(scene, "vtkMRMLTableNode", name)
    fill_table(table, rows)
    return table


def fill_table(table, rows: list[dict]):
    columns = list(rows[0]) if rows else []
    data = vtk.vtkTable()
    for column in columns:
        numeric = all(isinstance(r[column], (int, float)) and not isinstance(r[column], bool) or r[column] is None
                      for r in rows)
        array = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        array.SetName(column)
        for r in rows:
            value = r[column]
            if numeric:
                array.InsertNextValue(float("nan") if value is None else float(value))
            else:
                array.InsertNextValue("" if value is None else str(value))
        data.AddColumn(array)
    table.SetAndObserveTable(data)


def table_rows(table) -> list[dict]:
    """A table node's rows as dicts (tests, CSV)."""
    data = table.GetTable()
    names = [data.GetColumnName(c) for c in range(data.GetNumberOfColumns())]
    return [{name: data.GetValue(r, c).ToString() if data.GetColumn(c).IsA("vtkStringArray")
             else data.GetValue(r, c).ToDouble() for c, name in enumerate(names)}
            for r in range(data.GetNumberOfRows())]


def color_table(scene, name: str, rgb):
    """A 256-entry colour table ``name`` with colours ``rgb(t)`` for t in [0, 1], made once per scene, so an overlay
    looks the same inside and outside the Slicer application."""
    existing = scene.GetFirstNodeByName(name)
    if existing is not None:
        return existing
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    colors.SetTypeToUser()
    colors.SetNumberOfColors(256)
    for n in range(256):
        colors.SetColor(n, f"{n / 255:.2f}", *rgb(n / 255), 1.0)
    return colors


def confidence_colors(scene):
    """The colour table of confidence overlays: red (uncertain) through yellow to green (certain)."""
    return color_table(scene, "mskai confidence", lambda t: (1.0, 2 * t, 0.0) if t < 0.5 else (2 * (1 - t), 1.0, 0.0))


def show_overlay(scene, background, foreground, opacity=0.4):
    """Show ``foreground`` over ``background`` in every slice view of the scene."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID())
        composite.SetForegroundOpacity(opacity)


def _nodes(scene, class_name):
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def remove_node(scene, node):
    """Remove a node with its display and storage nodes."""
    helpers = []
    if node.IsA("vtkMRMLDisplayableNode"):
        helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)
