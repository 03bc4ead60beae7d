"""Prompt building: T1 (context: modality + body region) and T2 (target) sentences.

``context_prompt("CT", "abdomen")`` -> ``"A computed tomography of the abdomen"``;
``target_prompt("CT", "liver")`` -> ``"A computed tomography of the liver"``. Raw text is accepted as is.
``paraphrases`` gives the wordings training samples from, so the wording a user picks does not matter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PromptSegLib.errors import PromptError
from PromptSegLib.text.modality import canonical_modality
from PromptSegLib.text.vocabulary import Target, Vocabulary, default_vocabulary

MODALITY_WORDS: dict[str, str] = {
    "CT": "computed tomography",
    "MR": "magnetic resonance imaging",
    "PET": "positron emission tomography",
}
MODALITY_SHORT: dict[str, str] = {"CT": "CT", "MR": "MRI", "PET": "PET"}

TEMPLATES: tuple[str, ...] = (
    "A {long} of the {x}",
    "A {short} image of the {x}",
    "The {x} in a {short} scan",
    "Segment the {x} on {short}",
    "{x} on {long}",
)


def context_prompt(modality: str, region: str) -> str:
    """T1: ``"A <modality words> of the <region>"``."""
    return TEMPLATES[0].format(long=MODALITY_WORDS[canonical_modality(modality)], short="", x=region)


def target_prompt(modality: str, target: str) -> str:
    """T2: ``"A <modality words> of the <target>"``."""
    return TEMPLATES[0].format(long=MODALITY_WORDS[canonical_modality(modality)], short="", x=target)


def paraphrases(modality: str, subject: str, synonyms: tuple[str, ...] = ()) -> list[str]:
    """Every template with ``subject`` and each synonym, the canonical wording first."""
    modality = canonical_modality(modality)
    words = dict(long=MODALITY_WORDS[modality], short=MODALITY_SHORT[modality])
    return list(dict.fromkeys(t.format(x=x, **words) for x in (subject, *synonyms) for t in TEMPLATES))


@dataclass(frozen=True)
class TargetQuery:
    """One requested target: the name its segment gets, the T2 text, and the vocabulary entry if known."""

    name: str
    prompt: str
    target: Target | None


def target_query(modality: str, text: str, vocabulary: Vocabulary | None = None) -> TargetQuery:
    """A vocabulary name or synonym -> its canonical T2 prompt. Raises ``PromptError`` when unknown."""
    target = (vocabulary or default_vocabulary()).target(text)
    return TargetQuery(target.name, target_prompt(modality, target.name), target)


def raw_target_query(text: str, vocabulary: Vocabulary | None = None) -> TargetQuery:
    """Free T2 text used as is; named after the vocabulary target it mentions, else after the text."""
    target = (vocabulary or default_vocabulary()).find_target_in(text)
    return TargetQuery(target.name if target else text.strip(), text.strip(), target)


SENTENCE_MIN_WORDS = 5
"""An unknown line of a target list with at least this many words is a raw T2 sentence."""


def sort_target_lines(lines: Sequence[str], vocabulary: Vocabulary | None = None) -> tuple[list[str], list[str]]:
    """A free list of targets, one per line (the Slicer module's target box) -> (vocabulary names or synonyms,
    raw T2 sentences), so that a line gets the prompt ``--target`` or ``--target-text`` would give it.

    A line the vocabulary knows is a target whatever its length ("upper lobe of left lung"); an unknown line of
    :data:`SENTENCE_MIN_WORDS` words or more is a sentence; a shorter unknown line stays a target, so that it
    fails with the nearest known names instead of being sent as text.
    """
    vocabulary = vocabulary or default_vocabulary()
    targets: list[str] = []
    texts: list[str] = []
    for line in (line.strip() for line in lines):
        if not line:
            continue
        try:
            vocabulary.target(line)
            known = True
        except PromptError:
            known = False
        (texts if not known and len(line.split()) >= SENTENCE_MIN_WORDS else targets).append(line)
    return targets, texts
