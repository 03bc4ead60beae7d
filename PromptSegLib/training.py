"""Training the dual-prompt model (DuPLUS recipe, sized for a CPU by default).

Each step draws, per sample, a random crop (foreground-oversampled) of a training case, a paraphrase of
its context prompt, and a paraphrase of every target its dataset names, present in the crop or not (an
absent target's truth is empty: the model learns to obey the prompt), plus a few targets certainly absent
from its images: those of the other datasets that belong to body regions this dataset does not image ("the
liver" on a brain MR must give nothing) and those the spec lists as absent from it (a tumour on a healthy
brain). Loss: soft Dice per target present in the crop + BCE over every target, leaving out the targets not
delineated for the case (``CaseSpec.unlabelled``: unknown, not absent).
AdamW with a cosine schedule; checkpoints every N steps (``--resume`` continues; with more ``--steps`` than
planned, a new cosine cycle runs from the checkpoint to the new end); validation Dice on the model grid;
a CSV log. Under ``torchrun`` it trains with DistributedDataParallel.
"""
from __future__ import annotations

import csv
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .datasets import DatasetSpec, LabelledCase, PreparedCase, ct_rule, load_spec, load_split, prepare_case
from .errors import PromptSegError
from .inference import Segmenter, select_device
from .model_io import Model, ModelConfig, load_model, save_model
from .network import DuPLUSNet, NetworkConfig, count_parameters
from .preprocess import MODALITIES, IntensityRule
from .prompts import paraphrases
from .text_encoder import LoraSettings, TextEncoder
from .vocabulary import Vocabulary, default_vocabulary

log = logging.getLogger(__name__)


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


