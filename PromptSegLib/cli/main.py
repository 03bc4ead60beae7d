"""The ``promptseg`` command line. Errors end with a one-line reason on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Sequence

from PromptSegLib.cli.checks import add_roi_names_argument
from PromptSegLib.cli.cohort import add_subcommands as add_cohort_subcommands
from PromptSegLib.cli.dicom import add_subcommands as add_dicom_subcommands
from PromptSegLib.cli.pack import add_subcommands as add_pack_subcommands
from PromptSegLib.cli.petct import add_subcommands as add_petct_subcommands
from PromptSegLib.cli.prognosis import add_subcommands as add_prognosis_subcommands
from PromptSegLib.cli.progress import progress_bar
from PromptSegLib.cli.propagation import add_subcommands as add_propagation_subcommands
from PromptSegLib.cli.tune import add_subcommands as add_tune_subcommands
from PromptSegLib.errors import PromptSegError
from PromptSegLib.segment.inference import PRECISIONS
from PromptSegLib.train.config import add_training_arguments
from PromptSegLib.workflows.segment_request import add_request_arguments


def cmd_segment(args: argparse.Namespace) -> int:
    from PromptSegLib.cli.checks import check_segment
    from PromptSegLib.cli.dicom import print_report
    from PromptSegLib.io.outputs import all_or_nothing
    from PromptSegLib.segment.inference import Segmenter
    from PromptSegLib.workflows.segment_request import OutputFiles, SegmentRequest

    files = OutputFiles(args.output, args.overlay, args.boxes, args.rtstruct, args.dicom_seg, roi_names=args.roi_names)
    files.check(args.image)
    request = SegmentRequest.from_args(args)
    model = check_segment(args, request.choose_model(args.model))
    image, note = request.read_image(args.image, args.series_uid)
    if note:
        print(f"promptseg: note: {note}", file=sys.stderr)
    segmenter = Segmenter(model, device=args.device, threads=args.threads, text_encoder=args.text_encoder,
                          precision=args.precision)
    request.check(segmenter)
    update, close = progress_bar(not args.quiet)
    try:
        result = request.run(segmenter, image, progress=update)
    finally:
        close()
    with all_or_nothing():  # every file asked for, or none
        written, reports = files.write(result, args.image, args.series_uid)
    for kind, report in reports.items():
        print_report(report, kind)
    for i, query in enumerate(result.queries):
        voxels = int(result.mask(i).sum())
        volume_ml = voxels * float(image.GetSpacing()[0] * image.GetSpacing()[1] * image.GetSpacing()[2]) / 1000.0
        print(f"{query.name}: {volume_ml:.1f} mL ({voxels} voxels)")
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from PromptSegLib.export.segfile import read_segments
    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.io.outputs import atomic_path
    from PromptSegLib.preprocessing.describe import describe

    image = read_image(args.image, args.series_uid)
    masks = read_segments(args.segmentation, image)
    names = args.segment or list(masks)
    unknown = [n for n in names if n not in masks]
    if unknown:
        raise PromptSegError(f"no segment named {', '.join(unknown)}; the file has: {', '.join(masks)}")
    descriptions = [describe(n, masks[n], image, args.modality, args.region or "", masks) for n in names]
    for d in descriptions:
        print(f"{d.name}: {d.sentence}")
    if args.output:
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(json.dumps([d.to_dict() for d in descriptions], indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def cmd_prompt_check(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from PromptSegLib.io.imageio import read_image
    from PromptSegLib.io.outputs import atomic_path, check_writable
    from PromptSegLib.segment.inference import Segmenter
    from PromptSegLib.segment.prompt_check import prompt_check

    if args.output:
        check_writable(args.output)  # before the runs, not after
    image = read_image(args.image, args.series_uid)
    segmenter = Segmenter(args.model, device=args.device, threads=args.threads)
    rows = prompt_check(segmenter, image, args.modality, args.region, args.target)
    for row in rows:
        print(f"{row.variant:16s} Dice {row.dice_to_reference:.3f}  {row.volume_ml:9.1f} mL  "
              f"{row.flag or 'ok':30s} {row.prompt}")
    if args.output:
        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from PromptSegLib.models.folder import default_model_folder, read_config

    folder = Path(args.model) if args.model else default_model_folder()
    config = read_config(folder)
    print(json.dumps({"folder": str(folder), **config.to_dict()}, indent=2))
    return 0


def _describe_entry(entry: dict) -> str:
    """``CT, MR: liver, spleen`` for a segmentation model; the kind and what it works on for the others."""
    if entry.get("kind", "segmentation") == "segmentation":
        return f"{', '.join(entry['modalities'])}: {', '.join(entry['targets'])}"
    scope = ", ".join(f"{m} of the {', '.join(r)}" for m, r in entry.get("regions", {}).items()) or "any image"
    return f"{entry['kind']} model ({scope})"


def cmd_models(args: argparse.Namespace) -> int:
    from PromptSegLib.errors import ModelError
    from PromptSegLib.models.catalogue import (catalogue_entries, catalogue_entry, download_model, import_model,
                                               installed_models, refresh_bundled_catalogue)
    from PromptSegLib.models.folder import BUNDLED_MODELS

    if args.import_model:
        print(f"installed {import_model(args.import_model)}")
    if args.download:
        print(f"installed {download_model(args.download)}")
    if args.update:
        refresh_bundled_catalogue()
    installed = installed_models()
    for folder in installed.values():
        entry = catalogue_entry(folder)
        print(f"{entry['name']} {entry['version']}  [imported, verified: {folder}]  {_describe_entry(entry)}")
    for entry in catalogue_entries():
        if entry["name"] in installed and not entry.get("folder"):
            continue  # listed above
        folder = BUNDLED_MODELS / entry["folder"] if entry.get("folder") else None
        try:
            state = "bundled, verified" if folder and catalogue_entry(folder)["sha256"] == entry["sha256"] else (
                "bundled, CHANGED since catalogued" if folder else f"download with --download {entry['name']}: "
                f"{entry['url']}")
        except ModelError as exc:
            state = f"bundled, BROKEN: {exc}"
        print(f"{entry['name']} {entry['version']}  [{state}]  {_describe_entry(entry)}")
    return 0


def cmd_vocabulary(args: argparse.Namespace) -> int:
    from PromptSegLib.text.vocabulary import default_vocabulary

    vocabulary = default_vocabulary()
    if args.lookup:
        target = vocabulary.target(args.lookup)
        print(json.dumps({"name": target.name, "synonyms": target.synonyms, "color": target.color,
                          "category": target.category, "type": target.type, "modifier": target.modifier,
                          "interpretedType": target.interpreted_type}, indent=2))
        return 0
    for target in vocabulary.targets.values():
        print(f"{target.name}" + (f"  ({', '.join(target.synonyms)})" if target.synonyms else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from PromptSegLib.train.config import config_from_args
    from PromptSegLib.train.training import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = train(config_from_args(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 writes the model
        print(f"wrote model {folder}")
    return 0


FUSION_METHODS = {"mean": "weighted_mean", "max": "max", "majority": "majority"}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from PromptSegLib.segment.inference import Segmenter
    from PromptSegLib.train.datasets import load_spec, load_split
    from PromptSegLib.train.evaluation import (evaluate_cases, evaluate_fusion, fusion_table, markdown_table,
                                               write_scores)

    if not args.fuse and (args.fusion != "mean" or args.weights):
        raise PromptSegError("--fusion and --weights apply with --fuse DATASET_A DATASET_B only")
    if args.fuse and (args.context_region or args.absent_target or args.closer_look != "off"):
        raise PromptSegError("--fuse does not combine with --context-region, --absent-target or --closer-look")
    from PromptSegLib.io.outputs import check_writable

    markdown = args.output.rsplit(".", 1)[0] + ".md"
    for path in (args.output, markdown):
        check_writable(path)  # before any case is segmented
    datasets = load_spec(args.spec)
    segmenter = Segmenter(args.model, device=args.device, threads=args.threads)
    if args.fuse:
        scores = evaluate_fusion(segmenter, datasets, *args.fuse, args.split, FUSION_METHODS[args.fusion], args.weights)
        table = fusion_table
    else:
        cases = load_split(datasets, args.split)
        scores = evaluate_cases(segmenter, cases, args.context_region, tuple(args.absent_target or ()), args.closer_look)
        table = markdown_table
    write_scores(scores, args.output, markdown, table)
    print(table(scores), end="")
    if args.card:
        from PromptSegLib.models.folder import append_to_card

        command = "promptseg " + shlex.join(args.argv)
        append_to_card(segmenter.model.folder, f"## Evaluation: split `{args.split}` of `{Path(args.spec).name}`"
                       f"{', ' + args.title if args.title else ''}\n\n```\n{command}\n```\n\n{table(scores)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``promptseg: error:`` line (exit 2), like every other error."""

    def error(self, message: str):
        print(f"promptseg: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="promptseg", description="Text-prompted 3D medical image segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment targets named in words")
    seg.add_argument("image", help="NIfTI, NRRD or MHA file, or a DICOM series folder")
    add_request_arguments(seg)
    seg.add_argument("-o", "--output", required=True, help="OUT.seg.nrrd, or a labelmap OUT.nii.gz (+ OUT.labels.json)")
    seg.add_argument("--overlay", help="also write a PNG picture of the result here")
    seg.add_argument("--boxes", help="also write a JSON of each target's connected components (3D boxes, "
                     "confidence, volume) here")
    seg.add_argument("--rtstruct", help="also write a DICOM RT Structure Set referencing the input series (IMAGE must "
                     "be a DICOM folder)")
    add_roi_names_argument(seg)
    seg.add_argument("--dicom-seg", help="also write a DICOM SEG referencing the input series")
    seg.add_argument("--series-uid", help="which DICOM series when the folder holds several")
    seg.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="the network's arithmetic: auto (float32 on the CPU, half on CUDA), float32, or bfloat16 "
                     "(about twice as fast on CPUs with AVX512-BF16 or AMX; masks differ by a voxel or so at edges; float32 "
                     "runs instead on CPUs without AVX512 or AMX)")
    seg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)

    des = sub.add_parser("describe", help="describe segments in numbers and one sentence each")
    des.add_argument("segmentation", help=".seg.nrrd, or a labelmap with its .labels.json")
    des.add_argument("--image", required=True, help="the image the segmentation was made on")
    des.add_argument("--modality", required=True, help="CT (HU), PET (SUV) or MR")
    des.add_argument("--region", help="body region named in the sentence, e.g. thorax")
    des.add_argument("--segment", action="append", help="describe only this segment (repeatable)")
    des.add_argument("--series-uid", help="which DICOM series when --image is a folder holding several")
    des.add_argument("-o", "--output", help="write the descriptions as JSON here")
    des.set_defaults(func=cmd_describe)

    pc = sub.add_parser("prompt-check", help="rerun one target with prompt variants and report how the mask changes")
    pc.add_argument("image")
    pc.add_argument("--modality", required=True)
    pc.add_argument("--region", required=True)
    pc.add_argument("--target", required=True)
    pc.add_argument("--model", help="model folder (default: the bundled starter model)")
    pc.add_argument("--series-uid")
    pc.add_argument("--device", default="auto")
    pc.add_argument("--threads", type=int)
    pc.add_argument("-o", "--output", help="write the rows as JSON here")
    pc.set_defaults(func=cmd_prompt_check)

    info = sub.add_parser("info", help="show a model's config after checking its files")
    info.add_argument("model", nargs="?", help="model folder (default: the bundled starter model)")
    info.set_defaults(func=cmd_info)

    tr = sub.add_parser("train", help="train or fine-tune a model on a dataset spec (JSON)")
    tr.add_argument("spec", help="dataset spec JSON (see PromptSegLib/train/datasets.py)")
    add_training_arguments(tr)
    tr.add_argument("--spacing-mm", type=float)
    tr.add_argument("--lora-rank", type=int,
                    help="tune the text encoder with LoRA adapters of this rank (default 0: frozen)")
    tr.add_argument("--lora-lr", type=float, help="learning rate of the LoRA adapters (default 5e-4)")
    tr.add_argument("--validate-every", type=int)
    tr.add_argument("--freeze-backbone", action="store_true", default=None)
    tr.add_argument("--text-encoder")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="Dice and HD95 per case and target on a dataset spec's split")
    ev.add_argument("spec")
    ev.add_argument("--model", help="model folder (default: the bundled starter model)")
    ev.add_argument("--split", default="val")
    ev.add_argument("-o", "--output", required=True, help="CSV path (a .md table is written beside it)")
    ev.add_argument("--context-region", help="T1 mismatch ablation: prompt this region instead of the dataset's")
    ev.add_argument("--absent-target", action="append",
                    help="organ-control ablation: also prompt this target, which the data does not label (repeatable)")
    ev.add_argument("--closer-look", choices=("off", "small", "all"), default="off",
                    help="refine targets in a finer crop before scoring")
    ev.add_argument("--fuse", nargs=2, metavar=("DATASET_A", "DATASET_B"),
                    help="late fusion: pair the cases of these two datasets by id (e.g. CT and PET of each patient), "
                    "segment each on its own modality, fuse B's probabilities (on A's grid) with A's, and report Dice "
                    "of A alone, B alone and fused against A's labels, with the HECKTOR aggregated Dice")
    ev.add_argument("--fusion", choices=tuple(FUSION_METHODS), default="mean",
                    help="with --fuse: weighted mean of the probabilities, their max, or majority vote of the masks")
    ev.add_argument("--weights", type=float, nargs=2, metavar=("W_A", "W_B"),
                    help="with --fuse and --fusion mean: weights of A and B (default equal)")
    ev.add_argument("--card", action="store_true", help="append the table (and this command) to the model's card")
    ev.add_argument("--title", help="a few words naming this evaluation in the card")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--threads", type=int)
    ev.set_defaults(func=cmd_evaluate)

    mod = sub.add_parser("models", help="list the model catalogue and check the bundled models")
    mod.add_argument("--update", action="store_true", help="rewrite the catalogue from the bundled model folders")
    mod.add_argument("--import", dest="import_model", metavar="FOLDER_OR_ZIP",
                     help="check a model folder (or .zip) and install it in the per-user cache")
    mod.add_argument("--download", metavar="NAME",
                     help="download a catalogue model (a site's own in $PROMPTSEG_HOME/catalogue.json) from its url, "
                          "check it against the catalogue's sha256 and install it in the per-user cache")
    mod.set_defaults(func=cmd_models)

    voc = sub.add_parser("vocabulary", help="list known targets, or look one up")
    voc.add_argument("lookup", nargs="?", help="a name or synonym to resolve")
    voc.set_defaults(func=cmd_vocabulary)
    add_dicom_subcommands(sub)
    add_petct_subcommands(sub)
    add_prognosis_subcommands(sub)
    add_propagation_subcommands(sub)
    add_cohort_subcommands(sub)
    add_tune_subcommands(sub)
    add_pack_subcommands(sub)
    return parser


def _interrupt(signum: int, frame) -> None:
    """SIGTERM handler: stop like Ctrl-C (outputs not yet complete are removed)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _warning_printer(other):
    """A ``warnings.showwarning`` that prints each of PromptSeg's own warnings once, as one line on standard error
    like the errors (not Python's file:line form; a request is checked before the image is read and again when it
    runs); ``other`` shows the rest (other packages' warnings) as before."""
    library = str(Path(__file__).resolve().parents[1])
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if not str(Path(filename).resolve()).startswith(library):
            other(message, category, filename, lineno, file, line)
        elif str(message) not in shown:
            shown.add(str(message))
            print(f"promptseg: warning: {message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    from PromptSegLib.cli.checks import check_common

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("always", module="PromptSegLib")  # each shown once by the printer
            warnings.showwarning = _warning_printer(warnings.showwarning)
            check_common(args)
            return args.func(args)
    except PromptSegError as exc:
        print(f"promptseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = str(exc) == "SIGTERM"  # raised by _interrupt
        print(f"promptseg: interrupted{' by SIGTERM' if terminated else ''}, nothing written", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except MemoryError:
        print("promptseg: error: out of memory; use a model trained at a larger spacing, or fewer --threads", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
