"""``promptseg tune``: choose a model's post-processing on a dataset spec's validation cases and write it into
the model's config and card; ``promptseg average-models``: the weight mean of runs of one model, to be tuned;
``promptseg widen``: the same model with more channels per level, to train on; ``promptseg anchor``: targets kept
near another target of the model. Registered into the main parser
by :func:`add_subcommands`."""
from __future__ import annotations

import argparse
import shlex

from PromptSegLib.errors import PromptSegError
from PromptSegLib.models.folder import DEFAULT_OVERLAP


def cmd_tune(args: argparse.Namespace) -> int:
    from PromptSegLib.models.catalogue import resolve_model
    from PromptSegLib.segment.inference import Segmenter
    from PromptSegLib.train.datasets import load_spec, load_split
    from PromptSegLib.train.tuning import apply_tuning, check_tunable, choose_postprocessing, truth_extremes

    if args.split == "test":
        raise PromptSegError("post-processing is chosen on validation cases, never on the test split")
    datasets = load_spec(args.spec)
    folder = resolve_model(args.model)
    segmenter = Segmenter(folder, device=args.device, threads=args.threads)
    if args.again:  # measured as trained; every choice written below replaces the old one
        segmenter.model.config = segmenter.model.config.untuned()
    check_tunable(segmenter.model.config, args.overlaps)  # before reading the training cases' volumes
    tuning = choose_postprocessing(segmenter, load_split(datasets, args.split), *truth_extremes(datasets, "train"),
                                   overlaps=args.overlaps)
    print(tuning.markdown(), end="")
    apply_tuning(folder, tuning, "promptseg " + shlex.join(args.argv))
    print(f"largest component kept for: {', '.join(tuning.largest_component) or 'none'}; own side for: "
          f"{', '.join(tuning.own_side) or 'none'}; overlap {tuning.overlap:g}; wrote {folder}")
    return 0


def cmd_anchor(args: argparse.Namespace) -> int:
    from PromptSegLib.models.catalogue import resolve_model
    from PromptSegLib.models.folder import read_config
    from PromptSegLib.train.anchoring import anchor_reach, apply_anchors, check_targets
    from PromptSegLib.train.datasets import load_spec

    folder = resolve_model(args.model)
    check_targets(read_config(folder), args.anchor, args.targets)  # before reading the training labels
    reach = anchor_reach(load_spec(args.spec), args.anchor, args.targets)
    apply_anchors(folder, reach, "promptseg " + shlex.join(args.argv))
    for target, r in sorted(reach.items()):
        print(f"{target}: ends at most {r.below_mm:.1f} mm below and starts at most {r.above_mm:.1f} mm above "
              f"{r.anchor} (negative: reaches into it; {r.cases} training cases)")
    print(f"wrote {folder}")
    return 0


def cmd_average_models(args: argparse.Namespace) -> int:
    from PromptSegLib.models.average import average_checkpoints, average_models
    from PromptSegLib.models.catalogue import resolve_model

    command = "promptseg " + shlex.join(args.argv)
    if args.checkpoints:
        if len(args.models) != 1:
            raise PromptSegError("with --checkpoints, name one model folder: the one whose config the mean takes")
        folder = average_checkpoints(args.checkpoints, resolve_model(args.models[0]), args.output, args.version,
                                     args.name, command)
    else:
        folder = average_models([resolve_model(m) for m in args.models], args.output, args.version, args.name,
                                command)
    print(f"wrote {folder} (untuned: choose its post-processing with promptseg tune)")
    return 0


def cmd_widen(args: argparse.Namespace) -> int:
    from PromptSegLib.models.catalogue import resolve_model
    from PromptSegLib.models.widen import widen_model

    folder = widen_model(resolve_model(args.model), args.output, args.widths, args.version, args.seed,
                         "promptseg " + shlex.join(args.argv))
    print(f"wrote {folder} (the same function with more channels: train it with promptseg train --init)")
    return 0


def add_subcommands(sub) -> None:
    """Register ``tune``, ``average-models`` and ``widen`` on the main parser's subparsers."""
    from PromptSegLib.models.widen import add_widen_arguments

    tu = sub.add_parser("tune", help="choose a model's post-processing on a spec's validation cases and write it "
                        "into the model's config and card")
    tu.add_argument("spec", help="dataset spec (its validation split is scored, its training split gives volumes)")
    tu.add_argument("--model", required=True, help="model folder to tune (changed in place)")
    tu.add_argument("--split", default="val", help="the split to choose on (default val; never a test split)")
    tu.add_argument("--overlaps", type=float, nargs="+", default=[DEFAULT_OVERLAP], metavar="FRACTION",
                    help="sliding-window overlaps to measure; the best on validation is kept (default: "
                    f"{DEFAULT_OVERLAP:g} only; each one more costs a pass over the validation cases)")
    tu.add_argument("--again", action="store_true",
                    help="tune a model already tuned: its earlier choices are set aside and replaced")
    tu.add_argument("--device", default="auto")
    tu.add_argument("--threads", type=int)
    tu.set_defaults(func=cmd_tune)
    an = sub.add_parser("anchor", help="anchor targets to another target of the model (measured on a spec's "
                        "training cases): pieces far from it, or all when it is not found and could not lie beyond "
                        "the scan's end, are removed")
    an.add_argument("spec", help="dataset spec (its training split gives the reach)")
    an.add_argument("--model", required=True, help="model folder (changed in place)")
    an.add_argument("--anchor", required=True, help="the anchor target (e.g. mandible)")
    an.add_argument("--targets", nargs="+", required=True,
                    help="targets found only near the anchor (not one that runs on beyond it, as the spinal cord)")
    an.set_defaults(func=cmd_anchor)
    av = sub.add_parser("average-models", help="average the weights of runs of one model (e.g. a model and its "
                        "--init fine-tune), or the checkpoints one run kept, into a new, untuned model folder")
    av.add_argument("models", nargs="+", help="two or more model folders or names; with --checkpoints, the one "
                    "model whose config (and card) the mean takes, e.g. the run's output")
    av.add_argument("--checkpoints", nargs="+", metavar="FILE",
                    help="training checkpoints of one run to average (promptseg train --keep-every)")
    av.add_argument("-o", "--output", required=True, help="model folder to write")
    av.add_argument("--version", required=True)
    av.add_argument("--name", help="default: the first model's name")
    av.set_defaults(func=cmd_average_models)
    wi = sub.add_parser("widen", help="write a model with more channels per level that computes the same (to go on "
                        "training with more capacity: promptseg train --init)")
    add_widen_arguments(wi)
    wi.set_defaults(func=cmd_widen)
