"""One segmentation request end to end, shared by ``promptseg segment`` (one image) and ``promptseg cohort``
(many): the prompts and options that decide the masks, the model chosen for them, the segmentation itself and
the files written from its result (each atomically: complete or absent).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from PromptSegLib.errors import PromptSegError
from PromptSegLib.segment.inference import ProgressCallback, SegmentationResult, Segmenter


@dataclass(frozen=True)
class SegmentRequest:
    """What to segment and the options that change the masks (those of ``promptseg segment``).

    Attributes:
        modality: CT, MR or PET.
        region: body region of the context prompt (vocabulary name or synonym), or None with ``context_text``.
        targets: vocabulary target names or synonyms.
        target_texts: raw target (T2) sentences.
        context_text: a raw context (T1) sentence instead of ``region``.
        allow_untrained: accept targets the model was not trained on.
        threshold: probability threshold; None: the model's.
        closer_look: ``off``, ``small`` (targets under 50 mL) or ``all``: segment again in a finer crop.
    """

    modality: str
    region: str | None = None
    targets: tuple[str, ...] = ()
    target_texts: tuple[str, ...] = ()
    context_text: str | None = None
    allow_untrained: bool = False
    threshold: float | None = None
    closer_look: str = "off"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SegmentRequest:
        """The request of parsed command-line options (see :func:`add_request_arguments`)."""
        return cls(args.modality, args.region, tuple(args.target or ()), tuple(args.target_text or ()),
                   args.context_text, args.allow_untrained, args.threshold, args.closer_look)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    def choose_model(self, model: str | os.PathLike | None = None) -> str | os.PathLike:
        """``model`` when given, else the installed or bundled model trained for this request."""
        from PromptSegLib.models.catalogue import route_model

        return model or route_model(self.modality, self.region, self.targets)

    def read_image(self, path: str | os.PathLike, series_uid: str | None = None) -> tuple[sitk.Image, str | None]:
        """The image as segmentation takes it, and a note on its units: a PET in SUV body weight (a DICOM series
        converted from its tags, a file taken as SUV already), any other modality as stored (note None).

        Raises:
            InputImageError: unreadable, incomplete or unusable; ``PETConversionError``: PET tags missing.
        """
        from PromptSegLib.io.imageio import read_image
        from PromptSegLib.preprocessing.pet import read_pet_image
        from PromptSegLib.text.modality import canonical_modality

        if canonical_modality(self.modality) == "PET":
            return read_pet_image(path, series_uid)
        return read_image(path, series_uid), None

    def check(self, segmenter: Segmenter) -> None:
        """Refuse, before any work, a request ``segmenter``'s model cannot serve (``PromptSegError``)."""
        segmenter.check_request(self.modality, self.region, self.targets, self.target_texts, self.context_text,
                                self.allow_untrained)

    def run(self, segmenter: Segmenter, image: sitk.Image,
            progress: ProgressCallback | None = None) -> SegmentationResult:
        """Segment ``image``, then apply the threshold and the closer look asked for."""
        result = segmenter.segment(image, self.modality, self.region, self.targets, target_texts=self.target_texts,
                                   context_text=self.context_text, allow_untrained=self.allow_untrained,
                                   progress=progress)
        if self.threshold is not None:
            result.threshold = self.threshold
        if self.closer_look != "off":
            from PromptSegLib.segment.refine import closer_look

            closer_look(segmenter, image, result, self.modality,
                        indices=list(range(len(result.queries))) if self.closer_look == "all" else None)
        return result


@dataclass(frozen=True)
class OutputFiles:
    """Where the result goes: the segmentation (``.seg.nrrd`` or a labelmap) and the optional extras."""

    segmentation: Path
    overlay: Path | None = None
    boxes: Path | None = None
    rtstruct: Path | None = None
    dicom_seg: Path | None = None
    roi_names: str | None = None
    """RTSTRUCT ROI names (see ``rtstruct.ROI_NAMINGS``); None: the exporter's default."""

    def check(self, source: str | os.PathLike) -> None:
        """Fail before any work when a file cannot be written, or DICOM objects are asked of a non-DICOM source.

        Raises:
            OutputError: a missing or read-only folder.
            PromptSegError: ``--rtstruct``/``--dicom-seg`` without a DICOM series folder as ``source``.
        """
        from PromptSegLib.io.outputs import check_writable

        for path in (self.segmentation, self.overlay, self.boxes, self.rtstruct, self.dicom_seg):
            if path is not None:
                check_writable(path)
        if (self.rtstruct or self.dicom_seg) and not Path(source).is_dir():
            raise PromptSegError("--rtstruct and --dicom-seg reference the source DICOM series: give a DICOM folder "
                                 "as IMAGE")

    def write(self, result: SegmentationResult, source: str | os.PathLike,
              series_uid: str | None = None) -> tuple[list[Path], dict[str, Any]]:
        """Write every file asked for. Returns the paths written and the export reports of the DICOM objects
        (``{"RTSTRUCT": report, "DICOM SEG": report}``, each with its warnings and re-read Dice)."""
        from PromptSegLib.export.segfile import write_segmentation

        written = write_segmentation(self.segmentation, result)
        if self.overlay:
            from PromptSegLib.export.overlay import write_overlay

            written.append(write_overlay(self.overlay, result))
        if self.boxes:
            written.append(write_detections(self.boxes, result))
        reports: dict[str, Any] = {}
        if self.rtstruct or self.dicom_seg:
            from PromptSegLib.dicom.rtstruct import export_rtstruct
            from PromptSegLib.dicom.seg import export_dicom_seg
            from PromptSegLib.export.segments import collect_warnings

            naming = {"roi_names": self.roi_names} if self.roi_names else {}
            for kind, path, export, options in (("RTSTRUCT", self.rtstruct, export_rtstruct, naming),
                                                ("DICOM SEG", self.dicom_seg, export_dicom_seg, {})):
                if path:
                    reports[kind] = collect_warnings(export, source, result, path, series_uid=series_uid, **options)
                    written.append(Path(path))
        return written, reports


def write_detections(path: str | os.PathLike, result: SegmentationResult) -> Path:
    """One JSON list of connected-component boxes per target."""
    from PromptSegLib.io.outputs import atomic_path
    from PromptSegLib.preprocessing.describe import detect

    boxes = {q.name: [asdict(d) for d in detect(result.probability(i), result.threshold, result.reference, q.name)]
             for i, q in enumerate(result.queries)}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(boxes, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of :class:`SegmentRequest` and of the model that serves it (``segment`` and ``cohort``)."""
    parser.add_argument("--modality", required=True, help="CT, MR or PET")
    parser.add_argument("--region", help="body region of the context prompt, e.g. thorax, abdomen")
    parser.add_argument("--context-text", help="a raw context (T1) sentence instead of --region")
    parser.add_argument("--target", action="append", help="a target name or synonym (repeat for several)")
    parser.add_argument("--target-text", action="append", help="a raw target (T2) sentence (repeatable)")
    parser.add_argument("--model", help="model folder or installed model name (default: the installed or bundled "
                        "model trained for the modality, region and targets asked)")
    parser.add_argument("--text-encoder", help="local Hugging Face encoder folder instead of the model's own")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    parser.add_argument("--closer-look", choices=("off", "small", "all"), default="off",
                        help="segment again in a finer crop (half the model's spacing) around small targets (under "
                             "50 mL) or all targets, keeping the first pass's pieces; a model trained at one spacing "
                             "may do worse at the finer one: compare with promptseg evaluate --closer-look first")
    parser.add_argument("--allow-untrained", action="store_true", help="accept targets the model was not trained on")
