"""The logic of the Segment Editor effect "Fill with PromptSeg" (no Qt; tested on slicer-core).

The user draws some slices of a segment (Paint, Draw, Scissors...) in one slice view; the effect fills the
segment from them with :func:`PromptSegLib.propagate.multislice.fill_from_slices`, in a background thread, as one undo
step, and never changes a drawn slice. On a CT (the volume shows air in HU) the bundled head-and-neck organ model
guides the fill where it agrees with the drawn slices (:mod:`PromptSegLib.propagate.organ_prior`).

Which slices are drawn: the slices along the view's axis that hold the segment, except those the last fill
wrote and nobody has changed since. The slices a fill writes are remembered in the segment's tag
``PromptSeg.Filled.<axis>`` as ``index:crc32`` pairs of their content, so a slice the user corrects after a
fill (painted over, or erased) is a drawn slice at the next fill, and the filled slices around it are filled
again. An erased slice (empty now, filled before) is a drawn empty slice: the fill stops there, at that fill and at
every later one (the tag keeps it as ``index:-1``) until the user paints there again.

Arrays are the volume's ``[k, j, i]`` arrays; ``axis`` 0/1/2 (axial/coronal/sagittal) indexes them.
"""
from __future__ import annotations

import time
import zlib
from typing import Callable

import numpy as np
import slicer
import vtk

from .dependencies import checkDependencies, ensureLibraryImportable
from .jobs import SegmentationJob
from .logic import PromptSegLogic
from .nodes import (InputError, checkSameTransform, checkSegmentOnVolumeGrid, ijkToRasMatrix, validateVolumeNode,
                    volumeNodeToSimpleITK)
from .requests import FillRequest, ModelChoice

FILLED_TAG = "PromptSeg.Filled.{axis}"
ERASED = -1
"""The checksum an erased slice keeps in the tag: no slice's (CRC32 is never negative), so it stays a drawn slice."""
AXIS_NAMES = ("axial", "coronal", "sagittal")  # array axis 0, 1, 2 of a [k, j, i] array


def sliceChecksum(values: np.ndarray) -> int:
    """CRC32 of a 2D slice's mask (its bits, row by row)."""
    return zlib.crc32(np.packbits(np.asarray(values, bool)).tobytes())


ALIGNED_COSINE = 0.99
"""A slice view is taken to cut across a volume axis when its normal lies within about 8 degrees of it."""


def ijkToWorldMatrix(volumeNode) -> np.ndarray:
    """The volume's 4x4 IJK-to-world matrix (mm): its IJK-to-RAS under its parent transform, which must be linear.

    Raises:
        InputError: a non-linear (warping) parent transform.
    """
    ijkToRas = ijkToRasMatrix(volumeNode)
    transform = volumeNode.GetParentTransformNode()
    if transform is None:
        return ijkToRas
    if not transform.IsTransformToWorldLinear():
        raise InputError(f"'{volumeNode.GetName()}' is under a warping transform: harden it first.")
    toWorld = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(toWorld)
    return slicer.util.arrayFromVTKMatrix(toWorld) @ ijkToRas


def axisOfSliceView(sliceToRas: np.ndarray, ijkToWorld: np.ndarray) -> int:
    """The array axis (0: k, 1: j, 2: i) a slice view cuts across: the volume axis along the view's normal.
    ``sliceToRas``, ``ijkToWorld``: 4x4 matrices (``vtkMRMLSliceNode.GetSliceToRAS``, :func:`ijkToWorldMatrix`).

    Raises:
        InputError: the view is tilted against every volume axis (by more than about 8 degrees), so a stroke drawn
            in it would fall on several of the volume's slices.
    """
    normal = np.asarray(sliceToRas, float)[:3, 2]
    directions = np.asarray(ijkToWorld, float)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)
    cosines = np.abs(normal / np.linalg.norm(normal) @ directions)
    ijk = int(np.argmax(cosines))
    if cosines[ijk] < ALIGNED_COSINE:
        raise InputError(f"the slice view is tilted by {np.degrees(np.arccos(min(cosines[ijk], 1.0))):.0f} degrees "
                         "against the volume's slices: draw and fill in a view along them (slice view menu: Rotate "
                         "to volume plane)")
    return 2 - ijk


def readFilled(segment, axis: int) -> dict[int, int]:
    """Slice index -> checksum of the slices the last fill wrote along ``axis`` (empty: never filled)."""
    value = vtk.mutable("")
    if not segment.GetTag(FILLED_TAG.format(axis=AXIS_NAMES[axis]), value):
        return {}
    return {int(j): int(crc) for j, crc in (item.split(":") for item in str(value).split())}


def findDrawnSlices(mask: np.ndarray, axis: int, filled: dict[int, int]) -> dict[int, np.ndarray]:
    """The slices the user drew: non-empty slices the last fill did not write as they are now, and slices
    the last fill wrote with content that the user erased since.

    Args:
        mask: bool ``[k, j, i]`` segment on the volume's grid; axis: array axis; filled: :func:`readFilled`.

    Returns:
        slice index -> bool 2D mask (empty for an erased slice).
    """
    drawn = {}
    for j in range(mask.shape[axis]):
        values = np.take(mask, j, axis=axis)
        if j in filled:
            if sliceChecksum(values) != filled[j]:  # painted over, or erased (then an empty drawn slice)
                drawn[j] = values.copy()
        elif values.any():
            drawn[j] = values.copy()
    return drawn


