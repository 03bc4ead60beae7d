"""Data for training and evaluating propagation: each case of a dataset spec (the segmentation-training format,
read by ``train.datasets.load_spec(..., as_written=True)``) as a :class:`LabelledVolume` with its structures and
where they are."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from PromptSegLib.train.datasets import CaseSpec, DatasetSpec, load_case


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


def load_volume(dataset: DatasetSpec, case: CaseSpec) -> LabelledVolume:
    """Read one case of a spec read with ``load_spec(..., as_written=True)`` on its own grid (the label resampled
    onto the image grid when they differ); its structures are the dataset's labels, or every non-zero value."""
    import SimpleITK as sitk

    read = load_case(dataset, case)
    label = sitk.GetArrayFromImage(read.label)
    units = ({name: list(values) for name, values in dataset.labels.items()} if dataset.labels
             else {str(v): [int(v)] for v in np.unique(label) if v != 0})
    return LabelledVolume(f"{dataset.name}/{case.id}", sitk.GetArrayFromImage(read.image).astype(np.float32),
                          label, units, group=dataset.name)


def scored(dataset: DatasetSpec) -> dict[str, list[int]] | None:
    """The structures scored on a dataset's held-out cases (``None``: every structure of the volume)."""
    return {name: list(values) for name, values in dataset.scored.items()} or None


def load_split(datasets: list[DatasetSpec], split: str) -> list[tuple[LabelledVolume, dict[str, list[int]] | None]]:
    """Every case of ``split`` with its dataset's scored structures (see ``scored``)."""
    return [(load_volume(d, c), scored(d)) for d in datasets for c in d.cases if c.split == split]
