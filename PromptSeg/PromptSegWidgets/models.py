"""The model list and the Install button: automatic routing, installed models, folders, archives, downloads."""
from pathlib import Path

import qt
import slicer
from slicer.i18n import tr as _

from PromptSegSlicer.models import AUTO_MODEL


class ModelPanelMixin:
    """Needs ``self.ui`` (``modelComboBox``, ``statusLabel``), ``self.installMenu``, ``self.logic``,
    ``self._parameterNode``, ``_setByHand``, ``self.job``, ``_runJob``
    (:class:`~PromptSegWidgets.jobs.JobRunnerMixin`) and ``_updateTargetCompleter``."""

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
        if index >= 0:
            self._setByHand("model", self.ui.modelComboBox.itemText(index))
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
