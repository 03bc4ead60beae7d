"""Run buttons that turn into Cancel: start a logic job, poll it on a timer, write its result on the main thread."""
import logging

import slicer
from slicer.i18n import tr as _


class JobRunnerMixin:
    """Needs ``self.ui`` (``statusLabel``, ``progressBar``, ``importModelButton``), ``self.pollTimer``,
    ``self.runButtonTexts`` ((button, idle text) of each run button), ``self.job`` and ``self.jobDone``;
    ``_checkCanApply()`` is called when a job ends."""

    def _cancelRunningJob(self, button) -> bool:
        """While a job runs its ``button`` reads Cancel: ask the job to stop and disable the button. Returns
        whether a job was running."""
        if self.job is None:
            return False
        self.job.cancel()
        self.ui.statusLabel.text = _("Cancelling...")
        button.enabled = False
        return True

    def _runJob(self, start, jobDone, button) -> None:
        """``start()`` a logic job (its checks raise on bad input: shown, nothing runs), then poll it until
        ``jobDone(job)`` writes the result on the main thread; ``button`` reads Cancel meanwhile."""
        try:
            self.job = start()
        except Exception as exc:
            self.job = None
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc), windowTitle=_("PromptSeg"))
            return
        self._showRunning(jobDone, button)

    def _showRunning(self, jobDone, cancelButton) -> None:
        """``self.job`` started: ``cancelButton`` reads Cancel, the other run button is disabled, the progress
        bar shows, and the timer polls until ``jobDone(job)`` writes the result."""
        self.jobDone = jobDone
        cancelButton.text = _("Cancel")
        for button in [button for button, text in self.runButtonTexts] + [self.ui.importModelButton]:
            button.enabled = button is cancelButton
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.ui.statusLabel.text = _("Starting...")
        self.pollTimer.start()

    def onPoll(self) -> None:
        job = self.job
        if job is None:
            self.pollTimer.stop()
            return
        self.ui.progressBar.setValue(int(100 * job.progress))
        self.ui.statusLabel.text = job.message
        if not job.isDone():
            return
        self.pollTimer.stop()
        self.job = None
        for button, text in self.runButtonTexts:  # Apply's state is set by _checkCanApply below
            button.text = text
            button.enabled = True
        self.ui.importModelButton.enabled = True
        self.ui.progressBar.setVisible(False)
        try:
            # Let the Segment Editor's own undo cover this change when it edits the same segmentation.
            self._saveSegmentEditorUndoState(job.outputNode)
            self.jobDone(job)
            self.ui.statusLabel.text = job.message
        except Exception as exc:
            self.ui.statusLabel.text = job.message if job.cancelRequested else str(exc)
            if not job.cancelRequested:
                logging.exception("PromptSeg failed")
                slicer.util.errorDisplay(str(exc), windowTitle=_("PromptSeg"))
        self._checkCanApply()

    def _saveSegmentEditorUndoState(self, segmentationNode) -> None:
        if segmentationNode is None:
            return
        try:
            editorWidget = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            if editorWidget.segmentationNode() is segmentationNode:
                editorWidget.saveStateForUndo()
        except Exception:  # Segment Editor not created yet: PromptSeg's own Undo still works
            pass
