"""``promptseg train-propagation``, ``promptseg propagate`` and ``promptseg fill``: train the slice-propagation
model, carry one drawn slice through a volume, and fill a structure from several drawn slices. Registered into
the main parser by :func:`add_subcommands`."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def read_mask(path: str, image, segment: str | None = None, label: int | None = None):
    """A bool ``(Z, Y, X)`` mask on ``image``'s grid from a ``.seg.nrrd`` segment or a labelmap file."""
    import numpy as np
    import SimpleITK as sitk

    from PromptSegLib.errors import InputImageError, PromptSegError
    from PromptSegLib.io.imageio import same_geometry
    from PromptSegLib.io.outputs import full_suffix

    if not Path(path).is_file():
        raise InputImageError(f"no such mask file: {path}")
    if full_suffix(path) == ".seg.nrrd":
        from PromptSegLib.export.segfile import read_segments

        masks = read_segments(path, image, exact=True)
        if segment is None:
            if len(masks) != 1:
                raise PromptSegError(f"{path} holds {len(masks)} segments; choose one with --segment: {', '.join(masks)}")
            segment = next(iter(masks))
        if segment not in masks:
            raise PromptSegError(f"no segment named {segment!r} in {path}; it has: {', '.join(masks) or 'none'}")
        return masks[segment], segment
    try:
        labels = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputImageError(f"cannot read mask {path}: {str(exc).strip().splitlines()[-1]}") from exc
    if labels.GetDimension() != 3:
        raise InputImageError(f"mask {path} is {labels.GetDimension()}D; a 3D mask is needed")
    if labels.GetSize() != image.GetSize():
        raise InputImageError(f"mask {path} has size {labels.GetSize()}, the image {image.GetSize()}: "
                              "mismatched geometry")
    if not same_geometry(labels, image, 1e-3):
        raise InputImageError(f"mask {path} has another origin, spacing or direction than the image: resampling it "
                              "would move the drawn slices; save it on the image's grid")
    array = sitk.GetArrayFromImage(labels)
    values = [int(v) for v in np.unique(array) if v]
    if label is None and len(values) > 1:
        raise PromptSegError(f"mask {path} holds labels {', '.join(map(str, values))}: choose one with --label")
    return (array == label if label is not None else array != 0), segment or Path(path).name.split(".")[0]


def cmd_train_propagation(args: argparse.Namespace) -> int:
    import logging

    from PromptSegLib.propagate.training import train_propagation

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    command = "promptseg " + shlex.join(getattr(args, "argv", []) or [])
    folder = train_propagation(args.spec, args.output, steps=args.steps, widths=tuple(args.widths), v=args.v,
                               batch_size=args.batch_size, lr=args.lr, input_size=args.input_size,
                               minutes=args.minutes, seed=args.seed, threads=args.threads, name=args.name,
                               version=args.version, command=command, evaluate=not args.no_evaluate,
                               end_fraction=args.end_fraction, grow_fraction=args.grow_fraction,
                               init=args.init, work_dir=args.checkpoints or f"{args.output}.work",
                               checkpoint_every=args.checkpoint_every, resume=args.resume)
    print(f"wrote model {folder}")
    return 0


def _read_inputs(args: argparse.Namespace):
    """(checked output path, image, mask array ``(Z, Y, X)``, structure name) of a propagate/fill command."""
    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.io.outputs import check_writable

    output = check_writable(args.output)
    image = read_image(args.image, args.series_uid)
    mask, name = read_mask(args.mask, image, args.segment, args.label)
    return output, image, mask, name


def _write_mask(output, image, name: str, mask) -> None:
    """Write ``mask`` ``(Z, Y, X)`` on ``image``'s grid as one segment named ``name`` and print the paths."""
    import numpy as np

    from PromptSegLib.export.segfile import write_segmentation
    from PromptSegLib.segment.inference import SegmentationResult
    from PromptSegLib.text.prompts import raw_target_query

    seg = SegmentationResult([raw_target_query(name)], "", mask[None].astype(np.float32), image, 0.5)
    for path in write_segmentation(output, seg):
        print(f"wrote {path}")


def _stops(result) -> str:
    return "; ".join(f"{'up' if d > 0 else 'down'}: {why}" for d, why in result.stopped.items())


