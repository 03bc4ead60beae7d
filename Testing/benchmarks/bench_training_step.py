"""Where one training step of a bundled model goes, phase by phase, as ``promptseg train`` runs it: drawing and
cropping (``CentreSampler``, ``crop``), augmentation, truth masks and prompts, the network's forward pass, the
loss, the backward pass and the AdamW step. Real training patients of the model's spec, after two warm-up steps.

Default: ``promptseg-hn-oars`` on 6 OpenKBP training patients of ``Resources/Training/hn_oars.json`` (needs the
OpenKBP checkout beside the project, as that spec says), batch 2, the model's crop size, 1 thread.
``--channels-last`` runs the network on channels-last 3D tensors, ``--flush-denormal`` flushes denormal floats:
two ways tried to make the step faster (compare the printed phases with a plain run). ``--against-modules``
alternates the steps between the CPU routes of ``PromptSegLib.models.cpu_routes`` (what training runs) and
PyTorch's own modules for every convolution (``modules_only``), and prints both and their ratio.
Usage: python Testing/benchmarks/bench_training_step.py [--steps N] [--threads N] [--channels-last]
       [--flush-denormal] [--against-modules]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from PromptSegLib.models.cpu_routes import modules_only
from PromptSegLib.models.folder import load_model
from PromptSegLib.train.config import TrainConfig
from PromptSegLib.train.datasets import load_spec, load_split, prepare_case
from PromptSegLib.train.samples import CentreSampler, augment, crop
from PromptSegLib.train.loss import dice_bce_loss
from PromptSegLib.train.start import build_network
from PromptSegLib.train.training import PromptBank, intensity_rules, text_encoder

REPO = Path(__file__).resolve().parents[2]
PHASES = ("crop", "augment", "truth and prompts", "forward", "loss", "backward", "optimiser step")


class Clock:
    """``with clock(phase):`` adds the block's seconds to ``seconds[phase]`` (nothing when ``seconds`` is None)."""

    def __init__(self, seconds: dict[str, float] | None):
        self.seconds = seconds

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.seconds is not None:
            self.seconds[phase] += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", default=str(REPO / "Resources" / "Training" / "hn_oars.json"))
    parser.add_argument("--model", default=str(REPO / "PromptSegLib" / "models" / "promptseg-hn-oars"))
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--flush-denormal", action="store_true")
    parser.add_argument("--against-modules", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("this CPU cannot flush denormals")
    datasets = load_spec(args.spec)
    datasets[0].cases = [c for c in datasets[0].cases if c.split == "train"][:args.cases]
    base = load_model(args.model)
    loaded = load_split(datasets[:1], "train")
    cases = [prepare_case(c, base.config.spacing_mm, intensity_rules(base, loaded)) for c in loaded]
    config = TrainConfig(spec=args.spec, output="unused")
    encoder = text_encoder(config, base)
    bank = PromptBank(encoder, cases)
    network = build_network(config, [cases[0].dataset.modality], encoder.dim, base).train()
    layout = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    network = network.to(memory_format=layout)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    sampler = CentreSampler(cases, config.foreground_ratio)
    dataset = cases[0].dataset
    names = dataset.targets + bank.absent[dataset.name][:config.absent_targets]
    rng = np.random.default_rng(0)
    variants = ("routes", "modules") if args.against_modules else ("routes",)
    seconds = {v: dict.fromkeys(PHASES, 0.0) for v in variants}
    absent = len(names) - len(dataset.targets)
    for step in range((args.steps + 2) * len(variants)):
        variant = variants[step % len(variants)]
        clock = Clock(seconds[variant] if step >= 2 * len(variants) else None)  # two steps of each warm up
        images, truths, known, texts = [], [], [], []
        for _ in range(args.batch):
            with clock("crop"):
                case, centre = sampler.draw(rng)
                image, label = crop(case, base.config.patch_size, centre, rng)
            with clock("augment"):
                image, label = augment(image, label, rng)
            with clock("truth and prompts"):
                images.append(image[None])
                truths.append(np.concatenate([case.masks(dataset.targets, label),
                                              np.zeros((absent, *label.shape), np.float32)]))
                known.append(np.concatenate([case.labelled(dataset.targets), np.ones(absent, np.float32)]))
                texts.append([bank.context(dataset.name, rng)] + [bank.target(dataset.modality, t, rng) for t in names])
        embedded = encoder.encode([row[0] for row in texts] + [t for row in texts for t in row[1:]])
        batch = torch.from_numpy(np.stack(images)).to(memory_format=layout)
        with modules_only() if variant == "modules" else nullcontext():
            with clock("forward"):
                logits = network(batch, dataset.modality, embedded[:args.batch],
                                 embedded[args.batch:].view(args.batch, len(names), -1))
            with clock("loss"):
                loss = dice_bce_loss(logits.float(), torch.from_numpy(np.stack(truths)),
                                     torch.from_numpy(np.stack(known)))
            optimizer.zero_grad()
            with clock("backward"):
                loss.backward()
        with clock("optimiser step"):
            optimizer.step()
    totals = {v: sum(seconds[v].values()) / args.steps for v in variants}
    for variant in variants:
        print(f"{base.config.name} {base.config.version}, batch {args.batch} of {list(base.config.patch_size)} at "
              f"{base.config.spacing_mm} mm, {len(names)} prompts, {args.threads} thread(s)"
              f"{', channels-last' if args.channels_last else ''}"
              f"{', denormals flushed' if args.flush_denormal else ''}, "
              f"{'CPU routes' if variant == 'routes' else 'PyTorch modules'}: {totals[variant]:.2f} s a step")
        for phase in PHASES:
            share = seconds[variant][phase] / args.steps
            print(f"  {phase:18s} {share * 1000:7.0f} ms  {share / totals[variant]:5.1%}")
    if args.against_modules:
        print(f"PyTorch modules / CPU routes: {totals['modules'] / totals['routes']:.2f}x the time of a step")

if __name__ == "__main__":
    main()
