"""Bone surfaces with VTK: discrete flying edges, windowed-sinc smoothing, patient (LPS) coordinates."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from mskai import MskaiError
from mskai.outputs import atomic_output, suffix_of

MESH_FORMATS = (".stl", ".ply", ".obj", ".vtk")


def _image_data(mask: np.ndarray):
    import vtk
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(*mask.shape)
    flat = np.ascontiguousarray(mask.astype(np.uint8).ravel(order="F"))
    scalars = numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    image.GetPointData().SetScalars(scalars)
    return image


def surface(labels: np.ndarray, value: int, affine_lps: np.ndarray, smoothing_iterations: int = 20,
            passband: float = 0.05):
    """Closed triangle surface (vtkPolyData, LPS mm) of one label, or None when the label is absent."""
    import vtk

    boxes = ndimage.find_objects((labels == value).astype(np.uint8))
    if not boxes or boxes[0] is None:
        return None
    box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(boxes[0], labels.shape))
    # one voxel of padding on every side keeps the surface closed where the bone touches the border
    mask = np.pad(labels[box] == value, 1)
    offset = np.array([s.start for s in box]) - 1

    flying = vtk.vtkDiscreteFlyingEdges3D()
    flying.SetInputData(_image_data(mask))
    flying.SetValue(0, 1)
    flying.ComputeNormalsOff()
    smoother = vtk.vtkWindowedSincPolyDataFilter()
    smoother.SetInputConnection(flying.GetOutputPort())
    smoother.SetNumberOfIterations(smoothing_iterations)
    smoother.SetPassBand(passband)
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()

    matrix = np.asarray(affine_lps, dtype=float).copy()
    matrix[:3, 3] = affine_lps[:3, :3] @ offset + affine_lps[:3, 3]
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix.ravel().tolist())
    to_patient = vtk.vtkTransformPolyDataFilter()
    to_patient.SetInputConnection(smoother.GetOutputPort())
    to_patient.SetTransform(transform)
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(to_patient.GetOutputPort())
    normals.ConsistencyOn()
    # flying edges orients triangles outward in voxel space; a left-handed voxel grid mirrors them
    normals.SetFlipNormals(bool(np.linalg.det(affine_lps[:3, :3]) < 0))
    normals.SplittingOff()
    normals.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    return out


def surfaces(labels: np.ndarray, values, affine_lps: np.ndarray, threads: int | None = None) -> dict:
    """{value: ``surface`` of that label (None when absent)}, the labels in parallel threads (VTK and numpy release
    the GIL: 2 threads made the knee's four bones 1.9x faster here, the same triangles); ``threads`` by default
    torch's thread count where torch is loaded, else the cores."""
    from concurrent.futures import ThreadPoolExecutor

    values = list(values)
    torch = sys.modules.get("torch")  # the engine's thread setting (--threads, one per batch worker) when it is set
    threads = threads or (torch.get_num_threads() if torch else os.cpu_count()) or 1
    threads = max(1, min(len(values), threads))
    with ThreadPoolExecutor(threads) as pool:
        return dict(zip(values, pool.map(lambda value: surface(labels, value, affine_lps), values)))


def surface_area_mm2(polydata) -> float:
    import vtk

    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(polydata)
    props = vtk.vtkMassProperties()
    props.SetInputConnection(triangles.GetOutputPort())
    props.Update()
    return float(props.GetSurfaceArea())


def write_mesh(polydata, path) -> Path:
    """STL / PLY / OBJ / VTK in LPS millimetres, marked ``SPACE=LPS`` where the format has a header (as Slicer does)."""
    import vtk

    path = Path(path)
    kind = suffix_of(path)
    if kind not in MESH_FORMATS:
        raise MskaiError(f"Cannot write {path.name}: mesh formats are {', '.join(MESH_FORMATS)}")
    with atomic_output(path) as tmp:
        if kind == ".stl":
            writer = vtk.vtkSTLWriter()
            writer.SetFileTypeToBinary()
            writer.SetHeader("SPACE=LPS")
        elif kind == ".ply":
            writer = vtk.vtkPLYWriter()
            writer.SetFileTypeToBinary()
            writer.AddComment("SPACE=LPS")
        elif kind == ".obj":
            writer = vtk.vtkOBJWriter()
        else:
            writer = vtk.vtkPolyDataWriter()
            writer.SetHeader("SPACE=LPS")
        writer.SetFileName(str(tmp))
        writer.SetInputData(polydata)
        if not writer.Write():
            raise MskaiError(f"VTK could not write {path.name}")
    return path
