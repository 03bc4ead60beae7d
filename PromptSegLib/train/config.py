"""The settings of one ``promptseg train`` run."""
from __future__ import annotations

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
    lr: float = 2e-3
    weight_decay: float = 1e-5
    foreground_ratio: float = 0.67
    absent_targets: int = 2
    lora_rank: int = 0
    lora_lr: float = 5e-4
    augment: bool = True
    validate_every: int = 250
    checkpoint_every: int = 100
    init: str | None = None
    freeze_backbone: bool = False
    text_encoder: str | None = None
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    resume: bool = False
    checkpoints: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def work_dir(self) -> Path:
        """Checkpoint, logs and validation tables: ``checkpoints`` or, by default, ``OUTPUT.work`` (keep it
        outside a repository checkout, so that a run resumed in a later session finds it)."""
        return Path(self.checkpoints or f"{self.output}.work")
