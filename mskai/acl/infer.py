"""Classify the ACL on one sagittal volume with a model package: probabilities, Grad-CAM on the input grid,
the key slice; and the output folder (report.json, cam.nrrd, key_slice.png) that names no patient."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mskai.models.registry import check_task, resolve_model
from mskai.models.tasks import ACL_CLASSIFICATION, BONE_MODEL, SEGMENTATION
from mskai.volume import Volume


@dataclass
class AclResult:
    probabilities: dict  # class name -> probability
    predicted: str
    cam: Volume  # float32 in [0, 1] on the input grid
    key_slice: int  # index of the input slice with the strongest evidence, along ``slice_axis`` of the input array
    slice_axis: int  # the input array axis that runs across the sagittal slices (left-right)
    notes: dict  # what preprocessing did (slices used, crop), timings


def preprocessing_of(package):
    from mskai.acl.preprocess import AclPreprocessing

    return AclPreprocessing.from_json(package.metadata["preprocessing"])


def bone_segmenter_for(config, bone_model=BONE_MODEL):
    """The bone engine as a Volume -> labels function, when the preprocessing crops around the joint."""
    if not config.joint_crop:
        return None
    from mskai.segment.infer import SegmentOptions, segment_volume

    package = resolve_model(bone_model, SEGMENTATION)
    return lambda volume: segment_volume(volume, package, SegmentOptions(fast=True, check_compatibility=False)).labels


def classify_volume(volume: Volume, package, network=None, bone_segmenter=None) -> AclResult:
    """Probabilities, predicted class, Grad-CAM volume and key slice for one sagittal volume.

    Deterministic: the same volume and package give the same numbers. network: an already built network (batch use).
    """
    import torch

    from mskai.acl.cam import grad_cam
    from mskai.acl.preprocess import check_sagittal, check_structure, prepare

    check_task(package, ACL_CLASSIFICATION)
    config = preprocessing_of(package)
    check_sagittal(volume)
    check_structure(volume)
    timings = {}
    t = time.perf_counter()
    segmenter = bone_segmenter if bone_segmenter is not None else bone_segmenter_for(config)
    prepared = prepare(volume, config, segmenter)
    timings["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    net = network if network is not None else package.build_network()
    torch.manual_seed(0)
    probabilities, cam, target = grad_cam(net, torch.from_numpy(prepared.image)[None])
    timings["classify_and_cam"] = time.perf_counter() - t
    classes = package.metadata["classes"]
    cam_volume = Volume(prepared.cam_to_input(cam).astype(np.float32), volume.affine_lps.copy(), label="acl cam")
    return AclResult({name: float(p) for name, p in zip(classes, probabilities)}, classes[target], cam_volume,
                     int(prepared.key_slice(cam)), int(prepared.slice_axis), {**prepared.notes, "timings_s": timings})


def sagittal_view(volume: Volume, array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice ``index`` across ``axis`` of ``array`` (on ``volume``'s grid) turned for display: rows from superior to
    inferior, columns from anterior to posterior (the radiologist's sagittal view), from the axes' directions."""
    plane = np.take(np.asarray(array), index, axis=axis)
    d = volume.directions_lps[:, [a for a in range(3) if a != axis]]  # the two in-plane axes, in array order
    vertical = 0 if abs(d[2, 0]) >= abs(d[2, 1]) else 1  # the in-plane axis closer to S-I
    view = plane if vertical == 0 else plane.T
    if d[2, vertical] > 0:  # index grows towards superior: put superior at the top
        view = view[::-1]
    if d[1, 1 - vertical] < 0:  # index grows towards anterior (LPS y is posterior): put anterior on the left
        view = view[:, ::-1]
    return np.ascontiguousarray(view, dtype=np.float32)


def key_slice_png(volume: Volume, result: AclResult, path, cam_of: str | None = None):
    """The key slice with the CAM as a coloured overlay, as the radiologist reads a sagittal slice (anterior
    left, superior up), with the verdict in the title. No patient data. cam_of: the class the CAM is the evidence
    for when it is not the verdict (the image classifier's, beside a verdict from anatomy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mskai.outputs import atomic_output

    k = result.key_slice
    image, cam = (sagittal_view(volume, a, result.slice_axis, k) for a in (volume.array, result.cam.array))
    low, high = np.percentile(image, (1, 99))
    fig, ax = plt.subplots(figsize=(6, 6.6))
    ax.imshow(image, cmap="gray", vmin=low, vmax=high)
    shown = ax.imshow(np.ma.masked_less(cam, 0.2), cmap="jet", vmin=0, vmax=1, alpha=0.45)
    label = (f"Grad-CAM (the image classifier's evidence for {cam_of})" if cam_of and cam_of != result.predicted
             else "Grad-CAM (evidence for the predicted class)")
    fig.colorbar(shown, ax=ax, fraction=0.046, label=label)
    verdict = ", ".join(f"{name} {p:.2f}" for name, p in result.probabilities.items())
    ax.set_title(f"{result.predicted} (slice {k + 1})\n{verdict}", fontsize=9)
    ax.axis("off")
    with atomic_output(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
