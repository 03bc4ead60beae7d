"""The propagation model card (README.md): what the model does, how it was trained (from its config's training
record), the measured Dice, its inference settings and its limits. Prose only; the numbers come from the caller."""
from __future__ import annotations

import torch

from PromptSegLib.propagate.model import PropagationConfig
from PromptSegLib.propagate.propagator import CONTRAST_RING, FADE_CONTRAST, VISIBLE_CONTRAST
from PromptSegLib.train.datasets import DatasetSpec
from PromptSegLib.train.loop import sessions_text

TEST_FLOORS = {"STS_030 CT (GTV)": ("+-10", 0.75), "BRATS pat0006 FLAIR (whole tumour)": ("+-10", 0.75),
               "TotalSegmentator DICOM CT (liver)": ("whole", 0.8)}
"""Held-out structure -> (Dice key, floor) checked by the tests and stated in the model card."""


def model_card(config: PropagationConfig, datasets: list[DatasetSpec], command: str | None, seconds: float,
               table: str, rows: list[dict]) -> str:
    """The model card: what the model does, the exact command, data and split, time, hardware, measured Dice."""
    t = config.training
    data_lines = []
    for d in datasets:
        train = [c.id for c in d.cases if c.split == "train"]
        val = [c.id for c in d.cases if c.split == "val"]
        structures = ", ".join(d.labels) if d.labels else "every non-zero label value"
        data_lines.append(f"| {d.name} | {d.modality} | {len(train)}: {_ids(train)} | "
                          f"{len(val)}: {_ids(val)} | {structures} |")
    per_structure = ""
    if rows:
        per_structure = ("\n<details><summary>Per structure</summary>\n\n| volume | structure | slices | prompt | "
                         "Dice +-5 | Dice +-10 | Dice whole | seconds |\n|---|---|---|---|---|---|---|---|\n" +
                         "".join(f"| {r['volume']} | {r['structure']} | {r['slices']} | {r['prompt_slice']} | "
                                 f"{r['+-5']:.3f} | {r['+-10']:.3f} | {r['whole']:.3f} | {r['seconds']:.2f} |\n"
                                 for r in rows) + "\n</details>\n")
    spent = sessions_text(t["sessions"]) if t.get("sessions") else f"{seconds / 60:.1f} min"
    floor = ""
    if rows:
        floor = ("\nTest floors: `Testing/Python/test_propagation.py` propagates with this model and requires "
                 + "; ".join(f"Dice {key} of at least {value} on held-out {where}"
                             for where, (key, value) in TEST_FLOORS.items()) + ".\n")
    return f"""# {config.name} {config.version}

Interactive slice propagation (the Prompt U-Net design): a 2D dual-encoder U-Net (image encoder for the query
slice, prompt encoder for the prompt slice and its mask, features added at every scale, 3x3 convolutions,
widths {'-'.join(str(w) for w in config.network.widths)}) predicts the next slice's mask from a neighbouring
slice and its mask. Class-agnostic: it carries any structure the user draws. Input: a box of
{config.roi_scale:g}x the prompt mask's extent, resampled to {config.input_size}x{config.input_size}, each slice
min-max normalised at its {config.quantiles[0]:g}/{config.quantiles[1]:g} percentiles.

## Training

```
{command or '(trained from Python: train_propagation)'}
```

- Data (`{t.get('spec')}`, paths under `../shared/data`), split by patient:

| dataset | modality | train cases | held-out cases | structures |
|---|---|---|---|---|
{chr(10).join(data_lines)}

- Samples: prompt-query distance up to {config.v} slices, any axis, 1-4 structures merged, synchronized
  augmentation, prompt corruption up to 30 % (pixels dropped; added instead for
  {100 * (t.get('grow_fraction') or 0):.0f} % of samples), 70 % crops (see `PromptSegLib/propagate/samples.py`).
- {t.get('steps')} steps of batch {t.get('batch_size')} at {config.input_size}x{config.input_size}, AdamW lr {t.get('lr')}
  (cosine), BCE + soft Dice; final loss {t.get('final_loss')}; seed {t.get('seed')}; {100 * t.get('end_fraction', 0):.0f} %
  of samples past a structure's end (empty target).
- Training time: {spent} of wall time on {t.get('hardware') or 'the CPU'},
  {t.get('threads')} thread{'s' if t.get('threads') != 1 else ''}, torch {t.get('torch') or torch.__version__}.
{_init_lines(t.get('init'), seconds)}
## Measured on held-out volumes

Axial propagation of each structure from its largest slice (the ground-truth mask of that slice is the only
input); 3D Dice within +-5 and +-10 slices of the prompt (prompt slice excluded) and over the whole
structure. Computed by `evaluate_volumes` on the saved fp16 weights (at the end of `train_propagation`, or by
`refresh_card` after a change of the card's code or of the threshold).

{_inference_lines(config)}

{table or '(no held-out cases in the spec)'}{per_structure}{floor}
## Limits

{_limits_text(t)}"""


