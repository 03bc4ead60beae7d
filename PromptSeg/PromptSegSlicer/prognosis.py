"""Prognosis in the PromptSeg logic: a patient's clinical record (from the DICOM tags of a volume, or typed
``name: value`` fields), the prognosis model's risk score, risk group and survival curve, and the curve as
table, plot series and chart nodes. No Qt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import slicer

from .dependencies import checkDependencies, ensureLibraryImportable
from .export import dicomFilesOfVolume
from .nodes import InputError, placeInStudy

PROGNOSIS_MODEL = "promptseg-prognosis-hecktor"  # bundled under PromptSegLib/models


class PrognosisMixin:
    """Clinical records and survival prediction. Needs ``self.scene`` and ``self._prognosisModels`` (model
    folder -> loaded model), which ``PromptSegLogic`` provides."""

    def clinicalRecordFromDicom(self, volumeNode):
        """The patient's sex, age and weight from the DICOM patient tags of the files ``volumeNode`` was loaded
        from (PromptSegLib ``ClinicalRecord``; every field unknown when it was not loaded from DICOM)."""
        ensureLibraryImportable()
        import pydicom

        from PromptSegLib.prognosis.records import ClinicalRecord, record_from_dicom

        files = dicomFilesOfVolume(volumeNode)
        if not files:
            return ClinicalRecord(volumeNode.GetName())
        return record_from_dicom(pydicom.dcmread(files[0], stop_before_pixels=True))

    @staticmethod
    def parseClinicalFields(text: str) -> dict[str, str]:
        """``name: value`` lines (clinical table column or record field names) as a dict; blank lines skipped.

        Raises:
            InputError: a line without ``:``, or a field given twice.
        """
        fields: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise InputError(f"clinical field line {number} ({line.strip()!r}) is not 'name: value'")
            if name.strip() in fields:
                raise InputError(f"clinical field {name.strip()!r} is given twice")
            fields[name.strip()] = value.strip()
        return fields

    def predictPrognosis(self, record, modelFolder=None, volumeNode=None):
        """Risk score, risk group and survival curve of one patient, and the curve as a plot.

        Args:
            record: a PromptSegLib ``ClinicalRecord``, or a dict of its fields or clinical CSV column names.
            modelFolder: a prognosis model folder (default: the bundled HECKTOR clinical model).
            volumeNode: when given, the plot's nodes go under its study.

        Returns:
            (prediction, chart node): the prediction of ``PromptSegLib.prognosis.model.patient_prognosis``
            (``risk_score`` in [0, 1], ``risk_group``, ``survival_curve`` time and survival) and a plot chart
            node showing the curve from a table node (columns ``time``, ``survival``) and a plot series node.

        Raises:
            PromptSegLib.prognosis.records.ClinicalDataError: an unknown field or an implausible value (named).
            PromptSegLib.errors.ModelError: a missing model folder or one failing its checksums.
        """
        ensureLibraryImportable()
        checkDependencies()
        from PromptSegLib.models.folder import BUNDLED_MODELS
        from PromptSegLib.prognosis.model import load_prognosis_model, patient_prognosis
        from PromptSegLib.prognosis.records import ClinicalRecord

        record = record if isinstance(record, ClinicalRecord) else ClinicalRecord.from_dict(dict(record))
        folder = str(Path(modelFolder or BUNDLED_MODELS / PROGNOSIS_MODEL).resolve())
        if folder not in self._prognosisModels:
            self._prognosisModels[folder] = load_prognosis_model(folder)
        prediction = patient_prognosis(self._prognosisModels[folder], record)
        return prediction, self._survivalChart(prediction, volumeNode)

    def _survivalChart(self, prediction: dict, volumeNode=None):
        """Table, plot series and chart nodes of ``prediction["survival_curve"]`` (time, survival), named after
        the patient and placed under ``volumeNode``'s study when given."""
        scene = self.scene
        name = scene.GenerateUniqueName(f"{prediction['patient_id']} survival")
        curve = prediction["survival_curve"]
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        slicer.util.updateTableFromArray(table, [np.asarray(curve["time"], float), np.asarray(curve["survival"], float)],
                                         ["time", "survival"])
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("time")
        series.SetYColumnName("survival")
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        chart.SetTitle(f"{prediction['patient_id']}: risk {prediction['risk_score']:.2f} ({prediction['risk_group']})")
        chart.SetXAxisTitle("time (days)")
        chart.SetYAxisTitle("survival probability")
        chart.SetLegendVisibility(False)
        if volumeNode is not None:
            for node in (table, series, chart):
                placeInStudy(scene, node, volumeNode)
        return chart

