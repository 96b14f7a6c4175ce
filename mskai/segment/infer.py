"""Run a segmentation model package on a Volume: preprocess, sliding windows, back onto the input grid, clean."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mskai import MskaiError, check_range
from mskai.grid import argmax_on_grid, canonical_grid, check_input, model_grid_shape, model_image
from mskai.models.registry import check_task
from mskai.models.tasks import SEGMENTATION
from mskai.segment.labels import BONE_VALUES, labels_from_table
from mskai.segment.postprocess import PostprocessOptions, clean_labels
from mskai.volume import Volume


class Cancelled(MskaiError):
    """Raised when the cancel flag is set; no output has been written."""


@dataclass
class SegmentOptions:
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    fast: bool = False  # coarser spacing (the package's fast_spacing_mm)
    overlap: float = 0.25
    batch_size: int = 2
    slab: tuple | None = None  # (low, high, "mm" | "slices"): superior-inferior range to segment
    check_compatibility: bool = True  # refuse a modality or plane the model was not made for
    confidence: bool = False  # also return the per-voxel confidence map (SegmentResult.confidence)
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise MskaiError(f"device must be auto, cpu or cuda, not {self.device!r}")
        if self.threads is not None:
            check_range("threads", self.threads, 1, 1024, integer=True)
        check_range("overlap", self.overlap, 0, 0.9)
        check_range("batch size", self.batch_size, 1, 256, integer=True)


@dataclass
class SegmentResult:
    labels: Volume  # uint8 label map on the input grid
    timings: dict  # seconds per stage
    settings: dict  # what was actually used (spacing, batch size, device, fallbacks)
    # uint8 percent (0-100) on the input grid: 100 * (1 - H(p) / log C) of the network's class probabilities,
    # rounded; 0 outside a slab (nothing was predicted there). None unless SegmentOptions.confidence.
    confidence: Volume | None = None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MskaiError("--device cuda asked for, but no CUDA GPU is available")
    return torch.device(name)


def check_compatible(volume: Volume, package):
    """Refuse a modality or plane the package says it was not made for."""
    spec = package.input
    modality = volume.meta.get("modality")
    if modality and spec["modality"] != "any" and modality != spec["modality"]:
        raise MskaiError(f"Model {package.id} segments {spec['modality']} images; this series is {modality}")
    plane = volume.meta.get("plane")
    if plane and spec["plane"] != "any" and plane != spec["plane"]:
        raise MskaiError(f"Model {package.id} expects {spec['plane']} slices; this series is {plane}")


def _slab_crop(volume: Volume, grid, slab) -> tuple:
    """Canonical-grid slices of the superior-inferior slab (all of it when slab is None)."""
    crop = [slice(0, n) for n in grid.canonical_shape]
    if slab is None:
        return tuple(crop)
    low, high, unit = slab
    if unit == "slices":  # indices along the input's third (slice) axis
        axis, flip = int(grid.ornt[2, 0]), grid.ornt[2, 1] < 0
        n = volume.shape[2]
        lo, hi = max(0, int(low)), min(n, int(high))
        if flip:
            lo, hi = n - hi, n - lo
    elif unit == "mm":  # patient S coordinate; the canonical third axis runs inferior -> superior
        axis = 2
        a = grid.canonical_affine_ras
        ci, cj = (grid.canonical_shape[0] - 1) / 2, (grid.canonical_shape[1] - 1) / 2
        s = a[2, 0] * ci + a[2, 1] * cj + a[2, 2] * np.arange(grid.canonical_shape[2]) + a[2, 3]
        inside = np.nonzero((s >= min(low, high)) & (s <= max(low, high)))[0]
        lo, hi = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, 0)
    else:
        raise MskaiError(f"Slab unit must be mm or slices, not {unit!r}")
    if hi - lo < 8:
        raise MskaiError(f"The slab {low}-{high} {unit} holds fewer than 8 slices of this volume")
    crop[axis] = slice(lo, hi)
    return tuple(crop)


def estimate_memory_bytes(model_shape, n_classes, roi, batch_size, widest_channels=128) -> int:
    """Rough peak for sliding-window inference: output and count maps plus one batch of activations."""
    voxels = math.prod(int(n) for n in model_shape)  # Python ints: absurd shapes cannot overflow to small numbers
    return voxels * (n_classes * 4 * 2 + 8) + batch_size * math.prod(int(n) for n in roi) * widest_channels * 4 * 6


def _available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _fit_memory(crop_shape, canonical_spacing, spec, n_classes, batch, fast, spacing, fallbacks):
    """(batch, fast, spacing, model grid shape) that fit in 60 % of the available memory: batch size 1 first, then
    the package's fast spacing; else one clear error. Each step taken is appended to ``fallbacks``."""
    roi = tuple(spec["patch_size"])
    model_shape = model_grid_shape(crop_shape, canonical_spacing, spacing)
    budget = 0.6 * _available_bytes()
    while estimate_memory_bytes(model_shape, n_classes, roi, batch) > budget:
        if batch > 1:
            batch = 1
            fallbacks.append("batch size 1 to fit memory")
        elif not fast and spec.get("fast_spacing_mm"):
            fast, spacing = True, spec["fast_spacing_mm"]
            model_shape = model_grid_shape(crop_shape, canonical_spacing, spacing)
            fallbacks.append(f"fast mode ({spacing} mm) to fit memory")
        else:
            need = estimate_memory_bytes(model_shape, n_classes, roi, batch) / 2**30
            raise MskaiError(f"Not enough memory: about {need:.1f} GiB needed, {budget / 0.6 / 2**30:.1f} GiB "
                             "available; use a slab (--slab) or a machine with more memory")
    return batch, fast, spacing, model_shape


