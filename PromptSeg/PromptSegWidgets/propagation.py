"""The propagation panel: carry a segment from the slice in view through the volume, optionally within a range."""
import slicer
import vtk
from slicer.i18n import tr as _

SLICE_VIEWS = {"axial": "Red", "coronal": "Green", "sagittal": "Yellow"}  # where the user draws the prompt slice
IJK_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # which of (i, j, k) a propagation axis runs along


class PropagatePanelMixin:
    """Needs ``self.ui`` (the ``propagate*`` widgets), ``self.logic``, ``self._parameterNode`` and the job
    runner (:class:`~PromptSegWidgets.jobs.JobRunnerMixin`)."""

    def _updateSegmentList(self) -> None:
        """The output's segments, the parameter's ``propagateSegment`` selected where the output holds it."""
        comboBox = self.ui.propagateSegmentComboBox
        comboBox.clear()
        node = self._parameterNode.outputSegmentation if self._parameterNode else None
        if node is not None:
            segmentation = node.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):
                comboBox.addItem(segmentation.GetNthSegment(i).GetName())
            if comboBox.findText(self._parameterNode.propagateSegment) >= 0:
                comboBox.setCurrentIndex(comboBox.findText(self._parameterNode.propagateSegment))

    def _updatePropagatePanel(self) -> None:
        """Segment list; range boxes enabled with their check box and bounded by the volume's slices."""
        self._updateSegmentList()
        self.ui.propagateRangeWidget.enabled = self.ui.propagateLimitCheckBox.checked
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if volume is not None and volume.GetImageData() is not None:
            count = volume.GetImageData().GetDimensions()[IJK_AXIS[self.ui.propagateAxisComboBox.currentText]]
            for spinBox in (self.ui.propagateFirstSpinBox, self.ui.propagateLastSpinBox):
                spinBox.maximum = count - 1

    def _sliceIndexInView(self, volume, axis: str) -> int:
        """Index along ``axis`` of the volume array of the slice shown in that orientation's view (Red: axial,
        Green: coronal, Yellow: sagittal)."""
        sliceNode = slicer.app.layoutManager().sliceWidget(SLICE_VIEWS[axis]).mrmlSliceNode()
        sliceToRas = sliceNode.GetSliceToRAS()
        ras = [sliceToRas.GetElement(r, 3) for r in range(3)] + [1.0]
        rasToIjk = vtk.vtkMatrix4x4()
        volume.GetRASToIJKMatrix(rasToIjk)
        return int(round(rasToIjk.MultiplyPoint(ras)[IJK_AXIS[axis]]))

    def _rangeFromView(self, spinBox) -> None:
        volume = self._parameterNode.inputVolume
        if volume is not None:
            spinBox.value = self._sliceIndexInView(volume, self.ui.propagateAxisComboBox.currentText)

    def onPropagate(self) -> None:
        """Start carrying the chosen segment from the slice in view, off the main thread; while it runs the
        button reads Cancel."""
        if self._cancelRunningJob(self.ui.propagateButton):
            return
        node, volume = self._parameterNode.outputSegmentation, self._parameterNode.inputVolume
        name = self.ui.propagateSegmentComboBox.currentText
        if node is None or volume is None or not name:
            slicer.util.errorDisplay(_("Choose the input volume, the output segmentation and a segment first."))
            return
        axis = self.ui.propagateAxisComboBox.currentText
        limited = self.ui.propagateLimitCheckBox.checked
        self._runJob(lambda: self.logic.startPropagation(
            node, name, volume, self._sliceIndexInView(volume, axis), axis,
            start=self.ui.propagateFirstSpinBox.value if limited else None,
            stop=self.ui.propagateLastSpinBox.value if limited else None),
            self.logic.finishPropagation, self.ui.propagateButton)
