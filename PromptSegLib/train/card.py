"""The model card of a training run: command, data and split, time, hardware and the validation Dice that run
measured (all read from the run, none written by hand)."""
from __future__ import annotations

import shlex
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from PromptSegLib.models.folder import ModelConfig, card_lines, quoted, read_config
from PromptSegLib.train.config import TrainConfig
from PromptSegLib.train.loop import sessions_text

if TYPE_CHECKING:  # reading a model card's inputs needs no image I/O (a pack trains without SimpleITK)
    from PromptSegLib.train.datasets import PreparedCase


def model_card(config: TrainConfig, model_config: ModelConfig, data: list[str], validation: dict[str, float],
               device: torch.device, parameters: int, sessions: list[dict] | None = None,
               command: str | None = None, trainer: str = "promptseg train") -> str:
    """The model card: the ``command`` that ran ``trainer`` (default: the ``promptseg train`` command of
    ``config``), ``data`` (markdown list lines: the cases and their split, see :func:`case_lines`), time,
    hardware and the validation Dice this run measured (empty: none was)."""
    import platform

    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    command = command or "promptseg " + shlex.join(train_command(config))
    init_record, init_card = init_parts(config.init)
    lines = [f"# {config.name} {config.version}", "",
             f"Dual-prompt (DuPLUS) text-controlled 3D segmentation model, trained by `{trainer}`.", "",
             "## Command", "", "```", command, "```", "", "## Data and split (by patient)", "", *data]
    lines += ["", f"Targets: {', '.join(model_config.targets)}.", "",
              "## Training", "", f"- steps: {_steps_text(config.steps, sessions)}, batch {config.batch_size}, "
              f"patch {list(config.patch_size)} "
              f"voxels at {config.spacing_mm} mm, widths {list(config.widths)}, {parameters} parameters",
              f"- time: {sessions_text(sessions or [])} on {hardware}",
              f"- crops: {config.foreground_ratio:.0%} centred on a voxel of a target, each target of a dataset equally "
              f"often (`train.samples.CentreSampler`), the rest anywhere; "
              f"{'augmented' if config.augment else 'not augmented'}",
              f"- text encoder: {model_config.text_encoder} (frozen{_lora_note(config, model_config)})",
              *init_record, "",
              "## Validation Dice (measured at the end of this run on the validation cases, on the model grid, "
              "targets present in each case)", ""]
    if validation:
        lines += ["| target | Dice |", "|---|---|"] + [f"| {t} | {v:.3f} |" for t, v in sorted(validation.items())]
    else:
        lines.append("Not measured in this run: no validation cases (`promptseg tune` and `promptseg evaluate` "
                     "measure a model folder afterwards).")
    return "\n".join(lines + init_card) + "\n"


def _steps_text(planned: int, sessions: list[dict] | None) -> str:
    """The steps a run took (its last session's end), and the planned count where a time budget cut it short."""
    done = sessions[-1]["to"] if sessions else planned
    return f"{done}" if done == planned else f"{done} (of {planned} planned: the time budget ended the run)"


def case_lines(train_cases: list[PreparedCase], val_cases: list[PreparedCase]) -> list[str]:
    """The card's data lines of a ``promptseg train`` run: each case, its split, dataset and image file."""
    return [f"- {split}: dataset `{case.dataset.name}` ({case.dataset.modality}, {', '.join(case.dataset.regions)}), "
            f"case `{case.case.id}`: `{case.case.image.name}`"
            for split, cases in (("train", train_cases), ("validation", val_cases)) for case in cases]


def _record_lines(base: ModelConfig, text: list[str]) -> list[str]:
    """Card lines for the model a run was fine-tuned from (``base``, its card ``text``): its name, version and,
    copied from its card, the command and training lines (so that the whole training history stays in the
    newest card)."""
    lines = [f"- started from {base.name} {base.version} (`--init`), itself trained as its card says:"]
    command = next((text[i + 1] for i, line in enumerate(text[:-1]) if line.startswith("```") and i > 0
                    and text[i - 2].startswith("## Command")), None)
    if command:
        lines.append(f"  - `{command}`")
    start = next((i for i, line in enumerate(text) if line == "## Training"), len(text))
    end = next((i for i in range(start + 1, len(text)) if text[i].startswith("## ")), len(text))
    lines += [f"  {line}" for line in text[start + 1:end]
              if line.startswith(("- steps:", "- time:", "- started from", "  - "))]
    if len(lines) > 1:
        return lines
    return lines + ["  - its card holds no single training record (a mean of runs' weights, say): it follows in full "
                    "below"]


def init_parts(init: str | None) -> tuple[list[str], list[str]]:
    """What a card says of the ``--init`` model, from one reading of its config and card: the
    :func:`_record_lines`, and its whole card with headings one level down when that record could not be
    copied line by line (else no lines). Both empty without an ``--init`` model."""
    if not init:
        return [], []
    base = read_config(init)
    card = card_lines(init)
    record = _record_lines(base, card)
    if not card or len(record) > 2:
        return record, []
    return record, ["", f"## Started from: {base.name} {base.version} (its card)", "",
                    *quoted(card)]


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