class FillFromSlicesLogic:
    """Fills a segment from its drawn slices in a background thread; writes the result on the main thread.

    Typical use (main thread)::

        job = fill.start(segmentationNode, segmentId, volumeNode, axis)
        while not job.isDone(): ...        # a QTimer in the effect; job.progress, job.message; job.cancel()
        fill.finish(job, saveStateForUndo)
    """

    def __init__(self, logic: PromptSegLogic | None = None):
        self.logic = logic if logic is not None else PromptSegLogic()

    def start(self, segmentationNode, segmentId: str, volumeNode, axis: int,
              onProgress: Callable[[float, str], None] | None = None, organPrior: bool = True) -> SegmentationJob:
        """Find the drawn slices of segment ``segmentId`` along array ``axis`` and start filling it. Nothing in
        the scene changes here. ``organPrior``: on a CT, let the head-and-neck organ model guide the fill.

        Raises:
            InputError: no/unsuitable volume, no such segment, no drawn slice.
            DependencyError: torch or another required package is missing.
        """
        validateVolumeNode(volumeNode)
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentationNode else None
        if segment is None:
            raise InputError("Select a segment to fill.")
        checkSameTransform(segmentationNode, volumeNode)
        if axis not in (0, 1, 2):
            raise InputError(f"axis {axis} is not 0, 1 or 2")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        checkSegmentOnVolumeGrid(segmentationNode, segmentId, volumeNode, mask)
        drawn = findDrawnSlices(mask, axis, readFilled(segment, axis))
        if not any(values.any() for values in drawn.values()):
            raise InputError(f"segment '{segment.GetName()}' has no drawn {AXIS_NAMES[axis]} slice: draw the "
                             "structure on one or more slices first")
        checkDependencies()
        ensureLibraryImportable()
        spacing = tuple(float(s) for s in reversed(volumeNode.GetSpacing()))  # (k, j, i)
        image = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32)
        from PromptSegLib.propagate.organ_prior import prior_applies, shows_air

        reference = None
        if organPrior and prior_applies(drawn, spacing[axis]) and shows_air(image):
            try:
                reference = volumeNodeToSimpleITK(volumeNode)
            except InputError:  # a direction ITK cannot use: filled without the organ model
                pass
        request = FillRequest(image, mask, segmentId, segment.GetName(), axis, drawn, spacing, reference)
        job = SegmentationJob(request, volumeNode, segmentationNode)
        return self.logic._startJob(job, self._work, onProgress)

    def _work(self, job: SegmentationJob, report) -> None:
        """Worker thread: PromptSegLib only, never the scene."""
        from PromptSegLib.models.catalogue import resolve_model
        from PromptSegLib.propagate.multislice import fill_from_slices
        from PromptSegLib.propagate.organ_prior import MODEL, prior_or_none

        request = job.request
        prior = None
        if request.reference is not None:
            report(0.0, "asking the organ model what was drawn")
            prior = prior_or_none(lambda: self.logic._segmenter(ModelChoice(resolve_model(MODEL))), request.reference,
                                  request.drawn, request.axis, progress=report, cancel=job._cancel)
        report(0.0, "loading the propagation model")
        job.result = fill_from_slices(self.logic._propagator(), request.volume, request.drawn, request.axis,
                                      spacing=request.spacing, prior=prior, progress=report, cancel=job._cancel)

    def finish(self, job: SegmentationJob, saveStateForUndo: Callable[[], None] | None = None,
               timeout: float | None = None):
        """Main thread: wait for the worker, then write the filled segment as one undo step and remember the
        slices it wrote. ``saveStateForUndo``: the Segment Editor's (default: the module logic's editor for
        this segmentation). Returns PromptSegLib's ``PropagationResult``.

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled (the segment is as it was).
            InputError: the segment was removed or edited while the fill ran (nothing written).
            TimeoutError: the worker is still running after ``timeout`` seconds.
        """
        self.logic._finishJob(job, timeout, "fill")
        request, node, volume = job.request, job.outputNode, job.volumeNode
        name, segmentId, axis = request.segmentName, request.segmentId, request.axis
        segment = node.GetSegmentation().GetSegment(segmentId)
        if segment is None:
            raise InputError(f"segment '{name}' was removed while the fill ran")
        current = slicer.util.arrayFromSegmentBinaryLabelmap(node, segmentId, volume) > 0
        if not np.array_equal(current, request.mask):
            raise InputError(f"segment '{name}' was edited while the fill ran: nothing was changed; fill again")
        (saveStateForUndo or self.logic._editorLogic(node, volume).SaveStateForUndo)()
        result = job.result
        slicer.util.updateSegmentBinaryLabelmapFromArray(result.mask.astype(np.uint8), node, segmentId, volume)
        written = sorted(set(result.written) - set(request.drawn))
        erased = sorted(j for j, values in request.drawn.items() if not values.any())
        segment.SetTag(FILLED_TAG.format(axis=AXIS_NAMES[axis]), " ".join(
            [f"{j}:{sliceChecksum(np.take(result.mask, j, axis=axis))}" for j in written]
            + [f"{j}:{ERASED}" for j in erased]))
        drawn = sorted(request.drawn)
        guide = f", {result.prior.summary}" if result.prior is not None else ""
        job.message = "; ".join([f"filled {len(written)} slices from {len(drawn)} drawn ({', '.join(map(str, drawn))})"
                                 f"{guide} in {time.monotonic() - job.startTime:.1f} s"] + job.notes)
        return result
