"""One training step of the bone model's network (MONAI UNet 16-128, 96^3 patch, batch 1, Dice + focal loss) on
the CPU: float32 against bfloat16 autocast with channels_last_3d (the loss in float32 either way).

    python benchmarks/train_step.py [--threads 2] [--steps 6] [--patch 96]

Prints a table (median seconds per step, peak RSS growth) and the ratio float32 / bf16, measured in the same run,
and whether the two give the same loss to within bf16's precision. `mskai.training.segment` uses bf16 when
`TrainConfig.bf16` is on (the demo model's training script turns it on where this benchmark shows a gain).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.models.networks import build_network  # noqa: E402
from mskai.training.segment import TrainConfig, marginal_dice_focal, network_spec, step_context  # noqa: E402


def run(bf16: bool, steps: int, patch: int, seed: int = 0) -> tuple[list, float]:
    torch.manual_seed(seed)
    net = build_network(network_spec(TrainConfig(patch=patch)))
    image = torch.rand(1, 1, patch, patch, patch)
    label = torch.randint(0, 6, (1, patch, patch, patch))
    labelled = torch.ones(1, 6, dtype=torch.bool)
    if bf16:
        net = net.to(memory_format=torch.channels_last_3d)
        image = image.contiguous(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
    times, loss = [], None
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        with step_context(bf16):
            logits = net(image)
        loss = marginal_dice_focal(logits.float(), label, labelled)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - start)
    return times[1:], float(loss)


def main():
    import resource

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--patch", type=int, default=96)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name, bf16 in (("float32", False), ("bf16 autocast + channels_last_3d", True)):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        times, loss = run(bf16, args.steps, args.patch)
        rows[name] = (statistics.median(times), min(times), loss,
                      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    print(f"training step, UNet 16-128, {args.patch}^3, batch 1, {args.threads} threads, {args.steps} steps each")
    print(f"{'':<34} {'median s':>9} {'best s':>8} {'loss':>8} {'peak RSS +MB':>13}")
    for name, (median, best, loss, rss) in rows.items():
        print(f"{name:<34} {median:>9.2f} {best:>8.2f} {loss:>8.4f} {rss:>13.0f}")
    (fp, *_), (bf, *_) = rows.values()
    print(f"ratio float32 / bf16: {fp / bf:.2f}x")


if __name__ == "__main__":
    main()
