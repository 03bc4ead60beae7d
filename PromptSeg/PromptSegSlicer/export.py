"""Files out of the PromptSeg logic: a segmentation node saved as ``.seg.nrrd``, or exported as a DICOM
RTSTRUCT or SEG referencing the CT series it was drawn on; and finding the DICOM files a volume was loaded
from (Slicer's DICOM database), which the PET/CT and prognosis panels read too. No Qt.
"""
from __future__ import annotations

import logging
from pathlib import Path

import slicer

from .dependencies import ensureLibraryImportable
from .nodes import InputError


def dicomFilesOfVolume(volumeNode) -> list[str]:
    """The DICOM files a volume was loaded from (Slicer's DICOM database), empty when it was not."""
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return []
    return [f for f in (database.fileForInstance(uid) for uid in uids) if f]


def dicomSeriesFolder(volumeNode, work: Path) -> Path:
    """A folder under ``work`` holding links to the DICOM files ``volumeNode`` was loaded from.

    Raises:
        InputError: the volume was not loaded through Slicer's DICOM database.
    """
    files = dicomFilesOfVolume(volumeNode)
    if not files:
        raise InputError(f"'{volumeNode.GetName()}' was not loaded from DICOM: load the series through the "
                         "DICOM module, or give the folder holding its files")
    folder = work / "series"
    folder.mkdir()
    for index, file in enumerate(files):
        (folder / f"{index:05d}.dcm").symlink_to(file)
    return folder


class ExportMixin:
    """Saving and exporting segmentation nodes."""

    dicomFilesOfVolume = staticmethod(dicomFilesOfVolume)

    def exportDicom(self, segmentationNode, volumeNode, outputPath, kind: str = "rtstruct", dicomFolder=None,
                    roiNames: str = "prompt"):
        """Write an RTSTRUCT (``kind="rtstruct"``) or DICOM SEG (``"seg"``) of ``segmentationNode`` that
        references the CT series ``volumeNode`` was loaded from (or the series in ``dicomFolder``); RTSTRUCT
        ROIs are named as the segments or, with ``roiNames="tg263"``, by their AAPM TG-263 names.

        Returns PromptSegLib's export report (names, skipped empty segments, warnings, re-read Dice).
        """
        import tempfile

        ensureLibraryImportable()
        from PromptSegLib.dicom.rtstruct import export_rtstruct
        from PromptSegLib.dicom.seg import export_dicom_seg

        if kind not in ("rtstruct", "seg"):
            raise InputError(f"unknown DICOM export kind {kind!r}: use 'rtstruct' or 'seg'")
        with tempfile.TemporaryDirectory(prefix="PromptSeg-") as work:
            dicomFolder = dicomFolder or dicomSeriesFolder(volumeNode, Path(work))
            segmentationFile = Path(work) / "segments.seg.nrrd"
            storage = slicer.vtkMRMLSegmentationStorageNode()  # not the node's own: its file name stays as it was
            storage.SetFileName(str(segmentationFile))
            if not storage.WriteData(segmentationNode):
                raise OSError(f"could not write the segments of '{segmentationNode.GetName()}' for export")
            if kind == "rtstruct":
                return export_rtstruct(dicomFolder, segmentationFile, outputPath, roi_names=roiNames)
            return export_dicom_seg(dicomFolder, segmentationFile, outputPath)

    def saveSegmentation(self, segmentationNode, path) -> Path:
        """Write ``segmentationNode`` to a ``.seg.nrrd`` with Slicer's segmentation storage node."""
        path = Path(path)
        if not path.name.endswith(".seg.nrrd"):
            raise InputError(f"{path}: a segmentation file must end in .seg.nrrd")
        storage = segmentationNode.GetStorageNode()
        if storage is None:
            segmentationNode.AddDefaultStorageNode()
            storage = segmentationNode.GetStorageNode()
        storage.SetFileName(str(path))
        if not storage.WriteData(segmentationNode):
            raise OSError(f"could not write {path}")
        logging.info("PromptSeg: wrote %s", path)
        return path
