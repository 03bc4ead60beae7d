"""The prognosis network and its training (DuPLUS section 3.2.6).

:class:`PrognosisModel`: the MiniLM sentence encoder with LoRA adapters (peft) on the attention query and value
projections, mean-pooled and L2-normalised as :class:`~PromptSegLib.text.encoder.TextEncoder`, optionally joined
with image features F_dense ``(N, C)``, and a DeepHit head: a softmax over discrete time bins (cut at quantiles
of the training event times, plus one bin for "after the last cut"). Loss = alpha * negative log-likelihood with
censoring + (1 - alpha) * ranking loss exp(-(F_i(T_i) - F_j(T_i)) / sigma). Outputs: the risk score (cumulative
incidence at the horizon, by default the median training follow-up), a risk group (tertiles of the training
risks) and a survival curve per patient. :func:`train_deephit` trains the head, then LoRA and head together.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from PromptSegLib.errors import PromptSegError
from PromptSegLib.models.folder import PROGNOSIS_FORMAT
from PromptSegLib.prognosis.metrics import UndefinedMetricError
from PromptSegLib.prognosis.prompt import build_prompt
from PromptSegLib.prognosis.records import ClinicalDataError, ClinicalRecord, check_endpoints
from PromptSegLib.text.encoder import LoraSettings, TextEncoder

FORMAT = PROGNOSIS_FORMAT


@dataclass
class DeepHitSettings:
    bins: int = 10                 # cut points at quantiles of the training event times
    hidden: int = 32
    dropout: float = 0.2
    alpha: float = 0.5             # loss = alpha * NLL + (1 - alpha) * ranking
    sigma: float = 0.1
    head_epochs: int = 300         # phase 1: head on frozen prompt embeddings (full batch)
    head_lr: float = 1e-3
    weight_decay: float = 1e-3
    lora_epochs: int = 2           # phase 2: LoRA adapters + head (mini-batches); 0 = no LoRA training
    lora_lr: float = 5e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    batch_size: int = 32
    seed: int = 0
    horizon: float | None = None   # risk = cumulative incidence at this time; None = median training time

    @classmethod
    def from_dict(cls, data: dict) -> "DeepHitSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def time_cuts(times: np.ndarray, events: np.ndarray, bins: int) -> np.ndarray:
    """Bin upper edges: quantiles of the event times (unique, increasing, ending at the last event time)."""
    event_times = times[events.astype(bool)]
    if event_times.size == 0:
        raise UndefinedMetricError("cannot train DeepHit: every patient is censored (no event time to bin)")
    return np.unique(np.quantile(event_times, np.linspace(0, 1, bins + 1)[1:]))


def bin_index(times: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bin of each time: 0 for t <= cuts[0], ..., len(cuts) for t > cuts[-1]."""
    return np.searchsorted(cuts, times, side="left")


def deephit_loss(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.5,
                 sigma: float = 0.1) -> torch.Tensor:
    """DeepHit loss for one risk: alpha * NLL (with censoring) + (1 - alpha) * ranking loss.

    Args:
        logits: ``(N, K + 1)`` scores over the time bins.
        bins: ``(N,)`` bin of each patient's time; events: ``(N,)`` 1 event, 0 censored.

    NLL: an event in bin b contributes -log p_b; a patient censored in bin b (alive at its time, so
    certainly past the previous bin) contributes -log sum_{k >= b} p_k. Ranking: for pairs with an event of i
    in bin b_i before j's time, exp(-(F_i(b_i) - F_j(b_i)) / sigma), averaged over such pairs.
    """
    pmf = torch.softmax(logits, dim=1)
    cif = torch.cumsum(pmf, dim=1)
    bins = bins.long()
    events = events.float()
    eps = 1e-7
    p_event = pmf.gather(1, bins[:, None]).squeeze(1)
    survive_before = 1.0 - torch.where(bins > 0, cif.gather(1, (bins - 1).clamp_min(0)[:, None]).squeeze(1),
                                       torch.zeros_like(p_event))
    nll = -(events * torch.log(p_event + eps) + (1 - events) * torch.log(survive_before.clamp_min(0) + eps)).mean()
    f_at = cif[:, bins]  # f_at[j, i] = F_j(b_i)
    diag = f_at.diagonal()
    pair = (events[:, None] > 0) & (bins[:, None] < bins[None, :])
    if pair.any():
        diff = diag[:, None] - f_at.t()  # [i, j] = F_i(b_i) - F_j(b_i)
        rank = torch.exp(-diff / sigma)[pair].mean()
    else:
        rank = logits.sum() * 0.0
    return alpha * nll + (1 - alpha) * rank


