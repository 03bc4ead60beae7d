"""Training the dual-prompt model (DuPLUS recipe, sized for a CPU by default).

Each step draws, per sample, a crop of a training case centred on one of its dataset's targets, each target
equally often (``samples.CentreSampler``), or anywhere (``1 - foreground_ratio`` of the crops), a paraphrase of
its context prompt, and a paraphrase of every target its dataset names, present in the crop or not (an
absent target's truth is empty: the model learns to obey the prompt), plus a few targets certainly absent
from its images: those of the other datasets that belong to body regions this dataset does not image ("the
liver" on a brain MR must give nothing) and those the spec lists as absent from it (a tumour on a healthy
brain). Loss: soft Dice per target present in the crop + BCE over every target, leaving out the targets not
delineated for the case (``CaseSpec.unlabelled``: unknown, not absent). With ``hints`` most crops centred on a
target also show it drawn on a few planes (``train.drawn``), as the organ prior of a fill gives them.
AdamW in the shared loop (``train.loop``: cosine schedule, checkpoints every N steps that ``--resume`` continues,
with more ``--steps`` than planned a new cosine cycle from the checkpoint to the new end, a CSV log); validation
Dice on the model grid. Under ``torchrun`` it trains with DistributedDataParallel.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from PromptSegLib.errors import PromptSegError
from PromptSegLib.models.average import checkpoint_fields
from PromptSegLib.models.device import select_device
from PromptSegLib.models.folder import Model, ModelConfig, load_model, save_model
from PromptSegLib.models.network import DuPLUSNet, count_parameters
from PromptSegLib.preprocessing.intensity import IntensityRule
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.text.encoder import LoraSettings, TextEncoder
from PromptSegLib.text.prompts import paraphrases
from PromptSegLib.text.vocabulary import Vocabulary, default_vocabulary
from PromptSegLib.train.card import case_lines, model_card
from PromptSegLib.train.config import TrainConfig
from PromptSegLib.train.datasets import (DatasetSpec, LabelledCase, PreparedCase, ct_rule, load_spec, load_split,
                                         prepare_case)
from PromptSegLib.train.drawn import crop_hint
from PromptSegLib.train.loop import TrainingLoop, append_csv
from PromptSegLib.train.loss import dice_bce_loss
from PromptSegLib.train.samples import CentreSampler, augment, crop
from PromptSegLib.train.start import build_network, merged_regions, mixed_precision, parameter_groups

log = logging.getLogger(__name__)


def absent_elsewhere(datasets: list[DatasetSpec], vocabulary: Vocabulary) -> dict[str, list[str]]:
    """Per dataset, the targets that cannot be in its images: the other datasets' targets whose vocabulary
    regions share none of its regions, and those its spec lists as absent (healthy controls). A target
    without regions or found in the "whole body" (a tumour) may be anywhere, and a "whole body" dataset may
    hold anything: those are never counted absent by region."""
    every = sorted({t for d in datasets for t in d.targets})
    out = {}
    for dataset in datasets:
        regions = set(dataset.regions)
        by_region = [] if "whole body" in regions else [
            t for t in every if t not in dataset.targets and _confined(vocabulary.target(t).regions, regions)]
        out[dataset.name] = sorted(set(by_region) | set(dataset.absent))
    return out


def _confined(target_regions: tuple[str, ...], regions: set[str]) -> bool:
    """Whether a target found only in ``target_regions`` is certainly outside ``regions``."""
    return bool(target_regions) and "whole body" not in target_regions and not regions & set(target_regions)


class PromptBank:
    """Every paraphrase of each dataset's contexts and targets, and of the targets absent from it
    (``absent_elsewhere``); all encoded once up front, so a frozen encoder serves them from its cache."""

    def __init__(self, encoder: TextEncoder, cases: list[PreparedCase]):
        vocabulary = default_vocabulary()
        datasets = list({c.dataset.name: c.dataset for c in cases}.values())
        self.absent = absent_elsewhere(datasets, vocabulary)
        self.contexts: dict[str, list[str]] = {}
        self.targets: dict[tuple[str, str], list[str]] = {}
        for dataset in datasets:
            self.contexts[dataset.name] = [p for r in dataset.regions
                                           for p in paraphrases(dataset.modality, r, vocabulary.region(r).synonyms)]
            for target in dataset.targets + self.absent[dataset.name]:
                self.targets[(dataset.modality, target)] = paraphrases(
                    dataset.modality, target, vocabulary.target(target).synonyms)
        encoder.encode([t for v in self.contexts.values() for t in v] + [t for v in self.targets.values() for t in v])

    def context(self, dataset: str, rng: np.random.Generator) -> str:
        options = self.contexts[dataset]
        return options[rng.integers(len(options))]

    def target(self, modality: str, target: str, rng: np.random.Generator) -> str:
        options = self.targets[(modality, target)]
        return options[rng.integers(len(options))]


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (torch.distributed.get_rank() if world > 1 else 0), world


def text_encoder(config: TrainConfig, base: Model | None) -> TextEncoder:
    """The frozen text encoder; with the ``config.init`` model's LoRA adapters when it has them, else with new
    rank-``config.lora_rank`` adapters when that is set."""
    if base is not None and base.config.text_lora:
        return TextEncoder(config.text_encoder or base.config.text_encoder,
                           lora=LoraSettings.from_dict(base.config.text_lora), lora_state=base.text_lora_state)
    lora = LoraSettings(r=config.lora_rank, alpha=2 * config.lora_rank) if config.lora_rank > 0 else None
    return TextEncoder(config.text_encoder, lora=lora)


def train(config: TrainConfig) -> Path:
    """Run training; returns the model folder written at ``config.output``."""
    rank, world = _distributed()
    device = select_device(config.device if world == 1 or not torch.cuda.is_available()
                           else f"cuda:{os.environ.get('LOCAL_RANK', 0)}", config.threads)
    rng = np.random.default_rng(config.seed + rank)
    torch.manual_seed(config.seed + rank)
    datasets = load_spec(config.spec)
    loaded = load_split(datasets, "train")
    base = load_model(config.init) if config.init else None
    rules = intensity_rules(base, loaded)
    train_cases = [prepare_case(case, config.spacing_mm, rules) for case in loaded]
    val_cases = ([prepare_case(case, config.spacing_mm, rules) for case in load_split(datasets, "val")]
                 if rank == 0 else [])  # scored on the model grid
    encoder = text_encoder(config, base)
    bank = PromptBank(encoder, train_cases)
    network = build_network(config, sorted({c.dataset.modality for c in train_cases}), encoder.dim, base)
    base_config = base.config if base else None
    targets = sorted({t for c in train_cases for t in c.dataset.targets} | set(base_config.targets if base_config else []))
    model_config = ModelConfig(
        config.name, config.version, network.config, tuple(config.patch_size), config.spacing_mm, encoder.encoder_id,
        targets, merged_regions([(c.dataset.modality, c.dataset.regions) for c in train_cases], base_config),
        intensity={m: [rule.low, rule.high, rule.mean, rule.std] for m, rule in rules.items()},
        text_lora=encoder.lora.to_dict() if encoder.lora else None, padding="replicate")
    if config.freeze_backbone:
        for name, parameter in network.named_parameters():
            new_input = (name.startswith("inputs.") and base_config
                         and name.split(".")[1] not in base_config.network.modalities)
            parameter.requires_grad = name.startswith(("head.", "hint.")) or bool(new_input)
    network.to(device)
    lora_params = encoder.to(device).lora_parameters() if config.lora_rank > 0 else []
    groups = (parameter_groups(network, config.lr)
              + ([{"params": lora_params, "lr": config.lora_lr}] if lora_params else []))
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    loop = TrainingLoop(optimizer, config.steps, floor=0.01, minutes=config.minutes, clip=12.0,
                        work_dir=config.work_dir, checkpoint_every=config.checkpoint_every,
                        keep_every=config.keep_every, saved={"network": network},
                        main=rank == 0)
    resumed = loop.resume(device) if config.resume else None
    if resumed is not None:
        if lora_params:
            encoder.load_lora_state(resumed["text_lora"])
        rng = np.random.default_rng(resumed["seed"] + loop.step + rank)
    # a batch uses one modality's input block: the others get no gradient in that step
    model = (torch.nn.parallel.DistributedDataParallel(network, find_unused_parameters=len(network.config.modalities) > 1)
             if world > 1 else network)
    if rank == 0:
        log.info("training %s: %d parameters (%d trainable), %d training and %d validation cases, targets %s",
                 config.name, count_parameters(network), sum(p.numel() for p in network.parameters()
                                                             if p.requires_grad),
                 len(train_cases), len(val_cases), ", ".join(targets))
    by_dataset: dict[str, list[PreparedCase]] = {}
    for case in train_cases:
        by_dataset.setdefault(case.dataset.name, []).append(case)
    names = sorted(by_dataset)
    samplers = {name: CentreSampler(cases, config.foreground_ratio) for name, cases in by_dataset.items()}
    autocast = mixed_precision(device)
    board = _tensorboard(config.work_dir) if rank == 0 else None
    validation: dict[str, float] = {}
    validated_at = -1  # the step whose weights ``validation`` measured

    def loss_of_step() -> tuple[torch.Tensor, dict]:
        """One batch of one dataset: crops, prompts (its targets and a few certainly absent), the loss."""
        sampler = samplers[names[rng.integers(len(names))]]
        dataset = sampler.cases[0].dataset
        pool = bank.absent[dataset.name]
        absent = [pool[i] for i in rng.permutation(len(pool))[:config.absent_targets]]
        images, truths, known, contexts, prompts = [], [], [], [], []  # prompts: texts, (batch, targets)
        hints = []
        for _ in range(config.batch_size):
            case, centre = sampler.draw(rng)
            image, label = crop(case, config.patch_size, centre, rng)
            if config.augment:
                image, label = augment(image, label, rng)
            images.append(image[None])
            masks = case.masks(dataset.targets, label)
            if network.config.hints:  # the centred target drawn (in most crops), or nothing drawn
                shown = masks[dataset.targets.index(centre)] > 0 if centre is not None else None
                hints.append(crop_hint(shown, label.shape, rng))
            truths.append(np.concatenate([masks, np.zeros((len(absent), *label.shape), np.float32)]))
            known.append(np.concatenate([case.labelled(dataset.targets), np.ones(len(absent), np.float32)]))
            contexts.append(bank.context(dataset.name, rng))
            prompts.append([bank.target(dataset.modality, t, rng) for t in dataset.targets + absent])
        model.train()
        encoder.model.train(bool(lora_params))
        embed = encoder.embed if lora_params else encoder.encode  # through the adapters, or from the cache
        embedded = embed(contexts + [t for row in prompts for t in row]).to(device)
        with autocast:
            logits = model(torch.from_numpy(np.stack(images)).to(device), dataset.modality,
                           embedded[:len(contexts)], embedded[len(contexts):].view(len(prompts), len(prompts[0]), -1),
                           torch.from_numpy(np.stack(hints)).to(device) if hints else None)
        loss = dice_bce_loss(logits.float(), torch.from_numpy(np.stack(truths)).to(device),
                             torch.from_numpy(np.stack(known)).to(device))
        return loss, {"dataset": dataset.name}

    def average_adapters() -> None:
        """The adapters live outside the DDP-wrapped network: their gradients are averaged here."""
        for parameter in lora_params:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world

    def after_step(step: int, loss: float) -> None:
        nonlocal validation, validated_at
        if board:
            board.add_scalar("loss/train", loss, step)
        if val_cases and (step % config.validate_every == 0 or step == config.steps):
            if lora_params:
                encoder.clear_cache()  # the adapters moved
            validation = _validate(network, model_config, encoder, val_cases, device, config.work_dir, step)
            validated_at = step
            if board:
                for target, value in validation.items():
                    board.add_scalar(f"dice/{target}", value, step)

    try:
        loop.run(loss_of_step, average_adapters if lora_params and world > 1 else None, after_step,
                 lambda: {"seed": config.seed, "network_config": network.config.to_dict(),
                          "model_fields": checkpoint_fields(model_config), "text_lora": encoder.lora_state()})
    except torch.cuda.OutOfMemoryError as exc:
        raise PromptSegError(f"out of GPU memory at step {loop.step}: lower --batch-size or --patch-size") from exc
    finally:
        if board:
            board.close()
    if rank == 0:
        if val_cases and validated_at != loop.step:  # none yet, or the time budget ended the run between two
            validation = _validate(network, model_config, encoder, val_cases, device, config.work_dir, loop.step)
        card = model_card(config, model_config, case_lines(train_cases, val_cases), validation, device,
                          count_parameters(network), loop.sessions)
        save_model(config.output, network.cpu(), model_config, card, encoder.lora_state() or None)
    if world > 1:
        torch.distributed.destroy_process_group()
    return Path(config.output)


def _tensorboard(folder: Path):
    """A TensorBoard writer when tensorboard is installed, else ``None`` (the CSV logs are always written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def intensity_rules(base: Model | None, cases: list[LabelledCase]) -> dict[str, IntensityRule]:
    """CT's shared z-score statistics: those of ``base`` (the model fine-tuned from), else those of the
    training CTs."""
    rule = (base.config.intensity_rule("CT") if base else None) or ct_rule(cases)
    return {"CT": rule} if rule else {}


def _validate(network: DuPLUSNet, model_config: ModelConfig, encoder: TextEncoder, cases: list[PreparedCase],
              device: torch.device, work_dir: Path, step: int) -> dict[str, float]:
    """Mean Dice per target on the validation cases, on the model grid, over the targets present in each case
    (one sliding-window pass per case; the case's own grid is for ``promptseg evaluate``)."""
    from PromptSegLib.metrics import dice

    network.eval()
    segmenter = Segmenter(Model(model_config, network), device=str(device), text_encoder=encoder)
    by_target: dict[str, list[float]] = {}
    rows = []
    for case in cases:
        present = [t for t in case.dataset.targets if t not in case.case.unlabelled and len(case.points(t))]
        if not present:
            continue
        modality, queries, context = segmenter.check_request(case.dataset.modality, case.dataset.regions[0], present)
        probabilities = segmenter.predict_on_model_grid(case.input, modality, context, queries).numpy()
        for target, probability in zip(present, probabilities):
            value = dice(probability >= model_config.threshold, np.isin(case.label, case.dataset.values_of(target)))
            by_target.setdefault(target, []).append(value)
            rows.append(f"| {case.dataset.name} | {case.case.id} | {target} | {value:.3f} |")
    means = {t: float(np.mean(v)) for t, v in sorted(by_target.items())}
    for target, value in means.items():
        append_csv(work_dir / "validation.csv", {"step": step, "target": target, "dice": round(value, 4)})
    (work_dir / "validation.md").write_text("\n".join(["| dataset | case | target | Dice (model grid) |",
                                                       "|---|---|---|---|", *rows]) + "\n", encoding="utf-8")
    log.info("step %d validation Dice: %s", step, ", ".join(f"{t} {v:.3f}" for t, v in means.items()))
    return means
