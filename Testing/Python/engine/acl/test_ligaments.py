"""The knee ligament network's slice geometry: every sagittal slice resampled in its own plane, rows inferior and
columns posterior whatever the acquisition's orientation, and its labels resampled back onto the slice's voxels."""

import numpy as np
import pytest

from mskai import MskaiError
from mskai.acl.ligaments import (CONTEXT, IN_PLANE_MM, SIZE, _back_to_volume, _plane_axes, labels_on_slices,
                                 segment_ligaments, slice_axis, slice_stack)
from conftest import REPO, make_ligament_package
from mskai.models.package import load_package
from mskai.volume import Volume

LIGAMENT_MODEL = REPO / "Resources" / "Training" / "mskai-knee-ligaments-demo-0.2.0"


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique_sagittal(order=(1, 2, 0)):
    """A 100 x 90 x 12 volume of 0.5 x 0.5 x 4 mm, sagittal slices tilted 12 degrees, axes permuted by ``order``;
    a bright ball (radius 12 mm) 10 mm anterior and 10 mm superior of the centre, labelled 3."""
    shape, spacing = np.array([100, 90, 12]), np.array([0.5, 0.5, 4.0])
    columns = _rotation([0, 0, 1], 12) @ np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], float).T  # i: P, j: I, k: L
    directions = columns[:, order]
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing[list(order)]
    n = shape[list(order)]
    affine[:3, 3] = [10.0, -30.0, 40.0] - affine[:3, :3] @ ((n - 1) / 2)
    lps = np.indices(n).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
    ball = np.linalg.norm(lps - [10.0, -40.0, 50.0], axis=1) <= 12.0
    image = np.where(ball, 1000.0, 100.0).reshape(n).astype(np.float32)
    return Volume(image, affine), ball.reshape(n).astype(np.uint8) * 3


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 0, 1)])
def test_slices_read_the_same_anatomy_in_any_axis_order(order):
    volume, labels = _oblique_sagittal(order)
    stack, grids, axis = slice_stack(volume)
    assert axis == order.index(2) and stack.shape == (12, 2 * CONTEXT + 1, SIZE, SIZE)
    on_slices = labels_on_slices(labels, grids)
    k = int(np.argmax(on_slices.sum((1, 2))))  # the slice through the ball's centre
    rows, cols = np.nonzero(on_slices[k] == 3)
    centre = (SIZE - 1) / 2
    # anterior is to the left (smaller column), superior up (smaller row): 10 mm each from the grid centre
    assert rows.mean() == pytest.approx(centre - 10 / IN_PLANE_MM, abs=3)
    assert cols.mean() == pytest.approx(centre - 10 * np.cos(np.radians(12)) / IN_PLANE_MM, abs=3)
    middle = stack[k, CONTEXT]
    assert np.median(middle[on_slices[k] == 3]) > 0.95 > 0.05 > np.median(middle[on_slices[k] == 0])  # the bright ball


def test_labels_go_back_onto_the_slice_voxels():
    volume, labels = _oblique_sagittal()
    stack, grids, axis = slice_stack(volume)
    on_slices = labels_on_slices(labels, grids)
    probabilities = np.moveaxis(np.eye(5)[on_slices], -1, 1)  # one-hot n x 5 x S x S
    centre = volume.ijk_to_lps((np.array(volume.shape) - 1) / 2)[0]
    back = _back_to_volume(probabilities, volume, axis, centre, *_plane_axes(volume, axis))
    inside = labels == 3
    assert (back[inside] == 3).mean() > 0.97 and (back[~inside] == 0).mean() > 0.99


def test_only_sagittal_series_are_read():
    volume, _ = _oblique_sagittal()
    axial = Volume(volume.array, np.diag([0.5, 0.5, 4.0, 1.0]))
    assert slice_axis(volume) == 1
    with pytest.raises(MskaiError, match="not sagittal"):
        slice_axis(axial)


def test_segment_ligaments_labels_the_input_grid(tmp_path):
    import torch

    from mskai.models.networks import build_network

    volume, _ = _oblique_sagittal()
    net = build_network({"class": "UNet", "args": {"spatial_dims": 2, "in_channels": 2 * CONTEXT + 1, "out_channels": 5,
                                                   "channels": [4, 8], "strides": [2], "num_res_units": 0}})
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.model[-1].conv.bias[2] = 5.0  # a network that calls everything tibia

    labels = segment_ligaments(volume, load_package(make_ligament_package(tmp_path / "ligaments")), network=net)
    assert labels.shape == volume.shape and np.array_equal(labels.affine_lps, volume.affine_lps)
    # inside the resampled field of view every voxel is "tibia"; outside (beyond 80 mm of the centre) background
    assert set(np.unique(labels.array)) <= {0, 2} and (labels.array == 2).mean() > 0.5


