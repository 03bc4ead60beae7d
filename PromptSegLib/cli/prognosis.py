"""``promptseg train-prognosis`` and ``promptseg prognose``.

train-prognosis: cross-validated C-index of DeepHit(clinical text [+ image features]) and CoxPH(clinical
variables) on the same folds, printed side by side, then a final model trained on every patient is saved.
prognose: one patient's record -> risk score, risk group and survival curve as JSON.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np

from PromptSegLib.errors import OutputError


def _read_features(path: str) -> np.ndarray:
    """An ``.npy`` array of image features, as stored.

    Raises:
        ClinicalDataError: a missing or unreadable file, or not a 1D or 2D array of numbers.
    """
    from PromptSegLib.prognosis.records import ClinicalDataError

    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ClinicalDataError(f"cannot read image features {path}: {exc}") from exc
    if not isinstance(features, np.ndarray) or features.ndim not in (1, 2) or not np.issubdtype(features.dtype,
                                                                                               np.number):
        raise ClinicalDataError(f"image features {path} must be a 1D or 2D array of numbers (.npy)")
    return features


def _load_image_features(path: str | None, n: int) -> np.ndarray | None:
    if not path:
        return None
    from PromptSegLib.prognosis.records import ClinicalDataError

    features = _read_features(path)
    if features.ndim != 2 or features.shape[0] != n:
        raise ClinicalDataError(f"image features {path} must be (N={n}, C), one row per patient in the order of "
                                f"the clinical table; got {features.shape}")
    return features.astype(np.float32)


def format_cv_table(result: dict) -> str:
    """Markdown table of per-fold and mean C-indices, DeepHit beside CoxPH."""
    lines = ["| fold | test patients | events | DeepHit C | DeepHit td-C | CoxPH C | CoxPH td-C |",
             "|---|---|---|---|---|---|---|"]
    for r in result["folds"]:
        lines.append(f"| {r['fold']} | {r['n_test']} | {r['events']} | {r['deephit_c']:.3f} | "
                     f"{r['deephit_td_c']:.3f} | {r['cox_c']:.3f} | {r['cox_td_c']:.3f} |")
    s = result["summary"]
    lines.append(f"| mean ± sd | {result['n']} | {result['events']} | {s['deephit_c'][0]:.3f} ± {s['deephit_c'][1]:.3f} "
                 f"| {s['deephit_td_c'][0]:.3f} ± {s['deephit_td_c'][1]:.3f} | {s['cox_c'][0]:.3f} ± {s['cox_c'][1]:.3f} "
                 f"| {s['cox_td_c'][0]:.3f} ± {s['cox_td_c'][1]:.3f} |")
    return "\n".join(lines) + "\n"


def cmd_train_prognosis(args: argparse.Namespace) -> int:
    import sys

    import torch

    from PromptSegLib.io.outputs import check_writable
    from PromptSegLib.prognosis.deephit import DeepHitSettings, train_deephit
    from PromptSegLib.prognosis.model import save_prognosis_model
    from PromptSegLib.prognosis.prompt import build_prompt
    from PromptSegLib.prognosis.records import load_cohort
    from PromptSegLib.prognosis.validation import cross_validate

    torch.set_num_threads(args.threads)
    output = Path(args.output)
    if not output.parent.is_dir():  # fail before the (long) cross-validation
        raise OutputError(f"output folder {output.parent} does not exist")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output} exists and is not a folder")
    if args.cv_json:
        check_writable(args.cv_json)
    cohort = load_cohort(args.clinical, args.endpoints)
    image = _load_image_features(args.image_features, len(cohort))
    settings = DeepHitSettings(bins=args.bins, head_epochs=args.head_epochs, lora_epochs=args.epochs,
                               seed=args.seed, alpha=args.alpha, sigma=args.sigma)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    inputs = "text" + ("+image" if image is not None else "")
    result = cross_validate(cohort, args.folds, args.seed, settings, image, args.text_encoder, log)
    table = format_cv_table(result)
    s = result["summary"]
    print(f"{args.folds}-fold cross-validation, seed {args.seed}, {result['n']} patients, {result['events']} events")
    print(f"C-index  DeepHit({inputs}) {s['deephit_c'][0]:.3f} ± {s['deephit_c'][1]:.3f}   "
          f"CoxPH(clinical) {s['cox_c'][0]:.3f} ± {s['cox_c'][1]:.3f}")
    print(f"td-C     DeepHit({inputs}) {s['deephit_td_c'][0]:.3f} ± {s['deephit_td_c'][1]:.3f}   "
          f"CoxPH(clinical) {s['cox_td_c'][0]:.3f} ± {s['cox_td_c'][1]:.3f}")
    print(table, end="")
    log("training the final model on every patient")
    model = train_deephit([build_prompt(r) for r in cohort.records], cohort.times, cohort.events, image, settings,
                          args.text_encoder, log=log)
    card = (f"## Training\n\n```\npromptseg {shlex.join(getattr(args, 'argv', []) or [])}\n```\n\n"
            f"Data: {Path(args.clinical).name} + {Path(args.endpoints).name} ({result['n']} patients, "
            f"{result['events']} events){'; image features ' + Path(args.image_features).name if image is not None else ''}."
            f"\n\n## Cross-validated C-index ({args.folds} folds, seed {args.seed}; DeepHit({inputs}) vs CoxPH on "
            f"the clinical variables, same folds)\n\n{table}")
    folder = save_prognosis_model(output, model, card, name=args.name, version=args.version)
    if args.cv_json:
        from PromptSegLib.io.outputs import atomic_path

        with atomic_path(args.cv_json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote prognosis model {folder}")
    return 0


def cmd_prognose(args: argparse.Namespace) -> int:
    import torch

    from PromptSegLib.prognosis.model import load_prognosis_model, patient_prognosis
    from PromptSegLib.prognosis.records import ClinicalDataError, ClinicalRecord, read_clinical_table

    torch.set_num_threads(args.threads)
    if bool(args.record) == bool(args.clinical):
        raise ClinicalDataError("give either --record JSON or --clinical CSV with --patient ID")
    if args.record:
        try:
            data = json.loads(Path(args.record).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ClinicalDataError(f"cannot read record {args.record}: {exc}") from exc
        if not isinstance(data, dict):
            raise ClinicalDataError(f"record {args.record} holds a JSON {type(data).__name__}; a record is an object "
                                    "of field names -> values")
        record = ClinicalRecord.from_dict(data)
        if all(v is None for k, v in record.to_dict().items() if k != "patient_id"):
            raise ClinicalDataError(f"record {args.record} gives no clinical value: there is nothing to predict from")
    else:
        if not args.patient:
            raise ClinicalDataError("--clinical needs --patient ID")
        records = {r.patient_id: r for r in read_clinical_table(args.clinical)}
        if args.patient not in records:
            raise ClinicalDataError(f"patient {args.patient} is not in {Path(args.clinical).name}")
        record = records[args.patient]
    image = None
    if args.image_features:
        features = _read_features(args.image_features)
        if features.ndim == 2 and not 0 <= args.image_row < len(features):
            raise ClinicalDataError(f"--image-row {args.image_row} is outside {args.image_features} "
                                    f"({len(features)} rows)")
        image = features.reshape(1, -1) if features.ndim == 1 else features[args.image_row:args.image_row + 1]
    model = load_prognosis_model(args.model, args.text_encoder)
    text = json.dumps(patient_prognosis(model, record, image), indent=2) + "\n"
    if args.output:
        from PromptSegLib.io.outputs import atomic_path

        with atomic_path(args.output) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def add_subcommands(sub) -> None:
    """Register ``train-prognosis`` and ``prognose`` on the ``promptseg`` subparsers."""
    tp = sub.add_parser("train-prognosis", help="cross-validate DeepHit(clinical text [+ image]) against CoxPH, "
                        "then train and save a prognosis model")
    tp.add_argument("clinical", help="clinical CSV (HECKTOR columns: PatientID, CenterID, Gender, Age, ...)")
    tp.add_argument("endpoints", help="endpoint CSV (PatientID, Progression/Relapse, Progression free survival/RFS)")
    tp.add_argument("--image-features", help=".npy (N, C) image features (F_dense), rows in the clinical table's order")
    tp.add_argument("-o", "--output", required=True, help="prognosis model folder to write")
    tp.add_argument("--name", help="the model's name in catalogues (default: the output folder's name)")
    tp.add_argument("--version", default="0.1.0")
    tp.add_argument("--folds", type=int, default=5)
    tp.add_argument("--epochs", type=int, default=2, help="LoRA + head epochs (0: head only on frozen text)")
    tp.add_argument("--head-epochs", type=int, default=300, help="head-only epochs on frozen text embeddings first")
    tp.add_argument("--bins", type=int, default=10)
    tp.add_argument("--alpha", type=float, default=0.5, help="weight of the likelihood vs the ranking loss")
    tp.add_argument("--sigma", type=float, default=0.1, help="ranking loss scale")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--cv-json", help="also write the per-fold figures as JSON here")
    tp.add_argument("--text-encoder", help="local Hugging Face encoder folder (default: bundled MiniLM)")
    tp.add_argument("--threads", type=int, default=1)
    tp.add_argument("-q", "--quiet", action="store_true")
    tp.set_defaults(func=cmd_train_prognosis)

    pg = sub.add_parser("prognose", help="risk score, risk group and survival curve of one patient (JSON)")
    pg.add_argument("model", help="prognosis model folder")
    pg.add_argument("--record", help="JSON record: field or column names -> values (missing = unknown)")
    pg.add_argument("--clinical", help="clinical CSV holding the patient")
    pg.add_argument("--patient", help="patient id in --clinical")
    pg.add_argument("--image-features", help=".npy image features: one row (C,) or a table with --image-row")
    pg.add_argument("--image-row", type=int, default=0)
    pg.add_argument("--text-encoder")
    pg.add_argument("--threads", type=int, default=1)
    pg.add_argument("-o", "--output", help="write the JSON here instead of printing it")
    pg.set_defaults(func=cmd_prognose)


__all__ = ["add_subcommands", "cmd_train_prognosis", "cmd_prognose", "format_cv_table"]
