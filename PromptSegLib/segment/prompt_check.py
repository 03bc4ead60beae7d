"""Prompt robustness: rerun one case with wordings of the target prompt and measure how much the mask moves.

All variants go through one segmentation call, so the backbone runs once for the lot. Each variant's mask
is compared (Dice) with the reference run, the canonical prompt "A <modality> of the <target>".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from PromptSegLib.metrics import dice
from PromptSegLib.preprocessing.describe import describe
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.text.modality import canonical_modality
from PromptSegLib.text.prompts import MODALITY_SHORT, MODALITY_WORDS, target_prompt
from PromptSegLib.text.vocabulary import default_vocabulary

AGREE = 0.8
"""Dice to the reference at or above which a wording is taken to give the same segment."""


def misspell(word: str) -> str:
    """Drop the second-to-last letter of the longest word ("liver" -> "livr")."""
    words = word.split()
    longest = max(range(len(words)), key=lambda i: len(words[i]))
    w = words[longest]
    words[longest] = w[:-2] + w[-1] if len(w) > 3 else w
    return " ".join(words)


def prompt_variants(modality: str, target: str, attributes: str = "") -> dict[str, str]:
    """Wordings of one target's T2, keyed by kind: keyword, synonyms, attributes, report sentence,
    misspelling, and an empty target (which should *not* give the target)."""
    entry = default_vocabulary().target(target)
    long, short = MODALITY_WORDS[modality], MODALITY_SHORT[modality]
    variants = {
        "keyword": entry.name,
        "paraphrase": f"{short} image of the {entry.name}",
        "synonyms": f"A {long} of the {', '.join((entry.name, *entry.synonyms[:3]))}",
        "report sentence": f"Findings: the {entry.name} is visible on this {short} examination.",
        "misspelling": target_prompt(modality, misspell(entry.name)),
        "empty target": f"A {long} of the",
    }
    if attributes:
        variants["attributes"] = f"A {long} of the {entry.name}: {attributes}"
    return variants


@dataclass
class PromptCheck:
    variant: str
    prompt: str
    dice_to_reference: float
    volume_ml: float
    flag: str


def prompt_check(segmenter: Segmenter, image: sitk.Image, modality: str, region: str, target: str) -> list[PromptCheck]:
    """Run the canonical prompt and every variant; flag wordings that change the mask, and an empty target
    that still gives it (the model then ignores the target prompt)."""
    modality = canonical_modality(modality)
    reference = segmenter.segment(image, modality, region, [target], allow_untrained=True)
    name = reference.queries[0].name
    mask = reference.mask(0)
    attributes = describe(name, mask, image, modality, region).sentence if mask.any() else ""
    variants = prompt_variants(modality, name, attributes.rstrip("."))
    result = segmenter.segment(image, modality, region, target_texts=list(variants.values()),
                               allow_untrained=True)  # a variant may mention another vocabulary word
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    rows = [PromptCheck("reference", reference.queries[0].prompt, 1.0, round(float(mask.sum()) * voxel_ml, 2), "")]
    for i, (kind, text) in enumerate(variants.items()):
        variant = result.mask(i)
        score = dice(variant, mask)
        if kind == "empty target":
            flag = "model ignores the target prompt" if mask.any() and score >= AGREE else ""
        else:
            flag = "" if score >= AGREE else "changes the segment"
        rows.append(PromptCheck(kind, text, round(score, 4), round(float(variant.sum()) * voxel_ml, 2), flag))
    return rows
