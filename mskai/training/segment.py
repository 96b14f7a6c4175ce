"""Train or fine-tune a bone segmentation network and write a model package.

Data: endless synthetic patches (SynthSeg-style, for the demo model) or a folder of image + label
pairs (a radiologist's corrected cases; NIfTI / NRRD / .seg.nrrd, or the nnU-Net raw layout).
Dice + focal loss, Adam with a cosine schedule, validation Dice per bone, early stopping, the best
checkpoint kept, a JSON log and PNG curves.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mskai import MskaiError, check_range
from mskai.models.tasks import SEGMENTATION
from mskai.outputs import atomic_output
from mskai.segment.labels import BONES, label_table

INTENSITY = {"method": "percentile", "lower": 0.5, "upper": 99.5}


@dataclass
class TrainConfig:
    spacing_mm: float = 1.0
    patch: int = 64
    batch_size: int = 2
    iterations: int = 3000
    eval_every: int = 150
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 6  # evaluations without improvement before stopping early
    channels: tuple = (16, 32, 64, 128)
    seed: int = 0
    threads: int | None = None
    model_id: str = "mskai-bones"
    version: str = "0.1.0"
    demo: bool = False
    training_data: str = ""
    licence: str = "Apache-2.0"
    extra: dict = field(default_factory=dict)
    bf16: bool = False  # CPU: bfloat16 autocast and channels_last_3d for the network (loss in float32)
    max_minutes: float | None = None  # stop cleanly after this much training time (a checkpoint to resume from)
    workers: int = 0  # processes rendering patches ahead of the network (DataLoader workers)
    class_weights: dict = field(default_factory=dict)  # label -> weight in the loss (others 1), e.g. {6: 5.0}
    head_lr_factor: float = 1.0  # the output layers (HEAD_PREFIX) learn this much faster, e.g. for a new class

    def __post_init__(self):
        check_range("spacing (mm)", self.spacing_mm, 0.1, 20)
        check_range("patch", self.patch, 16, 512, integer=True)
        if self.patch % 2 ** (len(self.channels) - 1):
            raise MskaiError(f"patch must be a multiple of {2 ** (len(self.channels) - 1)}, not {self.patch}")
        check_range("batch size", self.batch_size, 1, 256, integer=True)
        check_range("iterations", self.iterations, 1, 10**7, integer=True)
        check_range("eval every", self.eval_every, 1, 10**7, integer=True)
        check_range("learning rate", self.lr, 1e-8, 1.0)
        check_range("patience", self.patience, 1, 10**6, integer=True)
        if self.threads is not None:
            check_range("threads", self.threads, 1, 1024, integer=True)
        if self.max_minutes is not None:
            check_range("time budget (minutes)", self.max_minutes, 0, 10**6)
        check_range("workers", self.workers, 0, 64, integer=True)
        check_range("head learning-rate factor", self.head_lr_factor, 0.01, 1000)
        for label, weight in self.class_weights.items():
            check_range(f"weight of class {label}", weight, 0.01, 1000)


CHECKPOINT = "checkpoint.pt"


def step_context(bf16: bool):
    """The forward pass's context: bfloat16 autocast on the CPU (about 1.6-2x faster for 3D convolutions on CPUs
    with AVX-512 BF16: ``benchmarks/train_step.py``), else nothing."""
    import contextlib

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def network_spec(config: TrainConfig, n_classes: int = len(BONES) + 1) -> dict:
    return {"class": "UNet", "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": n_classes,
                                      "channels": list(config.channels), "strides": [2] * (len(config.channels) - 1),
                                      "num_res_units": 1, "norm": "INSTANCE"}}


def _plot(log: list, folder: Path, table=BONES):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [e["iteration"] for e in log]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(it, [e["train_loss"] for e in log], label="train (Dice + focal)")
    a.set_xlabel("iteration"), a.set_ylabel("loss"), a.set_title("Loss"), a.legend(), a.grid(alpha=0.3)
    for bone in table:
        values = [e["val_dice"].get(bone.name) for e in log]
        if any(v is not None and np.isfinite(v) for v in values):
            b.plot(it, values, label=bone.name, color=bone.color)
    b.plot(it, [e["val_mean_dice"] for e in log], "k--", label="mean")
    b.set_xlabel("iteration"), b.set_ylabel("Dice"), b.set_ylim(0, 1), b.set_title("Validation Dice"), b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_output(folder / "training_curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def marginal_dice_focal(logits, target, labelled, gamma: float = 2.0, smooth: float = 1e-5, weights=None):
    """Dice + focal loss in which each sample's unlabelled classes are merged into the background.

    logits: B x C x ...; target: B x ... (long); labelled: B x C bool (False: this sample's label map does not
    annotate that class, e.g. no patella in the OAI femur/tibia masks). Predicting such a class there is neither
    rewarded nor punished: its probability counts as background (a marginal loss), and it is left out of Dice.
    weights: C floats or None: each class's weight in the Dice mean and on its voxels in the focal mean.
    """
    n = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    keep = labelled.to(probs.dtype).reshape(*labelled.shape, *([1] * (probs.dim() - 2)))
    merged = probs * keep
    merged[:, 0] = merged[:, 0] + (probs * (1 - keep)).sum(1)
    onehot = torch.nn.functional.one_hot(target, n).movedim(-1, 1).to(probs.dtype)
    dims = [0, *range(2, probs.dim())]
    dice = 1 - (2 * (merged * onehot).sum(dims) + smooth) / (merged.sum(dims) + onehot.sum(dims) + smooth)
    p_true = merged.gather(1, target[:, None]).clamp(min=1e-7)
    focal = -((1 - p_true) ** gamma * p_true.log())
    if weights is None:
        return dice.mean() + focal.mean()
    weights = torch.as_tensor(weights, dtype=probs.dtype, device=probs.device)
    return (dice * weights).sum() / weights.sum() + (focal * weights[target[:, None]]).mean()


def _validate(net, val_set, device, table=BONES) -> dict:
    """Validation Dice per label over all patches; a sample's unlabelled labels are left out (third item)."""
    totals = {b.value: [0, 0] for b in table}
    net.eval()
    with torch.no_grad():
        for sample in val_set:
            image, label = sample[0], sample[1]
            pred = predict_patch(net, image.to(device)).cpu().numpy()
            ref = label.numpy()
            for b in table:
                if len(sample) > 2 and not bool(sample[2][b.value]):
                    continue
                p, r = pred == b.value, ref == b.value
                totals[b.value][0] += 2 * int(np.logical_and(p, r).sum())
                totals[b.value][1] += int(p.sum()) + int(r.sum())
    net.train()
    return {b.name: (totals[b.value][0] / totals[b.value][1] if totals[b.value][1] else float("nan")) for b in table}


