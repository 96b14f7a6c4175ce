"""Visible Human patellae and fibulae as shape sources: voxelised to their true volume, put in place of the bundled
knee's own bone, whole and clear of the other bones."""

import numpy as np
import pytest
from scipy import ndimage

from conftest import SHARED_DATA
from mskai.synth.visible_human import FIBULA, PATELLA, VH_TEST, VH_TRAIN, VOXEL_MM, VisibleHumanKnee, voxelised

FOLDER = SHARED_DATA / "visible_human_knee"


@pytest.fixture(scope="module", autouse=True)
def data():
    if not FOLDER.is_dir():
        pytest.skip(f"the Visible Human surfaces are missing: {FOLDER} (set MSKAI_SHARED_DATA)")


def test_a_surface_voxelises_to_the_volume_it_encloses():
    import vtk

    path = str(FOLDER / "VHM_Left_Bone_Patella.stl")
    reader = vtk.vtkSTLReader()
    reader.SetFileName(path)
    mass = vtk.vtkMassProperties()
    mass.SetInputConnection(reader.GetOutputPort())
    mass.Update()
    mask, points = voxelised(path)
    assert mask.sum() * VOXEL_MM ** 3 == pytest.approx(mass.GetVolume(), rel=0.05)
    assert ndimage.label(mask)[1] == 1 and len(points) == mask.sum()


def test_a_held_out_patella_replaces_the_bundled_one_whole_and_clear_of_the_femur():
    assert not set(VH_TRAIN) & set(VH_TEST)
    plain = VisibleHumanKnee({}, vh_dir=FOLDER)
    knee = VisibleHumanKnee({PATELLA: (VH_TEST[0], "Right")}, vh_dir=FOLDER)
    before, after = plain.owner.numpy(), knee.owner.numpy()
    voxel_ml = np.prod(np.linalg.norm(knee.affine[:3, :3], axis=0)) / 1000
    vh_ml = voxelised(str(FOLDER / f"{VH_TEST[0]}_Right_Bone_Patella.stl"))[0].sum() * VOXEL_MM ** 3 / 1000
    patella = after == PATELLA
    assert 0.6 < knee.overlap[PATELLA] < 0.99  # in the place of the old one, and another shape
    assert patella.sum() * voxel_ml == pytest.approx(vh_ml, rel=0.1)
    assert ndimage.label(patella)[1] == 1
    for bone in (1, 2, FIBULA):  # the other bones are untouched
        assert np.array_equal(after == bone, before == bone)
