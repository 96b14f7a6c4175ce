"""Train the MRNet-style ACL classifier: cases prepared once (cached), augmented on the fly, class-balanced,
Adam with a cosine schedule, early stopping on the validation AUC; writes a model package, a JSON log, curves."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mskai import MskaiError, check_range
from mskai.acl import BINARY_CLASSES, GRADES
from mskai.models.tasks import ACL_CLASSIFICATION
from mskai.training.acl_data.splits import class_weights


@dataclass
class TrainAclConfig:
    classes: str = "four"  # "four" (healthy, minor strain, partial, complete) or "binary" (intact, torn)
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8  # epochs without a better validation AUC before stopping
    pooling: str = "max"
    layers: tuple = (1, 1, 1, 1)
    widths: tuple = (16, 32, 64, 128)
    balance: str = "sampler"  # "sampler" (balanced batches) or "weights" (class-weighted loss)
    augment: bool = True
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        if self.classes not in ("four", "binary"):
            raise MskaiError(f"classes must be four or binary, not {self.classes!r}")
        if self.balance not in ("sampler", "weights"):
            raise MskaiError(f"balance must be sampler or weights, not {self.balance!r}")
        check_range("epochs", self.epochs, 1, 10000, integer=True)
        check_range("batch size", self.batch_size, 1, 1024, integer=True)
        check_range("learning rate", self.lr, 1e-7, 1.0)
        check_range("patience", self.patience, 1, 10000, integer=True)
        if self.pooling not in ("max", "attention"):
            raise MskaiError(f"pooling must be max or attention, not {self.pooling!r}")
        for name, values, low, high in (("layers", self.layers, 1, 8), ("widths", self.widths, 4, 1024)):
            if len(values) != 4:
                raise MskaiError(f"{name} must be four numbers, one per ResNet stage (e.g. "
                                 f"{'1,1,1,1' if name == 'layers' else '16,32,64,128'}), not {len(values)}")
            for value in values:
                check_range(f"each of the {name}", value, low, high, integer=True)
        if self.threads is not None:
            check_range("threads", self.threads, 1, 256, integer=True)

    @property
    def class_names(self) -> tuple:
        return GRADES if self.classes == "four" else BINARY_CLASSES


@dataclass
class PreparedSet:
    """Prepared network inputs (float16, cases x C x K x H x W) and labels, made once and cached on disk."""

    images: np.ndarray
    labels: np.ndarray
    subjects: list = field(default_factory=list)

    @classmethod
    def build(cls, items, config, cache_dir=None, bone_segmenter=None, progress=print, workers=1) -> "PreparedSet":
        """items: [(key, load() -> Volume, label, subject)]; key names the case in the cache (with the config).

        workers > 1 prepares in that many processes (``load`` must then be picklable, and no bone segmenter).
        """
        if not items:
            raise MskaiError("No cases to train on")
        stamp = hashlib.sha256(json.dumps(config.to_json(), sort_keys=True).encode()).hexdigest()[:12]
        folder = Path(cache_dir) / stamp if cache_dir else None
        jobs = [(key, load, config, bone_segmenter, folder) for key, load, _, _ in items]
        start, images = time.perf_counter(), []
        if workers > 1 and bone_segmenter is None:
            import concurrent.futures
            import multiprocessing

            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for image in pool.map(_prepared_image, jobs, chunksize=4):
                    images.append(image)
                    _report(progress, len(images), len(jobs), start)
        else:
            for job in jobs:
                images.append(_prepared_image(job))
                _report(progress, len(images), len(jobs), start)
        return cls(np.stack(images), np.asarray([int(i[2]) for i in items], dtype=np.int64), [i[3] for i in items])


def prepared_cache_dir() -> Path:
    """The user's cache of prepared ACL cases (``cache.user_cache_dir``)."""
    from mskai.cache import user_cache_dir

    return user_cache_dir("acl-prepared")


_FINGERPRINT_BYTES = 1 << 16
_MAX_FINGERPRINT_FILES = 5000


def _file_print(path: Path) -> str:
    """Size, modification time and a hash of the first and last 64 KiB of a file (its header and its end)."""
    info = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        if info.st_size > 2 * _FINGERPRINT_BYTES:
            fh.seek(-_FINGERPRINT_BYTES, 2)
            digest.update(fh.read(_FINGERPRINT_BYTES))
    return f"{info.st_size}:{info.st_mtime_ns}:{digest.hexdigest()}"


