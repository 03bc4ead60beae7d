"""The PET/CT panel: HECKTOR tumour (GTVp) and node (GTVn) segmentation fused from CT and PET, SUV conversion,
and the prognosis from image features plus the clinical record."""
import logging

import slicer
from slicer.i18n import tr as _

from PromptSegSlicer.petct import HECKTOR_TARGETS


class PetCtPanelMixin:
    """Needs ``self.ui`` (the ``petCt*``, ``pet*`` and ``prognosis*`` widgets), ``self.logic``,
    ``self._parameterNode``, ``self.petCtSegmentation``, the job runner
    (:class:`~PromptSegWidgets.jobs.JobRunnerMixin`) and ``_fillModels``
    (:class:`~PromptSegWidgets.models.ModelPanelMixin`)."""

    def _setupPetCt(self) -> None:
        try:
            self._fillModels(self.ui.petCtModelComboBox, self.logic.petCtDefaultModel())
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
