"""Just enough of a Slicer application for module logic tests on ``slicer-core`` (real MRML, no Qt).

``setup()`` creates a ``vtkMRMLScene`` as ``slicer.mrmlScene``, registers the segmentation converter rules
(as qSlicerSegmentationsModule::setup does), creates the module logics the PromptSeg logic and
``slicer.util`` use (application, colors, volumes, subject hierarchy, segmentations, terminologies) and
exposes them as ``slicer.modules.<name>.logic()``. It also puts ``PromptSeg/`` on ``sys.path`` so the
module's Qt-free package ``PromptSegSlicer`` imports.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import slicer
import vtk

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "PromptSeg"
CONVERTER_RULES = ("vtkBinaryLabelmapToClosedSurfaceConversionRule", "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                   "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                   "vtkFractionalLabelmapToClosedSurfaceConversionRule")
_rules_registered = False


class _Module:
    """Stands for a loaded Slicer module: ``slicer.modules.<name>.logic()``."""

    def __init__(self, name: str, logic):
        self.name = name
        self._logic = logic

    def logic(self):
        return self._logic


def register_converter_rules() -> None:
    """Once per process, like the Segmentations module does at application start-up."""
    global _rules_registered
    if _rules_registered:
        return
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    for name in CONVERTER_RULES:
        factory.RegisterConverterRule(getattr(slicer, name)())
    _rules_registered = True


def setup() -> "slicer.vtkMRMLScene":
    """A fresh scene with the module logics wired to it; returns the scene (also ``slicer.mrmlScene``)."""
    register_converter_rules()
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    logics = {}

    def add(name: str, logic, register_as: str | None = None):
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        if register_as:
            app.SetModuleLogic(register_as, logic)
        logics[name] = logic
        return logic

    colors = add("colors", slicer.vtkSlicerColorLogic(), "Colors")
    app.SetColorLogic(colors)
    add("volumes", slicer.vtkSlicerVolumesLogic(), "Volumes")
    add("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic(), "SubjectHierarchy")
    add("segmentations", slicer.vtkSlicerSegmentationsModuleLogic(), "Segmentations")
    # Terminologies: the default .term.json files are not in slicer-core, so no scene (which would load
    # them); serialising and parsing entries works without them.
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    logics["terminologies"] = terminologies
    slicer.mrmlScene = scene
    slicer.app = None
    slicer.modules = types.SimpleNamespace(**{name: _Module(name, logic) for name, logic in logics.items()})
    slicer._shim_application_logic = app  # keep it alive as long as the scene
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    return scene


def load_volume(path, name: str | None = None, labelmap: bool = False):
    """Load a volume file through the real volumes logic (what File > Add Data does)."""
    node = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name or Path(path).name.split(".")[0],
                                                             1 if labelmap else 0)
    if node is None:
        raise RuntimeError(f"volumes logic could not load {path}")
    return node


def teardown() -> None:
    scene = getattr(slicer, "mrmlScene", None)
    if scene is not None:
        scene.Clear(1)


def segment_array(segmentation_node, name: str, volume) -> np.ndarray:
    """bool ``(k, j, i)`` voxels of the segment named ``name`` on ``volume``'s grid."""
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment named {name}"
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume).astype(bool)


def set_segment(node, name: str, volume, array: np.ndarray) -> None:
    """Replace the voxels of the segment named ``name`` by ``array`` on ``volume``'s grid (a user's edit)."""
    segment_id = node.GetSegmentation().GetSegmentIdBySegmentName(name)
    slicer.util.updateSegmentBinaryLabelmapFromArray(array.astype(np.uint8), node, segment_id, volume)


def segment_names(segmentation_node) -> list[str]:
    """The segments' names, in order."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def tag(segment, name: str) -> str:
    """A segment's tag ``name`` ("" when unset)."""
    value = vtk.mutable("")
    segment.GetTag(name, value)
    return str(value)
