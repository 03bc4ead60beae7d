"""PromptSeg: text-prompted 3D segmentation in 3D Slicer.

The widget only wires Qt to the logic. The logic (``PromptSegSlicer.PromptSegLogic``) has no Qt, runs
PromptSegLib in a background thread and is tested on slicer-core (Testing/Python/test_slicer_*.py).
PromptSegLib and torch are imported lazily, so the module loads without them and can say what is missing.
"""
import inspect
from pathlib import Path
from typing import Callable

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    from typing import Annotated
except ImportError:  # Python < 3.9
    from typing_extensions import Annotated

from PromptSegSlicer import logic as promptSegLogic
from PromptSegSlicer.dependencies import REQUIRED_PACKAGES, DependencyError, pipInstallArguments
from PromptSegSlicer.models import AUTO_MODEL
from PromptSegWidgets.jobs import JobRunnerMixin
from PromptSegWidgets.models import ModelPanelMixin
from PromptSegWidgets.outputs import OutputPanelMixin
from PromptSegWidgets.petct import PetCtPanelMixin
from PromptSegWidgets.propagation import PropagatePanelMixin

POLL_INTERVAL_MS = 200
EDITOR_EFFECT = Path(__file__).resolve().parent / "PromptSegEffects" / "SegmentEditorFillWithPromptSeg.py"


def registerEditorEffect() -> None:
    """Add the Segment Editor effect "Fill with PromptSeg" (its file is outside this folder's top level, where
    Slicer would take it for a module)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(str(EDITOR_EFFECT).replace("\\", "/"))
    instance.self().register()


#
# PromptSeg
#
class PromptSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PromptSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["PromptSeg developers"]
        self.parent.helpText = _("""
Segment structures by naming them: pick a CT, MR or PET volume, the body region, and type the targets
(one per line, e.g. "left lung"). Each target becomes a segment with its standard name, colour and
terminology. Re-running updates segments of the same name; other segments are never touched; Undo restores
the previous result.""")
        self.parent.acknowledgementText = _("""
