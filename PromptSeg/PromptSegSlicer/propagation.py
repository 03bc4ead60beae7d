"""Slice propagation in the PromptSeg logic: carry a segment drawn on one slice through the volume with the
bundled propagation model, off the main thread, keeping the slices the user drew or corrected (remembered in
the segment's ``PromptSeg.FixedSlices.<axis>`` tag); written as one undo step. The Segment Editor effect's
fill from several drawn slices, which shares the model, is in ``fill``. No Qt.
"""
from __future__ import annotations

import time

import numpy as np
import slicer
import vtk

from .dependencies import checkDependencies, ensureLibraryImportable
from .jobs import Report, SegmentationJob
from .nodes import InputError, checkSameTransform, checkSegmentOnVolumeGrid, validateVolumeNode
from .requests import PropagationRequest


class PropagationMixin:
    """Propagation jobs. Needs ``self._propagatorInstance`` and ``self._segmenterLock`` (``PromptSegLogic``),
    ``_startJob``/``_finishJob`` (``JobRunnerMixin``) and ``_editorLogic`` (``UndoMixin``)."""

    def startPropagation(self, segmentationNode, segmentName: str, volumeNode, sliceIndex: int,
                         axis: str = "axial", start: int | None = None, stop: int | None = None,
                         onProgress: Report | None = None) -> SegmentationJob:
        """Start carrying segment ``segmentName`` from slice ``sliceIndex`` through the volume, both ways, with
        the bundled propagation model. Nothing in the scene changes here (see ``finishPropagation``).

        Slice indices are array indices along ``axis`` of the volume's ``[k, j, i]`` array (axial = k).
        ``start``/``stop`` (inclusive) limit the slices that may be written. The slice the user drew is the
        prompt and is kept, and so is every slice an earlier propagation of this segment started from (the
        user's corrections, remembered in the segment's ``PromptSeg.FixedSlices.<axis>`` tag): propagation
        stops at them and never overwrites them.

        Raises:
            InputError: no/unsuitable volume, no such segment.
            DependencyError: torch or another required package is missing.
            PromptSegLib.errors.PromptSegError: a bad axis (slice and range errors come from the worker,
                raised by ``finishPropagation``).
        """
        validateVolumeNode(volumeNode)
        if segmentationNode is None or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError("No segmentation: choose the segmentation holding the segment to propagate.")
        checkSameTransform(segmentationNode, volumeNode)
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
        if not segmentId:
            raise InputError(f"no segment named '{segmentName}' in '{segmentationNode.GetName()}'")
        checkDependencies()
        ensureLibraryImportable()
        from PromptSegLib.propagate.geometry import take_slice
        from PromptSegLib.propagate.propagator import AXES, resolve_axis

        axisIndex = resolve_axis(axis)
        axisName = list(AXES)[axisIndex]
        image = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        checkSegmentOnVolumeGrid(segmentationNode, segmentId, volumeNode, mask)
        tag = vtk.mutable("")
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        kept = {int(i) for i in str(tag).split()} if segment.GetTag(f"PromptSeg.FixedSlices.{axisName}", tag) else set()
        kept = {i for i in kept if i != int(sliceIndex) and 0 <= i < mask.shape[axisIndex]}
        request = PropagationRequest(image, mask, segmentId, segmentName, int(sliceIndex), axisName, start, stop,
                                     fixed={i: take_slice(mask, axisIndex, i) for i in kept})
        job = SegmentationJob(request, volumeNode, segmentationNode)
        return self._startJob(job, self._propagationWork, onProgress)

    def _propagator(self):
        """The bundled propagation model, loaded once (torch's thread count is left as Slicer set it)."""
        from PromptSegLib.propagate.propagator import Propagator

        with self._segmenterLock:
            if self._propagatorInstance is None:
                self._propagatorInstance = Propagator(None, threads=None)
            return self._propagatorInstance

    def _propagationWork(self, job: SegmentationJob, report) -> None:
        """Worker thread: PromptSegLib only, never the scene."""
        from PromptSegLib.propagate.propagator import propagate

        request = job.request
        report(0.0, "loading the propagation model")
        job.result = propagate(self._propagator(), request.volume, request.mask, request.sliceIndex,
                               request.axis, fixed=request.fixed, start=request.start, stop=request.stop,
                               progress=report, cancel=job._cancel)

    def finishPropagation(self, job: SegmentationJob, timeout: float | None = None):
        """Main thread: wait for the worker, then write the propagated segment as one undo step and remember
        the prompt slice as kept. Returns PromptSegLib's ``PropagationResult``.

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled (the segment is as it was).
            InputError: the segment was removed or edited while the propagation ran (nothing written).
            TimeoutError: the worker is still running after ``timeout`` seconds.
            whatever the worker raised (slice outside the volume or the range, empty prompt slice...).
        """
        self._finishJob(job, timeout, "propagation")
        request, node, volume = job.request, job.outputNode, job.volumeNode
        name, segmentId = request.segmentName, request.segmentId
        if node.GetSegmentation().GetSegment(segmentId) is None:
            raise InputError(f"segment '{name}' was removed while the propagation ran")
        current = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, volume) > 0
        if not np.array_equal(current, request.mask):
            raise InputError(f"segment '{name}' was edited while the propagation ran: nothing was changed; "
                             "propagate again")
        self._editorLogic(node, volume).SaveStateForUndo()
        slicer.util.updateSegmentBinaryLabelmapFromArray(job.result.mask.astype(np.uint8), node, segmentId, volume)
        kept = sorted(set(request.fixed) | {request.sliceIndex})
        node.GetSegmentation().GetSegment(segmentId).SetTag(f"PromptSeg.FixedSlices.{request.axis}",
                                                            " ".join(str(i) for i in kept))
        result = job.result
        job.message = (f"propagated over {len(result.written)} slices in {time.monotonic() - job.startTime:.1f} s "
                       f"({'; '.join(result.stopped.values())}); kept slices {', '.join(str(i) for i in kept)}")
        return result

    def propagateSegment(self, segmentationNode, segmentName: str, volumeNode, sliceIndex: int, axis: str = "axial",
                         start: int | None = None, stop: int | None = None, onProgress: Report | None = None):
        """Blocking ``startPropagation`` + ``finishPropagation`` (scripts and tests)."""
        return self.finishPropagation(self.startPropagation(segmentationNode, segmentName, volumeNode, sliceIndex,
                                                            axis, start, stop, onProgress))
