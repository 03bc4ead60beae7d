"""Segment Editor effect "Fill with PromptSeg": fills the selected segment from the slices drawn in a slice
view, beside "Fill between slices". Registered by the PromptSeg module (``registerEditorEffect``).

Only Qt wiring lives here; what it does is ``PromptSegSlicer.fill.FillFromSlicesLogic`` (tested on
slicer-core). The fill runs in a background thread; a timer polls its progress, Apply turns into Cancel, and
the result is written on the main thread as one undo step of the Segment Editor.
"""
import logging
from pathlib import Path

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

POLL_INTERVAL_MS = 200
SLICE_VIEWS = ("Red", "Green", "Yellow")


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Fill the selected segment from the slices drawn along a slice view's axis."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Fill with PromptSeg"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.fill = None  # FillFromSlicesLogic, made at the first Apply (imports PromptSegLib lazily)
        self.job = None
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)

    def register(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        effects.qSlicerSegmentEditorEffectFactory.instance().registerEffect(self.scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(str(Path(__file__).resolve()).replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = Path(__file__).resolve().parents[1] / "Resources" / "Icons" / "PromptSeg.png"
        return qt.QIcon(str(path)) if path.is_file() else qt.QIcon()

    def helpText(self):
        return ("<html>Fill the selected segment from the slices you drew.<p>Draw the structure on one or more "
                "slices of a slice view (Paint, Draw, Scissors...), choose that view and click Apply: between two "
                "drawn slices the shape is interpolated and refined by PromptSeg's propagation network; beyond the "
                "first and last drawn slices the structure is propagated half their spacing, no larger than the "
                "drawn slice next to it and narrowing towards that end (a long, thin one, such as the spinal cord, "
                "is carried along the anatomy), so draw those slices near the structure's ends. From a single "
                "drawn slice it is propagated until it ends. Nothing is filled where the image is clearly darker or "
                "brighter than what you drew. On a CT, from one drawn slice, from slices 2 cm or more apart or from "
                "closer slices whose shapes change pieces (a mandible's rami and arch), "
                "where the bundled head-and-neck organ model finds an organ that matches them (brain stem, spinal "
                "cord, parotids, esophagus, larynx, mandible), that model's 3D shape guides the fill between and "
                "beyond them (untick 'Organ model on CT' to fill without it). Drawn slices are never changed. A "
                "slice you correct after a fill counts as drawn at the next Apply; an erased slice stops the fill. "
                "Undo reverts the whole fill.</html>")

    def setupOptionsFrame(self):
        self.viewComboBox = qt.QComboBox()
        self.viewComboBox.addItems(list(SLICE_VIEWS))
        self.viewComboBox.toolTip = "The slice view you drew in: drawn slices are found along its axis"
        self.scriptedEffect.addLabeledOptionsWidget("Drawn in view:", self.viewComboBox)
        self.organPriorCheckBox = qt.QCheckBox("Organ model on CT")
        self.organPriorCheckBox.checked = True
        self.organPriorCheckBox.toolTip = ("On a CT, let the bundled head-and-neck organ model guide the fill where "
                                           "it finds an organ matching the drawn slices")
        self.scriptedEffect.addOptionsWidget(self.organPriorCheckBox)
        self.progressBar = qt.QProgressBar()
        self.progressBar.setRange(0, 100)
        self.progressBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.toolTip = "Fill the selected segment from its drawn slices (click again to cancel)"
        self.scriptedEffect.addOptionsWidget(self.applyButton)
        self.applyButton.connect("clicked()", self.onApply)

    def onApply(self):
        if self.job is not None:
            self.job.cancel()
            return
        from PromptSegSlicer.fill import FillFromSlicesLogic, axisOfSliceView, ijkToWorldMatrix

        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        volumeNode = parameterSetNode.GetSourceVolumeNode()
        segmentId = parameterSetNode.GetSelectedSegmentID()
        sliceNode = slicer.app.layoutManager().sliceWidget(self.viewComboBox.currentText).mrmlSliceNode()
        try:
            if volumeNode is None:
                raise ValueError("Select a source volume.")
            if self.fill is None:
                self.fill = FillFromSlicesLogic()
            axis = axisOfSliceView(slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS()),
                                   ijkToWorldMatrix(volumeNode))
            self.job = self.fill.start(segmentationNode, segmentId, volumeNode, axis,
                                       organPrior=self.organPriorCheckBox.checked)
        except Exception as exc:  # shown to the user, nothing changed
            self.statusLabel.text = str(exc)
            logging.error(f"Fill with PromptSeg: {exc}")
            return
        self.applyButton.text = "Cancel"
        self.progressBar.value = 0
        self.progressBar.visible = True
        self.pollTimer.start()

    def onPoll(self):
        job = self.job
        self.progressBar.value = int(100 * job.progress)
        self.statusLabel.text = job.message
        if not job.isDone():
            return
        self.pollTimer.stop()
        self.job = None
        self.applyButton.text = "Apply"
        self.progressBar.visible = False
        def saveStateForUndo():  # the editor's undo holds the segmentation selected now: it must be the filled one
            selected = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
            if selected is None or selected.GetID() != job.outputNode.GetID():
                raise ValueError("Another segmentation was selected while the fill ran: nothing was changed; select "
                                 f"'{job.outputNode.GetName()}' and fill again.")
            self.scriptedEffect.saveStateForUndo()

        try:
            self.fill.finish(job, saveStateForUndo)
            self.statusLabel.text = job.message
        except Exception as exc:  # cancelled, edited meanwhile, or the worker's error: nothing written
            self.statusLabel.text = str(exc)
            logging.info(f"Fill with PromptSeg: {exc}")

    def deactivate(self):
        if self.job is not None:
            self.job.cancel()
