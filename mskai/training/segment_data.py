"""Training data from a folder of image + label pairs, on the model grid, with MONAI augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mskai import MskaiError
from mskai.grid import resample, to_model_grid
from mskai.outputs import suffix_of
from mskai.segment.labels import BONES
from mskai.segment.outputs import read_segmentation
from mskai.volume_files import VOLUME_SUFFIXES, read_volume_file

_SUFFIXES = VOLUME_SUFFIXES + (".seg.nrrd",)


def _stem(path: Path) -> str:
    return path.name[: -len(suffix_of(path))]


def _volumes_in(folder: Path) -> dict:
    return {_stem(p): p for p in sorted(folder.iterdir()) if suffix_of(p) in _SUFFIXES}


def find_pairs(folder) -> list[tuple[Path, Path]]:
    """Image/label pairs in one of three layouts.

    - nnU-Net raw: ``dataset.json``, ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``;
    - ``images/<case>.*`` with ``labels/<case>.*`` (label maps or .seg.nrrd);
    - ``<case>_image.*`` with ``<case>_label.*`` side by side.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MskaiError(f"{folder} is not a folder")
    if (folder / "dataset.json").is_file() and (folder / "imagesTr").is_dir():
        images, labels = _volumes_in(folder / "imagesTr"), _volumes_in(folder / "labelsTr")
        pairs = [(images[k], labels[k[: -len("_0000")]]) for k in images if k.endswith("_0000") and k[:-5] in labels]
    elif (folder / "images").is_dir() and (folder / "labels").is_dir():
        images, labels = _volumes_in(folder / "images"), _volumes_in(folder / "labels")
        pairs = [(images[k], labels[k]) for k in images if k in labels]
    else:
        found = _volumes_in(folder)
        pairs = [(p, found[k[: -len("_image")] + "_label"]) for k, p in found.items()
                 if k.endswith("_image") and k[: -len("_image")] + "_label" in found]
    if not pairs:
        raise MskaiError(f"No image + label pairs in {folder} (nnU-Net imagesTr/labelsTr, images/ + labels/, "
                         "or <case>_image.* + <case>_label.*)")
    return pairs


def nnunet_label_remap(folder: Path):
    """Value remapping from an nnU-Net dataset.json whose label names are bones of the table."""
    path = folder / "dataset.json"
    if not path.is_file():
        return None
    names = json.loads(path.read_text()).get("labels", {})
    table = {b.name: b.value for b in BONES}
    remap = np.zeros(256, dtype=np.uint8)
    for name, value in names.items():
        if name.lower() in table:
            remap[int(value)] = table[name.lower()]
    return remap


def split_cases(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) case indices, shuffled by ``seed``: at least one validation case when there are two
    or more; a single case trains (and validates: the caller's choice)."""
    order = np.random.default_rng(seed).permutation(n)
    if n < 2:
        return order, order[:0]
    n_val = max(1, round(n * val_fraction))
    return order[n_val:], order[:n_val]


def load_case(image_path, label_path, spacing, intensity, remap=None):
    """(image 1xDxHxW, labels DxHxW) of one case on the model grid (canonical orientation, model spacing)."""
    image = read_volume_file(image_path)
    labels = read_segmentation(label_path)
    if labels.shape != image.shape or not np.allclose(labels.affine_lps, image.affine_lps, atol=1e-2):
        from mskai.segment.metrics import on_grid_of

        labels.array, labels.affine_lps = on_grid_of(labels, image), image.affine_lps
    x, grid = to_model_grid(image, spacing, intensity)
    y_arr = grid.to_canonical(np.asarray(labels.array))
    if remap is not None:
        y_arr = remap[y_arr]
    y = resample(y_arr.astype(np.float32), grid.model_shape, mode="nearest")[0].to(torch.uint8)
    return x, y


class FolderPatches(torch.utils.data.IterableDataset):
    """Endless augmented random patches from cases loaded once onto the model grid."""

    def __init__(self, cases, patch: int, seed: int = 0):
        self.cases, self.patch, self.seed = cases, patch, seed

    def _augment(self):
        from monai import transforms as T

        keys = ["image", "label"]
        return T.Compose([
            T.SpatialPadd(keys, spatial_size=(self.patch,) * 3),
            T.RandSpatialCropd(keys, roi_size=(self.patch,) * 3, random_size=False),
            T.RandRotated(keys, range_x=0.26, range_y=0.26, range_z=0.26, prob=0.5, mode=("bilinear", "nearest"),
                          padding_mode="zeros"),
            T.RandZoomd(keys, min_zoom=0.9, max_zoom=1.1, prob=0.3, mode=("trilinear", "nearest")),
            T.Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(50, 150), prob=0.2,
                             mode=("bilinear", "nearest"), padding_mode="zeros"),
            T.RandFlipd(keys, spatial_axis=0, prob=0.5),
            T.RandBiasFieldd("image", prob=0.3, coeff_range=(0.0, 0.3)),
            T.RandScaleIntensityd("image", factors=0.15, prob=0.5),
            T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
            T.RandGaussianNoised("image", std=0.03, prob=0.3),
        ])

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        augment = self._augment()
        augment.set_random_state(seed=self.seed)
        while True:
            image, label = self.cases[int(rng.integers(len(self.cases)))]
            out = augment({"image": image, "label": label[None].float()})
            yield torch.as_tensor(out["image"]).float(), torch.as_tensor(out["label"])[0].round().to(torch.uint8)
