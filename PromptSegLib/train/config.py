"""The settings of one ``promptseg train`` run, and the command-line options they come from (shared by
``promptseg train`` and the training of packs)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    """Settings of one training run (every field is a ``promptseg train`` option)."""

    spec: str
    output: str
    name: str = "promptseg-custom"
    version: str = "0.1.0"
    widths: tuple[int, ...] = (16, 32, 64, 128)
    patch_size: tuple[int, int, int] = (64, 64, 64)
    spacing_mm: float = 1.5
    batch_size: int = 2
    steps: int = 1000
    minutes: float | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-5
    foreground_ratio: float = 0.67
    absent_targets: int = 2
    lora_rank: int = 0
    lora_lr: float = 5e-4
    augment: bool = True
    validate_every: int = 250
    checkpoint_every: int = 100
    keep_every: int = 0
    init: str | None = None
    freeze_backbone: bool = False
    hints: bool = False
    text_encoder: str | None = None
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    resume: bool = False
    checkpoints: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from PromptSegLib.train.loop import check_keep_every

        check_keep_every(self.keep_every, self.checkpoint_every)  # before the data is read

    @property
    def work_dir(self) -> Path:
        """Checkpoint, logs and validation tables: ``checkpoints`` or, by default, ``OUTPUT.work`` (keep it
        outside a repository checkout, so that a run resumed in a later session finds it)."""
        return Path(self.checkpoints or f"{self.output}.work")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every trainer takes (``-o``, the network, the steps and the crops, where it runs)."""
    parser.add_argument("-o", "--output", required=True, help="model folder to write")
    parser.add_argument("--name")
    parser.add_argument("--version")
    parser.add_argument("--widths", type=int, nargs="+", help="channels per level, e.g. 16 32 64 128")
    parser.add_argument("--patch-size", type=int, nargs=3)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--minutes", type=float,
                        help="wall-time budget: the cosine schedule ends at the steps or the budget, whichever first")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--foreground-ratio", type=float)
    parser.add_argument("--absent-targets", type=int,
                        help="targets of other body regions prompted per step with an empty truth (default 2)")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--keep-every", type=int, metavar="STEPS",
                        help="also keep the checkpoint of every so many steps (a multiple of --checkpoint-every) in "
                        "the checkpoint folder, for promptseg average-models --checkpoints (default: none)")
    parser.add_argument("--init", help="model folder to fine-tune from")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    parser.add_argument("--hints", action="store_true", default=None,
                        help="teach the network to take slices a user drew (the organ prior of `promptseg fill`): "
                        "most crops centred on a target show it on a few of their axial planes as a second input")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue from the checkpoint in the checkpoint folder")
    parser.add_argument("--checkpoints", help="folder for the checkpoint and logs (default OUTPUT.work); keep it "
                        "outside the repository so that a run can be resumed in a later session")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options (those not given keep their defaults)."""
    options = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    for key in ("widths", "patch_size"):
        if key in options:
            options[key] = tuple(options[key])
    return TrainConfig(**options)
