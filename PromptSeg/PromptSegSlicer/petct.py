"""PET/CT in the PromptSeg logic: converting a PET volume to SUV body weight from its DICOM tags, and
segmenting the tumour on a co-registered CT and PET by late fusion (each image through the model's block for
its modality, the probabilities fused on the CT grid) off the main thread. No Qt.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer

from .dependencies import checkDependencies, ensureLibraryImportable
from .export import dicomSeriesFolder
from .jobs import Report, SegmentationJob
from .nodes import InputError, checkSameTransform, validateVolumeNode, volumeNodeToSimpleITK
from .requests import ModelChoice, PetCtRequest

HECKTOR_TARGETS = {"primary tumor": "GTVp", "malignant lymph node": "GTVn"}  # vocabulary name -> HECKTOR label
SUV_QUANTITY = ("126400", "DCM", "Standardized Uptake Value")
SUV_UNITS = ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")  # as Slicer's PET DICOM plugin
MAX_PLAUSIBLE_SUV = 200.0  # FDG SUVs stay far below; activity concentrations (Bq/ml) far above


class PetCtMixin:
    """PET SUV conversion and PET/CT segmentation jobs. Needs ``_startJob``/``_finishJob``
    (``JobRunnerMixin``), ``_jobSegmenter`` and ``writeResult`` (``SegmentationMixin``)."""

    @staticmethod
    def petCtDefaultModel() -> str:
        """The model the PET/CT panel offers first: the library's bundled model with CT and PET blocks."""
        ensureLibraryImportable()
        from PromptSegLib.segment.fusion import PET_CT_MODEL

        return PET_CT_MODEL

    @staticmethod
    def petCtTargets(modelFolder=None) -> list[str]:
        """The targets a PET/CT model segments (GTVp and GTVn first when it has them).

        Raises:
            InputError: the model lacks a CT or a PET input block.
            PromptSegLib.errors.ModelError: a missing model or one failing its checksums.
        """
        ensureLibraryImportable()
        from PromptSegLib.models.catalogue import resolve_model
        from PromptSegLib.models.folder import read_config
        from PromptSegLib.segment.fusion import PET_CT_MODEL

        config = read_config(resolve_model(str(modelFolder or PET_CT_MODEL)))
        lacking = [m for m in ("CT", "PET") if m not in config.network.modalities or not config.regions.get(m)]
        if lacking:
            raise InputError(f"model {config.name} has no trained {' and no '.join(lacking)} input: PET/CT needs a "
                             f"model trained on both (it was on {', '.join(config.regions)})")
        return sorted(config.targets, key=lambda name: name not in HECKTOR_TARGETS)

    @staticmethod
    def petIsSuv(volumeNode) -> bool:
        """The volume's voxel value units say SUV body weight (set by Slicer's PET DICOM plugin or
        ``convertPetToSuv``)."""
        units = volumeNode.GetVoxelValueUnits()
        return units is not None and units.GetCodeValue() == SUV_UNITS[0]

    def convertPetToSuv(self, petVolume, dicomFolder=None):
        """Replace a PET volume's voxels (activity, as loaded from DICOM) by SUV body weight, computed from the
        DICOM tags of the files it was loaded from (Slicer's DICOM database) or of the series in
        ``dicomFolder``; marks the volume's units as SUVbw. Returns PromptSegLib's ``SUVInfo`` (scale factor,
        weight, dose, decay).

        Raises:
            InputError: the volume is already in SUV, or was not loaded from DICOM and no folder is given.
            PromptSegLib.preprocessing.pet.PETConversionError: a tag the conversion needs is missing or invalid (named).
        """
        import tempfile

        import SimpleITK as sitk

        ensureLibraryImportable()
        from PromptSegLib.io.imageio import same_geometry
        from PromptSegLib.preprocessing.pet import read_pet_suv
        from PromptSegLib.preprocessing.preprocess import resample_to

        validateVolumeNode(petVolume)
        if self.petIsSuv(petVolume):
            raise InputError(f"'{petVolume.GetName()}' is already in SUV (body weight)")
        with tempfile.TemporaryDirectory(prefix="PromptSeg-") as work:
            suv, info = read_pet_suv(dicomFolder or dicomSeriesFolder(petVolume, Path(work)))
        grid = volumeNodeToSimpleITK(petVolume)
        if not same_geometry(suv, grid, 1e-3):  # Slicer's loader may order or orient the slices otherwise
            suv = resample_to(suv, grid, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        slicer.util.updateVolumeFromArray(petVolume, sitk.GetArrayFromImage(suv))
        for setter, code in ((petVolume.SetVoxelValueQuantity, SUV_QUANTITY), (petVolume.SetVoxelValueUnits, SUV_UNITS)):
            entry = slicer.vtkCodedEntry()
            entry.SetValueSchemeMeaning(*code)
            setter(entry)
        petVolume.SetAttribute("PromptSeg.SUVScaleFactor", f"{info.scale_factor:.8g}")
        return info

    def startPetCt(self, ctVolume, petVolume, segmentationNode=None, targets: Sequence[str] | None = None,
                   modelFolder=None, petWeight: float = 0.5, threshold: float | None = None,
                   minOverlap: float = 0.0, device: str = "auto", threads: int | None = None,
                   onProgress: Report | None = None) -> SegmentationJob:
        """Start segmenting the tumour on a co-registered CT and PET (in SUV) by late fusion, off the main thread:
        each image through the model's block for its modality (context: the model's first region for it), the
        PET probabilities resampled onto the CT grid, their weighted mean (PET weight ``petWeight``). Nothing in
        the scene changes here: ``finishPetCt`` writes one segment per target on the CT's geometry.

        Args:
            targets: vocabulary names or synonyms (``GTVp``, ``GTVn``); default: every target of the model.
            minOverlap: the fraction of the CT box the PET must cover.

        Raises:
            InputError: a missing or unsuitable volume, PET values that cannot be SUV, a transformed PET, a
                weight outside [0, 1], a model without CT and PET blocks or without a requested target (the
                error names the targets it has).
        """
        ensureLibraryImportable()
        checkDependencies()
        from PromptSegLib.models.catalogue import resolve_model
        from PromptSegLib.segment.fusion import PET_CT_MODEL
        from PromptSegLib.text.vocabulary import default_vocabulary

        for role, node in (("CT", ctVolume), ("PET", petVolume)):
            if node is None:
                raise InputError(f"No {role} volume selected: choose the {role} of the patient.")
            validateVolumeNode(node)
        if ctVolume is petVolume:
            raise InputError("The CT and the PET are the same volume: choose the patient's PET.")
        checkSameTransform(petVolume, ctVolume)
        checkSameTransform(segmentationNode, ctVolume)
        if not 0.0 <= petWeight <= 1.0:
            raise InputError(f"PET weight {petWeight} must be between 0 and 1")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise InputError(f"threshold {threshold} must be between 0 and 1")
        peak = float(np.max(slicer.util.arrayFromVolume(petVolume)))
        if peak > MAX_PLAUSIBLE_SUV:
            raise InputError(f"'{petVolume.GetName()}' reaches {peak:.0f}: not SUV (activity concentration?); "
                             "convert it to SUV from its DICOM tags first.")
        folder = resolve_model(str(modelFolder or PET_CT_MODEL))
        available = self.petCtTargets(folder)
        names = [default_vocabulary().target(t).name for t in targets or available]
        lacking = [f"{n} ({HECKTOR_TARGETS[n]})" if n in HECKTOR_TARGETS else n for n in names if n not in available]
        if lacking:
            raise InputError(f"model {folder.name} has no {', '.join(lacking)} target; it segments: "
                             f"{', '.join(available)}")
        request = PetCtRequest(volumeNodeToSimpleITK(ctVolume), volumeNodeToSimpleITK(petVolume), names,
                               ModelChoice(folder, device or "auto", threads), petWeight, threshold, minOverlap)
        job = SegmentationJob(request, ctVolume, segmentationNode)
        return self._startJob(job, self._petCtWork, onProgress)

    def _petCtWork(self, job: SegmentationJob, report) -> None:
        """Worker thread: PromptSegLib only, never the scene. ``job.result``: (fused result, overlap report)."""
        from PromptSegLib.segment.fusion import segment_pet_ct

        request = job.request
        segmenter = self._jobSegmenter(job, report, "PET/CT segmentation")
        job.result = segment_pet_ct(segmenter, request.ct, request.pet, request.targets, pet_weight=request.petWeight,
                                    min_overlap=request.minOverlap, progress=report, cancel=job._cancel)

    def finishPetCt(self, job: SegmentationJob, timeout: float | None = None):
        """Main thread: wait for the worker, then write the fused segments (name, colour, terminology, undo: see
        ``writeResult``) on the CT's geometry. Returns (segmentation node, overlap report ``{"ct_covered",
        "pet_covered", "message"}``).

        Raises:
            PromptSegLib.errors.Cancelled: the job was cancelled (the scene is untouched).
            PromptSegLib.preprocessing.pet.NoOverlapError: PET and CT do not overlap (found before any segmentation).
            TimeoutError: the worker is still running after ``timeout`` seconds.
        """
        self._finishJob(job, timeout, "PET/CT segmentation")
        fused, overlap = job.result
        logging.info("PromptSeg PET/CT: %s", overlap["message"])
        node = self.writeResult(fused, job.volumeNode, job.outputNode, job.request.threshold)
        job.message = "; ".join([overlap["message"], f"done in {time.monotonic() - job.startTime:.1f} s"] + job.notes)
        return node, overlap

    def segmentPetCt(self, ctVolume, petVolume, segmentationNode=None, **kwargs):
        """Blocking ``startPetCt`` + ``finishPetCt`` (scripts and tests)."""
        return self.finishPetCt(self.startPetCt(ctVolume, petVolume, segmentationNode, **kwargs))
