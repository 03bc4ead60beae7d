"""The Qt-free part of the PromptSeg Slicer module (its Logic), importable without torch.

It lives in a package rather than next to ``PromptSeg.py`` because Slicer treats every ``.py`` file in a
scripted-module folder as a module of its own. One module per concern (jobs, models, segmentation, undo,
propagation, fill, petct, prognosis, export, on top of dependencies and nodes); ``logic.PromptSegLogic``
combines them.
"""
from .dependencies import DependencyError
from .jobs import SegmentationJob
from .logic import PromptSegLogic
from .nodes import InputError, volumeNodeToSimpleITK
from .segmentation import terminologyEntryString

__all__ = ["DependencyError", "InputError", "PromptSegLogic", "SegmentationJob", "terminologyEntryString",
           "volumeNodeToSimpleITK"]