def case_fingerprint(key: str) -> str:
    """What a cached case is keyed on besides its settings: its content. A file: size, modification time and a
    hash of its first and last 64 KiB; a DICOM folder: the same of every file in it; anything else (synthetic
    cases): the code of the generator that made it. A changed file or generator never returns the old result."""
    path = Path(key)
    try:
        if path.is_file():
            return _file_print(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())[:_MAX_FINGERPRINT_FILES]
            return hashlib.sha256("\n".join(f"{p.relative_to(path)}:{_file_print(p)}" for p in files)
                                  .encode()).hexdigest()
    except OSError:
        return f"unreadable:{time.time_ns()}"  # never matches: the case is read (and fails) as if uncached
    return _generator_print()


@functools.lru_cache(maxsize=1)
def _generator_print() -> str:
    import mskai.synth.acl_knee
    import mskai.synth.real_shapes
    import mskai.synth.synthseg

    digest = hashlib.sha256()
    files = [*sorted(Path(mskai.synth.acl_knee.__file__).parent.glob("*.py")),  # every module of the package
             Path(mskai.synth.real_shapes.__file__), Path(mskai.synth.synthseg.__file__)]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _report(progress, n, total, start):
    if progress and (n % 100 == 0 or n == total):
        progress(f"prepared {n}/{total} cases ({time.perf_counter() - start:.0f} s)")


def _prepared_image(job) -> np.ndarray:
    """One case's network input (float16), from the cache when it is there."""
    from mskai.acl.preprocess import prepare

    key, load, config, bone_segmenter, folder = job
    cached = None
    if folder is not None:
        name = hashlib.sha256(f"{key}\0{case_fingerprint(key)}".encode()).hexdigest()[:32]
        cached = folder / f"{name}.npy"
        if cached.is_file():
            try:
                return np.load(cached, allow_pickle=False)
            except (OSError, ValueError, EOFError):  # a damaged cache file is made again
                pass
    try:
        image = prepare(load(), config, bone_segmenter).image.astype(np.float16)
    except MskaiError as exc:
        raise MskaiError(f"Case {key}: {exc}") from None
    if cached is not None:
        from mskai.outputs import atomic_output

        with atomic_output(cached) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, image, allow_pickle=False)
    return image


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random in-plane shift, rotation and scale, left-right mirroring (slice order), gamma and noise."""
    b = batch.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    angle = (rand(b) - 0.5) * math.radians(20)
    scale = 1 + (rand(b) - 0.5) * 0.2
    shift = (rand(b, 2) - 0.5) * 0.15
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / scale, -torch.sin(angle) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / scale, torch.cos(angle) / scale
    theta[:, :, 2] = shift
    c, k, h, w = batch.shape[1:]
    grid = F.affine_grid(theta, (b, c * k, h, w), align_corners=False)
    out = F.grid_sample(batch.reshape(b, c * k, h, w), grid, align_corners=False, padding_mode="zeros")
    out = out.reshape(b, c, k, h, w)
    mirror = rand(b) < 0.5
    out[mirror] = out[mirror].flip(2)
    image = out[:, :1].clamp(min=0)
    gamma = torch.exp((rand(b) - 0.5) * 0.5).view(b, 1, 1, 1, 1)
    image = image ** gamma + 0.02 * torch.randn(image.shape, generator=generator)
    return torch.cat([image, out[:, 1:]], dim=1)


def scores(net, images, labels, batch_size) -> tuple[float, np.ndarray]:
    """Mean cross-entropy and class probabilities of ``net`` on prepared images, batch by batch."""
    net.eval()
    losses, probabilities = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size].astype(np.float32))
            logits = net(x)
            losses.append(F.cross_entropy(logits, torch.from_numpy(labels[start:start + batch_size]),
                                          reduction="sum").item())
            probabilities.append(torch.softmax(logits, dim=1).numpy())
    return sum(losses) / len(images), np.concatenate(probabilities)


def _epoch_entry(epoch, train_loss, val_loss, labels, probabilities, class_names, seconds) -> dict:
    from mskai.training.acl_metrics import classification_report

    report = classification_report(labels, probabilities, class_names, n_boot=0)
    mean = lambda key: float(np.mean([c[key] for c in report["per_class"] if c[key] is not None] or [0]))  # noqa: E731
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "accuracy": report["accuracy"],
            "macro_precision": mean("precision"), "macro_recall": mean("recall"), "macro_f1": report["macro_f1"],
            "auc": report.get("auc_positive", report["macro_auc"]), "seconds": round(seconds, 1)}


def network_spec(config: TrainAclConfig, in_channels: int) -> dict:
    return {"class": "MRNetStyle", "args": {"in_channels": in_channels, "n_classes": len(config.class_names),
                                            "layers": list(config.layers), "widths": list(config.widths),
                                            "pooling": config.pooling}}


def _package_metadata(config: TrainAclConfig, preprocessing, spec, package_id, version, demo, training_data) -> dict:
    """The package's metadata, before any metrics."""
    return {
        "id": package_id, "version": version, "task": ACL_CLASSIFICATION, "demo": demo,
        "title": "ACL classifier (demo)" if demo else "ACL classifier",
        "description": f"MRNet-style ACL classifier ({', '.join(config.class_names)}) on sagittal knee MR.",
        "licence": "Apache-2.0", "training_data": training_data,
        "classes": list(config.class_names),
        "input": {"modality": "MR", "plane": "sagittal"},
        "preprocessing": preprocessing.to_json(),
        "network": spec,
    }


