"""PromptSegLib: text-prompted 3D medical image segmentation (DuPLUS dual prompts), no Slicer needed.

Typical use::

    from PromptSegLib import Segmenter, read_image
    result = Segmenter().segment(read_image("ct.nii.gz"), "CT", "thorax", ["left lung", "right lung"])

Names are imported on first use, so ``PromptSegLib.errors`` and ``PromptSegLib.vocabulary`` work where
torch is not installed yet (the Slicer module offers to install it).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Cancelled": "errors", "InputImageError": "errors", "ModelError": "errors", "OutputError": "errors",
    "PromptError": "errors", "PromptSegError": "errors", "read_image": "imageio", "write_image": "imageio",
    "SegmentationResult": "inference", "Segmenter": "inference", "Model": "model_io", "ModelConfig": "model_io",
    "load_model": "model_io", "save_model": "model_io", "DuPLUSNet": "network", "NetworkConfig": "network",
    "SegmentRequest": "segment_request", "run_cohort": "cohort", "EngineOptions": "cohort_engine",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
