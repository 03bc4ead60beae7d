"""Average the weights of runs of one model (a "model soup"): a model and its ``--init`` fine-tunes share an
architecture, targets, model grid and intensity rule, and their weight-space mean is often better than either.
The checkpoints one run kept along the way (``promptseg train --keep-every``) average the same way (stochastic
weight averaging): the mean of the weights at many late steps is steadier than the weights of any one step.

The average is a new, *untuned* model: its post-processing (largest component, own side, plausible sizes, the
region check) is cleared, to be chosen again with ``promptseg tune`` on validation cases. Its card records the
command and carries each source model's card, so the whole training history stays with it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import torch

from PromptSegLib.errors import ModelError
from PromptSegLib.models.folder import ModelConfig, card_lines, load_model, quoted, save_model
from PromptSegLib.models.network import DuPLUSNet

SHARED_FIELDS = ("network", "patch_size", "spacing_mm", "text_encoder", "targets", "intensity", "padding", "threshold")
"""Config fields that must be equal in every averaged model (what the weights were trained against)."""


def checkpoint_fields(config: ModelConfig) -> dict:
    """What a training checkpoint records of its run's model config: :data:`SHARED_FIELDS` but the network (a
    checkpoint holds that on its own), so that its weights are averaged only under a config they were trained with."""
    return {f: json.loads(json.dumps(getattr(config, f))) for f in SHARED_FIELDS if f != "network"}


def _check_compatible(configs: Sequence[ModelConfig], folders: Sequence[Path]) -> None:
    for config, folder in zip(configs[1:], folders[1:]):
        differ = [f for f in SHARED_FIELDS if getattr(config, f) != getattr(configs[0], f)]
        if differ:
            raise ModelError(f"{folder} cannot be averaged with {folders[0]}: their {', '.join(differ)} differ")
    if any(c.text_lora for c in configs):
        raise ModelError("models whose text encoder carries LoRA adapters cannot be averaged")


def average_models(folders: Sequence[str | Path], output: str | Path, version: str, name: str | None = None,
                   command: str = "") -> Path:
    """Write the element-wise mean of the weights of ``folders`` (two or more model folders of one kind, see
    ``SHARED_FIELDS``) as a new model folder ``output`` named ``name`` (default: the first model's) at
    ``version``; ``command`` is recorded in the card. Nothing is written on error.

    Raises:
        ModelError: fewer than two models, a folder fails its checks, or the models differ in a shared field.
        OutputError: ``output``'s parent folder is missing.
    """
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ModelError("averaging needs two or more model folders")
    models = [load_model(f) for f in folders]
    configs = [m.config for m in models]
    _check_compatible(configs, folders)
    network = _mean_network(configs[0], [m.network.state_dict() for m in models])
    modalities = {m for c in configs for m in c.regions}
    regions = {m: sorted({r for c in configs for r in c.regions.get(m, [])}) for m in sorted(modalities)}
    config = dataclasses.replace(configs[0].untuned(), name=name or configs[0].name, version=version,
                                 regions=regions)
    sources = ", ".join(f"{m.config.name} {m.config.version}" for m in models)
    body = []
    for index, model in enumerate(models, 1):
        body += [f"## Source {index}: {model.config.name} {model.config.version}, folder `{model.folder.name}` "
                 "(its card)", ""]
        body += quoted(card_lines(model.folder)) + [""]
    what = (f"The element-wise mean of the weights of {len(models)} runs of one model ({sources}), made by "
            "`promptseg average-models`.")
    return save_model(output, network, config, _card(config, what, command, body))


def average_checkpoints(checkpoints: Sequence[str | Path], model: str | Path, output: str | Path, version: str,
                        name: str | None = None, command: str = "") -> Path:
    """Write the element-wise mean of the networks in training ``checkpoints`` (``checkpoint.pt`` files of
    ``promptseg train``, e.g. those ``--keep-every`` kept) as a new, untuned model folder ``output``. The model
    folder ``model`` (the run's output) gives the config and the card; its own weights are not in the mean.
    A checkpoint records its run's config (:func:`checkpoint_fields`; those of earlier versions do not), and
    ``model``'s must match it. Nothing is written on error.

    Raises:
        ModelError: no checkpoint, one unreadable or not a training checkpoint, a checkpoint of another
            architecture or config than ``model``'s, or one whose text encoder carries LoRA adapters.
        OutputError: ``output``'s parent folder is missing.
    """
    paths = [Path(c) for c in checkpoints]
    if not paths:
        raise ModelError("averaging checkpoints needs one or more checkpoint files")
    source = load_model(model)
    _check_compatible([source.config], [source.folder])  # a model with LoRA adapters is refused
    fields = checkpoint_fields(source.config)
    states, steps = [], []
    for path in paths:
        state = _read_checkpoint(path)
        if state["network_config"] != source.config.network.to_dict():
            raise ModelError(f"{path} holds another architecture than model {source.folder}")
        recorded = state.get("model_fields", {})
        differ = [f for f, value in recorded.items() if fields.get(f) != value]
        if differ:
            raise ModelError(f"{path} was trained with another {', '.join(differ)} than model {source.folder} has: "
                             "name the run's output")
        if state.get("text_lora"):
            raise ModelError(f"{path}: checkpoints whose text encoder carries LoRA adapters cannot be averaged")
        states.append(state["network"])  # the optimiser's state is let go
        steps.append(int(state["step"]))
    network = _mean_network(source.config, states)
    config = dataclasses.replace(source.config.untuned(), name=name or source.config.name, version=version)
    what = (f"The element-wise mean of the weights of {len(paths)} training checkpoints (steps "
            f"{', '.join(map(str, steps))}), made by `promptseg average-models --checkpoints`. Its config is "
            f"model {source.config.name} {source.config.version}'s.")
    body = [*[f"- `{p.name}` in `{p.parent.name}`: step {s}" for p, s in zip(paths, steps)], "",
            f"## The model whose config it takes: {source.config.name} {source.config.version} (its card)", "",
            *quoted(card_lines(source.folder))]
    return save_model(output, network, config, _card(config, what, command, body))


def _mean_network(config: ModelConfig, states: Sequence[dict[str, torch.Tensor]]) -> DuPLUSNet:
    """A network of ``config``'s architecture whose weights are the element-wise mean of ``states``."""
    network = DuPLUSNet(config.network)
    network.load_state_dict({key: torch.stack([s[key].float() for s in states]).mean(0) for key in states[0]})
    return network


def _read_checkpoint(path: Path) -> dict:
    """A training checkpoint's entries, loaded as plain tensors and containers (never arbitrary objects)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # truncated, not a torch file, or holding objects beyond tensors and containers
        raise ModelError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(state, dict) or not {"network", "network_config", "step"} <= set(state):
        raise ModelError(f"{path} is not a checkpoint of promptseg train (no network, network config or step)")
    return state


def _card(config: ModelConfig, what: str, command: str, body: list[str]) -> str:
    """An average's card: ``what`` it is, that it is tuned again, the command, then ``body`` (its sources)."""
    lines = [f"# {config.name} {config.version}", "",
             f"{what} Its post-processing is chosen again on validation cases (`promptseg tune`, below when done).",
             "", "```", command or "(from Python)", "```", "", *body]
    return "\n".join(lines).rstrip("\n") + "\n"
