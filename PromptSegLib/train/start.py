"""Where a training run starts, for both trainers (dataset specs and packs): a new network or the ``--init``
model's, the body regions the new model knows, and the precision a step runs in."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from PromptSegLib.errors import PromptSegError
from PromptSegLib.models.folder import Model, ModelConfig
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.text.modality import MODALITIES
from PromptSegLib.train.config import TrainConfig


def build_network(config: TrainConfig, modalities: list[str], text_dim: int, base: Model | None) -> DuPLUSNet:
    """A new network, or one started from ``base`` (the ``config.init`` model) with input blocks added for new
    modalities, and with ``config.hints`` the drawn-slice input added (it starts at zero: the network gives what
    ``base`` gave until it learns to use it)."""
    if base is None:
        ordered = tuple(m for m in MODALITIES if m in modalities)
        return DuPLUSNet(NetworkConfig(modalities=ordered, widths=tuple(config.widths), text_dim=text_dim,
                                       hints=config.hints))
    net_config = base.config.network
    if net_config.text_dim != text_dim:
        raise PromptSegError(f"model {config.init} uses {net_config.text_dim}-d text embeddings, the encoder gives {text_dim}")
    added = [m for m in modalities if m not in net_config.modalities]
    net_config = NetworkConfig(**{**net_config.__dict__, "modalities": tuple(net_config.modalities) + tuple(added),
                                  "hints": net_config.hints or config.hints})
    network = DuPLUSNet(net_config)
    network.load_state_dict(base.network.state_dict(), strict=False)
    return network


HINT_LR = 2e-3
"""The learning rate of the drawn-slice input (``--hints``), which starts at zero while the rest of a fine-tuned
network starts trained (stop 47, ad hoc: 2e-3 there, 3e-4 elsewhere; 1000 steps raised the organ prior's fill on
the 61 validation organs at K = 2 from 0.8288 to 0.8323)."""


def parameter_groups(network: DuPLUSNet, lr: float) -> list[dict]:
    """The optimizer's groups for ``network``'s trainable parameters: the drawn-slice input's (``hint.``) at
    :data:`HINT_LR` where it has one, the others at ``lr``."""
    trainable = [(n, p) for n, p in network.named_parameters() if p.requires_grad]
    hint = [p for n, p in trainable if n.startswith("hint.")]
    return [{"params": [p for n, p in trainable if not n.startswith("hint.")], "lr": lr}] + (
        [{"params": hint, "lr": HINT_LR}] if hint else [])


def merged_regions(seen: Iterable[tuple[str, list[str]]], base: ModelConfig | None) -> dict[str, list[str]]:
    """Body regions per modality: ``base``'s, then those of each ``(modality, regions)`` trained on."""
    regions = {m: list(r) for m, r in (base.regions.items() if base else [])}
    for modality, names in seen:
        known = regions.setdefault(modality, [])
        known += [r for r in names if r not in known]
    return regions


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward pass runs in: bfloat16 autocast on CUDA, float32 elsewhere (CPUs
    here lack bfloat16 kernels)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