def predict_patch(net, image: torch.Tensor) -> torch.Tensor:
    """Labels of a 1 x D x H x W image (any size the network accepts, or sliding windows for larger ones), or of
    a C x H x W slice for a 2D network (as it is)."""
    from monai.inferers import sliding_window_inference

    if image.dim() == 3:
        return net(image[None])[0].argmax(0)
    logits = sliding_window_inference(image[None], roi_size=(96, 96, 96), sw_batch_size=1, predictor=net,
                                      overlap=0.25, mode="gaussian")
    return logits[0].argmax(0)


def _save(out_dir, config, spec, init_package, best_entry, best_state, table=BONES):
    """Write the package of the best network so far."""
    from mskai.models.package import save_package

    base = init_package.metadata if init_package is not None else {}
    metadata = {
        "id": config.model_id,
        "version": config.version,
        "task": SEGMENTATION,
        "title": base.get("title", "Lower-limb bones (MR)"),
        "description": base.get("description", "Tibia, femur, fibula, pelvis (hip bone), patella and sacrum on MR."),
        "demo": bool(config.demo or base.get("demo", False)),
        "licence": config.licence,
        "training_data": config.training_data or base.get("training_data", ""),
        "labels": label_table(table),
        "input": base.get("input") or {"modality": "MR", "plane": "any", "spacing_mm": [config.spacing_mm] * 3,
                                       "fast_spacing_mm": [config.spacing_mm * 2] * 3, "intensity": INTENSITY,
                                       "patch_size": [96, 96, 96]},  # a fine-tune keeps what its model was made for
        "network": spec,
        "metrics": {"best_iteration": best_entry["iteration"],  # a label absent from validation: null, not NaN
                    "val_dice": {k: v if np.isfinite(v) else None for k, v in best_entry["val_dice"].items()},
                    "val_mean_dice": best_entry["val_mean_dice"]},
        "training": {"config": asdict(config) | {"channels": list(config.channels)},
                     "fine_tuned_from": f"{init_package.id}@{init_package.version}" if init_package else None},
    }
    if init_package is not None:
        metadata["input"] = dict(init_package.input)
    metadata.update(config.extra)
    save_package(out_dir, metadata, best_state)


def _one_thread(_worker_id):
    """A patch-rendering worker process uses one thread: the network keeps the others."""
    torch.set_num_threads(1)


