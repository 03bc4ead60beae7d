"""PromptSeg: text-prompted 3D segmentation in 3D Slicer.

The widget only wires Qt to the logic. The logic (``PromptSegSlicer.PromptSegLogic``) has no Qt, runs
PromptSegLib in a background thread and is tested on slicer-core (Testing/Python/test_slicer_logic.py).
PromptSegLib and torch are imported lazily, so the module loads without them and can say what is missing.
"""
import inspect
import logging
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
from PromptSegSlicer.petct import HECKTOR_TARGETS, PET_CT_MODEL

POLL_INTERVAL_MS = 200
SLICE_VIEWS = {"axial": "Red", "coronal": "Green", "sagittal": "Yellow"}  # where the user draws the prompt slice
IJK_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # which of (i, j, k) a propagation axis runs along
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
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    modality: Annotated[str, Choice(["CT", "MR", "PET"])] = "CT"
    region: str = "thorax"
    contextText: str = ""
    targets: str = "left lung\nright lung"
    device: str = "auto"
    model: str = AUTO_MODEL


#
# Widget: Qt only
#
class PromptSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
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
        # Bound by hand: the parameter node wrapper has no QPlainTextEdit connector, and the device list is
        # only known at run time.
        self.ui.targetsPlainTextEdit.connect("textChanged()", self.onTargetsEdited)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
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
            if self.ui.targetsPlainTextEdit.toPlainText() != self._parameterNode.targets:
                self.ui.targetsPlainTextEdit.setPlainText(self._parameterNode.targets)
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            self.ui.deviceComboBox.setCurrentIndex(max(index, 0))
            self._checkCanApply()

    def onTargetsEdited(self) -> None:
        if self._parameterNode and self._parameterNode.targets != self.ui.targetsPlainTextEdit.toPlainText():
            self._parameterNode.targets = self.ui.targetsPlainTextEdit.toPlainText()

    def onDeviceChanged(self, index: int) -> None:
        device = self.ui.deviceComboBox.itemData(index) if index >= 0 else None
        if self._parameterNode and device and self._parameterNode.device != device:
            self._parameterNode.device = device

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

    def _startSegmentation(self, jobDone) -> None:
        p = self._parameterNode

        def start():
            targets, texts = self.logic.sortTargetLines(self._targetList())  # as --target / --target-text
            return self.logic.startSegmentation(
                p.inputVolume, p.outputSegmentation, modality=p.modality, region=p.region, targets=targets,
                targetTexts=texts, contextText=p.contextText or None, device=p.device, modelFolder=p.model,
                allowUntrained=self.ui.allowUntrainedCheckBox.checked)

        self._runJob(start, jobDone, self.ui.applyButton)

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

    def _onSegmentationDone(self, job) -> None:
        """Main thread: write a finished segmentation job's segments (and boxes) into the scene."""
        segmentationNode = self.logic.finishSegmentation(job)
        if self._parameterNode.outputSegmentation is not segmentationNode:
            self._parameterNode.outputSegmentation = segmentationNode
        segmentationNode.CreateClosedSurfaceRepresentation()
        if self.ui.detectionsCheckBox.checked:
            self.logic.addDetectionROIs(job.result, job.volumeNode)

    def _saveSegmentEditorUndoState(self, segmentationNode) -> None:
        if segmentationNode is None:
            return
        try:
            editorWidget = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            if editorWidget.segmentationNode() is segmentationNode:
                editorWidget.saveStateForUndo()
        except Exception:  # Segment Editor not created yet: PromptSeg's own Undo still works
            pass

    def _updateModelList(self) -> None:
        self._fillModels(self.ui.modelComboBox, self._parameterNode.model if self._parameterNode else "",
                         automatic=True)

    def _fillModels(self, comboBox, current: str, automatic: bool = False) -> None:
        """The available models (name, folder as item data) in ``comboBox``, ``current`` selected, else the
        first; with ``automatic`` first the choice that routes each request to the model trained for it."""
        comboBox.clear()
        if automatic:
            comboBox.addItem(AUTO_MODEL, "")
        for name, folder in self.logic.availableModels():
            comboBox.addItem(name, str(folder))
        comboBox.setCurrentIndex(max(comboBox.findText(current), 0))

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemText(index)
        self._updateTargetCompleter()

    def _fillInstallMenu(self) -> None:
        """The Install button's menu, built when it opens: from a folder, from a .zip, and each catalogue
        model with a download URL that is not installed yet."""
        self.installMenu.clear()
        self.installMenu.addAction(_("From a model folder...")).connect("triggered()", lambda: self.onImportModel(True))
        self.installMenu.addAction(_("From a .zip file...")).connect("triggered()", lambda: self.onImportModel(False))
        try:
            entries = self.logic.downloadableModels()
        except Exception:  # PromptSegLib missing: the install button says what to do
            entries = []
        for entry in entries:
            action = self.installMenu.addAction(_("Download {name} {version} ({size:.0f} MB)").format(
                name=entry["name"], version=entry["version"], size=entry["size_bytes"] / 1e6))
            action.toolTip = entry["url"]
            action.connect("triggered()", lambda name=entry["name"]: self.onDownloadModel(name))

    def onImportModel(self, fromFolder: bool) -> None:
        """Check a model folder or .zip (SHA256SUMS) and install it for this user."""
        if fromFolder:
            path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Model folder to install"))
        else:
            path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Model archive to install"), "",
                                                  _("Model archive (*.zip)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("This model cannot be used."), waitCursor=True):
            self._selectInstalledModel(self.logic.importModel(path))

    def onDownloadModel(self, name: str) -> None:
        """Download a catalogue model off the main thread; Apply reads Cancel meanwhile."""
        if self.job is not None:
            return
        self._runJob(lambda: self.logic.startModelDownload(name),
                     lambda job: self._selectInstalledModel(self.logic.finishModelDownload(job)), self.ui.applyButton)

    def _selectInstalledModel(self, folder: Path) -> None:
        self._updateModelList()
        self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findText(folder.name))
        self.ui.statusLabel.text = _("installed ") + str(folder)

    def _updateSegmentList(self) -> None:
        self.ui.propagateSegmentComboBox.clear()
        node = self._parameterNode.outputSegmentation if self._parameterNode else None
        if node is not None:
            segmentation = node.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):
                self.ui.propagateSegmentComboBox.addItem(segmentation.GetNthSegment(i).GetName())

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

    def onUndoButton(self) -> None:
        if self.logic.undo(self._parameterNode.outputSegmentation):
            self.ui.statusLabel.text = _("Previous segments restored")
        self._checkCanApply()

    # ------------------------------------------------------------------ PET/CT tumour and prognosis
    def _setupPetCt(self) -> None:
        try:
            self._fillModels(self.ui.petCtModelComboBox, PET_CT_MODEL)
        except Exception:  # PromptSegLib missing: the install button says what to do
            pass
        self.ui.petCtModelComboBox.connect("currentIndexChanged(int)", lambda index: self.onPetCtModelChanged())
        self.ui.petCtVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._prefillClinicalRecord)
        self.ui.petVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onPetVolumeChanged)
        self.ui.petSuvButton.connect("clicked(bool)", self.onConvertPetToSuv)
        self.ui.petCtApplyButton.connect("clicked(bool)", self.onPetCtApply)
        self.ui.prognosisPredictButton.connect("clicked(bool)", self.onPredict)
        self.onPetCtModelChanged()
        self.onPetVolumeChanged(self.ui.petVolumeSelector.currentNode())

    def onPetCtModelChanged(self) -> None:
        """Fill the targets with the model's; say when it has no GTVp/GTVn."""
        try:
            targets = self.logic.petCtTargets(self.ui.petCtModelComboBox.currentText or None)
        except Exception as exc:
            self.ui.petCtTargetsLineEdit.text = ""
            self.ui.petCtTargetsLineEdit.toolTip = str(exc)
            return
        self.ui.petCtTargetsLineEdit.text = ", ".join(targets)
        lacking = [label for name, label in HECKTOR_TARGETS.items() if name not in targets]
        self.ui.petCtTargetsLineEdit.toolTip = (_("This model has no {labels}; it segments: {targets}").format(
            labels=" or ".join(lacking), targets=", ".join(targets)) if lacking else _("Targets to segment, comma-separated"))

    def onPetVolumeChanged(self, node) -> None:
        isSuv = node is not None and self.logic.petIsSuv(node)
        self.ui.petSuvButton.enabled = node is not None and not isSuv
        self.ui.petSuvButton.text = _("In SUV") if isSuv else _("Convert to SUV")
        self._prefillClinicalRecord(node)

    def _prefillClinicalRecord(self, node) -> None:
        """Sex, age and weight from the volume's DICOM patient tags, where present."""
        if node is None:
            return
        try:
            record = self.logic.clinicalRecordFromDicom(node)
        except Exception:  # not readable as DICOM: the fields stay as the user left them
            logging.exception("PromptSeg: could not read the DICOM patient tags")
            return
        if record.gender is not None:
            self.ui.prognosisSexComboBox.setCurrentIndex(1 if record.gender == 1 else 2)
        if record.age is not None:
            self.ui.prognosisAgeSpinBox.value = record.age
        if record.weight is not None:
            self.ui.prognosisWeightSpinBox.value = record.weight

    def onConvertPetToSuv(self) -> None:
        node = self.ui.petVolumeSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("Could not convert the PET to SUV."), waitCursor=True):
            info = self.logic.convertPetToSuv(node)
            self.ui.statusLabel.text = _("PET now in SUV body weight (scale factor {factor:.4g})").format(
                factor=info.scale_factor)
        self.onPetVolumeChanged(node)

    def onPetCtApply(self) -> None:
        """Start the PET/CT segmentation off the main thread; while it runs the button reads Cancel."""
        if self._cancelRunningJob(self.ui.petCtApplyButton):
            return
        ct, pet = self.ui.petCtVolumeSelector.currentNode(), self.ui.petVolumeSelector.currentNode()
        targets = [t.strip() for t in self.ui.petCtTargetsLineEdit.text.split(",") if t.strip()]
        output = self.petCtSegmentation if slicer.mrmlScene.IsNodePresent(self.petCtSegmentation) else None
        self._runJob(lambda: self.logic.startPetCt(ct, pet, output, targets or None,
                                                   self.ui.petCtModelComboBox.currentText or None,
                                                   self.ui.petWeightSpinBox.value, device=self._parameterNode.device),
                     self._onPetCtDone, self.ui.petCtApplyButton)

    def _onPetCtDone(self, job) -> None:
        """Main thread: write a finished PET/CT job's fused segments."""
        self.petCtSegmentation, overlap = self.logic.finishPetCt(job)
        self.petCtSegmentation.CreateClosedSurfaceRepresentation()

    def onPredict(self) -> None:
        ct = self.ui.petCtVolumeSelector.currentNode()
        with slicer.util.tryWithErrorDisplay(_("Prediction failed."), waitCursor=True):
            fields = self.logic.parseClinicalFields(self.ui.prognosisFieldsPlainTextEdit.toPlainText())
            fields["patient_id"] = self.logic.clinicalRecordFromDicom(ct).patient_id if ct else "patient"
            sex = self.ui.prognosisSexComboBox.currentIndex  # unknown, male, female
            if sex:
                fields["gender"] = 1 if sex == 1 else 0
            if self.ui.prognosisAgeSpinBox.value >= 0:
                fields["age"] = self.ui.prognosisAgeSpinBox.value
            if self.ui.prognosisWeightSpinBox.value > 0:
                fields["weight"] = self.ui.prognosisWeightSpinBox.value
            prediction, chart = self.logic.predictPrognosis(fields, self.ui.prognosisModelLineEdit.text.strip() or None,
                                                            ct)
            self.ui.prognosisResultLabel.text = _("Risk score {risk:.2f} ({group} risk): {definition}").format(
                risk=prediction["risk_score"], group=prediction["risk_group"],
                definition=prediction["risk_definition"])
            slicer.modules.plots.logic().ShowChartInLayout(chart)


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
            from PromptSegLib.model_io import verify_folder

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
