"""Text-prompted segmentation in the PromptSeg logic: a volume node in, PromptSegLib's ``Segmenter`` run off
the main thread, one segment per target written into a segmentation node (name, colour, terminology, the
volume's geometry, one undo step); also detections as ROI nodes and a segment's description. No Qt.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer
import vtk

from .dependencies import MODULE_DIR, checkDependencies, ensureLibraryImportable
from .jobs import Report, SegmentationJob
from .models import AUTO_MODEL
from .nodes import (InputError, checkSameTransform, ijkToRasMatrix, placeInStudy, validateVolumeNode,
                    volumeNodeToSimpleITK)
from .requests import ModelChoice, SegmentationRequest

TERMINOLOGY_FILE = MODULE_DIR / "Resources" / "Terminology" / "PromptSeg.term.json"


def _code(code) -> str:
    return "^".join(code) if code else "^^"


def terminologyEntryString(entry: dict | None) -> str:
    """Slicer's serialized terminology entry,
    ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier`` with each
    code as ``scheme^value^meaning`` (what vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry
    writes); ``""`` for none."""
    if not entry:
        return ""
    return "~".join([entry.get("contextName", ""), _code(entry.get("category")), _code(entry.get("type")),
                     _code(entry.get("typeModifier")), entry.get("anatomicContextName", ""),
                     _code(entry.get("anatomicRegion")), _code(entry.get("anatomicRegionModifier"))])


def orientedMask(mask: np.ndarray, ijkToRas) -> "slicer.vtkOrientedImageData":
    """A ``[k, j, i]`` mask as an oriented image with the ``ijkToRas`` ``vtkMatrix4x4`` geometry."""
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = np.asarray(mask, dtype=bool).reshape(-1).view(np.uint8)  # a bool mask's bytes, not a copy
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = voxels
    image.SetImageToWorldMatrix(ijkToRas)
    return image


class SegmentationMixin:
    """Segmentation jobs and writing their segments. Needs ``self.scene``, ``self._segmenters``,
    ``self._segmenterLock`` (``PromptSegLogic``), ``_startJob``/``_finishJob`` (``JobRunnerMixin``) and
    ``_editorLogic`` (``UndoMixin``)."""

    @staticmethod
    def loadTerminology(terminologiesLogic=None) -> str:
        """Load PromptSeg's terminology context (every vocabulary target, with codes and colours) into
        Slicer's terminologies logic so the segment terminology selector offers them; returns its name."""
        if terminologiesLogic is None:
            terminologiesLogic = slicer.modules.terminologies.logic()
        return terminologiesLogic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))

    def sortTargetLines(self, lines: Sequence[str]) -> tuple[list[str], list[str]]:
        """The target box's lines -> (vocabulary targets, raw T2 sentences), as the command line's ``--target``
        and ``--target-text`` would take them (``PromptSegLib.text.prompts.sort_target_lines``)."""
        ensureLibraryImportable()
        from PromptSegLib.text.prompts import sort_target_lines

        return sort_target_lines(lines)

    def startSegmentation(self, inputVolume, outputSegmentation=None, modality: str = "CT", region: str | None = None,
                          targets: Sequence[str] = (), targetTexts: Sequence[str] = (),
                          contextText: str | None = None, modelFolder=None, device: str = "auto",
                          threads: int | None = None, threshold: float | None = None,
                          allowUntrained: bool = False, onProgress: Report | None = None,
                          precision: str = "auto") -> SegmentationJob:
        """Check the request, copy the volume, start the worker. Nothing in the scene changes here.
        ``precision``: the network's arithmetic (``promptseg segment --precision``: auto, float32, bfloat16).

        Raises:
            InputError: no/unsuitable volume, no target, output not a segmentation node.
            DependencyError: torch or another required package is missing.
            PromptSegLib.errors.ModelError: the model folder is missing or fails its checksums.
        """
        validateVolumeNode(inputVolume)
        if outputSegmentation is not None and not outputSegmentation.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"output '{outputSegmentation.GetName()}' is not a segmentation node")
        checkSameTransform(outputSegmentation, inputVolume)
        targets = [t.strip() for t in targets if t and t.strip()]
        targetTexts = [t.strip() for t in targetTexts if t and t.strip()]
        if not targets and not targetTexts:
            raise InputError("No target given: name at least one structure to segment.")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise InputError(f"threshold {threshold} must be between 0 and 1")
        checkDependencies()
        ensureLibraryImportable()
        from PromptSegLib.models.catalogue import resolve_model, route_model
        from PromptSegLib.models.folder import verify_folder
        from PromptSegLib.errors import PromptSegError
        from PromptSegLib.segment.inference import check_precision

        try:
            check_precision(precision)
        except PromptSegError as error:  # refused before any work, as the other request errors
            raise InputError(str(error)) from error

        folder = (route_model(modality, region or None, targets) if not modelFolder or str(modelFolder) == AUTO_MODEL
                  else resolve_model(str(modelFolder)))  # a folder or an installed model's name
        verify_folder(folder)  # ModelError: missing folder, missing file, checksum mismatch
        image = volumeNodeToSimpleITK(inputVolume)
        request = SegmentationRequest(image, modality, region or None, targets, targetTexts, contextText or None,
                                      ModelChoice(folder, device or "auto", threads, precision), threshold,
                                      allowUntrained)
        job = SegmentationJob(request, inputVolume, outputSegmentation, ijkToRasMatrix(inputVolume))
        return self._startJob(job, self._segmentationWork, onProgress)

    def _segmenter(self, model: ModelChoice):
        from PromptSegLib.segment.inference import Segmenter

        key = (str(Path(model.folder).resolve()), model.device, model.threads, model.precision)
        with self._segmenterLock:
            if key not in self._segmenters:
                self._segmenters[key] = Segmenter(model.folder, device=model.device, threads=model.threads,
                                                  precision=model.precision)
            return self._segmenters[key]

    def _jobSegmenter(self, job: SegmentationJob, report, what: str):
        """Worker thread: the job's model (loaded once per folder, device and threads), unless the job was
        cancelled meanwhile."""
        from PromptSegLib.errors import Cancelled

        request = job.request
        report(0.0, "loading the model")
        segmenter = self._segmenter(request.model)
        if job.cancelRequested:
            raise Cancelled(f"{what} cancelled")
        return segmenter

    def _segmentationWork(self, job: SegmentationJob, report) -> None:
        """Worker thread: PromptSegLib only, never the scene."""
        request = job.request
        segmenter = self._jobSegmenter(job, report, "segmentation")
        job.result = segmenter.segment(
            request.image, request.modality, request.region, request.targets,
            target_texts=request.targetTexts, context_text=request.contextText,
            allow_untrained=request.allowUntrained, progress=report, cancel=job._cancel)

    def finishSegmentation(self, job: SegmentationJob, timeout: float | None = None):
        """Main thread: wait for the worker, then write the segments. Returns the segmentation node.

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled (the scene is untouched).
            TimeoutError: the worker is still running after ``timeout`` seconds.
            whatever the worker raised (PromptError, ModelError, InputImageError...).
        """
        self._finishJob(job, timeout, "segmentation")
        node = self.writeResult(job.result, job.volumeNode, job.outputNode, job.request.threshold, job.ijkToRas)
        job.message = "; ".join([f"done in {time.monotonic() - job.startTime:.1f} s"] + job.notes)
        return node

    def segment(self, inputVolume, outputSegmentation=None, **kwargs):
        """Blocking ``startSegmentation`` + ``finishSegmentation`` (scripts and tests)."""
        return self.finishSegmentation(self.startSegmentation(inputVolume, outputSegmentation, **kwargs))

    def writeResult(self, result, volumeNode, segmentationNode=None, threshold: float | None = None,
                    ijkToRas: np.ndarray | None = None):
        """One segment per target in ``segmentationNode`` (created when ``None``): name, colour, terminology.

        A segment of the same name is updated in place (voxels only, so a colour the user picked stays);
        other segments are never touched. The change is recorded for ``undo``.
        """
        scene = self.scene
        threshold = result.threshold if threshold is None else float(threshold)
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                       scene.GenerateUniqueName(f"{volumeNode.GetName()} PromptSeg"))
            segmentationNode.CreateDefaultDisplayNodes()
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        editor = self._editorLogic(segmentationNode, volumeNode)
        if segmentationNode.GetSegmentation().GetNumberOfSegments() > 0:
            # The segment editor's history cannot store an empty segmentation; undoing a first run into an
            # empty node is deleting its segments (or the node).
            editor.SaveStateForUndo()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        placeInStudy(scene, segmentationNode, volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        from PromptSegLib.export.segfile import segment_color, terminology

        matrix = vtk.vtkMatrix4x4()
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, (ijkToRas if ijkToRas is not None else ijkToRasMatrix(volumeNode))[r, c])
        wasModifying = segmentationNode.StartModify()
        try:
            for index, query in enumerate(result.queries):
                segmentId = segmentation.GetSegmentIdBySegmentName(query.name)
                if not segmentId:
                    segmentId = segmentation.AddEmptySegment("", query.name, segment_color(query))
                    segment = segmentation.GetSegment(segmentId)
                    segment.SetNameAutoGenerated(False)
                    segment.SetColorAutoGenerated(False)
                    tag = terminologyEntryString(terminology(query))
                    if tag:
                        segment.SetTag(segment.GetTerminologyEntryTagName(), tag)
                segment = segmentation.GetSegment(segmentId)
                segment.SetTag("PromptSeg.Prompt", query.prompt)
                segment.SetTag("PromptSeg.Context", result.context)
                labelmap = orientedMask(result.mask(index, threshold), matrix)
                if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                        labelmap, segmentationNode, segmentId,
                        slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
                    raise RuntimeError(f"could not write segment '{query.name}'")
        finally:
            segmentationNode.EndModify(wasModifying)
        return segmentationNode

    def addDetectionROIs(self, result, volumeNode, threshold: float | None = None, minVolumeMl: float = 0.0) -> list:
        """One Markups ROI node per connected component of each target ("liver 1", "liver 2"...), most
        confident first, placed under the volume's study. The ROI is the component's box in RAS (axis-aligned);
        its description holds the mean/max probability and the volume."""
        from PromptSegLib.preprocessing.describe import detect

        threshold = result.threshold if threshold is None else float(threshold)
        nodes = []
        for index, query in enumerate(result.queries):
            for detection in detect(result.probability(index), threshold, result.reference, query.name, minVolumeMl):
                low, high = (np.array(corner) * [-1.0, -1.0, 1.0] for corner in detection.box_lps_mm)
                roi = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{query.name} {detection.index}")
                roi.SetCenter(((low + high) / 2).tolist())
                roi.SetSize(np.abs(high - low).tolist())
                roi.SetDescription(f"mean probability {detection.mean_probability:.2f}, max "
                                   f"{detection.max_probability:.2f}, {detection.volume_ml:.1f} mL")
                placeInStudy(self.scene, roi, volumeNode)
                nodes.append(roi)
        return nodes

    def describeSegment(self, segmentationNode, segmentName: str, volumeNode, modality: str, region: str = ""):
        """PromptSegLib's description (volume, components, location, intensity, shape, touching segments and
        one sentence) of a segment, computed on the volume's grid."""
        from PromptSegLib.preprocessing.describe import describe

        segmentation = segmentationNode.GetSegmentation()
        if not segmentation.GetSegmentIdBySegmentName(segmentName):
            raise InputError(f"no segment named '{segmentName}' in '{segmentationNode.GetName()}'")
        masks = {}
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            masks[segmentation.GetSegment(segmentId).GetName()] = slicer.util.arrayFromSegmentBinaryLabelmap(
                segmentationNode, segmentId, volumeNode) > 0
        return describe(segmentName, masks[segmentName], volumeNodeToSimpleITK(volumeNode), modality, region, masks)
