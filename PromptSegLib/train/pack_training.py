"""Training the dual-prompt model on a pack (``train.pack``): the steps of ``promptseg train`` with the crops
drawn and augmented on the training device, for a lent GPU machine that has torch but neither SimpleITK, the
dataset files nor the text encoder.

Each step draws a dataset, then per sample a crop (``train.pack_crops``), a context paraphrase and a paraphrase
of every target of the dataset plus ``absent_targets`` targets certainly absent from it (empty truth), all
embedded in the pack; loss and schedule are those of ``promptseg train`` (``train.loss``, ``train.loop``),
bfloat16 autocast on CUDA. With ``--hints`` most crops centred on a target show it drawn on a few axial planes,
as ``promptseg train --hints`` does (``train.drawn``). No validation runs here: ``promptseg tune`` and
``promptseg evaluate`` measure the model folder on a machine with the data.

Usage (on the GPU machine, from the repository root)::

    python3 -m PromptSegLib.train.pack_training PACK -o MODEL --init PromptSegLib/models/promptseg-hn-oars \\
        --steps 20000 --minutes 8 --batch-size 8 --patch-size 64 64 64 --device cuda
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from PromptSegLib.errors import PromptSegError
from PromptSegLib.models.average import checkpoint_fields
from PromptSegLib.models.device import select_device
from PromptSegLib.models.folder import ModelConfig, load_model, save_model
from PromptSegLib.models.network import count_parameters
from PromptSegLib.train.card import model_card
from PromptSegLib.train.config import TrainConfig, add_training_arguments, config_from_args
from PromptSegLib.train.drawn import crop_hint
from PromptSegLib.train.loop import TrainingLoop
from PromptSegLib.train.loss import dice_bce_loss
from PromptSegLib.train.pack import Pack, read_pack
from PromptSegLib.train.pack_crops import PackSampler, augment_crop, crop, random_affine
from PromptSegLib.train.start import build_network, merged_regions, mixed_precision, parameter_groups

log = logging.getLogger(__name__)
COMMAND = "python3 -m PromptSegLib.train.pack_training"


def train_on_pack(config: TrainConfig, command: str | None = None, trainer: str = COMMAND) -> Path:
    """Train on the pack in ``config.spec``; returns the model folder written at ``config.output``. Only the
    pack's ``spacing_mm`` counts (``config.spacing_mm`` is ignored); ``command`` and ``trainer`` go into the card.

    Raises:
        PromptSegError: a pack that does not fit ``config.init``, or the device ran out of memory.
    """
    pack = read_pack(config.spec)
    device = select_device(config.device, config.threads)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    base = load_model(config.init) if config.init else None
    if base is not None and base.config.text_encoder != pack.text_encoder:
        raise PromptSegError(f"the pack's prompts were embedded by {pack.text_encoder}, model {config.init} uses "
                             f"{base.config.text_encoder}: pack again with --init {config.init}")
    config.spacing_mm = pack.spacing_mm
    network = build_network(config, sorted({d.modality for d in pack.datasets.values()}), pack.prompts.shape[1],
                            base).to(device)
    model_config = _model_config(config, pack, network, base.config if base else None)
    volumes = [torch.from_numpy(c.image).to(device) for c in pack.cases]
    labels = [torch.from_numpy(c.label).to(device) for c in pack.cases]
    prompts = torch.from_numpy(pack.prompts).to(device)
    names = sorted(pack.datasets)
    members = {n: [i for i, c in enumerate(pack.cases) if c.dataset == n] for n in names}
    samplers = {n: PackSampler([pack.cases[i] for i in members[n]], pack.datasets[n].targets, config.foreground_ratio)
                for n in names}
    label_values = {n: [torch.tensor(d.labels[t], dtype=torch.uint8, device=device) for t in d.targets]
                    for n, d in pack.datasets.items()}  # per dataset, its targets' label values, made once
    optimizer = torch.optim.AdamW(parameter_groups(network, config.lr), weight_decay=config.weight_decay)
    loop = TrainingLoop(optimizer, config.steps, floor=0.01, minutes=config.minutes, clip=12.0,
                        work_dir=config.work_dir, checkpoint_every=config.checkpoint_every,
                        keep_every=config.keep_every, saved={"network": network})
    if config.resume and loop.resume(device) is not None:
        rng = np.random.default_rng(config.seed + loop.step)
    autocast = mixed_precision(device)
    torch.backends.cudnn.benchmark = True  # one patch size throughout
    log.info("training %s on pack %s: %d parameters, %d cases, %s", config.name, pack.folder,
             count_parameters(network), len(pack.cases), device)

    def loss_of_step() -> tuple[torch.Tensor, dict]:
        name = names[rng.integers(len(names))]
        dataset, sampler = pack.datasets[name], samplers[name]
        absent = [dataset.absent[i] for i in rng.permutation(len(dataset.absent))[:config.absent_targets]]
        values = label_values[name]
        images, truths, known, rows, hints = [], [], [], [], []
        for _ in range(config.batch_size):
            picked, centre, target = sampler.draw(rng)
            index = members[name][picked]
            case = pack.cases[index]
            image, label = crop(volumes[index], labels[index], centre, config.patch_size,
                                random_affine(rng, config.augment))
            if config.augment:
                image, label = augment_crop(image, label, rng)
            images.append(image[None])
            truth = torch.stack([torch.isin(label, v) for v in values]
                                + [torch.zeros_like(label, dtype=torch.bool)] * len(absent))
            if network.config.hints:
                hints.append(_hint(truth[dataset.targets.index(target)] if target else None, label, rng))
            truths.append(truth)
            known.append(np.concatenate([case.labelled, np.ones(len(absent), np.float32)]))
            rows.append([_pick(dataset.contexts, rng)]
                        + [_pick(dataset.prompts[t], rng) for t in dataset.targets + absent])
        rows_tensor = torch.as_tensor(rows, device=device)
        network.train()
        with autocast:
            logits = network(torch.stack(images), dataset.modality, prompts[rows_tensor[:, 0]],
                             prompts[rows_tensor[:, 1:]], torch.stack(hints) if hints else None)
        loss = dice_bce_loss(logits.float(), torch.stack(truths).float(),
                             torch.from_numpy(np.stack(known)).to(device))
        return loss, {"dataset": name}

    try:
        loop.run(loss_of_step, checkpoint_extra=lambda: {"seed": config.seed,
                                                         "network_config": network.config.to_dict(),
                                                         "model_fields": checkpoint_fields(model_config)})
    except torch.cuda.OutOfMemoryError as exc:
        raise PromptSegError(f"out of GPU memory at step {loop.step}: lower --batch-size or --patch-size") from exc
    data = [f"- train: dataset `{c.dataset}` ({pack.datasets[c.dataset].modality}, "
            f"{', '.join(pack.datasets[c.dataset].regions)}), case `{c.id}`" for c in pack.cases]
    data += ["", f"From the pack `{pack.folder.name}`, made by `promptseg pack {pack.spec}` at {pack.spacing_mm} mm "
             "(intensities in 256 steps of the CT window)."]
    card = model_card(config, model_config, data, {}, device, count_parameters(network), loop.sessions,
                      command or COMMAND, trainer)
    return save_model(config.output, network.cpu(), model_config, card, base.text_lora_state if base else None)


def _hint(shown: torch.Tensor | None, label: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """:func:`~PromptSegLib.train.drawn.crop_hint` of one crop, on its ``label``'s device and shape: ``shown``, bool
    ``(z, y, x)``, the centred target's voxels (``None`` where none is centred)."""
    shown = shown.cpu().numpy() if shown is not None else None
    return torch.from_numpy(crop_hint(shown, tuple(label.shape), rng)).to(label.device)


def _pick(rows: list[int], rng: np.random.Generator) -> int:
    return rows[rng.integers(len(rows))]


def _model_config(config: TrainConfig, pack: Pack, network, base: ModelConfig | None) -> ModelConfig:
    """The new model's config: the pack's targets, regions and CT rule, joined with ``base``'s."""
    targets = sorted({t for d in pack.datasets.values() for t in d.targets} | set(base.targets if base else []))
    regions = merged_regions([(d.modality, d.regions) for d in pack.datasets.values()], base)
    return ModelConfig(config.name, config.version, network.config, tuple(config.patch_size), pack.spacing_mm,
                       pack.text_encoder, targets, regions, intensity=pack.intensity,
                       text_lora=base.text_lora if base else None, padding="replicate")


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module)."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    add_pack_training_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        folder = train_on_pack(config_from_args(args), f"{COMMAND} {shlex.join(argv)}")
    except PromptSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote model {folder}")
    return 0


def add_pack_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a training on a pack: the pack folder and every trainer's options."""
    parser.add_argument("spec", metavar="PACK", help="pack folder (promptseg pack)")
    add_training_arguments(parser)


if __name__ == "__main__":
    sys.exit(main())
