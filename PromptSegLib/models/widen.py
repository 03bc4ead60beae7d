"""Widen a DuPLUS model without changing what it computes (Net2WiderNet, Chen et al. 2016), so that a run can go
on from a trained model with more channels instead of starting a wider network from scratch.

Each new channel of a level copies an old one (its incoming weights, norm and FiLM parameters); every layer
that reads the level splits an old channel's outgoing weights among its copies in random proportions that sum
to one. Instance norm sees identical copies, so every feature, the pooled bottleneck and the logits are those
of the old network (to rounding). The unequal splits make the copies' gradients differ, so training separates
them.

The widened model keeps its source's config (targets, grid, intensity rule, post-processing: the function is
the same); its card records the command, the largest logit change measured on a random window, and the source's
card.

Beside ``promptseg widen``, the entry point ``python3 -m PromptSegLib.models.widen MODEL -o OUT --widths 16 48 96 192
--version V`` runs where SimpleITK is missing (a lent GPU machine: ``scripts/device_train.sh``).
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from PromptSegLib.errors import ModelError, PromptSegError
from PromptSegLib.models.folder import Model, card_lines, load_model, quoted, save_model
from PromptSegLib.models.network import DuPLUSNet, ResBlock


@dataclasses.dataclass(frozen=True)
class ChannelMap:
    """How a level's new channels come from its old ones.

    Attributes:
        source: ``(new,)`` long: the old channel each new channel copies (the first ``old`` are themselves).
        share: ``(new,)`` float: the part of an old channel's outgoing weight each copy carries (the shares of
            one old channel's copies sum to one).
    """

    source: torch.Tensor
    share: torch.Tensor

    @classmethod
    def make(cls, old: int, new: int, generator: torch.Generator) -> "ChannelMap":
        extra = torch.randint(0, old, (new - old,), generator=generator)
        source = torch.cat([torch.arange(old), extra])
        weight = 0.5 + torch.rand(new, generator=generator, dtype=torch.float64)  # in [0.5, 1.5)
        total = torch.zeros(old, dtype=torch.float64).index_add_(0, source, weight)
        return cls(source, (weight / total[source]).float())

    @classmethod
    def identity(cls, channels: int) -> "ChannelMap":
        return cls(torch.arange(channels), torch.ones(channels))

    def joined(self, other: "ChannelMap", offset: int) -> "ChannelMap":
        """The map of a concatenation ``[self's channels, other's]``, ``other``'s old channels after ``offset``."""
        return ChannelMap(torch.cat([self.source, other.source + offset]), torch.cat([self.share, other.share]))


def _copy(values: torch.Tensor, out: ChannelMap, dim: int = 0) -> torch.Tensor:
    return values.index_select(dim, out.source)


def _split(values: torch.Tensor, into: ChannelMap, dim: int = 1) -> torch.Tensor:
    shape = [1] * values.dim()
    shape[dim] = -1
    return values.index_select(dim, into.source) * into.share.view(shape)


def _conv(old: nn.Module, new: nn.Module, into: ChannelMap, out: ChannelMap, in_dim: int = 1, out_dim: int = 0) -> None:
    new.weight.copy_(_copy(_split(old.weight, into, in_dim), out, out_dim))
    if old.bias is not None:
        new.bias.copy_(_copy(old.bias, out))


def _norm(old: nn.Module, new: nn.Module, out: ChannelMap) -> None:
    new.weight.copy_(_copy(old.weight, out))
    new.bias.copy_(_copy(old.bias, out))


def _block(old: ResBlock, new: ResBlock, into: ChannelMap, out: ChannelMap) -> None:
    _conv(old.conv1, new.conv1, into, out)
    _norm(old.norm1, new.norm1, out)
    _conv(old.conv2, new.conv2, out, out)
    _norm(old.norm2, new.norm2, out)
    if not isinstance(old.skip, nn.Identity):
        _conv(old.skip[0], new.skip[0], into, out)
        _norm(old.skip[1], new.skip[1], out)


def _film(old, new, out: ChannelMap, channels: int) -> None:
    """The FiLM MLP's last layer gives ``(gamma, beta)``: both halves follow the level's channels."""
    for name in ("weight", "bias"):
        values = getattr(old.mlp[-1], name)
        getattr(new.mlp[-1], name).copy_(torch.cat([_copy(values[:channels], out), _copy(values[channels:], out)]))
    new.mlp[0].load_state_dict(old.mlp[0].state_dict())


def _head(old, new, text_dim: int, dense: ChannelMap, features: ChannelMap, old_features: int) -> None:
    """MLP_pred reads ``[E_T2; F_dense]`` (the dense part split) and writes the kernels, whose first one reads
    the full-resolution features (``(h, C)``: its weights split, as any reader's)."""
    first_old, first_new = old.mlp[0], new.mlp[0]
    text_part, dense_part = first_old.weight[:, :text_dim], first_old.weight[:, text_dim:]
    first_new.weight.copy_(torch.cat([text_part, _split(dense_part, dense)], 1))
    first_new.bias.copy_(first_old.bias)
    h = old.shapes[0][0]
    rows = (features.source[None, :] + old_features * torch.arange(h)[:, None]).reshape(-1)  # w1[k, j] rows
    scale = features.share.repeat(h)
    last_old, last_new = old.mlp[-1], new.mlp[-1]
    first = h * old_features
    last_new.weight.copy_(torch.cat([last_old.weight[rows] * scale[:, None], last_old.weight[first:]]))
    last_new.bias.copy_(torch.cat([last_old.bias[rows] * scale, last_old.bias[first:]]))


