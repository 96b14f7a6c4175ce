"""Shared fixtures: the real knee series, phantoms written as real DICOM files, SimpleITK as the reference reader."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MSKAI_SHARED_DATA", REPO.parent / "shared" / "data"))


def run_mskai(*args, ok=True):
    """Run the installed `mskai` console script; with ok=True it must succeed."""
    mskai = str(Path(sys.executable).with_name("mskai"))
    result = subprocess.run([mskai, *map(str, args)], capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def knee_dicom() -> Path:
    folder = SHARED_DATA / "knee_mese_t2_dicom"
    assert folder.is_dir(), f"the shared knee series is missing: {folder} (set MSKAI_SHARED_DATA)"
    return folder


@pytest.fixture(scope="session")
def sitk_series():
    return _sitk_read_series


def _sitk_read_series(files):
    """SimpleITK/GDCM's reading of a set of files: (array[i, j, k], 4x4 IJK->LPS affine).

    The files are linked into a private folder so GDCM does its own slice sorting.
    """
    first = Path(files[0])
    folder = first.parent.parent / f"_sitk_{first.parent.name}_{len(files)}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for f in files:
        os.symlink(Path(f).resolve(), folder / Path(f).name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    shutil.rmtree(folder)
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine


def make_package(folder, constant_class=None, channels=(4, 8), seed=0, n_bones=None, **metadata):
    """A small but real segmentation model package on disk (MONAI UNet, safetensors weights).

    constant_class: zero every weight and bias the final layer so the network predicts that class
    everywhere, which makes pipeline geometry testable without a trained model.
    n_bones: only the label table's first bones (an older package's table), else all.
    """
    import torch

    from mskai.models.networks import build_network
    from mskai.models.package import save_package
    from mskai.segment.labels import label_table
    from mskai.training.segment import INTENSITY, TrainConfig, network_spec

    from mskai.segment.labels import BONES

    bones = BONES[:n_bones] if n_bones else BONES
    spec = network_spec(TrainConfig(channels=channels), n_classes=len(bones) + 1)
    torch.manual_seed(seed)
    net = build_network(spec)
    state = net.state_dict()
    if constant_class is not None:
        state = {k: torch.zeros_like(v) for k, v in state.items()}
        last_bias = [k for k in state if k.endswith("bias")][-1]
        state[last_bias][constant_class] = 5.0
    meta = {"id": "test-bones", "version": "1.0.0", "task": "segmentation", "demo": True, "licence": "test",
            "training_data": "none (test package)", "labels": label_table(bones),
            "input": {"modality": "MR", "plane": "any", "spacing_mm": [2.0] * 3, "fast_spacing_mm": [4.0] * 3,
                      "intensity": INTENSITY, "patch_size": [32, 32, 32]},
            "network": spec}
    meta.update(metadata)
    return save_package(folder, meta, state)


@pytest.fixture
def model_dirs(tmp_path, monkeypatch):
    """Empty user and bundled model folders under tmp_path."""
    monkeypatch.setenv("MSKAI_MODELS_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("MSKAI_BUNDLED_MODELS", str(tmp_path / "bundled"))
    return tmp_path


@pytest.fixture
def tiny_package(tmp_path):
    from mskai.models.package import load_package

    return load_package(make_package(tmp_path / "tiny-package"))


def make_acl_package(folder, classes=None, size=48, depth=8, widths=(8, 8, 16, 16), pooling="max", seed=0, **metadata):
    """A small but real ACL classifier package on disk (MRNet-style network, random weights), with the metadata
    `mskai train-acl` writes: fast to make, so every test module can have its own. pooling "attention" spreads the
    Grad-CAM over several slices (max pooling puts it on one)."""
    import torch

    from mskai.acl import GRADES
    from mskai.models.tasks import ACL_CLASSIFICATION as TASK
    from mskai.models.mrnet import MRNetStyle
    from mskai.acl.preprocess import AclPreprocessing
    from mskai.training.acl import TrainAclConfig, network_spec
    from mskai.models.package import save_package

    classes = list(classes or GRADES)
    config = TrainAclConfig(classes="four" if len(classes) == 4 else "binary", widths=tuple(widths), pooling=pooling)
    preprocessing = AclPreprocessing(size=size, depth=depth, field_mm=140)
    spec = network_spec(config, preprocessing.channels)
    torch.manual_seed(seed)
    net = MRNetStyle(**spec["args"])
    meta = {"id": "test-acl", "version": "1.0.0", "task": TASK, "demo": True, "licence": "test",
            "training_data": "none (test package, random weights)", "classes": classes,
            "input": {"modality": "MR", "plane": "sagittal"}, "preprocessing": preprocessing.to_json(),
            "network": spec}
    meta.update(metadata)
    return save_package(folder, meta, net.state_dict())


def make_ligament_package(folder):
    """A real knee-ligaments package (2D MONAI UNet) whose network finds nothing: background everywhere."""
    import torch

    from mskai.acl.ligaments import CONTEXT, LIGAMENT_TABLE, input_section
    from mskai.models.networks import build_network
    from mskai.models.package import save_package
    from mskai.models.tasks import KNEE_LIGAMENTS
    from mskai.segment.labels import label_table

    spec = {"class": "UNet", "args": {"spatial_dims": 2, "in_channels": 2 * CONTEXT + 1, "out_channels": 5,
                                      "channels": [4, 8], "strides": [2], "num_res_units": 0}}
    torch.manual_seed(0)
    meta = {"id": "test-ligaments", "version": "1.0.0", "task": KNEE_LIGAMENTS, "demo": True, "licence": "test",
            "training_data": "none (test package)", "labels": label_table(LIGAMENT_TABLE),
            "input": input_section(),
            "network": spec}
    state = {k: torch.zeros_like(v) for k, v in build_network(spec).state_dict().items()}
    state[[k for k in state if k.endswith("bias")][-1]][0] = 5.0
    return save_package(folder, meta, state)


def gap_grader():
    """A tear-sign grader: complete rupture when the ACL has a gap (2 per mm), healthy by its coverage (2 for all of
    it); wide scales."""
    from mskai.acl import GRADES
    from mskai.acl.grading import FEATURES

    weights = np.zeros((len(GRADES), len(FEATURES)))
    weights[3, FEATURES.index("gap_mm")], weights[0, FEATURES.index("coverage")] = 200.0, 200.0
    return {"features": list(FEATURES), "mean": [0.0] * len(FEATURES), "scale": [100.0] * len(FEATURES),
            "weights": weights.tolist(), "bias": [0.0] * len(GRADES)}


def torn_knee_with_packages(folder):
    """A synthetic knee with a complete ACL rupture (a test subject: never trained on), its true femur, tibia, ACL
    and PCL written as a corrected ligaments.seg.nrrd, and an ACL package that reads anatomy (gap_grader) with a
    ligament package whose network finds nothing. Returns (volume, truth label map, ACL package path)."""
    from mskai.acl.ligaments import LIGAMENT_TABLE, ligament_label_map
    from mskai.segment.outputs import write_seg_nrrd
    from mskai.synth.acl_knee import acl_shape_subjects, synthetic_acl_knee
    from mskai.volume import Volume

    volume, masks = synthetic_acl_knee(3, np.random.default_rng(11), subjects=acl_shape_subjects("test")[:1],
                                       with_masks=True)
    truth = ligament_label_map(masks)
    write_seg_nrrd(Volume(truth, volume.affine_lps), folder / "corrected.seg.nrrd", LIGAMENT_TABLE)
    ligaments = make_ligament_package(folder / "ligaments")
    acl = make_acl_package(folder / "acl", anatomy={"ligament_model": str(ligaments), "grader": gap_grader()})
    return volume, truth, acl


def mrml_scene_with_views():
    """A real (slicer-core) MRML scene laid out like the application's: the Red, Yellow and Green slice views with
    their orientation presets and composite nodes, and the colour legend node class the application registers."""
    import slicer

    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    for view, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(view)
        slice_node.SetOrientation(orientation)
        scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode").SetLayoutName(view)
    return scene