def crop(case: PreparedCase, patch: tuple[int, int, int], foreground_ratio: float,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``patch``-sized crop of image and label, centred with probability ``foreground_ratio`` on a voxel of
    a target drawn uniformly among the case's present targets (so a target made of many label values, such
    as the vertebrae, is not drawn more often than the liver).

    Out-of-volume parts repeat the edge voxels of image and label (``replicate`` padding, as inference pads
    its windows): a scan that stops short looks as if it went on, not as if the body ended there.
    """
    shape = np.array(case.label.shape)
    size = np.array(patch)
    present = [t for t in case.dataset.targets if len(case.points(t))]
    if rng.random() < foreground_ratio and present:
        points = case.points(present[rng.integers(len(present))])
        centre = points[rng.integers(len(points))]
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = np.clip(centre - size // 2, np.minimum(0, shape - size), np.maximum(0, shape - size))
    src = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, shape))
    pad = [(sl.start - s, s + n - sl.stop) for sl, s, n in zip(src, start, size)]
    return (np.pad(case.input.array[src], pad, mode="edge").astype(np.float32, copy=False),
            np.pad(case.label[src], pad, mode="edge"))


def limit_field_of_view(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                        min_slices: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A scan cut short: keep a random slab of ``min_slices`` to half the crop's slices along z (axis 0) and
    repeat its edge slices to the crop's size, image and label alike (what inference sees on a short series)."""
    depth = image.shape[0]
    keep = int(rng.integers(min(min_slices, depth), max(depth // 2, min_slices) + 1))
    start = int(rng.integers(0, depth - keep + 1))
    pad = [(start, depth - start - keep), (0, 0), (0, 0)]
    return (np.pad(image[start:start + keep], pad, mode="edge"),
            np.pad(label[start:start + keep], pad, mode="edge"))


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A short field of view (``limit_field_of_view``) with probability 0.2; rotation (+-15 deg) and scaling
    (+-15%) with probability 0.3; brightness, contrast and gamma.

    No mirroring: left and right are targets of their own.
    """
    from monai.transforms import RandAffine

    if rng.random() < 0.2:
        image, label = limit_field_of_view(image, label, rng)
    if rng.random() < 0.3:
        affine = RandAffine(prob=1.0, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.15, 0.15, 0.15),
                            padding_mode="border")
        affine.set_random_state(int(rng.integers(2**31)))
        affine.randomize()
        image = affine(image[None], mode="bilinear", randomize=False)[0].numpy()
        label = affine(label[None].astype(np.float32), mode="nearest", randomize=False)[0].numpy().astype(label.dtype)
    if rng.random() < 0.5:
        image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
    if rng.random() < 0.3:
        low, high = image.min(), image.max()
        unit = (image - low) / max(high - low, 1e-6)
        image = unit ** rng.uniform(0.7, 1.5) * (high - low) + low
    return np.ascontiguousarray(image, dtype=np.float32), label


def dice_bce_loss(logits: torch.Tensor, truth: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice over the (sample, target) pairs whose truth is not empty, + BCE over every voxel of every
    target (which alone pushes an absent target towards empty).

    Args:
        logits, truth: ``(B, T, D, H, W)``.
        known: ``(B, T)``, 0 for a (sample, target) pair whose truth is unknown (an organ not delineated for
            that patient): it adds nothing to either term. Default: every pair known.

    Why not Dice on empty truths too: there it is ``1 - 1 / (sum p + 1)``, a pull to exactly zero as strong as
    a present target's whole Dice. A target absent from most crops (an organ smaller than the liver) then
    collapsed to probability 0.00 everywhere, even on its training image."""
    probabilities = torch.sigmoid(logits)
    dims = tuple(range(2, logits.dim()))
    intersection = (probabilities * truth).sum(dims)
    sizes = truth.sum(dims)
    soft_dice = (2 * intersection + 1.0) / (probabilities.sum(dims) + sizes + 1.0)
    known = torch.ones_like(sizes) if known is None else known.to(sizes.dtype)
    present = (sizes > 0) & (known > 0)
    dice_term = (1 - soft_dice)[present].mean() if present.any() else logits.new_zeros(())
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none").mean(dims)
    bce_term = (bce * known).sum() / known.sum().clamp(min=1.0)
    return dice_term + bce_term


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


def build_network(config: TrainConfig, modalities: list[str], text_dim: int, base: Model | None) -> DuPLUSNet:
    """A new network, or one started from ``base`` (the ``config.init`` model) with input blocks added for new
    modalities."""
    if base is None:
        ordered = tuple(m for m in MODALITIES if m in modalities)
        return DuPLUSNet(NetworkConfig(modalities=ordered, widths=tuple(config.widths), text_dim=text_dim))
    net_config = base.config.network
    if net_config.text_dim != text_dim:
        raise PromptSegError(f"model {config.init} uses {net_config.text_dim}-d text embeddings, the encoder gives {text_dim}")
    added = [m for m in modalities if m not in net_config.modalities]
    net_config = NetworkConfig(**{**net_config.__dict__, "modalities": tuple(net_config.modalities) + tuple(added)})
    network = DuPLUSNet(net_config)
    network.load_state_dict(base.network.state_dict(), strict=False)
    return network


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
    rules = _intensity_rules(base, loaded)
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
        targets, _regions(train_cases, base_config),
        intensity={m: [rule.low, rule.high, rule.mean, rule.std] for m, rule in rules.items()},
        text_lora=encoder.lora.to_dict() if encoder.lora else None, padding="replicate")
    if config.freeze_backbone:
        for name, parameter in network.named_parameters():
            new_input = (name.startswith("inputs.") and base_config
                         and name.split(".")[1] not in base_config.network.modalities)
            parameter.requires_grad = name.startswith("head.") or bool(new_input)
    network.to(device)
    trainable = [p for p in network.parameters() if p.requires_grad]
    lora_params = encoder.to(device).lora_parameters() if config.lora_rank > 0 else []
    groups = [{"params": trainable, "lr": config.lr}] + ([{"params": lora_params, "lr": config.lora_lr}]
                                                         if lora_params else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=config.lr * 0.01)
    step = 0
    sessions: list[dict] = []  # one entry per process that trained this run: steps and minutes
    config.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = config.work_dir / "checkpoint.pt"
    if config.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        network.load_state_dict(state["network"])
        if lora_params:
            encoder.load_lora_state(state["text_lora"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        planned = state.get("planned_steps", state["scheduler"].get("T_max"))
        if planned == config.steps:
            scheduler.load_state_dict(state["scheduler"])
        elif step < config.steps:  # more steps than the run was planned for: a new cosine cycle from here
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"]
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps - step,
                                                                   eta_min=config.lr * 0.01)
            log.info("resumed with --steps %d (planned %s): a new cosine cycle over steps %d-%d", config.steps,
                     planned, step + 1, config.steps)
        sessions = state.get("sessions", [{"from": 0, "to": step, "minutes": None}])
        rng = np.random.default_rng(state["seed"] + step + rank)
        log.info("resumed from %s at step %d", checkpoint, step)
    # a batch uses one modality's input block: the others get no gradient in that step
    model = (torch.nn.parallel.DistributedDataParallel(network, find_unused_parameters=len(network.config.modalities) > 1)
             if world > 1 else network)
    if rank == 0:
        log.info("training %s: %d parameters (%d trainable), %d training and %d validation cases, targets %s",
                 config.name, count_parameters(network), sum(p.numel() for p in trainable), len(train_cases),
                 len(val_cases), ", ".join(targets))
    log_path = config.work_dir / "log.csv"
    started = time.time()
    if step < config.steps:  # a resume with --steps at or below the checkpoint's step only writes the model
        sessions.append({"from": step, "to": step, "minutes": 0.0})
    by_dataset: dict[str, list[PreparedCase]] = {}
    for case in train_cases:
        by_dataset.setdefault(case.dataset.name, []).append(case)
    names = sorted(by_dataset)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    progress = _bar(config.steps, step, rank == 0)
    board = _tensorboard(config.work_dir) if rank == 0 else None
    validation: dict[str, float] = {}
    try:
        while step < config.steps:
            dataset_cases = by_dataset[names[rng.integers(len(names))]]
            dataset = dataset_cases[0].dataset
            pool = bank.absent[dataset.name]
            absent = [pool[i] for i in rng.permutation(len(pool))[:config.absent_targets]]
            images, truths, known, contexts, prompts = [], [], [], [], []  # prompts: texts, (batch, targets)
            for _ in range(config.batch_size):
                case = dataset_cases[rng.integers(len(dataset_cases))]
                image, label = crop(case, config.patch_size, config.foreground_ratio, rng)
                if config.augment:
                    image, label = augment(image, label, rng)
                images.append(image[None])
                truths.append(np.concatenate([case.masks(dataset.targets, label),
                                              np.zeros((len(absent), *label.shape), np.float32)]))
                known.append(np.concatenate([case.labelled(dataset.targets), np.ones(len(absent), np.float32)]))
                contexts.append(bank.context(dataset.name, rng))
                prompts.append([bank.target(dataset.modality, t, rng) for t in dataset.targets + absent])
            model.train()
            encoder.model.train(bool(lora_params))
            embed = encoder.embed if lora_params else encoder.encode  # through the adapters, or from the cache
            embedded = embed(contexts + [t for row in prompts for t in row]).to(device)
            with autocast:
                logits = model(torch.from_numpy(np.stack(images)).to(device), dataset.modality,
                               embedded[:len(contexts)], embedded[len(contexts):].view(len(prompts), len(prompts[0]), -1))
            loss = dice_bce_loss(logits.float(), torch.from_numpy(np.stack(truths)).to(device),
                                 torch.from_numpy(np.stack(known)).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if lora_params and world > 1:  # the adapters live outside the DDP-wrapped network
                for parameter in lora_params:
                    torch.distributed.all_reduce(parameter.grad)
                    parameter.grad /= world
            torch.nn.utils.clip_grad_norm_(trainable + lora_params, 12.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if rank != 0:
                continue
            progress(step, loss.item())
            _append_csv(log_path, {"step": step, "loss": round(loss.item(), 5), "lr": scheduler.get_last_lr()[0],
                                   "seconds": round(time.time() - started, 1), "dataset": dataset.name})
            if board:
                board.add_scalar("loss/train", loss.item(), step)
            if step % config.checkpoint_every == 0 or step == config.steps:
                sessions[-1].update({"to": step, "minutes": round((time.time() - started) / 60, 1)})
                _save_checkpoint(checkpoint, network, optimizer, scheduler, step, config, encoder.lora_state(),
                                 sessions)
            if val_cases and (step % config.validate_every == 0 or step == config.steps):
                if lora_params:
                    encoder.clear_cache()  # the adapters moved
                validation = _validate(network, model_config, encoder, val_cases, device, config.work_dir, step)
                if board:
                    for target, value in validation.items():
                        board.add_scalar(f"dice/{target}", value, step)
    except torch.cuda.OutOfMemoryError as exc:
        raise PromptSegError(f"out of GPU memory at step {step}: lower --batch-size or --patch-size") from exc
    finally:
        progress(None, None)
        if board:
            board.close()
    if rank == 0:
        if val_cases and not validation:
            validation = _validate(network, model_config, encoder, val_cases, device, config.work_dir, step)
        card = model_card(config, model_config, train_cases, val_cases, validation, device,
                          count_parameters(network), sessions)
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


def _intensity_rules(base: Model | None, cases: list[LabelledCase]) -> dict[str, IntensityRule]:
    """CT's shared z-score statistics: those of ``base`` (the model fine-tuned from), else those of the
    training CTs."""
    rule = (base.config.intensity_rule("CT") if base else None) or ct_rule(cases)
    return {"CT": rule} if rule else {}


def _regions(cases: list[PreparedCase], base: ModelConfig | None) -> dict[str, list[str]]:
    regions = {m: list(r) for m, r in (base.regions.items() if base else [])}
    for case in cases:
        known = regions.setdefault(case.dataset.modality, [])
        known += [r for r in case.dataset.regions if r not in known]
    return regions


def _validate(network: DuPLUSNet, model_config: ModelConfig, encoder: TextEncoder, cases: list[PreparedCase],
              device: torch.device, work_dir: Path, step: int) -> dict[str, float]:
    """Mean Dice per target on the validation cases, on the model grid, over the targets present in each case
    (one sliding-window pass per case; the case's own grid is for ``promptseg evaluate``)."""
    from .metrics import dice

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
        _append_csv(work_dir / "validation.csv", {"step": step, "target": target, "dice": round(value, 4)})
    (work_dir / "validation.md").write_text("\n".join(["| dataset | case | target | Dice (model grid) |",
                                                       "|---|---|---|---|", *rows]) + "\n", encoding="utf-8")
    log.info("step %d validation Dice: %s", step, ", ".join(f"{t} {v:.3f}" for t, v in means.items()))
    return means


def _save_checkpoint(path: Path, network, optimizer, scheduler, step: int, config: TrainConfig,
                     text_lora: dict[str, torch.Tensor], sessions: list[dict]) -> None:
    tmp = path.with_suffix(".partial")
    torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "seed": config.seed,
                "network_config": network.config.to_dict(), "text_lora": text_lora, "sessions": sessions,
                "planned_steps": config.steps}, tmp)
    os.replace(tmp, path)


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _bar(total: int, start: int, enabled: bool):
    """``update(step, loss)``: a tqdm bar on a terminal; written to a log or a pipe, one log line per 1 % of
    the steps instead of a wall of carriage returns. ``update(None, None)`` closes it."""
    if not enabled:
        return lambda step, loss: None
    if not sys.stderr.isatty():
        every, started = max(1, total // 100), time.time()

        def line(step, loss):
            if step is not None and (step % every == 0 or step == total):
                rate = (time.time() - started) / max(step - start, 1)
                log.info("step %d/%d loss %.3f (%.2f s/step, %.0f min left)", step, total, loss, rate,
                         rate * (total - step) / 60)

        return line
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(step, loss):
        if step is None:
            bar.close()
            return
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}")

    return update


def model_card(config: TrainConfig, model_config: ModelConfig, train_cases: list[PreparedCase],
               val_cases: list[PreparedCase], validation: dict[str, float], device: torch.device,
               parameters: int, sessions: list[dict] | None = None) -> str:
    """The model card: command, data, split, time, hardware and the validation Dice this run measured."""
    import platform

    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [f"# {config.name} {config.version}", "",
             "Dual-prompt (DuPLUS) text-controlled 3D segmentation model, trained by `promptseg train`.", "",
             "## Command", "", "```", "promptseg " + shlex.join(train_command(config)), "```", "",
             "## Data and split (by patient)", ""]
    for split, cases in (("train", train_cases), ("validation", val_cases)):
        for case in cases:
            lines.append(f"- {split}: dataset `{case.dataset.name}` ({case.dataset.modality}, "
                         f"{', '.join(case.dataset.regions)}), case `{case.case.id}`: `{case.case.image.name}`")
    lines += ["", f"Targets: {', '.join(model_config.targets)}.", "",
              "## Training", "", f"- steps: {config.steps}, batch {config.batch_size}, patch {list(config.patch_size)} "
              f"voxels at {config.spacing_mm} mm, widths {list(config.widths)}, {parameters} parameters",
              f"- time: {_sessions_text(sessions or [])} on {hardware}",
              f"- text encoder: {model_config.text_encoder} (frozen{_lora_note(config, model_config)})",
              *_init_lines(config.init), "",
              "## Validation Dice (measured at the end of this run on the validation cases, on the model grid, "
              "targets present in each case)", ""]
    if validation:
        lines += ["| target | Dice |", "|---|---|"] + [f"| {t} | {v:.3f} |" for t, v in sorted(validation.items())]
    else:
        lines.append("No validation cases.")
    return "\n".join(lines) + "\n"


def _init_lines(init: str | None) -> list[str]:
    """Card lines for the model a run was fine-tuned from: its name, version and, copied from its own card,
    the command and training lines (so that the whole training history stays in the newest card)."""
    if not init:
        return []
    from .model_io import read_config

    base = read_config(init)
    lines = [f"- started from {base.name} {base.version} (`--init`), itself trained as its card says:"]
    card = Path(init) / "README.md"
    text = card.read_text(encoding="utf-8").splitlines() if card.exists() else []
    command = next((text[i + 1] for i, line in enumerate(text[:-1]) if line.startswith("```") and i > 0
                    and text[i - 2].startswith("## Command")), None)
    if command:
        lines.append(f"  - `{command}`")
    start = next((i for i, line in enumerate(text) if line == "## Training"), len(text))
    end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")), len(text))
    lines += [f"  {line}" for line in text[start + 1:end]
              if line.startswith(("- steps:", "- time:", "- started from", "  - "))]
    return lines if len(lines) > 1 else lines + ["  - (its card has no training record)"]


def _sessions_text(sessions: list[dict]) -> str:
    """``"41.0 min"`` for a run in one process; per process (``--resume``) steps and minutes otherwise."""
    if not sessions:
        return "no training step"
    if len(sessions) == 1:
        return f"{sessions[0]['minutes'] or 0:.1f} min for steps 1-{sessions[0]['to']}"
    parts = [f"steps {s['from'] + 1}-{s['to']}" + (f" in {s['minutes']:.1f} min" if s["minutes"] is not None else "")
             for s in sessions]
    return f"{len(sessions)} sessions (resumed from checkpoints): {'; '.join(parts)}"


def _lora_note(config: TrainConfig, model_config: ModelConfig) -> str:
    if not model_config.text_lora:
        return ""
    settings = f"r={model_config.text_lora['r']}, alpha={model_config.text_lora['alpha']}"
    if config.lora_rank > 0:
        return f"; LoRA adapters ({settings}) on {', '.join(model_config.text_lora['targets'])} trained at lr {config.lora_lr}"
    return f"; with the LoRA adapters ({settings}) of {config.init}, not trained further"


def train_command(config: TrainConfig) -> list[str]:
    """The ``promptseg`` arguments that train ``config``: every setting that differs from the default, as the
    command line spells it (a default-on switch turned off as ``--no-augment``)."""
    args = {k: v for k, v in asdict(config).items() if k != "extra"}
    out = ["train", args.pop("spec"), "-o", args.pop("output")]
    defaults = asdict(TrainConfig("", ""))
    for key, value in args.items():
        if value == defaults.get(key) or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out

