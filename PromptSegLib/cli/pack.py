"""``promptseg pack``: a dataset spec's training cases prepared into a pack for a GPU machine;
``promptseg train-pack``: train on a pack (the same as ``python3 -m PromptSegLib.train.pack_training`` there).
Registered into the main parser by :func:`add_subcommands`."""
from __future__ import annotations

import argparse
import shlex


def cmd_pack(args: argparse.Namespace) -> int:
    from PromptSegLib.train.pack import write_pack

    folder = write_pack(args.spec, args.output, args.spacing_mm, args.init, args.text_encoder)
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    print(f"wrote pack {folder} ({size:.1f} MiB)")
    return 0


def cmd_train_pack(args: argparse.Namespace) -> int:
    import logging

    from PromptSegLib.train.config import config_from_args
    from PromptSegLib.train.pack_training import train_on_pack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = train_on_pack(config_from_args(args), "promptseg " + shlex.join(args.argv), "promptseg train-pack")
    print(f"wrote model {folder}")
    return 0


def add_subcommands(sub) -> None:
    """Register ``pack`` and ``train-pack`` on the main parser's subparsers."""
    from PromptSegLib.train.pack_training import add_pack_training_arguments

    pk = sub.add_parser("pack", help="prepare a dataset spec's training cases into a small folder that trains "
                        "on a machine without the data (a lent GPU)")
    pk.add_argument("spec", help="dataset spec JSON (its training split is packed)")
    pk.add_argument("-o", "--output", required=True, help="new pack folder")
    pk.add_argument("--spacing-mm", type=float, required=True, help="the model grid's spacing")
    pk.add_argument("--init", help="the model the training will start from (its CT rule and text encoder)")
    pk.add_argument("--text-encoder", help="default: --init's, else the bundled MiniLM")
    pk.set_defaults(func=cmd_pack)
    tp = sub.add_parser("train-pack", help="train or fine-tune a model on a pack (promptseg pack)")
    add_pack_training_arguments(tp)
    tp.set_defaults(func=cmd_train_pack)
