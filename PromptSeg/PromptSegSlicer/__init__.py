"""The Qt-free part of the PromptSeg Slicer module (its Logic), importable without torch.

It lives in a package rather than next to ``PromptSeg.py`` because Slicer treats every ``.py`` file in a
scripted-module folder as a module of its own.
"""
from .logic import (DependencyError, InputError, PromptSegLogic, SegmentationJob, terminologyEntryString,
                    volumeNodeToSimpleITK)

__all__ = ["DependencyError", "InputError", "PromptSegLogic", "SegmentationJob", "terminologyEntryString",
           "volumeNodeToSimpleITK"]