PromptSeg builds on the DuPLUS dual-prompt architecture, MONAI and PyTorch.""")
        slicer.app.connect("startupCompleted()", registerEditorEffect)


#
# Parameters (saved with the scene)
#
@parameterNodeWrapper
class PromptSegParameterNode:
    """Every setting of every panel, so that a saved scene restores the panel as it was left. Most are bound to
    their widget by the .ui file (its ``SlicerParameterName`` property); those in ``BOUND_BY_HAND`` by the widget
    code."""

    # Segmentation
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    modality: Annotated[str, Choice(["CT", "MR", "PET"])] = "CT"
    region: str = "thorax"
    contextText: str = ""
    targets: str = "left lung\nright lung"
    device: str = "auto"
    precision: Annotated[str, Choice(["auto", "float32", "bfloat16"])] = "auto"
    model: str = AUTO_MODEL
    allowUntrained: bool = False
    markDetections: bool = False
    # Outputs
    tg263Names: bool = True
    # PET/CT and prognosis
    petCtVolume: slicer.vtkMRMLScalarVolumeNode
    petVolume: slicer.vtkMRMLScalarVolumeNode
    petCtModel: str = ""
    petCtTargets: str = ""
    petWeight: float = 0.5
    prognosisSex: Annotated[str, Choice(["unknown", "male", "female"])] = "unknown"
    prognosisAge: float = -1.0
    prognosisWeight: float = 0.0
    prognosisFields: str = ""
    prognosisModel: str = ""
    # Propagation
    propagateSegment: str = ""
    propagateAxis: Annotated[str, Choice(["axial", "coronal", "sagittal"])] = "axial"
    propagateLimit: bool = False
    propagateFirst: int = 0
    propagateLast: int = 9999


BOUND_BY_HAND = {"targetsPlainTextEdit": "targets", "prognosisFieldsPlainTextEdit": "prognosisFields",
                 "deviceComboBox": "device", "modelComboBox": "model", "petCtModelComboBox": "petCtModel",
                 "propagateSegmentComboBox": "propagateSegment"}
"""Widget -> parameter, bound by the widget code: the parameter node wrapper has no QPlainTextEdit connector,
and these combo boxes are filled at run time (devices, models, the segments of the output)."""


#
# Widget: Qt only; each part of the panel is a mixin of PromptSegWidgets
#
class PromptSegWidget(JobRunnerMixin, ModelPanelMixin, PropagatePanelMixin, OutputPanelMixin, PetCtPanelMixin,
                      ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None
        self.jobDone = None  # main-thread step that writes a finished job: segmentation, propagation or PET/CT
        self.pollTimer = None
        self.petCtSegmentation = None  # the PET/CT panel's output, updated by each Apply
        self.runButtonTexts = ()  # (button, idle text) of the run buttons
        self.installMenu = None  # the Install button's menu

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PromptSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PromptSegLogic()
        self.logic.loadTerminology()
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)

        # What each run button reads when no job runs; while one runs, its button reads Cancel.
        self.runButtonTexts = ((self.ui.applyButton, _("Apply")),
                               (self.ui.propagateButton, _("Propagate from the slice in view")),
                               (self.ui.petCtApplyButton, _("Segment tumour on PET/CT")))
        self._updateModelList()
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self._fillDevices()
        self.ui.progressBar.setVisible(False)
        self.installMenu = qt.QMenu(self.ui.importModelButton)
        self.installMenu.setToolTipsVisible(True)  # a download's tooltip is its URL
        self.installMenu.connect("aboutToShow()", self._fillInstallMenu)
        self.ui.importModelButton.setMenu(self.installMenu)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.describeButton.connect("clicked(bool)", self.onDescribeButton)
        self.ui.addTargetButton.connect("clicked(bool)", self.onAddTarget)
        self.ui.addTargetLineEdit.connect("returnPressed()", self.onAddTarget)
        self.ui.allowUntrainedCheckBox.connect("toggled(bool)", lambda checked: self._updateTargetCompleter())
        self.ui.propagateButton.connect("clicked(bool)", self.onPropagate)
        self.ui.propagateCollapsibleButton.connect("contentsCollapsed(bool)", lambda c: self._updatePropagatePanel())
        self.ui.propagateAxisComboBox.connect("currentIndexChanged(int)", lambda index: self._updatePropagatePanel())
        self.ui.propagateLimitCheckBox.connect("toggled(bool)", lambda checked: self._updatePropagatePanel())
        for button, spinBox in ((self.ui.propagateFirstFromViewButton, self.ui.propagateFirstSpinBox),
                                (self.ui.propagateLastFromViewButton, self.ui.propagateLastSpinBox)):
            button.connect("clicked(bool)", lambda checked, box=spinBox: self._rangeFromView(box))
        self.ui.exportRTStructButton.connect("clicked(bool)", lambda: self.onExportDicom("rtstruct"))
        self.ui.segmentToRTStructButton.connect("clicked(bool)", self.onSegmentToRTStruct)
        self.ui.exportDicomSegButton.connect("clicked(bool)", lambda: self.onExportDicom("seg"))
        self.ui.installButton.connect("clicked(bool)", self.onInstallButton)
        self._setupPetCt()
        # BOUND_BY_HAND: each change is written to the parameter node (read back in setParameterNode).
        self.ui.targetsPlainTextEdit.connect("textChanged()", self.onTargetsEdited)
        self.ui.prognosisFieldsPlainTextEdit.connect("textChanged()", self.onPrognosisFieldsEdited)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.petCtModelComboBox.connect("currentIndexChanged(int)", lambda index: self._setByHand(
            "petCtModel", self.ui.petCtModelComboBox.currentText))
        self.ui.propagateSegmentComboBox.connect("activated(int)", lambda index: self._setByHand(
            "propagateSegment", self.ui.propagateSegmentComboBox.currentText))
        self.initializeParameterNode()
        self._updateTargetCompleter()
        self._updateDependencyStatus()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.pollTimer:
            self.pollTimer.stop()
        if self.logic:
            self.logic.cancelAll()  # Slicer closing: the worker stops at its next window

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        if self.job is not None:
            self.job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            p = self._parameterNode
            for edit, text in ((self.ui.targetsPlainTextEdit, p.targets),
                               (self.ui.prognosisFieldsPlainTextEdit, p.prognosisFields)):
                if edit.toPlainText() != text:
                    edit.setPlainText(text)
            self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(p.device), 0))
            self.ui.modelComboBox.setCurrentIndex(max(self.ui.modelComboBox.findText(p.model), 0))
            if p.petCtModel and self.ui.petCtModelComboBox.findText(p.petCtModel) >= 0:
                self.ui.petCtModelComboBox.setCurrentIndex(self.ui.petCtModelComboBox.findText(p.petCtModel))
            self._updateSegmentList()  # selects p.propagateSegment where the output holds it
            self._checkCanApply()

    def _setByHand(self, parameter: str, value) -> None:
        """Write a BOUND_BY_HAND parameter (unchanged values are not written: no Modified event)."""
        if self._parameterNode and getattr(self._parameterNode, parameter) != value:
            setattr(self._parameterNode, parameter, value)

    def onTargetsEdited(self) -> None:
        self._setByHand("targets", self.ui.targetsPlainTextEdit.toPlainText())

    def onPrognosisFieldsEdited(self) -> None:
        self._setByHand("prognosisFields", self.ui.prognosisFieldsPlainTextEdit.toPlainText())

    def onDeviceChanged(self, index: int) -> None:
        device = self.ui.deviceComboBox.itemData(index) if index >= 0 else None
        if device:
            self._setByHand("device", device)

    def _fillDevices(self) -> None:
        """The devices torch offers, each with what was found (GPU name and memory, CPU cores); the device
        name is the item data. The parameter's device stays selected when it is still offered."""
        current = self._parameterNode.device if self._parameterNode else "auto"  # refilling selects item 0
        self.ui.deviceComboBox.clear()
        for device, found in self.logic.availableDevices():
            self.ui.deviceComboBox.addItem(f"{device}: {found}", device)
        self.ui.deviceComboBox.setCurrentIndex(max(self.ui.deviceComboBox.findData(current), 0))

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self.job is not None:  # running: the button is Cancel
            return
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._targetList())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Segment the targets") if ready else _("Select an input volume and "
                                                                            "name at least one target")
        self.ui.undoButton.enabled = bool(self._parameterNode and
                                          self.logic.canUndo(self._parameterNode.outputSegmentation))

    def _targetList(self):
        return [line.strip() for line in self._parameterNode.targets.splitlines() if line.strip()]

    def _updateTargetCompleter(self) -> None:
        """Suggest the selected model's targets and their synonyms (every known target when untrained targets
        are allowed) while the user types in the add-target box."""
        try:
            names = self.logic.targetSuggestions(self._parameterNode.model if self._parameterNode else None,
                                                 untrained=self.ui.allowUntrainedCheckBox.checked)
        except Exception:  # PromptSegLib missing or the model unreadable: no completion
            names = []
        completer = qt.QCompleter(names, self.ui.addTargetLineEdit)
        completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        completer.setFilterMode(qt.Qt.MatchContains)
        self.ui.addTargetLineEdit.setCompleter(completer)

    def onAddTarget(self) -> None:
        """Append the add-target box's text to the target list (once), then clear the box."""
        text = self.ui.addTargetLineEdit.text.strip()
        if not text or not self._parameterNode:
            return
        if text.lower() not in (line.lower() for line in self._targetList()):
            self.ui.targetsPlainTextEdit.setPlainText("\n".join(self._targetList() + [text]))  # edits the parameter
        self.ui.addTargetLineEdit.clear()

    def _updateDependencyStatus(self) -> None:
        missing = self.logic.missingDependencies()
        self.ui.installButton.visible = bool(missing)
        if missing:
            self.ui.statusLabel.text = _("Missing Python packages: ") + ", ".join(missing)

    def onInstallButton(self) -> None:
        self.ui.installButton.enabled = False
        self.ui.statusLabel.text = _("Installing Python packages...")
        with slicer.util.tryWithErrorDisplay(_("Could not install the Python packages."), waitCursor=True):
            self.logic.installDependencies(self._onDependenciesInstalled)
            return
        self._onDependenciesInstalled(False)

    def _onDependenciesInstalled(self, succeeded: bool) -> None:
        self.ui.installButton.enabled = True
        if not succeeded:
            self.ui.statusLabel.text = _("Installing the Python packages failed; see the Python console. Offline, "
                                         "install them with pip from a local folder (pip install --no-index "
                                         "--find-links FOLDER ...).")
        self._updateDependencyStatus()
        self._fillDevices()
        self._updateTargetCompleter()

    def onApplyButton(self) -> None:
        if self._cancelRunningJob(self.ui.applyButton):
            return
        self._startSegmentation(self._onSegmentationDone)

    def _startSegmentation(self, jobDone) -> None:
        p = self._parameterNode

        def start():
            targets, texts = self.logic.sortTargetLines(self._targetList())  # as --target / --target-text
            return self.logic.startSegmentation(
                p.inputVolume, p.outputSegmentation, modality=p.modality, region=p.region, targets=targets,
                targetTexts=texts, contextText=p.contextText or None, device=p.device, modelFolder=p.model,
                allowUntrained=self.ui.allowUntrainedCheckBox.checked, precision=p.precision)

        self._runJob(start, jobDone, self.ui.applyButton)

    def _onSegmentationDone(self, job) -> None:
        """Main thread: write a finished segmentation job's segments (and boxes) into the scene."""
        segmentationNode = self.logic.finishSegmentation(job)
        if self._parameterNode.outputSegmentation is not segmentationNode:
            self._parameterNode.outputSegmentation = segmentationNode
        segmentationNode.CreateClosedSurfaceRepresentation()
        if self.ui.detectionsCheckBox.checked:
            self.logic.addDetectionROIs(job.result, job.volumeNode)

    def onUndoButton(self) -> None:
        if self.logic.undo(self._parameterNode.outputSegmentation):
            self.ui.statusLabel.text = _("Previous segments restored")
        self._checkCanApply()