class DeepHitHead(nn.Module):
    """MLP: features -> logits over len(cuts) + 1 time bins."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 32, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Prediction:
    """Per patient: ``risk`` (N,), ``survival`` (N, K) at ``times`` (K,), ``groups`` (N,) low/intermediate/high."""

    risk: np.ndarray
    survival: np.ndarray
    times: np.ndarray
    groups: list[str]
    expected_bin_time: np.ndarray


class PrognosisModel:
    """Prompt encoder (MiniLM + LoRA) [+ image features] -> DeepHit head."""

    def __init__(self, config: dict, encoder_folder: str | os.PathLike | None = None,
                 lora_state: dict[str, torch.Tensor] | None = None):
        self.config = config
        lora = config["lora"]
        self.text = TextEncoder(encoder_folder if encoder_folder is not None else config["encoder"],
                                lora=LoraSettings(lora["r"], lora["alpha"], lora["dropout"], tuple(lora["targets"])),
                                lora_state=lora_state)
        self.config["encoder"] = self.text.encoder_id
        self.encoder = self.text.model  # the peft-wrapped encoder (frozen but for its adapters)
        self.head = DeepHitHead(config["in_dim"], len(config["cuts"]) + 1, config["hidden"], config["dropout"]).eval()
        self.cuts = np.asarray(config["cuts"], dtype=float)

    # -- features ---------------------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text.embed(list(prompts))

    def features(self, prompts: Sequence[str], image: np.ndarray | None = None, batch_size: int = 64) -> torch.Tensor:
        """Standardised head input ``(N, in_dim)``: prompt embedding [+ image features]."""
        return self._join(self.embed(prompts, batch_size), image)

    def embed(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Prompt embeddings ``(N, D)`` through the adapted encoder (each distinct prompt encoded once)."""
        unique = list(dict.fromkeys(prompts))
        with torch.no_grad():
            self.encoder.eval()
            table = torch.cat([self._encode(unique[k:k + batch_size]) for k in range(0, len(unique), batch_size)])
        row = {p: i for i, p in enumerate(unique)}
        return table[[row[p] for p in prompts]]

    def _join(self, text: torch.Tensor, image: np.ndarray | None) -> torch.Tensor:
        cfg = self.config
        text = (text - torch.tensor(cfg["text_mean"])) / torch.tensor(cfg["text_std"])
        if cfg["image_dim"] == 0:
            if image is not None:
                raise PromptSegError("this prognosis model was trained without image features; do not pass any")
            return text
        if image is None:
            raise PromptSegError(f"this prognosis model needs image features (N, {cfg['image_dim']}) too")
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2 or image.shape != (text.shape[0], cfg["image_dim"]):
            raise PromptSegError(f"image features must be ({text.shape[0]}, {cfg['image_dim']}), got {image.shape}")
        if not np.isfinite(image).all():
            raise PromptSegError("image features contain NaN or infinite values")
        image = (torch.from_numpy(image) - torch.tensor(cfg["image_mean"])) / torch.tensor(cfg["image_std"])
        return torch.cat([text, image], dim=1)

    # -- prediction -------------------------------------------------------------------------------------
    def predict_features(self, x: torch.Tensor) -> Prediction:
        with torch.no_grad():
            pmf = torch.softmax(self.head.eval()(x), dim=1).double().numpy()
        cif = np.cumsum(pmf, axis=1)
        survival = np.clip(1.0 - cif[:, :-1], 0.0, 1.0)  # S at each cut
        risk = self.risk_from_cif(cif)
        mids = np.concatenate([self.cuts, [self.cuts[-1]]])
        low, high = self.config.get("risk_tertiles", [np.inf, np.inf])
        groups = ["high" if r > high else "intermediate" if r > low else "low" for r in risk]
        return Prediction(risk, survival, self.cuts.copy(), groups, pmf @ mids)

    def risk_from_cif(self, cif: np.ndarray) -> np.ndarray:
        """Cumulative incidence at the horizon (linear between cut points)."""
        grid = np.concatenate([[0.0], self.cuts])
        values = np.concatenate([np.zeros((cif.shape[0], 1)), cif[:, :-1]], axis=1)
        h = float(self.config["horizon"])
        return np.array([np.interp(h, grid, row) for row in values])

    def predict(self, prompts: Sequence[str], image: np.ndarray | None = None) -> Prediction:
        return self.predict_features(self.features(prompts, image))

    def predict_records(self, records: Sequence[ClinicalRecord], image: np.ndarray | None = None) -> Prediction:
        return self.predict([self.prompt(r) for r in records], image)

    def prompt(self, record: ClinicalRecord) -> str:
        return build_prompt(record, self.config["modality"], self.config["region"])

    def lora_state(self) -> dict[str, torch.Tensor]:
        return self.text.lora_state()


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_deephit(prompts: Sequence[str], times, events, image: np.ndarray | None = None,
                  settings: DeepHitSettings | None = None, encoder: str | os.PathLike | None = None,
                  modality: str = "CT", region: str = "Head & Neck",
                  log: Callable[[str], None] | None = None) -> PrognosisModel:
    """Train LoRA + DeepHit head on prompts (+ image features ``(N, C)``) and endpoints.

    Phase 1 trains the head on the frozen prompt embeddings (LoRA B matrices start at zero, so the
    adapted encoder equals the frozen one); phase 2 trains the LoRA adapters and the head together.
    Only LoRA and head parameters ever receive gradients.
    """
    settings = settings or DeepHitSettings()
    times = np.asarray(times, dtype=float)
    events = np.asarray(events).astype(int)
    if len(prompts) != len(times) or len(events) != len(times):
        raise ClinicalDataError(f"{len(prompts)} prompts, {len(times)} times and {len(events)} events differ in number")
    check_endpoints(times, events)
    if events.sum() == 0:
        raise UndefinedMetricError("cannot train DeepHit: every patient is censored (no event)")
    if image is not None:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2 or image.shape[0] != len(times):
            raise ClinicalDataError(f"image features must be (N={len(times)}, C), got {image.shape}")
        if not np.isfinite(image).all():
            raise ClinicalDataError("image features contain NaN or infinite values")
    _set_seed(settings.seed)
    cuts = time_cuts(times, events, settings.bins)
    config = {
        "format": FORMAT, "encoder": None, "modality": modality, "region": region,
        "lora": {"r": settings.lora_r, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout,
                 "targets": ["query", "value"]},
        "cuts": cuts.tolist(), "hidden": settings.hidden, "dropout": settings.dropout,
        "horizon": float(settings.horizon if settings.horizon is not None else np.median(times)),
        "image_dim": 0 if image is None else int(image.shape[1]), "settings": asdict(settings),
    }
    model_config = dict(config, in_dim=1, text_mean=0.0, text_std=1.0)
    model = PrognosisModel(model_config, encoder)
    raw = model.embed(list(prompts))
    model.config["text_mean"] = raw.mean(0).tolist()
    model.config["text_std"] = [float(raw.std(0).pow(2).sum().sqrt().clamp_min(1e-4))] * raw.shape[1]
    if image is not None:
        model.config["image_mean"] = image.mean(0).tolist()
        model.config["image_std"] = np.maximum(image.std(0), 1e-6).tolist()
    model.config["in_dim"] = model.config["image_dim"] + raw.shape[1]
    model.head = DeepHitHead(model.config["in_dim"], len(cuts) + 1, settings.hidden, settings.dropout)
    x = model._join(raw, image)
    b = torch.from_numpy(bin_index(times, cuts))
    e = torch.from_numpy(events)

    optimizer = torch.optim.AdamW(model.head.parameters(), lr=settings.head_lr, weight_decay=settings.weight_decay)
    model.head.train()
    for epoch in range(settings.head_epochs):
        optimizer.zero_grad()
        loss = deephit_loss(model.head(x), b, e, settings.alpha, settings.sigma)
        loss.backward()
        optimizer.step()
        if log and (epoch + 1) % 100 == 0:
            log(f"head epoch {epoch + 1}/{settings.head_epochs}: loss {loss.item():.4f}")

    if settings.lora_epochs > 0:
        lora_params = model.text.lora_parameters()
        optimizer = torch.optim.AdamW([{"params": lora_params, "lr": settings.lora_lr},
                                       {"params": model.head.parameters(), "lr": settings.head_lr}],
                                      weight_decay=settings.weight_decay)
        generator = np.random.default_rng(settings.seed)
        image_t = None if image is None else image
        # the encoder stays in eval mode: BERT's own dropout would perturb the embeddings the head was fitted
        # to (LoRA dropout, if set, is also off); gradients still reach the adapters
        model.encoder.eval()
        for epoch in range(settings.lora_epochs):
            model.head.train()
            order = generator.permutation(len(times))
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                idx = order[start:start + settings.batch_size]
                optimizer.zero_grad()
                text = model._encode([prompts[i] for i in idx])
                xb = model._join(text, None if image_t is None else image_t[idx])
                loss = deephit_loss(model.head(xb), b[idx], e[idx], settings.alpha, settings.sigma)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            if log:
                log(f"LoRA epoch {epoch + 1}/{settings.lora_epochs}: loss {total / len(order):.4f}")
    model.head.eval()
    if settings.lora_epochs > 0:
        train_risk = model.predict(list(prompts), image).risk
    else:  # the encoder did not change: reuse the embeddings
        train_risk = model.predict_features(x).risk
    model.config["risk_tertiles"] = np.quantile(train_risk, [1 / 3, 2 / 3]).tolist()
    return model