def _save_checkpoint(out_dir: Path, state: dict):
    """Everything a resumed run needs (tensors and plain values only: loaded with weights_only=True)."""
    with atomic_output(out_dir / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def load_checkpoint(out_dir) -> dict | None:
    """The checkpoint a stopped run left in ``out_dir`` (None if there is none); never unpickles code."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is one clear error
        raise MskaiError(f"Cannot resume from {path}: {exc.__class__.__name__}: {exc}") from None


@dataclass
class _RunState:
    """What a run carries from evaluation to evaluation (and a checkpoint keeps): log, best so far, patience."""

    log: list = field(default_factory=list)
    best: float = -1.0
    best_state: dict | None = None
    stale: int = 0
    done: int = 0  # iterations done before this run (a resumed run)

    def checkpoint(self, net, optimiser, schedule, iteration) -> dict:
        return {"model": net.state_dict(), "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                "iteration": iteration, "log": self.log, "best": self.best, "stale": self.stale,
                "best_state": self.best_state}


NEW_CLASS_BIAS = -8.0  # a class added to a trained network starts almost never predicted


def widened(state: dict, new_state: dict) -> dict:
    """``state`` fitted into ``new_state``'s shapes (a network with more output classes): every trained weight is
    kept and the new class's entries are zero, except in the first grown layer's weight and bias (their fresh
    initialisation: the new channel's own features) and the last grown bias (NEW_CLASS_BIAS), so the old classes'
    outputs are unchanged."""
    grown = [name for name in new_state if state[name].shape != new_state[name].shape]
    out = {}
    for name, fresh in new_state.items():
        old = state[name]
        if name not in grown:
            out[name] = old
            continue
        out[name] = fresh.clone() if name in grown[:2] else torch.zeros_like(fresh)  # the first layer's weight, bias
        if name == grown[-1] and fresh.dim() == 1:
            out[name][old.shape[0]:] = NEW_CLASS_BIAS
        out[name][tuple(slice(0, n) for n in old.shape)] = old
    return out


def _memory_format(spec: dict):
    """channels_last for the network's dimensions (bf16 on the CPU)."""
    return torch.channels_last if spec["args"].get("spatial_dims", 3) == 2 else torch.channels_last_3d


def _network(config: TrainConfig, init_package, device, bf16, table=BONES, network=None):
    """(network spec, network on ``device`` in training mode): a new one (``network``: its spec, else the bone
    model's), or ``init_package``'s to fine-tune."""
    from mskai.models.networks import build_network

    spec = init_package.metadata["network"] if init_package is not None else network or network_spec(config)
    n_classes = len(table) + 1
    if init_package is not None and spec["args"].get("out_channels", n_classes) < n_classes:  # a bone was added
        spec = {**spec, "args": {**spec["args"], "out_channels": n_classes}}
    net = build_network(spec)
    if init_package is not None:
        net.load_state_dict(widened(init_package.state_dict(), net.state_dict()))
    net.to(device).train()
    return spec, net.to(memory_format=_memory_format(spec)) if bf16 else net


HEAD_PREFIX = "model.2."  # MONAI UNet: the last up-sampling block and the output convolution


def _parameter_groups(net, config: TrainConfig) -> list[dict]:
    """Adam parameter groups: the output layers at ``head_lr_factor`` times the learning rate, the rest at it."""
    if config.head_lr_factor == 1.0:
        return [{"params": list(net.parameters())}]
    named = list(net.named_parameters())
    head = [p for name, p in named if name.startswith(HEAD_PREFIX)]
    if not head:
        raise MskaiError(f"--head-lr-factor: this network has no {HEAD_PREFIX!r} layers")
    return [{"params": [p for name, p in named if not name.startswith(HEAD_PREFIX)]},
            {"params": head, "lr": config.lr * config.head_lr_factor}]


def _resumed(out_dir: Path, net, optimiser, schedule, train_data, progress) -> _RunState:
    """The state of the run that stopped in ``out_dir``, loaded into net, optimiser and schedule."""
    checkpoint = load_checkpoint(out_dir)
    if checkpoint is None:
        raise MskaiError(f"Nothing to resume: {out_dir / CHECKPOINT} does not exist")
    net.load_state_dict(checkpoint["model"])
    optimiser.load_state_dict(checkpoint["optimiser"])
    schedule.load_state_dict(checkpoint["schedule"])
    run = _RunState(log=checkpoint["log"], best=checkpoint["best"], best_state=checkpoint["best_state"],
                    stale=checkpoint["stale"], done=checkpoint["iteration"])
    if hasattr(train_data, "reseed"):
        train_data.reseed(run.done)
    progress(f"resuming at iteration {run.done} (best validation mean Dice so far {run.best:.3f})")
    return run


def _step(net, optimiser, schedule, batch, device, bf16, weights=None) -> float:
    """One optimiser step on a batch (image, labels[, labelled]); the loss in float32 (``weights``: per class)."""
    image, label = batch[0].to(device), batch[1].to(device).long()
    if bf16:
        image = image.contiguous(memory_format=torch.channels_last if image.dim() == 4 else torch.channels_last_3d)
    with step_context(bf16):
        logits = net(image)
    logits = logits.float()
    labelled = batch[2].to(device) if len(batch) > 2 else torch.ones(logits.shape[:2], dtype=torch.bool, device=device)
    optimiser.zero_grad()
    loss = marginal_dice_focal(logits, label, labelled, weights=weights)
    loss.backward()
    optimiser.step()
    schedule.step()
    return float(loss.detach())


def _evaluate(run: _RunState, net, val_set, device, iteration, losses, lr, seconds, save_best, progress, table):
    """Validate, log, keep the best state (``save_best(entry, state)`` writes its package) and count patience."""
    dice = _validate(net, val_set, device, table)
    finite = [v for v in dice.values() if np.isfinite(v)]
    mean = float(np.mean(finite)) if finite else 0.0
    entry = {"iteration": iteration, "train_loss": float(np.mean(losses)), "val_dice": dice, "val_mean_dice": mean,
             "lr": lr, "seconds": round(seconds, 1)}
    run.log.append(entry)
    if mean > run.best:
        run.best, run.stale = mean, 0
        run.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        save_best(entry, run.best_state)
    else:
        run.stale += 1
    progress(f"iteration {iteration}: loss {entry['train_loss']:.4f}, val Dice "
             + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()) + f", mean {mean:.3f}"
             + (" (best)" if run.stale == 0 else ""))


def train(train_data, val_set, config: TrainConfig, out_dir, init_package=None, progress=print, resume=False,
          table=BONES, network=None):
    """Train (or fine-tune ``init_package``) and write the best model as a package in ``out_dir``.

    train_data: an iterable of (image 1xPxPxP, labels PxPxP[, labelled]) samples, ``labelled`` a bool tensor
    over the classes (absent: every class is annotated); val_set: a list of such samples.
    resume: continue from ``out_dir``'s checkpoint (network, optimiser, schedule, iteration, log, best so far); the
    data stream continues with a seed of its own (``train_data.reseed(iteration)`` where it has one).
    A checkpoint is written at every evaluation and when the time budget (``config.max_minutes``) ends the run.
    table: the labels taught (the bone table; others for other segmentation networks); network: the spec of a
    new network (default: the bone model's 3D UNet), e.g. a 2D one trained on (C x H x W, H x W) slices.
    Returns the training log (one entry per evaluation).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = config.bf16 and device.type == "cpu"
    spec, net = _network(config, init_package, device, bf16, table, network)
    optimiser = torch.optim.Adam(_parameter_groups(net, config), lr=config.lr, weight_decay=config.weight_decay)
    weights = [config.class_weights.get(label, 1.0) for label in range(len(table) + 1)] if config.class_weights \
        else None
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.iterations, eta_min=config.lr * 0.02)
    run = _resumed(out_dir, net, optimiser, schedule, train_data, progress) if resume else _RunState()
    loader = torch.utils.data.DataLoader(train_data, batch_size=config.batch_size, num_workers=config.workers,
                                         **({"prefetch_factor": 4, "worker_init_fn": _one_thread}
                                            if config.workers else {}))
    save_best = lambda entry, state: _save(out_dir, config, spec, init_package, entry, state, table)  # noqa: E731
    start, losses = time.perf_counter(), []
    for iteration, batch in enumerate(loader, start=run.done + 1):
        if iteration > config.iterations:
            break
        losses.append(_step(net, optimiser, schedule, batch, device, bf16, weights))
        out_of_time = config.max_minutes is not None and time.perf_counter() - start > config.max_minutes * 60
        if iteration % config.eval_every == 0 or iteration == config.iterations or out_of_time:
            _evaluate(run, net, val_set, device, iteration, losses, schedule.get_last_lr()[0],
                      time.perf_counter() - start, save_best, progress, table)
            losses = []
            with atomic_output(out_dir / "training_log.json") as tmp:
                tmp.write_text(json.dumps({"config": asdict(config), "log": run.log}, indent=2))
            _plot(run.log, out_dir, table)
            _save_checkpoint(out_dir, run.checkpoint(net, optimiser, schedule, iteration))
            if run.stale >= config.patience:
                progress(f"stopping early: no better validation Dice for {run.stale} evaluations")
                break
            if out_of_time:
                progress(f"time budget of {config.max_minutes:g} min reached at iteration {iteration}: "
                         "checkpoint written, resume to go on")
                break
        if iteration >= config.iterations:
            break
    if run.best_state is None:
        raise MskaiError("Training ended before the first validation; increase --iterations")
    return run.log