#
# Logic: the Qt-free PromptSegSlicer logic, with the module's parameter node
#
class PromptSegLogic(promptSegLogic.PromptSegLogic):
    def __init__(self) -> None:
        promptSegLogic.PromptSegLogic.__init__(self)

    def getParameterNode(self):
        return PromptSegParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self))

    def installDependencies(self, completed: Callable[[bool], None]) -> None:
        """torch through the PyTorch extension when present, the rest with pip, in the background where Slicer
        offers it (newer Slicer: ``pip_install(blocking=False)``), else blocking; ``completed(succeeded)`` is
        called at the end. Never replaces Slicer's SimpleITK, numpy or vtk (a pip constraints file pins them);
        PromptSegLib itself comes from the module folder, not from PyPI."""
        missing = self.missingDependencies()
        torch = REQUIRED_PACKAGES["torch"]
        if torch in missing:
            try:
                import PyTorchUtils
            except ImportError:
                raise DependencyError([torch]) from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                raise DependencyError([torch])
            missing.remove(torch)
        if not missing:
            completed(True)
            return
        arguments = pipInstallArguments(missing, Path(slicer.app.temporaryPath) / "PromptSeg-constraints.txt")
        if "blocking" in inspect.signature(slicer.util.pip_install).parameters:
            slicer.util.pip_install(arguments, blocking=False, completedCallback=lambda code: completed(code == 0))
        else:
            slicer.util.pip_install(arguments)
            completed(True)


