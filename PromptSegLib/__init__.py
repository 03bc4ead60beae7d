"""PromptSegLib: text-prompted 3D medical image segmentation (DuPLUS dual prompts), no Slicer needed.

Typical use::

    from PromptSegLib import Segmenter, read_image
    result = Segmenter().segment(read_image("ct.nii.gz"), "CT", "thorax", ["left lung", "right lung"])

Names are imported on first use, so ``PromptSegLib.errors`` and ``PromptSegLib.text.vocabulary`` work where
torch is not installed yet (the Slicer module offers to install it).

Subpackages by pipeline stage; each imports only those above it in this list (``errors`` and ``metrics`` are
leaves every stage may use): ``io``, ``text``, ``preprocessing``, ``models``, ``segment``, ``export``, ``dicom``,
``workflows``, ``train``, ``propagate``, ``prognosis``, ``cohort``, ``cli``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Cancelled": "errors", "InputImageError": "errors", "ModelError": "errors", "OutputError": "errors",
    "PromptError": "errors", "PromptSegError": "errors", "read_image": "io.imageio", "write_image": "io.imageio",
    "SegmentationResult": "segment.inference", "Segmenter": "segment.inference", "Model": "models.folder",
    "ModelConfig": "models.folder", "load_model": "models.folder", "save_model": "models.folder",
    "DuPLUSNet": "models.network", "NetworkConfig": "models.network",
    "SegmentRequest": "workflows.segment_request", "run_cohort": "cohort.run", "EngineOptions": "cohort.engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
