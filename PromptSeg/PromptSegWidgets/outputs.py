"""What the planner takes away: one sentence per segment, RT structure sets and DICOM SEG that reference the CT."""
import qt
import slicer
from slicer.i18n import tr as _


class OutputPanelMixin:
    """Needs ``self.ui`` (``descriptionTextEdit``, ``tg263CheckBox``, ``statusLabel``, ``applyButton``),
    ``self.logic``, ``self._parameterNode``, the job runner (:class:`~PromptSegWidgets.jobs.JobRunnerMixin`),
    ``_startSegmentation`` and ``_onSegmentationDone``."""

    def onSegmentToRTStruct(self) -> None:
        """One step for a planner: ask where the RT structure set goes, segment, then export it (referencing
        the input CT series) as soon as the segments are in the scene."""
        if self._cancelRunningJob(self.ui.applyButton):
            return
        volume = self._parameterNode.inputVolume
        name = volume.GetName() if volume else "PromptSeg"
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export RT structure set"),
                                              f"{name}_rtstruct.dcm", "DICOM (*.dcm)")
        if not path:
            return

        def done(job):
            self._onSegmentationDone(job)
            self._exportDicomTo(path, "rtstruct")

        self._startSegmentation(done)

    def onDescribeButton(self) -> None:
        """One sentence per segment of the output segmentation, computed on the input volume's grid."""
        node, volume = self._parameterNode.outputSegmentation, self._parameterNode.inputVolume
        if node is None or volume is None:
            return
        segmentation = node.GetSegmentation()
        lines = []
        with slicer.util.tryWithErrorDisplay(_("Could not describe the segments."), waitCursor=True):
            for i in range(segmentation.GetNumberOfSegments()):
                name = segmentation.GetNthSegment(i).GetName()
                described = self.logic.describeSegment(node, name, volume, self._parameterNode.modality,
                                                       self._parameterNode.region)
                lines.append(f"{name}: {described.sentence}")
        self.ui.descriptionTextEdit.setPlainText("\n".join(lines))
        self.ui.descriptionTextEdit.setVisible(bool(lines))

    def onExportDicom(self, kind: str) -> None:
        """Ask where to write, then export through the logic (the CT series comes from the DICOM database)."""
        node, volume = self._parameterNode.outputSegmentation, self._parameterNode.inputVolume
        if node is None or volume is None:
            slicer.util.errorDisplay(_("Choose the input volume and the output segmentation first."))
            return
        title = _("Export RT structure set") if kind == "rtstruct" else _("Export DICOM SEG")
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, f"{node.GetName()}_{kind}.dcm",
                                              "DICOM (*.dcm)")
        if path:
            self._exportDicomTo(path, kind)

    def _exportDicomTo(self, path: str, kind: str) -> None:
        node, volume = self._parameterNode.outputSegmentation, self._parameterNode.inputVolume
        roiNames = "tg263" if self.ui.tg263CheckBox.checked else "prompt"
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            report = self.logic.exportDicom(node, volume, path, kind, roiNames=roiNames)
            lines = [f"wrote {report.path}"] + report.warnings
            if report.skipped:
                lines.append(_("skipped empty segments: ") + ", ".join(report.skipped))
            self.ui.statusLabel.text = "; ".join(lines)
