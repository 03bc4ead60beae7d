"""Checks ``promptseg`` makes before any work: an argument that would fail after the image is read, the model
loaded or the inference run fails first, with one line (a :class:`PromptSegError`)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from PromptSegLib.errors import OutputError, PromptSegError

STRUCTURE_SET_LABEL_MAX = 16  # Structure Set Label (3006,0002) is a DICOM SH: 16 characters at most


def check_common(args: argparse.Namespace) -> None:
    """``--threads`` and ``--device`` of any subcommand that has them.

    Raises:
        PromptSegError: fewer than 1 thread, an unknown device or a CUDA device this machine lacks.
    """
    from PromptSegLib.models.device import check_threads, parse_device

    check_threads(getattr(args, "threads", None))
    if getattr(args, "device", None):
        parse_device(args.device)


def check_segment(args: argparse.Namespace, model: str | os.PathLike) -> Path:
    """What ``promptseg segment`` can check before reading the image, beyond the output folders: the output
    file types (``-o`` a segmentation or labelmap, ``--overlay`` PNG, ``--boxes`` JSON), no file asked for
    twice, the threshold, the model (found, checksums) and the request against the model's config (modality,
    region, targets, trained for). Returns the folder of ``model`` (a folder or an installed model's name).

    Raises:
        OutputError: an output of the wrong type, or one file asked for as two outputs.
        PromptSegError: see above (``PromptError``, ``ModelError``, ``InputImageError`` for the modality).
    """
    from PromptSegLib.export.segfile import segmentation_files
    from PromptSegLib.models.catalogue import resolve_model
    from PromptSegLib.models.folder import read_config
    from PromptSegLib.segment.inference import check_request
    from PromptSegLib.text.vocabulary import default_vocabulary

    outputs = segmentation_files(args.output)
    for option, path, suffix in (("--overlay", args.overlay, ".png"), ("--boxes", args.boxes, ".json"),
                                 ("--rtstruct", args.rtstruct, None), ("--dicom-seg", args.dicom_seg, None)):
        if path and suffix and Path(path).suffix.lower() != suffix:
            raise OutputError(f"{option} {path}: the file must end in {suffix}")
        if path:
            outputs.append(Path(path))
    resolved = [path.resolve() for path in outputs]
    twice = sorted({str(path) for path in outputs if resolved.count(path.resolve()) > 1})
    if twice:
        raise OutputError(f"{', '.join(twice)} is asked for as two outputs; give each output its own file")
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise PromptSegError(f"--threshold must be a probability between 0 and 1, got {args.threshold}")
    folder = resolve_model(model)
    check_request(read_config(folder), default_vocabulary(), args.modality, args.region, args.target or (),
                  args.target_text or (), args.context_text, args.allow_untrained)
    return folder


def structure_set_label(text: str) -> str:
    """An ``argparse`` type: an RTSTRUCT Structure Set Label, refused when longer than DICOM allows."""
    if not text.strip() or len(text) > STRUCTURE_SET_LABEL_MAX or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Structure Set Label: 1 to {STRUCTURE_SET_LABEL_MAX} "
                                         "characters, no backslash")
    return text


def add_roi_names_argument(parser: argparse.ArgumentParser) -> None:
    """``--roi-names`` (``rtstruct.ROI_NAMINGS``) of every command that writes an RT structure set."""
    from PromptSegLib.dicom.rtstruct import ROI_NAMINGS

    parser.add_argument("--roi-names", choices=ROI_NAMINGS, default=ROI_NAMINGS[0],
                        help="RTSTRUCT ROI names: the targets' names (default) or their AAPM TG-263 names (Parotid_L)")
