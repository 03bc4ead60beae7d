"""The propagation model folder: what its ``config.json`` holds, the loaded model, and writing and reading the
folder (weights fp16, config, card, SHA256SUMS; same layout as DuPLUS folders, its own ``format``)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from PromptSegLib.errors import ModelError
from PromptSegLib.models.folder import (BUNDLED_MODELS, CARD, CONFIG, PROPAGATION_FORMAT, WEIGHTS, load_weights,
                                        verify_folder, write_model_folder)
from PromptSegLib.propagate.net import PromptUNet2D, PropagationNetConfig

FORMAT = PROPAGATION_FORMAT
FORMAT_VERSION = 1
ARCHITECTURE = "PromptUNet2D"
BUNDLED_PROPAGATION_MODEL = BUNDLED_MODELS / "promptseg-propagation"


@dataclass
class PropagationConfig:
    """What a propagation model folder's ``config.json`` holds.

    Attributes:
        network: the :class:`PromptUNet2D` architecture.
        input_size: side ``S`` of the square network input (pixels).
        roi_scale: network box side = ``roi_scale`` x the prompt mask's bounding-box side.
        min_roi: smallest box side in slice pixels.
        quantiles: percentiles of the robust per-slice min-max normalisation.
        threshold: probability at or above which a pixel is in the mask.
        ssim_threshold: SSIM(query, prompt) under which the prompt is re-chosen from the buffer.
        v: largest prompt-query distance seen in training.
        training: free-form record of how the model was trained.
    """

    name: str = "promptseg-propagation"
    version: str = "0.1.0"
    network: PropagationNetConfig = field(default_factory=PropagationNetConfig)
    input_size: int = 96
    roi_scale: float = 2.0
    min_roi: int = 32
    quantiles: tuple[float, float] = (0.5, 99.5)
    threshold: float = 0.5
    ssim_threshold: float = 0.6
    v: int = 7
    training: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": ARCHITECTURE,
                "name": self.name, "version": self.version, "network": self.network.to_dict(),
                "input_size": self.input_size, "roi_scale": self.roi_scale, "min_roi": self.min_roi,
                "quantiles": list(self.quantiles), "threshold": self.threshold,
                "ssim_threshold": self.ssim_threshold, "v": self.v, "training": self.training}

    @classmethod
    def from_dict(cls, data: dict) -> "PropagationConfig":
        if data.get("format") != FORMAT or data.get("architecture") != ARCHITECTURE:
            raise ModelError("config.json is not a PromptSeg propagation model config")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"propagation model format version {data.get('format_version')} is not supported "
                             f"(this PromptSeg reads version {FORMAT_VERSION})")
        try:
            config = cls(name=data["name"], version=str(data["version"]),
                         network=PropagationNetConfig.from_dict(data["network"]),
                         input_size=int(data["input_size"]), roi_scale=float(data["roi_scale"]),
                         min_roi=int(data["min_roi"]), quantiles=tuple(float(q) for q in data["quantiles"]),
                         threshold=float(data["threshold"]), ssim_threshold=float(data["ssim_threshold"]),
                         v=int(data["v"]), training=dict(data.get("training", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"config.json is incomplete or malformed: {exc}") from exc
        if config.input_size % config.network.divisor:
            raise ModelError(f"input size {config.input_size} is not a multiple of {config.network.divisor}")
        return config


@dataclass
class PropagationModel:
    """A loaded propagation model: config, network (float32, eval mode) and its folder."""

    config: PropagationConfig
    network: PromptUNet2D
    folder: Path | None = None

    @classmethod
    def untrained(cls, config: PropagationConfig | None = None, seed: int = 0) -> "PropagationModel":
        """A randomly initialised model (for mechanics tests and as the start of training)."""
        torch.manual_seed(seed)
        config = config or PropagationConfig()
        return cls(config, PromptUNet2D(config.network).eval())


def save_propagation_model(folder: str | os.PathLike, model: PropagationModel, card: str) -> Path:
    """Write a complete propagation model folder atomically (weights fp16, config, card, SHA256SUMS; see
    ``models.folder.write_model_folder``)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> list[str]:
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.network.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(card, encoding="utf-8")
        return [WEIGHTS, CONFIG, CARD]

    model.folder = write_model_folder(folder, write)
    return model.folder


def load_propagation_model(folder: str | os.PathLike | None = None) -> PropagationModel:
    """Verify (SHA256SUMS) and load a propagation model folder (default: the bundled one).

    Raises:
        ModelError: missing/altered files, another format, or weights that do not fit the config.
    """
    folder = verify_folder(Path(folder) if folder is not None else BUNDLED_PROPAGATION_MODEL)
    try:
        config = PropagationConfig.from_dict(json.loads((folder / CONFIG).read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{folder / CONFIG} is not valid JSON: {exc}") from exc
    return PropagationModel(config, load_weights(PromptUNet2D(config.network), folder), folder)
