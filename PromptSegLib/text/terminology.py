"""The vocabulary as a Slicer terminology context (``.term.json``, the dcmqi segment-context schema), so
Slicer's terminology selector offers every PromptSeg target with its codes, colour and laterality."""
from __future__ import annotations

import json
import os
from pathlib import Path

from PromptSegLib.io.outputs import atomic_path
from PromptSegLib.text.vocabulary import Vocabulary, default_vocabulary

CONTEXT_NAME = "Segmentation category and type - PromptSeg"
SCHEMA = "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#"


def _code(code: tuple[str, str, str]) -> dict:
    return {"CodingSchemeDesignator": code[0], "CodeValue": code[1], "CodeMeaning": code[2]}


def _rgb(color) -> list[int]:
    return [int(round(c * 255)) for c in color]


def terminology_context(vocabulary: Vocabulary | None = None) -> dict:
    """Categories -> types (-> Left/Right modifiers), one type per code, each with its 3D Slicer label."""
    vocabulary = vocabulary or default_vocabulary()
    categories: dict[tuple, dict] = {}
    for target in vocabulary.targets.values():
        if not (target.category and target.type):
            continue
        category = categories.setdefault(target.category, {**_code(target.category), "Type": {}})
        entry = category["Type"].setdefault(target.type, {**_code(target.type)})
        if target.modifier:
            entry.setdefault("Modifier", []).append(
                {**_code(target.modifier), "3dSlicerLabel": target.name, "recommendedDisplayRGBValue": _rgb(target.color)})
        else:
            entry.update({"3dSlicerLabel": target.name, "recommendedDisplayRGBValue": _rgb(target.color)})
    for category in categories.values():
        category["Type"] = sorted(category["Type"].values(), key=lambda t: t["CodeMeaning"].lower())
        for entry in category["Type"]:
            if "Modifier" in entry and "3dSlicerLabel" not in entry:  # only lateral forms: show the first colour
                entry["recommendedDisplayRGBValue"] = entry["Modifier"][0]["recommendedDisplayRGBValue"]
    return {"SegmentationCategoryTypeContextName": CONTEXT_NAME, "@schema": SCHEMA,
            "SegmentationCodes": {"Category": sorted(categories.values(), key=lambda c: c["CodeMeaning"])}}


def write_terminology(path: str | os.PathLike, vocabulary: Vocabulary | None = None) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(terminology_context(vocabulary), indent=2) + "\n", encoding="utf-8")
    return Path(path)