def cmd_propagate(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from PromptSegLib.cli.progress import progress_bar
    from PromptSegLib.errors import PromptSegError
    from PromptSegLib.propagate.geometry import take_slice
    from PromptSegLib.propagate.propagator import FADE_CONTRAST, Propagator, propagate, resolve_axis

    output, image, mask, name = _read_inputs(args)
    propagator = Propagator(args.model, threads=args.threads)
    axis = resolve_axis(args.axis)
    fixed = {}
    for k in args.keep or ():
        if not 0 <= k < mask.shape[axis]:
            raise PromptSegError(f"--keep slice {k} is outside the volume (slices 0..{mask.shape[axis] - 1})")
        fixed[k] = take_slice(mask, axis, k)
    update, close = progress_bar(not args.quiet)
    try:
        result = propagate(propagator, sitk.GetArrayViewFromImage(image), mask, args.slice, axis, fixed=fixed,
                           start=args.start, stop=args.stop, ssim_threshold=args.ssim_threshold,
                           threshold=args.threshold, progress=update,
                           min_contrast=FADE_CONTRAST if args.min_contrast is None else args.min_contrast)
    finally:
        close()
    voxels = int(result.mask.sum())
    volume_ml = voxels * float(np.prod(image.GetSpacing())) / 1000.0
    print(f"{name}: {len(result.written)} slices propagated, {volume_ml:.1f} mL ({voxels} voxels); {_stops(result)}")
    _write_mask(output, image, name, result.mask)
    return 0


def _reach(text: str) -> float | str | None:
    """``--reach``: a non-negative number of spacings, ``none``, or ``default`` (the library's)."""
    if text in ("none", "default"):
        return None if text == "none" else text
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("--reach must be >= 0 (or none)")
    return value


def cmd_fill(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from PromptSegLib.cli.progress import progress_bar
    from PromptSegLib.errors import PromptSegError
    from PromptSegLib.propagate.geometry import take_slice
    from PromptSegLib.propagate.multislice import REACH, drawn_slices, fill_from_slices
    from PromptSegLib.propagate.organ_prior import MODEL, prior_or_none, shows_air
    from PromptSegLib.propagate.propagator import FADE_CONTRAST, Propagator, resolve_axis
    from PromptSegLib.segment.inference import Segmenter

    output, image, mask, name = _read_inputs(args)
    axis = resolve_axis(args.axis)
    array = sitk.GetArrayViewFromImage(image)
    drawn = {j: take_slice(mask, axis, j) for j in drawn_slices(mask, axis)}
    n = mask.shape[axis]
    for j in args.empty or ():
        if not 0 <= j < n:
            raise PromptSegError(f"--empty {j} is not a slice of the volume (0..{n - 1} along {args.axis})")
        if j in drawn:
            raise PromptSegError(f"--empty {j}: the mask holds a drawn slice there; erase it in the mask or drop "
                                 "--empty")
        drawn[j] = np.zeros_like(take_slice(mask, axis, 0))
    update, close = progress_bar(not args.quiet)
    try:
        prior = (prior_or_none(lambda: Segmenter(MODEL, threads=args.threads), image, drawn, axis)
                 if args.organ_prior == "auto" and shows_air(array) else None)
        result = fill_from_slices(Propagator(args.model, threads=args.threads), array,
                                  drawn, axis, spacing=tuple(reversed(image.GetSpacing())), start=args.start,
                                  stop=args.stop, threshold=args.threshold, progress=update,
                                  min_contrast=FADE_CONTRAST if args.min_contrast is None else args.min_contrast,
                                  reach=REACH if args.reach == "default" else args.reach, prior=prior)
    finally:
        close()
    guide = f"; {prior.summary}" if prior is not None else ""
    print(f"{name}: {len(result.written)} slices filled from {sum(v.any() for v in drawn.values())} drawn{guide}; "
          f"{_stops(result)}")
    _write_mask(output, image, name, result.mask)
    return 0


def _input_arguments(parser, mask_help: str) -> None:
    """The image and mask arguments shared by ``propagate`` and ``fill``."""
    parser.add_argument("image", help="NIfTI, NRRD or MHA file, or a DICOM series folder")
    parser.add_argument("--mask", required=True, help=mask_help)
    parser.add_argument("--segment", help="segment name in a .seg.nrrd")
    parser.add_argument("--label", type=int, help="label value in a labelmap mask (needed when it holds several)")


def _output_arguments(parser) -> None:
    """The threshold, output, model and run arguments shared by ``propagate`` and ``fill``."""
    parser.add_argument("--threshold", type=float, help="probability threshold of the mask (default: the model's)")
    parser.add_argument("-o", "--output", required=True,
                        help="OUT.seg.nrrd, or a labelmap OUT.nii.gz (+ .labels.json)")
    parser.add_argument("--model", help="propagation model folder (default: the bundled one)")
    parser.add_argument("--series-uid", help="which DICOM series when the folder holds several")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_subcommands(sub) -> None:
    """Register ``train-propagation``, ``propagate`` and ``fill`` on the main parser's subparsers."""
    tr = sub.add_parser("train-propagation", help="train the slice-propagation model on a dataset spec (JSON)")
    tr.add_argument("spec", help="dataset spec JSON (labels optional: every non-zero value is a structure)")
    tr.add_argument("-o", "--output", required=True, help="model folder to write")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--minutes", type=float, help="stop after this much wall time even if steps remain")
    tr.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128],
                    help="channels per level (paper: 32 64 128 256 512)")
    tr.add_argument("--v", type=int, default=7, help="largest prompt-query distance in slices (paper: 7 or 12)")
    tr.add_argument("--batch-size", type=int, default=12)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--input-size", type=int, default=96, help="network input side in pixels")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=1)
    tr.add_argument("--name", default="promptseg-propagation")
    tr.add_argument("--version", default="0.1.0")
    tr.add_argument("--end-fraction", type=float, default=0.1,
                    help="share of samples whose query lies past a structure's end (empty target)")
    tr.add_argument("--grow-fraction", type=float, default=0.0,
                    help="share of samples whose prompt mask gains pixels (else it loses some), so that the model "
                         "also learns to shrink a too large mask")
    tr.add_argument("--init", help="propagation model folder to fine-tune (keeps its widths and input size)")
    tr.add_argument("--no-evaluate", action="store_true", help="skip the held-out Dice in the card")
    tr.add_argument("--checkpoint-every", type=int, default=500)
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in the checkpoint folder")
    tr.add_argument("--checkpoints", help="folder for the checkpoint and the log (default OUTPUT.work); keep it "
                    "outside the repository so that a run can be resumed in a later session")
    tr.set_defaults(func=cmd_train_propagation)

    pr = sub.add_parser("propagate", help="carry a mask drawn on one slice through the volume")
    _input_arguments(pr, "mask file (.nii.gz, .nrrd) or a .seg.nrrd with --segment")
    pr.add_argument("--slice", type=int, required=True, help="prompt slice index along --axis")
    pr.add_argument("--axis", default="axial", help="axial, coronal or sagittal")
    pr.add_argument("--start", type=int, help="first slice to fill (default: the first)")
    pr.add_argument("--stop", type=int, help="last slice to fill (default: the last)")
    pr.add_argument("--keep", type=int, action="append",
                    help="a slice of MASK the user drew or corrected: kept as is, propagation stops there (repeatable)")
    pr.add_argument("--ssim-threshold", type=float, help="re-prompt below this SSIM (default: the model's, 0.6)")
    pr.add_argument("--min-contrast", type=float,
                    help="stop where the structure's contrast with its surroundings falls below this fraction of "
                         "the prompt slice's (default: PromptSegLib.propagate.propagator.FADE_CONTRAST; 0 turns it "
                         "off)")
    _output_arguments(pr)
    pr.set_defaults(func=cmd_propagate)

    fi = sub.add_parser("fill", help="fill a structure from the slices drawn in a mask (every slice holding it)")
    _input_arguments(fi, "mask file holding the drawn slices, or a .seg.nrrd with --segment")
    fi.add_argument("--axis", default="axial", help="axial, coronal or sagittal: the slices were drawn across it")
    fi.add_argument("--empty", type=int, action="append",
                    help="a slice where the structure is absent (drawn empty): the fill stops there (repeatable)")
    fi.add_argument("--start", type=int, help="first slice to fill beyond the drawn ones (default: the first)")
    fi.add_argument("--stop", type=int, help="last slice to fill beyond the drawn ones (default: the last)")
    fi.add_argument("--min-contrast", type=float, help="stopping rule beyond the drawn slices, as for propagate")
    fi.add_argument("--reach", type=_reach, default="default", metavar="SPACINGS|none",
                    help="with two or more drawn slices, fill at most this many median drawn-slice spacings beyond "
                         "the outermost ones (default: the library's REACH; a tube at least TUBE_REACH); none: as "
                         "far as the image shows (a tube: to --start/--stop)")
    fi.add_argument("--organ-prior", choices=["auto", "off"], default="auto",
                    help="auto: on a CT (air in HU), from one drawn slice, slices 2 cm or more apart or closer "
                         "ones that change pieces (a mandible's rami and arch), where the bundled head-and-neck "
                         "organ model finds an organ matching them, its 3D shape guides the fill; off: never")
    _output_arguments(fi)
    fi.set_defaults(func=cmd_fill)