def _epoch(net, optimiser, train: PreparedSet, config: TrainAclConfig, weights, loss_weights, generator) -> float:
    """One epoch of ``len(train) // batch_size`` steps (at least one); the mean training loss."""
    steps = max(1, len(train.labels) // config.batch_size)
    if config.balance == "sampler":  # every class equally often
        order = torch.multinomial(torch.tensor(weights[train.labels]), steps * config.batch_size, replacement=True,
                                  generator=generator).numpy()
    else:
        order = torch.randperm(len(train.labels), generator=generator).numpy()[:steps * config.batch_size]
    losses = []
    for step in range(steps):
        index = np.sort(order[step * config.batch_size:(step + 1) * config.batch_size])
        x = torch.from_numpy(train.images[index].astype(np.float32))
        x = augment(x, generator) if config.augment else x
        loss = F.cross_entropy(net(x), torch.from_numpy(train.labels[index]), weight=loss_weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _write_log(out_dir: Path, config: TrainAclConfig, preprocessing, log: list):
    """training_log.json and training_curves.png as they stand after an epoch."""
    from mskai.outputs import atomic_output
    from mskai.training.acl_metrics import training_curves_png

    with atomic_output(out_dir / "training_log.json") as tmp:
        tmp.write_text(json.dumps({"config": asdict(config), "preprocessing": preprocessing.to_json(),
                                   "log": log}, indent=2))
    training_curves_png(log, out_dir / "training_curves.png")


def train_acl(train: PreparedSet, val: PreparedSet, config: TrainAclConfig, preprocessing, out_dir, *,
              package_id="mskai-acl", version="0.1.0", demo=True, training_data="", init_state=None,
              backbone_weights=None, progress=print) -> dict:
    """Train, keep the state with the best validation AUC, write the package into ``out_dir``; returns the log."""
    from mskai.models.networks import build_network
    from mskai.models.package import save_package

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    n_classes = len(config.class_names)
    for name, part in (("training", train), ("validation", val)):
        if part.labels.min() < 0 or part.labels.max() >= n_classes:
            raise MskaiError(f"The {name} labels must be 0..{n_classes - 1} for {config.classes} classes")
    spec = network_spec(config, train.images.shape[1])
    net = build_network(spec, init_state)
    if backbone_weights:
        from mskai.models.mrnet import load_backbone

        load_backbone(net, backbone_weights)
    weights = class_weights(train.labels, n_classes)
    loss_weights = torch.tensor(weights, dtype=torch.float32) if config.balance == "weights" else None
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = _package_metadata(config, preprocessing, spec, package_id, version, demo, training_data)
    log, best, best_entry, stale = [], -1.0, None, 0
    for epoch in range(1, config.epochs + 1):
        start, net = time.perf_counter(), net.train()
        train_loss = _epoch(net, optimiser, train, config, weights, loss_weights, generator)
        scheduler.step()
        val_loss, probabilities = scores(net, val.images, val.labels, config.batch_size)
        entry = _epoch_entry(epoch, train_loss, val_loss, val.labels, probabilities, config.class_names,
                             time.perf_counter() - start)
        log.append(entry)
        score = entry["auc"] if entry["auc"] is not None else entry["macro_f1"]
        if progress:
            progress(f"epoch {epoch}: train loss {entry['train_loss']:.3f}, val loss {val_loss:.3f}, "
                     f"accuracy {entry['accuracy']:.3f}, macro F1 {entry['macro_f1']:.3f}, AUC {entry['auc']}")
        _write_log(out_dir, config, preprocessing, log)
        if score > best:  # the package always holds the best state so far: a long run can be stopped at any time
            best, best_entry, stale = score, entry, 0
            metadata["metrics"] = {"validation": {k: entry[k] for k in ("epoch", "accuracy", "macro_f1", "auc")},
                                   "train_cases": int(len(train.labels)), "validation_cases": int(len(val.labels))}
            save_package(out_dir, metadata, net.state_dict())
        else:
            stale += 1
        if stale >= config.patience:
            break
    return {"log": log, "best": best_entry}