LIMITS_SHRINK_ONLY = """Near the prompt it follows the structure well (Dice +-5 and +-10 above). Past a structure's
ends the mask rarely vanishes: the network keeps or grows the mask it is prompted with (its training prompts were
corrupted only by removing pixels: it learnt to add pixels back, never to remove extra ones; the size bias in the
benchmark below measures this), so each step carries the previous, too large mask on. The threshold and the
stopping rule above curb this; where the structure barely stands out (sarcoma GTVs on CT) the rule cannot act
and the whole-structure Dice stays below the near-prompt Dice: set the range limits to the structure's first and
last slice, or correct a slice and propagate again from it. A correction is carried both ways up to the next
kept slice, replacing what was there: drawn on a structure's tip (a few pixels), its mask regrows too slowly and
the slices towards the middle come out too small: correct slices well inside the structure, or undo. Training
on prompts that also gain pixels (`--grow-fraction`) is the fix at the source. Expect errors where a structure
splits, merges or touches a similar neighbour. Not a medical device.
"""
"""The Limits section of a model trained only on prompts that lose pixels (after the training line)."""


def _limits_text(training: dict) -> str:
    """The card's Limits section for a model with this training record: what a model trained only on prompts
    that lose pixels does (it grows its masks), or what is left for one trained on prompts that also gain."""
    grow = training.get("grow_fraction") or 0.0
    volumes = sum(splits.get("train", 0) for splits in (training.get("cases") or {}).values())
    trained = (f"Trained for {training.get('steps')} steps ({(training.get('seconds') or 0) / 60:.0f} min) on "
               f"{volumes} training volumes.")
    if not grow:
        return f"{trained} {LIMITS_SHRINK_ONLY}"
    return f"""{trained} Near the prompt it follows the structure well (Dice +-5 and
+-10 above). Its training prompts also gained pixels ({100 * grow:.0f} % of samples: an even margin or one bulge),
so it learnt to shrink a too large mask as well as to grow a too small one; a model trained only on prompts
that lost pixels grew its masks slice after slice and needed a higher threshold (the size bias in the
benchmark below measures this). Past a structure's end the network still often carries the mask on where the
neighbouring tissue looks alike; the stopping rule curbs this (see the stopping table below), but where the
structure barely stands out (sarcoma GTVs on CT) it cannot act and the whole-structure Dice stays below the
near-prompt Dice: set the range limits to the structure's first and last slice, or correct a slice and
propagate again from it. A correction is carried both ways up to the next kept slice, replacing what was
there; the benchmark's simulated corrections (the worst slice, often a structure's tip) can lower the
whole-structure Dice (below): correct slices well inside the structure, or undo. Expect errors where a
structure splits, merges or touches a similar neighbour. Not a medical device.
"""


def _inference_lines(config: PropagationConfig) -> str:
    """Card lines: the probability threshold (and how it was chosen) and the stopping rule."""
    calibration = config.training.get("threshold_calibration")
    lines = [f"- Probability threshold {config.threshold:g}."]
    if calibration:
        lines[0] = (
            f"- Probability threshold {config.threshold:g} (was {calibration['previous']:g}), chosen by "
            f"`calibrate_threshold` on {calibration['structures']} structures of training\n  cases "
            f"({_ids(calibration['cases'])}): the best mean whole-structure Dice whose +-5/+-10 Dice is not lower\n"
            "  (a higher threshold offsets a network that grows the mask it is prompted with):\n\n"
            f"  ```\n  {calibration['command'] or '(run from Python)'}\n  ```\n\n"
            "  | threshold | Dice +-5 | Dice +-10 | Dice whole |\n  |---|---|---|---|\n" +
            "".join(f"  | {t} | {s['+-5']:.3f} | {s['+-10']:.3f} | {s['whole']:.3f} |\n"
                    for t, s in calibration["scores"].items()))
    lines.append(f"- A direction stops where the mask vanishes, or where the structure fades: where the predicted "
                 f"region keeps less than {FADE_CONTRAST:g}\n  of the prompt slice's contrast, both with the "
                 f"{CONTRAST_RING}-pixel ring around it and above the prompt slice's ring (`kept_contrast`), when "
                 f"the\n  structure stands out on the prompt slice (Cohen's d at least {VISIBLE_CONTRAST:g}).")
    return "\n".join(lines)


def _init_lines(init: dict | None, seconds: float) -> str:
    """Card lines for the earlier stages a fine-tuned model started from."""
    if not init:
        return ""
    lines, total, stage = [], seconds, init
    while stage:
        total += stage.get("seconds") or 0.0
        lines.append(f"- Started from a model trained by `{stage.get('command')}`: {stage.get('steps')} steps of batch "
                     f"{stage.get('batch_size')}, lr {stage.get('lr')}, {(stage.get('seconds') or 0) / 60:.1f} min, "
                     f"{100 * (stage.get('end_fraction') or 0):.0f} % past-the-end samples, "
                     f"{100 * (stage.get('grow_fraction') or 0):.0f} % prompts grown, final loss "
                     f"{stage.get('final_loss')} (same data, split and hardware).")
        stage = stage.get("init")
    lines.append(f"- Total training time, all stages: {total / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def _ids(ids: list[str]) -> str:
    return ", ".join(ids) if len(ids) <= 4 else f"{ids[0]}..{ids[-1]}"
