"""The vocabulary: targets and body regions the prompts may name, with synonyms, colours and codes.

Codes follow Slicer's terminology triplets ``[scheme, value, meaning]`` (SNOMED CT, scheme ``SCT``) so a
segment made from a target carries the same terminology entry Slicer's own anatomy list gives it.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PromptSegLib.errors import PromptError

DEFAULT_VOCABULARY = Path(__file__).resolve().parent.parent / "data" / "vocabulary.json"

Code = tuple[str, str, str]


def normalize(text: str) -> str:
    """Lower case, ``_``/``-`` as spaces, one space between words, no leading article."""
    text = re.sub(r"[_\-]+", " ", text.strip().lower())
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"^(the|a|an) ", "", text)


@dataclass(frozen=True)
class Target:
    """A structure a prompt can ask for."""

    name: str
    synonyms: tuple[str, ...] = ()
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    category: Code | None = None
    type: Code | None = None
    modifier: Code | None = None
    interpreted_type: str = "ORGAN"
    regions: tuple[str, ...] = ()
    tg263: str | None = None
    """The AAPM TG-263 standard structure name (e.g. ``Parotid_L``), where the report defines one."""


@dataclass(frozen=True)
class Region:
    """A body region that a context prompt names."""

    name: str
    synonyms: tuple[str, ...] = ()


@dataclass
class Vocabulary:
    """Targets and regions with lookup by name or synonym (case, ``_`` and ``-`` insensitive)."""

    targets: dict[str, Target]
    regions: dict[str, Region]
    context_name: str = ""
    anatomic_context_name: str = ""
    _target_index: dict[str, str] = field(default_factory=dict, repr=False)
    _region_index: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._target_index = _index(self.targets.values())
        self._region_index = _index(self.regions.values())

    @classmethod
    def load(cls, path: str | Path = DEFAULT_VOCABULARY) -> "Vocabulary":
        """Read a vocabulary JSON file (format: ``PromptSegLib/data/vocabulary.json``)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        code = lambda c: tuple(c) if c else None  # noqa: E731
        targets = {
            normalize(t["name"]): Target(
                name=normalize(t["name"]), synonyms=_synonyms(t),
                color=tuple(t.get("color", (0.5, 0.5, 0.5))), category=code(t.get("category")),
                type=code(t.get("type")), modifier=code(t.get("modifier")),
                interpreted_type=t.get("interpretedType", "ORGAN"), regions=tuple(t.get("regions", [])),
                tg263=t.get("tg263"))
            for t in data["targets"]}
        regions = {normalize(r["name"]): Region(normalize(r["name"]), _synonyms(r))
                   for r in data["regions"]}
        return cls(targets, regions, data.get("contextName", ""), data.get("anatomicContextName", ""))

    def target(self, text: str) -> Target:
        """The target named by ``text`` (a name or synonym).

        Raises:
            PromptError: unknown, with the nearest known names.
        """
        return self.targets[self._lookup(text, self._target_index, "target")]

    def region(self, text: str) -> Region:
        """The region named by ``text`` (a name or synonym)."""
        return self.regions[self._lookup(text, self._region_index, "region")]

    def find_target_in(self, text: str) -> Target | None:
        """The target whose name or synonym occurs in free ``text`` (longest match), if any."""
        words = f" {normalize(text)} "
        hits = [key for key in self._target_index if f" {key} " in words]
        return self.targets[self._target_index[max(hits, key=len)]] if hits else None

    @staticmethod
    def _lookup(text: str, index: dict[str, str], kind: str) -> str:
        key = normalize(text)
        if key in index:
            return index[key]
        near = list(dict.fromkeys(index[k] for k in difflib.get_close_matches(key, index, n=8, cutoff=0.6)))
        hint = f"; nearest known: {', '.join(near[:5])}" if near else ""
        raise PromptError(f"unknown {kind} {text!r}{hint}")


def _synonyms(entry: dict) -> tuple[str, ...]:
    """Normalised synonyms (with the entry's TG-263 name, if any) without repeats or the entry's own name."""
    name = normalize(entry["name"])
    words = [*entry.get("synonyms", []), *([entry["tg263"]] if entry.get("tg263") else [])]
    return tuple(s for s in dict.fromkeys(normalize(s) for s in words) if s != name)


def _index(entries) -> dict[str, str]:
    index: dict[str, str] = {}
    for entry in entries:
        for key in (entry.name, *entry.synonyms):
            if index.get(key, entry.name) != entry.name:
                raise ValueError(f"vocabulary: {key!r} names both {index[key]!r} and {entry.name!r}")
            index[key] = entry.name
    return index


SIDES = {"7771000": "left", "24028007": "right"}
"""SNOMED CT laterality modifier codes -> the patient's side."""


def side_of(target: Target | None) -> str | None:
    """``left`` or ``right`` for a target with a laterality modifier (the left parotid), else None."""
    return SIDES.get(target.modifier[1]) if target is not None and target.modifier else None


def other_side(name: str) -> str | None:
    """The vocabulary name of the same structure on the other side (``left parotid`` -> ``right parotid``), or
    None for a name that starts with no side."""
    for side, other in (("left ", "right "), ("right ", "left ")):
        if name.startswith(side):
            return other + name[len(side):]
    return None


@lru_cache(maxsize=4)
def default_vocabulary() -> Vocabulary:
    """The vocabulary shipped with PromptSegLib (loaded once)."""
    return Vocabulary.load(DEFAULT_VOCABULARY)
