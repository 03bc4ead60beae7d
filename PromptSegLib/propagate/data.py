"""Data for training and evaluating propagation: the dataset spec (the segmentation-training format, targets
kept as written), and each case read as a :class:`LabelledVolume` with its structures and where they are."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from PromptSegLib.errors import PromptSegError


@dataclass
class LabelledVolume:
    """A volume for training or evaluation: image ``(Z, Y, X)``, label values, and its structures.

    Attributes:
        units: structure name -> label values forming it (1-4 of them are merged per training sample).
        presence: per axis, structure name -> sorted slice indices where it is present.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    units: dict[str, list[int]]
    presence: list[dict[str, np.ndarray]] = field(default_factory=list)
    group: str = ""

    def __post_init__(self):
        if not self.presence:
            self.presence = []
            for axis in range(3):
                other = tuple(a for a in range(3) if a != axis)
                found = {}
                for unit, values in self.units.items():
                    slices = np.nonzero(np.isin(self.label, values).any(axis=other))[0]
                    if len(slices):
                        found[unit] = slices
                self.presence.append(found)
        self.units = {u: v for u, v in self.units.items() if u in self.presence[0]}

    def mask(self, units: Sequence[str]) -> np.ndarray:
        return np.isin(self.label, [v for u in units for v in self.units[u]])


def load_propagation_spec(path: str | os.PathLike) -> list[dict]:
    """Read a dataset spec (the segmentation-training format) for propagation training.

    Target names are kept as written (propagation is class-agnostic: no vocabulary lookup). A dataset without
    ``labels`` uses every non-zero label value as its own structure. Optional ``evaluate`` (name -> list of
    values) names the structures scored on held-out cases (default: the ``labels`` targets).

    Returns:
        One dict per dataset: ``name``, ``modality``, ``units`` (name -> values, or ``None`` = all values),
        ``evaluate`` and ``cases`` (``id``, ``image``, ``label``, ``split``; paths resolved).

    Raises:
        PromptSegError: unreadable or malformed spec, a missing file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PromptSegError(f"cannot read dataset spec {path}: {exc}") from exc
    out = []
    for entry in data.get("datasets", []):
        try:
            units = None
            if "labels" in entry:
                units = {}
                for value, name in entry["labels"].items():
                    units.setdefault(str(name), []).append(int(value))
            evaluate = {str(k): [int(v) for v in vals] for k, vals in entry["evaluate"].items()} \
                if "evaluate" in entry else units
            cases = [{"id": str(c["id"]), "image": path.parent / c["image"], "label": path.parent / c["label"],
                      "split": c.get("split", "train")} for c in entry["cases"]]
            dataset = {"name": entry["name"], "modality": entry.get("modality", ""), "units": units,
                       "evaluate": evaluate, "cases": cases}
        except (KeyError, TypeError, ValueError) as exc:
            raise PromptSegError(f"dataset spec {path}: entry {entry.get('name', '?')} is malformed ({exc})") from exc
        for case in cases:
            for file in (case["image"], case["label"]):
                if not Path(file).exists():
                    raise PromptSegError(f"dataset {dataset['name']}, case {case['id']}: no such file {file}")
        out.append(dataset)
    if not out:
        raise PromptSegError(f"dataset spec {path} lists no datasets")
    return out


def load_volume(dataset: dict, case: dict) -> LabelledVolume:
    """Read one case on its own grid (the label resampled onto the image grid when they differ)."""
    import SimpleITK as sitk

    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.train.datasets import CaseSpec, read_label

    image = read_image(case["image"])
    label = sitk.GetArrayFromImage(read_label(CaseSpec(case["id"], Path(case["image"]), Path(case["label"])), image))
    if dataset["units"] is None:
        units = {str(v): [int(v)] for v in np.unique(label) if v != 0}
    else:
        units = dataset["units"]
    return LabelledVolume(f"{dataset['name']}/{case['id']}", sitk.GetArrayFromImage(image).astype(np.float32),
                          label, units, group=dataset["name"])


def load_split(datasets: list[dict], split: str) -> list[tuple[LabelledVolume, dict | None]]:
    """Every case of ``split`` with its dataset's ``evaluate`` targets."""
    return [(load_volume(d, c), d["evaluate"]) for d in datasets for c in d["cases"] if c["split"] == split]