def widen_network(network: DuPLUSNet, widths: Sequence[int], seed: int = 0) -> DuPLUSNet:
    """A copy of ``network`` with ``widths`` channels per level (each at least the old one), computing the same
    features and logits to rounding (module docstring). Raises ``ModelError`` on a narrower or other-depth
    ``widths``."""
    old_widths, widths = list(network.config.widths), [int(w) for w in widths]
    if len(widths) != len(old_widths) or any(n < o for n, o in zip(widths, old_widths)):
        raise ModelError(f"widths {widths} cannot widen {old_widths}: give as many levels, none narrower")
    generator = torch.Generator().manual_seed(seed)
    maps = [ChannelMap.make(o, n, generator) for o, n in zip(old_widths, widths)]
    wide = DuPLUSNet(dataclasses.replace(network.config, widths=tuple(widths)))
    with torch.no_grad():
        for modality, block in network.inputs.items():
            _block(block, wide.inputs[modality], ChannelMap.identity(1), maps[0])
        for level, (old, new) in enumerate(zip(network.down, wide.down), 1):
            _block(old, new, maps[level - 1], maps[level])
        for level, (old, new) in enumerate(zip(network.film_enc, wide.film_enc)):
            _film(old, new, maps[level], old_widths[level])
        for k, level in enumerate(range(len(widths) - 1, 0, -1)):  # the decoder, deepest first
            _conv(network.up[k], wide.up[k], maps[level], maps[level - 1], in_dim=0, out_dim=1)
            joined = maps[level - 1].joined(maps[level - 1], old_widths[level - 1])  # [upsampled, skip]
            _block(network.merge[k], wide.merge[k], joined, maps[level - 1])
            _film(network.film_dec[k], wide.film_dec[k], maps[level - 1], old_widths[level - 1])
        _head(network.head, wide.head, network.config.text_dim, maps[-1], maps[0], old_widths[0])
    return wide.eval()


def largest_change(before: DuPLUSNet, after: DuPLUSNet, modality: str, size: int = 32, seed: int = 0) -> float:
    """The largest logit difference of the two networks on one random ``size``^3 window (random context and
    three random targets, unit-norm like the text encoder's)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 1, size, size, size, generator=generator)
    texts = torch.nn.functional.normalize(torch.randn(4, before.config.text_dim, generator=generator), dim=-1)
    with torch.no_grad():
        return float((before(image, modality, texts[0], texts[1:]) - after(image, modality, texts[0], texts[1:]))
                     .abs().max())


def widen_model(folder: str | Path, output: str | Path, widths: Sequence[int], version: str, seed: int = 0,
                command: str = "") -> Path:
    """Write ``folder``'s model widened to ``widths`` as a new model folder ``output`` at ``version``; nothing is
    written on error. The card records ``command``, the measured largest logit change, and the source's card."""
    model: Model = load_model(folder)
    wide = widen_network(model.network, widths, seed)
    change = largest_change(model.network, wide, model.config.network.modalities[0])
    config = dataclasses.replace(model.config, network=wide.config, version=version)
    return save_model(output, wide, config, _card(model, config, command, change, seed))


def _card(model: Model, config, command: str, change: float, seed: int) -> str:
    lines = [f"# {config.name} {config.version}", "",
             f"{model.config.name} {model.config.version} widened from widths {list(model.config.network.widths)} "
             f"to {list(config.network.widths)} by `promptseg widen` (Net2WiderNet: new channels copy old ones, "
             f"their readers split the old weights; seed {seed}), not trained further. Largest logit change on a "
             f"random 32^3 window: {change:.2e} (float32, before the weights were stored in float16). Its "
             "post-processing is its source's.", "", "```", command or "(from Python)", "```", "",
             f"## Source: {model.config.name} {model.config.version} (its card)", ""]
    lines += quoted(card_lines(model.folder))
    return "\n".join(lines).rstrip("\n") + "\n"


COMMAND = "python3 -m PromptSegLib.models.widen"


def add_widen_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a widening (``promptseg widen`` and :data:`COMMAND`)."""
    parser.add_argument("model", help="model folder or name")
    parser.add_argument("-o", "--output", required=True, help="model folder to write")
    parser.add_argument("--widths", type=int, nargs="+", required=True, help="channels per level, none fewer than "
                        "the model's, e.g. 16 48 96 192")
    parser.add_argument("--version", required=True)
    parser.add_argument("--seed", type=int, default=0, help="which old channels the new ones copy, and the splits")


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module)."""
    from PromptSegLib.models.catalogue import resolve_model

    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    add_widen_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        folder = widen_model(resolve_model(args.model), args.output, args.widths, args.version, args.seed,
                             f"{COMMAND} {shlex.join(argv)}")
    except PromptSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
