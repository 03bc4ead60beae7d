"""Training a propagation model and tuning a trained one: :func:`train_propagation` (samples, loss, AdamW with
cosine decay, held-out evaluation, model folder), :func:`calibrate_threshold` (the probability threshold chosen
on training cases) and :func:`refresh_card` (the card rebuilt from a fresh evaluation)."""
from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from PromptSegLib.errors import OutputError, PromptSegError
from PromptSegLib.models.folder import CARD, CONFIG, replace_card, replace_file
from PromptSegLib.propagate.card import model_card
from PromptSegLib.propagate.data import load_split, load_volume, scored
from PromptSegLib.propagate.evaluation import evaluate_volumes, summary_table
from PromptSegLib.propagate.model import (PropagationConfig, PropagationModel, load_propagation_model,
                                          save_propagation_model)
from PromptSegLib.propagate.net import CPU_WIDTHS, PromptUNet2D, PropagationNetConfig
from PromptSegLib.propagate.propagator import ProgressCallback, Propagator
from PromptSegLib.propagate.samples import SampleGenerator
from PromptSegLib.train.datasets import load_spec
from PromptSegLib.train.loop import TrainingLoop

log = logging.getLogger(__name__)

THRESHOLD_CANDIDATES = (0.5, 0.6, 0.7, 0.8)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    inter = (probability * target).sum(dim=(1, 2, 3))
    soft_dice = (2 * inter + 1) / (probability.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


def train_propagation(spec_path: str | os.PathLike, output: str | os.PathLike, steps: int = 2000,
                      widths: Sequence[int] = CPU_WIDTHS, v: int = 7, batch_size: int = 12, lr: float = 2e-3,
                      input_size: int = 96, minutes: float | None = None, seed: int = 0, threads: int = 1,
                      name: str = "promptseg-propagation", version: str = "0.1.0", command: str | None = None,
                      evaluate: bool = True, end_fraction: float = 0.1, grow_fraction: float = 0.0,
                      init: str | os.PathLike | None = None, progress: ProgressCallback | None = None,
                      work_dir: str | os.PathLike | None = None, checkpoint_every: int = 500,
                      resume: bool = False) -> Path:
    """Train a propagation model on a dataset spec's ``train`` cases and write its model folder.

    Stops after ``steps`` steps or ``minutes`` of wall time, whichever comes first (cosine learning-rate decay
    over ``steps``; the shared loop of ``train.loop``). With ``work_dir`` it writes ``log.csv`` and a checkpoint
    every ``checkpoint_every`` steps there, and ``resume`` continues from that checkpoint (a later session).
    When ``evaluate`` and the spec has ``val`` cases, the card gets the measured Dice on them by distance from
    the prompt slice (axial propagation from each structure's largest slice). ``grow_fraction``: share of
    samples whose prompt is corrupted by adding pixels (see :class:`SampleGenerator`). ``init``: a propagation
    model folder to fine-tune (its architecture and input size are kept; its training record is carried into
    the new card).

    Raises:
        PromptSegError: a bad spec, no training structure, an unwritable output.
    """
    output = Path(output)
    if not output.parent.is_dir():
        raise OutputError(f"folder {output.parent} does not exist")
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    work_dir = Path(work_dir) if work_dir is not None else None
    datasets = load_spec(spec_path, as_written=True)
    train_volumes = [vol for vol, _ in load_split(datasets, "train")]
    if not train_volumes:
        raise PromptSegError("the dataset spec has no training cases")
    start_model = load_propagation_model(init) if init is not None else None
    if start_model is not None:
        widths, input_size = start_model.config.network.widths, start_model.config.input_size
    config = PropagationConfig(name=name, version=version, network=PropagationNetConfig(tuple(int(w) for w in widths)),
                               input_size=input_size, v=v)
    if input_size % config.network.divisor:
        raise PromptSegError(f"input size {input_size} is not a multiple of {config.network.divisor}")
    network = start_model.network if start_model is not None else PromptUNet2D(config.network)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    loop = TrainingLoop(optimiser, steps, floor=0.02, minutes=minutes, work_dir=work_dir, saved={"network": network},
                        checkpoint_every=checkpoint_every, report=progress)
    if resume:
        loop.resume()
    generator = SampleGenerator(train_volumes, v=v, size=input_size, seed=seed + loop.step, end_fraction=end_fraction,
                                grow_fraction=grow_fraction)
    network.train()

    def loss_of_step() -> tuple[torch.Tensor, dict]:
        query, prompt_image, prompt_mask, target = generator.batch(batch_size)
        return _loss(network(query, prompt_image, prompt_mask), target), {}

    loop.run(loss_of_step)
    train_seconds, step, losses = loop.total_seconds, loop.step, loop.losses or [float("nan")]
    network.eval()
    with torch.no_grad():  # evaluate what is shipped: the fp16-rounded weights
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    model = PropagationModel(config, network)
    groups: dict[str, dict[str, int]] = {}
    for d in datasets:
        for c in d.cases:
            groups.setdefault(d.name, {}).setdefault(c.split, 0)
            groups[d.name][c.split] += 1
    config.training = {"steps": step, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
                       "seconds": round(train_seconds, 1), "final_loss": round(float(np.mean(losses[-50:])), 4),
                       "spec": Path(spec_path).name, "cases": groups, "end_fraction": end_fraction,
                       "grow_fraction": grow_fraction, "command": command,
                       "hardware": f"the CPU ({platform.processor() or platform.machine()})",
                       "torch": torch.__version__, "sessions": loop.sessions}
    if start_model is not None:
        previous = dict(start_model.config.training)
        if not previous.get("command"):  # models trained before the command was recorded in config.json
            card = (start_model.folder / CARD).read_text(encoding="utf-8").split("```")
            previous["command"] = card[1].strip() if len(card) > 2 else None
        config.training["init"] = {k: previous.get(k) for k in ("command", "steps", "batch_size", "lr", "seconds",
                                                                 "final_loss", "end_fraction", "grow_fraction",
                                                                 "init")}
    table, rows = "", []
    if evaluate:
        validation = load_split(datasets, "val")
        if validation:
            rows = evaluate_volumes(Propagator(model, threads=threads), validation)
            table = summary_table(rows)
            config.training["val_dice"] = {k: round(float(np.mean([r[k] for r in rows])), 4)
                                           for k in ("+-5", "+-10", "whole")}
    card = model_card(config, datasets, command, train_seconds, table, rows)
    return save_propagation_model(output, model, card)


def refresh_card(folder: str | os.PathLike, spec_path: str | os.PathLike, threads: int = 1) -> Path:
    """Rebuild a propagation model's card from its ``config.json`` training record and a fresh evaluation on
    the spec's ``val`` cases (same numbers as at training time: propagation is deterministic); the card and
    SHA256SUMS are replaced atomically. Sections appended later (benchmarks) are dropped."""
    model = load_propagation_model(folder)
    datasets = load_spec(spec_path, as_written=True)
    rows = evaluate_volumes(Propagator(model, threads=threads), load_split(datasets, "val"))
    t = model.config.training
    card = model_card(model.config, datasets, t.get("command"), float(t.get("seconds", 0.0)), summary_table(rows), rows)
    replace_card(folder, card)
    return Path(folder)


def choose_threshold(scores: dict[float, dict[str, float]], current: float) -> float:
    """The threshold with the best mean whole-structure Dice among those whose mean Dice within +-5 and +-10
    slices is at least that at ``current`` (ties: the one nearest ``current``).

    Args:
        scores: threshold -> mean Dice ``{"+-5", "+-10", "whole"}``; must include ``current``.

    Raises:
        PromptSegError: ``current`` was not scored.
    """
    if current not in scores:
        raise PromptSegError(f"the current threshold {current} is not among the scored ones {sorted(scores)}")
    floor = scores[current]
    allowed = [t for t, s in scores.items() if s["+-5"] >= floor["+-5"] and s["+-10"] >= floor["+-10"]]
    return max(allowed, key=lambda t: (scores[t]["whole"], -abs(t - current)))


def calibrate_threshold(folder: str | os.PathLike, spec_path: str | os.PathLike,
                        candidates: Sequence[float] = THRESHOLD_CANDIDATES, per_dataset: int = 2, threads: int = 1,
                        command: str | None = None) -> float:
    """Choose a propagation model's probability threshold on training cases and write it into its config.json.

    Why: a network that learnt from prompts with pixels dropped, never added (``grow_fraction`` 0), keeps or
    grows the mask it is given; chained on its own predictions, its masks come out too large and hardly shrink
    past a structure's end. A higher threshold offsets that bias; for a network trained on prompts that also
    gain pixels the check usually keeps 0.5. Each candidate (and the model's current threshold) is scored by
    the held-out protocol (:func:`evaluate_volumes`, default stopping rule) on the first ``per_dataset``
    training cases of each dataset in the spec, and :func:`choose_threshold` picks one. config.json and
    SHA256SUMS are replaced atomically, the scores recorded under ``training["threshold_calibration"]``; the
    card is left to :func:`refresh_card`. Returns the chosen threshold.

    Raises:
        PromptSegError: a bad spec, a candidate outside (0, 1), or no training case.
        ModelError: the folder fails its checksums.
    """
    model = load_propagation_model(folder)
    if not all(0.0 < t < 1.0 for t in candidates):
        raise PromptSegError(f"thresholds must lie between 0 and 1 (got {list(candidates)})")
    datasets = load_spec(spec_path, as_written=True)
    volumes = [(load_volume(d, c), scored(d)) for d in datasets
               for c in [c for c in d.cases if c.split == "train"][:per_dataset]]
    if not volumes:
        raise PromptSegError("the dataset spec has no training cases to calibrate on")
    config, propagator = model.config, Propagator(model, threads=threads)
    scores, structures = {}, 0
    for t in sorted(set(candidates) | {config.threshold}):
        rows = evaluate_volumes(propagator, volumes, threshold=t)
        scores[t] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("+-5", "+-10", "whole")}
        structures = len(rows)
        log.info("threshold %g: %s", t, scores[t])
    chosen = choose_threshold(scores, config.threshold)
    config.training["threshold_calibration"] = {
        "command": command, "cases": [v.name for v, _ in volumes], "structures": structures,
        "previous": config.threshold, "chosen": chosen, "scores": {f"{t:g}": s for t, s in scores.items()}}
    config.threshold = chosen
    replace_file(folder, CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
    return chosen
