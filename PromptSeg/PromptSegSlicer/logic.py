"""PromptSeg module logic: MRML volume in, segments out, PromptSegLib run off the main thread. No Qt.

``PromptSegLogic`` is a thin facade: it holds the logic's state (the scene, loaded models, segment editors,
running jobs) and takes its methods from one mixin per concern:

- ``jobs``: ``SegmentationJob`` and the background thread machinery (start, finish, cancel; the threading
  model is described there);
- ``models``: available, imported and downloadable models, devices;
- ``segmentation``: text-prompted segmentation and writing segments; ``undo``: the segment editor history;
- ``propagation``: carrying a drawn slice through the volume (``fill``: the Segment Editor effect's logic);
- ``petct``: PET SUV conversion and PET/CT fusion; ``prognosis``: clinical records and survival;
- ``export``: ``.seg.nrrd``, DICOM RTSTRUCT and SEG files.

PromptSegLib, torch and MONAI are imported lazily, so this module (and the Slicer module that uses it)
imports without them and can tell the user what to install.
"""
from __future__ import annotations

import threading

import slicer

from .export import ExportMixin
from .jobs import JobRunnerMixin, SegmentationJob
from .models import ModelsMixin
from .petct import PetCtMixin
from .prognosis import PrognosisMixin
from .propagation import PropagationMixin
from .segmentation import SegmentationMixin
from .undo import UndoMixin

try:  # inside the Slicer application
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core (MRML without the application, used by the tests)
    class ScriptedLoadableModuleLogic:  # noqa: D101 - minimal stand-in
        def __init__(self, parent=None):
            pass


class PromptSegLogic(JobRunnerMixin, ModelsMixin, SegmentationMixin, UndoMixin, PropagationMixin, PetCtMixin,
                     PrognosisMixin, ExportMixin, ScriptedLoadableModuleLogic):
    """Runs PromptSegLib on MRML volumes and writes the targets as segments. No Qt.

    Typical use (main thread)::

        job = logic.startSegmentation(volumeNode, segmentationNode, modality="CT", region="thorax",
                                      targets=["left lung", "right lung"])
        while not job.isDone(): ...                # a QTimer in the widget; job.progress, job.message
        segmentationNode = logic.finishSegmentation(job)
    """

    def __init__(self, parent=None, scene=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)
        self._scene = scene
        self._segmenters: dict = {}  # (folder, device, threads, precision) -> Segmenter (SegmentationMixin)
        self._segmenterLock = threading.Lock()  # guards the loaded models, loaded in worker threads
        self._propagatorInstance = None  # the bundled Propagator (PropagationMixin)
        self._editors: dict = {}  # segmentation node ID -> (editor logic, editor node) (UndoMixin)
        self._prognosisModels: dict = {}  # model folder -> loaded prognosis model (PrognosisMixin)
        self.jobs: list[SegmentationJob] = []  # running jobs (JobRunnerMixin)

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene
