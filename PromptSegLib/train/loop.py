"""The training-loop skeleton every trainable model kind shares (segmentation: ``train.training``, propagation:
``propagate.training``).

One :class:`TrainingLoop` runs the steps: the learning rate of each parameter group follows a cosine from its
base value down to ``floor`` x base over the run (or over a wall-time budget, whichever ends first); each step
is the caller's loss, backward, an optional hook on the gradients, gradient clipping and the optimiser step.
It writes one CSV row per step, shows progress (a bar on a terminal, one log line per 1 % of the steps in a
log or a pipe), and saves checkpoints that a later session resumes: the step, the cosine cycle, the objects
it was given to save (network, optimiser, ...) and each session's steps and minutes, for the model card;
every ``keep_every`` steps that checkpoint is also kept under its step's name, for an average of the weights
along the run (``promptseg average-models --checkpoints``).
A resume with more steps than the checkpoint planned runs a new cosine cycle from the checkpoint to the new
end.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

import torch

from PromptSegLib.errors import PromptSegError

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


def cosine_factor(progress: float, floor: float) -> float:
    """Learning-rate factor at ``progress`` (0 at the start of a cycle, 1 at its end): 1 down to ``floor``."""
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def check_keep_every(keep_every: int, checkpoint_every: int) -> None:
    """Refuse a ``keep_every`` (steps; 0: none) that is not a positive multiple of ``checkpoint_every``.

    Raises:
        PromptSegError: it is not.
    """
    if keep_every and (keep_every < 0 or checkpoint_every <= 0 or keep_every % checkpoint_every):
        raise PromptSegError(f"checkpoints kept every {keep_every} steps: that must be a positive multiple of the "
                             f"checkpoint interval ({checkpoint_every} steps)")


class TrainingLoop:
    """Steps, learning rate, checkpoints and logs of a training run.

    Args:
        optimizer: its parameter groups' ``lr`` are the base rates of the cosine.
        steps: the step the run ends at (counted from the first session).
        floor: the cosine's end as a fraction of each base rate.
        minutes: wall-time budget of this session (``None``: none); the cosine then ends at whichever comes
            first, the steps or the budget.
        clip: maximum gradient norm over ``optimizer``'s parameters (``None``: no clipping).
        work_dir: where ``checkpoint.pt`` and ``log.csv`` go (``None``: neither is written).
        checkpoint_every: save a checkpoint every so many steps and at the end (0: only at the end).
        keep_every: also keep the checkpoint of every so many steps as ``checkpoint-step<N>.pt`` (0: none; a
            multiple of ``checkpoint_every``).
        saved: objects whose ``state_dict`` each checkpoint holds, by name (the optimiser is always saved).
        main: whether this process logs and writes (``False`` for the other ranks of a distributed run).
        report: called after each step with (fraction done, message), e.g. a GUI's progress bar.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps: int, floor: float = 0.01,
                 minutes: float | None = None, clip: float | None = None, work_dir: Path | None = None,
                 checkpoint_every: int = 0, saved: dict[str, Stateful] | None = None, main: bool = True,
                 report: Callable[[float, str], None] | None = None, keep_every: int = 0):
        if steps < 0:
            raise PromptSegError(f"steps must be 0 or more (got {steps})")
        check_keep_every(keep_every, checkpoint_every)
        self.keep_every = keep_every
        self.optimizer, self.steps, self.floor, self.minutes, self.clip = optimizer, int(steps), floor, minutes, clip
        self.work_dir, self.checkpoint_every, self.main, self.report = work_dir, checkpoint_every, main, report
        self.saved = {"optimizer": optimizer, **(saved or {})}
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step = 0
        self.cycle = (0, self.steps)  # the cosine runs from cycle[0] to cycle[1]
        self.sessions: list[dict] = []  # one per process that trained this run: from, to, minutes
        self.seconds = 0.0  # this session's training time
        self.earlier_seconds = 0.0  # the sessions' before it (from the checkpoint)
        self.losses: list[float] = []  # this session's

    @property
    def total_seconds(self) -> float:
        """Training time of every session of the run (earlier ones to 0.1 min)."""
        return self.earlier_seconds + self.seconds

    @property
    def checkpoint(self) -> Path | None:
        return self.work_dir / "checkpoint.pt" if self.work_dir else None

    def resume(self, map_location: str | torch.device = "cpu") -> dict | None:
        """Continue from ``work_dir/checkpoint.pt`` when there is one: the saved objects are restored and the
        step, the cosine cycle and the sessions taken over. Returns the checkpoint (the caller's own entries
        in it, see :meth:`save`), or ``None`` when there is none."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return None
        state = torch.load(self.checkpoint, map_location=map_location, weights_only=False)
        for name, item in self.saved.items():
            item.load_state_dict(state[name])
        self.step = int(state["step"])
        if "cycle" in state:
            cycle = tuple(state["cycle"])
        else:  # checkpoints of torch's CosineAnnealingLR (before this loop)
            scheduler = state["scheduler"]
            cycle = (self.step - scheduler["last_epoch"], self.step - scheduler["last_epoch"] + scheduler["T_max"])
        if cycle[1] == self.steps or self.step >= self.steps:
            self.cycle = cycle
        else:  # more (or fewer) steps than the checkpoint planned: a new cosine cycle from here
            self.cycle = (self.step, self.steps)
            log.info("resumed with %d steps (planned %d): a new cosine cycle over steps %d-%d", self.steps,
                     cycle[1], self.step + 1, self.steps)
        self.sessions = list(state.get("sessions", [{"from": 0, "to": self.step, "minutes": None}]))
        self.earlier_seconds = 60.0 * sum(s["minutes"] or 0.0 for s in self.sessions)
        log.info("resumed from %s at step %d", self.checkpoint, self.step)
        return state

    def save(self, **extra) -> None:
        """Write the checkpoint atomically: the saved objects, the step, the cycle, the sessions and ``extra``;
        at a multiple of ``keep_every`` steps, keep it also as ``checkpoint-step<N>.pt``."""
        if self.checkpoint is None or not self.main:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(".partial")
        torch.save({**extra, **{name: item.state_dict() for name, item in self.saved.items()}, "step": self.step,
                    "cycle": list(self.cycle), "sessions": self.sessions}, tmp)
        if self.keep_every and self.step % self.keep_every == 0:
            kept = self.work_dir / f"checkpoint-step{self.step}.pt"
            shutil.copyfile(tmp, kept.with_suffix(".partial-kept"))
            os.replace(kept.with_suffix(".partial-kept"), kept)
        os.replace(tmp, self.checkpoint)

    def run(self, loss_of_step: Callable[[], tuple[torch.Tensor, dict]],
            after_backward: Callable[[], None] | None = None,
            after_step: Callable[[int, float], None] | None = None,
            checkpoint_extra: Callable[[], dict] | None = None) -> None:
        """Train until ``steps`` (or the time budget).

        Args:
            loss_of_step: draws a batch and returns its loss and a dict of columns for the CSV log.
            after_backward: runs between backward and clipping (e.g. averaging gradients across processes).
            after_step: called with (step, loss) on the main process after each step (validation, boards).
            checkpoint_extra: the caller's own entries for each checkpoint.
        """
        began = time.perf_counter()
        if self.step < self.steps:
            self.sessions.append({"from": self.step, "to": self.step, "minutes": 0.0})
        progress = _bar(self.steps, self.step, self.main)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        try:
            while self.step < self.steps:
                elapsed = time.perf_counter() - began
                if self.minutes is not None and elapsed >= self.minutes * 60:
                    log.info("stopped at step %d: the %g min budget is spent", self.step, self.minutes)
                    break
                start, end = self.cycle
                done = (self.step - start) / max(end - start, 1)
                if self.minutes:
                    done = max(done, elapsed / (self.minutes * 60))
                for group in self.optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * cosine_factor(done, self.floor)
                loss, columns = loss_of_step()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if after_backward is not None:
                    after_backward()
                if self.clip is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, self.clip)
                self.optimizer.step()
                self.step += 1
                value = float(loss.item())
                self.losses.append(value)
                self.seconds = time.perf_counter() - began
                if not self.main:
                    continue
                progress(self.step, value)
                if self.report is not None:
                    self.report(self.step / max(self.steps, 1), f"step {self.step} loss {value:.3f}")
                if self.work_dir is not None:
                    append_csv(self.work_dir / "log.csv", {
                        "step": self.step, "loss": round(value, 5), "lr": self.optimizer.param_groups[0]["lr"],
                        "seconds": round(self.seconds, 1), **columns})
                due = self.checkpoint_every and self.step % self.checkpoint_every == 0
                if due or self.step == self.steps:
                    self.sessions[-1].update({"to": self.step, "minutes": round(self.seconds / 60, 1)})
                    self.save(**(checkpoint_extra() if checkpoint_extra else {}))
                if after_step is not None:
                    after_step(self.step, value)
        finally:
            progress(None, None)
        if self.sessions and self.sessions[-1]["from"] == self.step:  # stopped by the budget before a step
            self.sessions.pop()
        elif self.sessions and self.sessions[-1]["to"] != self.step:  # stopped by the budget: its steps count
            self.sessions[-1].update({"to": self.step, "minutes": round(self.seconds / 60, 1)})
            self.save(**(checkpoint_extra() if checkpoint_extra else {}))


def sessions_text(sessions: list[dict]) -> str:
    """``"41.0 min"`` for a run in one process; per process (``--resume``) steps and minutes otherwise."""
    if not sessions:
        return "no training step"
    if len(sessions) == 1:
        return f"{sessions[0]['minutes'] or 0:.1f} min for steps 1-{sessions[0]['to']}"
    parts = [f"steps {s['from'] + 1}-{s['to']}" + (f" in {s['minutes']:.1f} min" if s["minutes"] is not None else "")
             for s in sessions]
    return f"{len(sessions)} sessions (resumed from checkpoints): {'; '.join(parts)}"


def append_csv(path: Path, row: dict) -> None:
    """Append ``row`` to a CSV file (its header first when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _bar(total: int, start: int, enabled: bool):
    """``update(step, loss)``: a tqdm bar on a terminal; written to a log or a pipe, one log line per 1 % of
    the steps instead of a wall of carriage returns. ``update(None, None)`` closes it."""
    if not enabled:
        return lambda step, loss: None
    if not sys.stderr.isatty():
        every, started = max(1, total // 100), time.time()

        def line(step, loss):
            if step is not None and (step % every == 0 or step == total):
                rate = (time.time() - started) / max(step - start, 1)
                log.info("step %d/%d loss %.3f (%.2f s/step, %.0f min left)", step, total, loss, rate,
                         rate * (total - step) / 60)

        return line
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(step, loss):
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    return update
