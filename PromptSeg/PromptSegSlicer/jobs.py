"""Background jobs of the PromptSeg logic: one run (segmentation, propagation, fill, PET/CT or model download)
in a daemon thread, with progress, cancel and the checks made on the main thread before its result is
written. No Qt.

Threading model: a ``start...`` call validates the request and copies the volume (and the segment) on the
calling (main) thread, then runs PromptSegLib in a ``threading.Thread``. The thread never touches the MRML
scene. The caller polls the returned ``SegmentationJob`` (``progress``, ``message``, ``isDone()``) -- the
widget does it from a QTimer -- and then calls the matching ``finish...`` on the main thread, which is the only
place the scene is modified. A cancelled job (``job.cancel()``, any number of times) writes nothing, even if
the worker had already finished.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from .nodes import InputError
from .requests import JobRequest

Report = Callable[[float, str], None]  # report(fraction, message)


class SegmentationJob:
    """One PromptSeg run (a segmentation, a propagation, a fill, a PET/CT segmentation or a model download) in a
    background thread. Poll ``progress``/``message``/``isDone()``; ``cancel()``.

    ``request`` (one of :mod:`.requests`) holds everything the worker needs; ``volumeNode`` and ``outputNode``
    are where the finish call writes, ``ijkToRas`` the input's geometry when the job started."""

    def __init__(self, request: JobRequest, volumeNode, outputNode, ijkToRas: np.ndarray | None = None):
        self.request = request
        self.volumeNode = volumeNode
        self.outputNode = outputNode
        self.ijkToRas = ijkToRas
        self.progress = 0.0
        self.message = "starting"
        self.result = None
        self.error: BaseException | None = None
        self.notes: list[str] = []  # what the run told its user beside its result (PromptSegLib.notes)
        self.finished = False  # its finish call (finishSegmentation/finishPropagation/finishPetCt) has run
        self.startTime = time.monotonic()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def cancel(self) -> None:
        """Ask the worker to stop at the next window (or slice); safe to call any number of times."""
        if not self._cancel.is_set():
            self._cancel.set()
            self.message = "cancelling"

    @property
    def cancelRequested(self) -> bool:
        return self._cancel.is_set()

    def isDone(self) -> bool:
        """The worker has stopped (succeeded, failed or cancelled)."""
        return self._thread is not None and not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker stops; ``False`` on timeout."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.isDone()

    def _report(self, fraction: float, message: str) -> None:
        self.progress = float(fraction)
        self.message = message


class JobRunnerMixin:
    """Starts, finishes and cancels the logic's jobs. Needs ``self.scene`` and ``self.jobs`` (a list), which
    ``PromptSegLogic`` provides."""

    def _startJob(self, job: SegmentationJob, work: Callable[[SegmentationJob, Report], None],
                  onProgress: Report | None) -> SegmentationJob:
        """Run ``work(job, report)`` in a daemon thread; what it raises is kept in ``job.error`` for the finish
        call on the main thread. ``report(fraction, message)`` updates the job, then calls ``onProgress``."""

        def report(fraction, message):
            job._report(fraction, message)
            if onProgress is not None:
                onProgress(fraction, message)

        def run():
            try:
                from PromptSegLib.notes import collecting_notes

                with collecting_notes() as job.notes:  # what the library tells the user, for the finish's message
                    work(job, report)
            except BaseException as exc:  # reported to the main thread by the finish call
                job.error = exc

        job._thread = threading.Thread(target=run, name="PromptSeg worker", daemon=True)
        self.jobs.append(job)
        job._thread.start()
        return job

    def _finishJob(self, job: SegmentationJob, timeout: float | None, what: str) -> None:
        """Main thread: wait for the worker and check that its result may be written (``what``: the kind of
        run, for the messages). Shared by every ``finish...`` call.

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled.
            TimeoutError: the worker is still running after ``timeout`` seconds.
            RuntimeError: the job was finished before.
            InputError: its volume or output node was removed from the scene meanwhile.
            whatever the worker raised.
        """
        if not job.wait(timeout):
            raise TimeoutError(f"PromptSeg {what} is still running")
        if job in self.jobs:
            self.jobs.remove(job)
        if job.finished:
            raise RuntimeError("this job has already been finished")
        job.finished = True
        from PromptSegLib.errors import Cancelled

        if job.cancelRequested or isinstance(job.error, Cancelled):
            job.message = "cancelled"
            raise Cancelled(f"{what} cancelled: nothing was changed")
        if job.error is not None:
            job.message = f"failed: {job.error}"
            raise job.error
        if job.volumeNode is not None and not self.scene.IsNodePresent(job.volumeNode):
            raise InputError(f"the input volume was removed from the scene while PromptSeg {what} ran")
        if job.outputNode is not None and not self.scene.IsNodePresent(job.outputNode):
            raise InputError(f"the output segmentation was removed from the scene while PromptSeg {what} ran")

    def cancelAll(self, wait: float = 5.0) -> None:
        """Cancel every running job and give the workers ``wait`` seconds to stop (module cleanup, scene
        close). The workers are daemon threads: they cannot outlive Slicer."""
        for job in list(self.jobs):
            job.cancel()
        deadline = time.monotonic() + wait
        for job in list(self.jobs):
            job.wait(max(0.0, deadline - time.monotonic()))
        self.jobs = [job for job in self.jobs if not job.isDone()]
