"""``promptseg segment-petct``: a patient's CT and PET (SUV) segmented through one model's CT and PET blocks and
fused late on the CT's grid (:func:`PromptSegLib.segment.fusion.segment_pet_ct`). Registered into the main parser
by :func:`add_subcommands`."""
from __future__ import annotations

import argparse
import sys

from PromptSegLib.cli.progress import progress_bar
from PromptSegLib.segment.fusion import PET_CT_MODEL


def cmd_segment_petct(args: argparse.Namespace) -> int:
    from PromptSegLib.export.segfile import write_seg_nrrd
    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.io.outputs import check_writable
    from PromptSegLib.preprocessing.pet import read_pet_image
    from PromptSegLib.segment.fusion import segment_pet_ct
    from PromptSegLib.segment.inference import Segmenter

    check_writable(args.output)
    segmenter = Segmenter(args.model, device=args.device, threads=args.threads)
    targets = args.target or list(segmenter.model.config.targets)
    ct = read_image(args.ct)
    pet, note = read_pet_image(args.pet)
    report, close = progress_bar(not args.quiet)
    try:
        fused, overlap = segment_pet_ct(segmenter, ct, pet, targets, pet_weight=args.pet_weight,
                                        min_overlap=args.min_overlap, allow_untrained=args.allow_untrained,
                                        progress=report)
    finally:
        close()
    if args.threshold is not None:
        fused.threshold = args.threshold
    write_seg_nrrd(args.output, fused)
    if not args.quiet:
        print(f"PET: {note}; {overlap['message']}", file=sys.stderr)
    for index, query in enumerate(fused.queries):
        print(f"{query.name}: {fused.mask(index).sum()} voxels")
    print(f"wrote {args.output}")
    return 0


def add_subcommands(sub) -> None:
    """Register ``segment-petct`` on the main parser's subparsers."""
    pc = sub.add_parser("segment-petct", help="segment a patient's CT and PET and fuse them on the CT's grid")
    pc.add_argument("ct", help="CT image file or DICOM series folder (HU)")
    pc.add_argument("pet", help="PET image file in SUV, or a DICOM PET series folder (converted to SUV from its tags)")
    pc.add_argument("--target", action="append", help="target name or synonym (repeat); default: every target "
                    "of the model")
    pc.add_argument("-o", "--output", required=True, help="segmentation to write (.seg.nrrd, on the CT's grid)")
    pc.add_argument("--model", default=PET_CT_MODEL, help=f"model folder or installed name with CT and PET blocks "
                    f"(default {PET_CT_MODEL})")
    pc.add_argument("--pet-weight", type=float, default=0.5, help="weight of the PET in the fused probabilities")
    pc.add_argument("--min-overlap", type=float, default=0.0,
                    help="fraction of the CT's box the PET must cover (default 0: any overlap)")
    pc.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    pc.add_argument("--allow-untrained", action="store_true")
    pc.add_argument("--device", default="auto")
    pc.add_argument("--threads", type=int)
    pc.add_argument("-q", "--quiet", action="store_true")
    pc.set_defaults(func=cmd_segment_petct)