def test_a_ligament_package_made_for_other_slices_is_refused(tmp_path):
    import json

    folder = make_ligament_package(tmp_path / "ligaments")
    meta = json.loads((folder / "metadata.json").read_text())
    for key, value in (("size", 128), ("intensity", {"method": "percentile", "lower": 0.5, "upper": 99.5})):
        (folder / "metadata.json").write_text(json.dumps({**meta, "input": {**meta["input"], key: value}}))
        volume, _ = _oblique_sagittal()
        with pytest.raises(MskaiError, match=f"trained on other input \\({key} differ"):
            segment_ligaments(volume, load_package(folder))


def test_a_thin_slice_series_is_read_in_slabs_like_the_slices_the_network_learned(tmp_path):
    import torch

    from mskai.acl.ligaments import SLAB_MM, slab_centres, slab_step

    shape = (40, 40, 35)  # 35 sagittal slices of 0.7 mm along the last axis (LPS x)
    affine = np.array([[0, 0, 0.7, 0], [0.8, 0, 0, 0], [0, 0.8, 0, 0], [0, 0, 0, 1]], float)
    x = np.arange(shape[2], dtype=np.float32)
    volume = Volume(np.broadcast_to(100 + 10 * x, shape).copy(), affine)
    assert slice_axis(volume) == 2 and slab_step(volume, 2) == round(SLAB_MM / 0.7) == 5
    centres = slab_centres(35, 5)
    assert centres.tolist() == [0, 5, 10, 15, 20, 25, 30, 34]
    stack, grids, _ = slice_stack(volume, step=5)
    assert len(stack) == len(centres) and len(grids) == 35
    middle = SIZE // 2
    values = stack[:, :, middle, middle]  # a slab's mean is its centre slice's value (intensity linear in x)
    assert np.allclose(values[3], values[3, 1] + np.array([-1, 0, 1]) * (values[4, 1] - values[3, 1]), atol=1e-3)
    assert values[4, 1] - values[3, 1] == pytest.approx(values[3, 2] - values[3, 1], abs=1e-3)

    calls = []

    class Tibia(torch.nn.Module):  # a network that calls everything tibia and counts the slices it reads
        def forward(self, x):
            calls.append(len(x))
            out = torch.zeros(len(x), 5, *x.shape[2:])
            out[:, 2] = 5.0
            return out

    labels = segment_ligaments(volume, load_package(make_ligament_package(tmp_path / "ligaments")), network=Tibia())
    assert sum(calls) == len(centres) and labels.shape == volume.shape
    assert (labels.array == 2).all(axis=(0, 1)).all()  # every slice labelled, the ones between centres too


def test_integer_percentiles_from_the_histogram_equal_numpys():
    from mskai.acl.ligaments import percentiles

    rng = np.random.default_rng(4)
    qs = (0.0, 0.5, 37.3, 50.0, 99.5, 100.0)
    for array in (rng.integers(-300, 3000, (40, 30, 20)).astype(np.int16),
                  rng.integers(0, 60000, 999).astype(np.uint16), np.array([5, 5, 5, 7], np.int16),
                  rng.normal(size=(9, 9)).astype(np.float32)):
        assert np.allclose(percentiles(array, qs), np.percentile(array, qs), rtol=0, atol=1e-9)


def test_the_ligament_network_under_onnx_runtime_labels_the_real_knee_as_torch(knee_dicom, tmp_path, monkeypatch):
    """The trained ligament model on the real series: ONNX Runtime (the default without a network) and torch give
    the same labels (at most 1 voxel in 10 000 differs), and the export is cached."""
    from mskai.dicom import plan_volumes, read_volume, scan_folder

    monkeypatch.setenv("MSKAI_CACHE_DIR", str(tmp_path / "cache"))
    package = load_package(LIGAMENT_MODEL)
    volume = read_volume(plan_volumes(scan_folder(knee_dicom).series[0])[0])
    by_torch = segment_ligaments(volume, package, network=package.build_network()).array
    by_onnx = segment_ligaments(volume, package).array
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert (by_onnx != by_torch).mean() <= 1e-4 and (by_torch == 3).sum() > 100  # the ACL is there
