"""What each background job of the logic is asked to do: one frozen dataclass per kind of run, holding its
inputs as taken from the scene on the main thread (images as SimpleITK images, volumes and masks as numpy
arrays ``(k, j, i)``), so the worker thread needs nothing else. No Qt, no MRML."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np


@dataclass(frozen=True)
class ModelChoice:
    """A segmentation model folder, where it runs and in what arithmetic (``PromptSegLib``'s ``PRECISIONS``)."""

    folder: Path
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"


@dataclass(frozen=True)
class SegmentationRequest:
    """Segment ``targets`` on one image (``image``: a SimpleITK image of the input volume)."""

    image: Any
    modality: str
    region: str | None
    targets: list[str]
    targetTexts: dict[str, str] | None
    contextText: str | None
    model: ModelChoice
    threshold: float | None
    allowUntrained: bool


@dataclass(frozen=True)
class PetCtRequest:
    """Segment ``targets`` on a CT and a PET of one patient (SimpleITK images) and fuse them late."""

    ct: Any
    pet: Any
    targets: list[str]
    model: ModelChoice
    petWeight: float
    threshold: float | None
    minOverlap: float


@dataclass(frozen=True)
class PropagationRequest:
    """Carry segment ``segmentName`` from slice ``sliceIndex`` of ``axis`` through ``volume`` (float32), keeping
    the ``fixed`` slices (index -> 2D bool) the user drew; ``mask`` is the segment when the job started."""

    volume: np.ndarray
    mask: np.ndarray
    segmentId: str
    segmentName: str
    sliceIndex: int
    axis: str
    start: int | None
    stop: int | None
    fixed: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FillRequest:
    """Fill segment ``segmentName`` of ``volume`` (float32) from its ``drawn`` slices (index -> 2D bool) along
    ``axis``; ``spacing`` in mm ``(k, j, i)``; ``mask`` is the segment when the job started; ``reference``: the
    volume as a SimpleITK image for the organ prior (``None``: no prior)."""

    volume: np.ndarray
    mask: np.ndarray
    segmentId: str
    segmentName: str
    axis: str
    drawn: dict[int, np.ndarray]
    spacing: tuple[float, float, float]
    reference: Any = None


@dataclass(frozen=True)
class DownloadRequest:
    """Download and install the catalogue model ``name``."""

    name: str


JobRequest = Union[SegmentationRequest, PetCtRequest, PropagationRequest, FillRequest, DownloadRequest]