def _probabilities(package, image, roi, batch, overlap, device, progress, cancel, settings) -> torch.Tensor:
    """Class probabilities (C x model grid, on the CPU) by Gaussian-weighted sliding windows: ONNX Runtime on the CPU
    where it can (no MONAI import), else the torch network with MONAI's sliding windows. Progress per window,
    ``cancel`` checked before each batch of windows; ``settings["runtime"]`` says which ran."""
    from mskai.segment.runtime import onnx_runner
    from mskai.segment.windows import count_windows, sliding_windows

    total = count_windows(tuple(image.shape[1:]), roi, overlap)
    run = onnx_runner(package, roi, torch.get_num_threads()) if device.type == "cpu" else None
    settings["runtime"] = "onnxruntime" if run else "torch"

    def check(done):
        if cancel is not None and cancel():
            raise Cancelled("Segmentation cancelled")
        progress("infer", min(1.0, done / total))

    if run is not None:
        check(0)
        probabilities = torch.from_numpy(sliding_windows(run, image.numpy(), roi, len(package.metadata["labels"]) + 1,
                                                         overlap, batch, check))
    else:
        probabilities = _torch_logits(package.build_network().to(device), image, roi, batch, overlap, device, check)
    with torch.inference_mode():  # softmax in place: no second full-size copy
        probabilities -= probabilities.max(dim=0, keepdim=True).values
        probabilities.exp_()
        probabilities /= probabilities.sum(dim=0, keepdim=True)
    return probabilities


def _torch_logits(net, image, roi, batch, overlap, device, check) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    done = [0]

    def predictor(x):
        check(done[0])
        y = net(x)
        done[0] += x.shape[0]
        return y

    with torch.inference_mode():
        logits = sliding_window_inference(image[None].to(device), roi_size=roi, sw_batch_size=batch,
                                          predictor=predictor, overlap=overlap, mode="gaussian",
                                          sw_device=device, device=torch.device("cpu"))
    check(done[0])
    return logits[0]


def segment_volume(volume: Volume, package, options: SegmentOptions | None = None, progress=None,
                   cancel=None) -> SegmentResult:
    """Segment a volume with a segmentation model package.

    progress: called as progress(stage, fraction) with stage in preprocess/infer/postprocess.
    cancel: a callable returning True to stop; checked between sliding windows (raises Cancelled).
    """
    options = options or SegmentOptions()
    progress = progress or (lambda stage, fraction: None)
    check_task(package, SEGMENTATION)
    check_input(volume)
    if options.check_compatibility:
        check_compatible(volume, package)
    if options.threads:
        torch.set_num_threads(options.threads)
    device = _device(options.device)
    spec = package.input
    labels_table = labels_from_table(package.metadata["labels"])
    n_classes = len(labels_table) + 1
    roi = tuple(spec["patch_size"])
    timings, settings = {}, {"device": str(device), "fallbacks": []}

    t = time.perf_counter()
    progress("preprocess", 0.0)
    fast = options.fast
    spacing = spec.get("fast_spacing_mm") if fast else spec["spacing_mm"]
    grid = canonical_grid(volume, spacing)
    crop = _slab_crop(volume, grid, options.slab)
    crop_shape = tuple(s.stop - s.start for s in crop)
    batch = options.batch_size

    batch, fast, spacing, model_shape = _fit_memory(crop_shape, grid.canonical_spacing, spec, n_classes, batch, fast,
                                                    spacing, settings["fallbacks"])
    settings.update(spacing_mm=list(spacing), batch_size=batch, fast=fast, model_grid=list(model_shape))
    image = model_image(grid.to_canonical(volume.array)[crop], model_shape, spec["intensity"])[None]
    timings["preprocess"] = time.perf_counter() - t
    progress("preprocess", 1.0)

    t = time.perf_counter()
    probabilities = _probabilities(package, image, roi, batch, options.overlap, device, progress, cancel, settings)
    del image
    timings["infer"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("postprocess", 0.0)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    confidence = np.zeros(volume.shape, dtype=np.uint8) if options.confidence else None  # 0 outside the slab
    argmax_on_grid(probabilities, crop_shape, out=grid.to_canonical(labels)[crop],  # views: fill the input-ordered maps
                   confidence_out=None if confidence is None else grid.to_canonical(confidence)[crop])
    del probabilities
    anatomy_known = all(BONE_VALUES.get(label.name) == label.value for label in labels_table)  # our bone numbering
    clean_labels(labels, [label.value for label in labels_table], options.postprocess,
                 voxel_ml=float(np.prod(volume.spacing)) / 1000, in_place=True,
                 affine=volume.affine_lps if anatomy_known else None)
    timings["postprocess"] = time.perf_counter() - t
    progress("postprocess", 1.0)
    meta = {k: v for k, v in volume.meta.items() if k in ("modality", "plane", "series_uid", "frame_files")}
    if confidence is not None:
        confidence = Volume(confidence, volume.affine_lps.copy(), label="confidence", meta=dict(meta))
    return SegmentResult(Volume(labels, volume.affine_lps.copy(), label="bones", meta=meta), timings, settings,
                         confidence)