#
# Test, run inside Slicer (Reload and Test)
#
class PromptSegTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PromptSeg_chest_ct()
        self.setUp()
        self.test_PromptSeg_widget_apply_and_cancel()

    def test_PromptSeg_chest_ct(self):
        import SampleData

        logic = PromptSegLogic()
        missing = logic.missingDependencies()
        if missing:
            self.delayDisplay(f"Skipped: missing Python packages {missing}")
            return
        try:
            modelFolder = logic.defaultModelFolder()
            from PromptSegLib.models.folder import verify_folder

            verify_folder(modelFolder)
        except Exception as exc:
            self.delayDisplay(f"Skipped: no usable bundled model ({exc})")
            return
        volume = SampleData.downloadSample("CTChest")
        self.delayDisplay("Segmenting the lungs")
        segmentationNode = logic.segment(volume, None, modality="CT", region="thorax",
                                         targets=["left lung", "right lung"])
        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("left lung"))
        logic.segment(volume, segmentationNode, modality="CT", region="thorax", targets=["left lung"])
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertTrue(logic.undo(segmentationNode))
        self.delayDisplay("Test passed")

    def test_PromptSeg_widget_apply_and_cancel(self):
        """The panel as a user drives it: add a target through the completer box, Apply (the button reads
        Cancel while it runs), then a second run cancelled at once leaves the segments as they were."""
        import time

        import SampleData

        slicer.util.selectModule("PromptSeg")  # entering the module gives the widget its parameter node
        widget = slicer.util.getModuleWidget("PromptSeg")
        if widget.logic.missingDependencies():
            self.delayDisplay(f"Skipped: missing Python packages {widget.logic.missingDependencies()}")
            return
        volume = SampleData.downloadSample("CTChest")
        widget.ui.inputVolumeSelector.setCurrentNode(volume)
        widget.ui.targetsPlainTextEdit.setPlainText("")
        self.assertFalse(widget.ui.applyButton.enabled)  # no target yet
        widget.ui.addTargetLineEdit.text = "liver"
        widget.onAddTarget()
        widget.onAddTarget()  # the box is empty now: nothing is added twice
        self.assertEqual(widget._parameterNode.targets, "liver")
        self.assertTrue(widget.ui.applyButton.enabled)

        def waitForJob(seconds=600):
            deadline = time.monotonic() + seconds
            while widget.job is not None and time.monotonic() < deadline:
                slicer.app.processEvents()
                time.sleep(0.05)
            self.assertIsNone(widget.job, "the run did not finish")

        widget.ui.applyButton.click()
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        waitForJob()
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        segmentation = widget._parameterNode.outputSegmentation.GetSegmentation()
        self.assertTrue(segmentation.GetSegmentIdBySegmentName("liver"))
        self.assertTrue(widget.ui.undoButton.enabled)

        widget.ui.addTargetLineEdit.text = "spleen"
        widget.onAddTarget()
        widget.ui.applyButton.click()
        widget.ui.applyButton.click()  # Cancel
        waitForJob()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)  # the cancelled run wrote nothing
        self.delayDisplay("Widget test passed")
