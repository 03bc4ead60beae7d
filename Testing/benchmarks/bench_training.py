"""Training throughput (samples/s) of the dual-prompt model on this machine's CPU (and GPU when present).

Times full optimisation steps (forward, Dice+BCE loss for 8 targets, backward, AdamW) on random crops of a
real CT, after two warm-up steps. Usage: python Testing/benchmarks/bench_training.py [--widths ...] [--steps N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.preprocessing.preprocess import prepare
from PromptSegLib.train.loss import dice_bce_loss

from common import real_ct_on_grid


def throughput(device: torch.device, widths: tuple[int, ...], patch: int, batch: int, steps: int) -> float:
    volume = prepare(real_ct_on_grid((128, 128, 128), 3.0), "CT", 3.0).array
    rng = np.random.default_rng(0)
    network = DuPLUSNet(NetworkConfig(widths=widths)).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    context, targets = torch.randn(batch, 384, device=device), torch.randn(batch, 8, 384, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    elapsed = 0.0
    for step in range(steps + 2):
        starts = [rng.integers(0, s - patch + 1, size=1)[0] for s in volume.shape]
        crop = volume[starts[0]:starts[0] + patch, starts[1]:starts[1] + patch, starts[2]:starts[2] + patch]
        images = torch.from_numpy(np.stack([crop[None]] * batch)).to(device)
        truth = (images > 0).float().expand(-1, 8, -1, -1, -1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            logits = network(images, "CT", context, targets)
        loss = dice_bce_loss(logits.float(), truth)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            elapsed += time.perf_counter() - start
    return steps * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        rate = throughput(device, tuple(args.widths), args.patch, args.batch, args.steps)
        print(f"{device.type}: {rate:.2f} samples/s (patch {args.patch}^3, batch {args.batch}, widths {args.widths}, "
              f"{torch.get_num_threads()} CPU threads)")


if __name__ == "__main__":
    main()
