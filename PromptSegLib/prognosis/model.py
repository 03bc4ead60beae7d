"""Prognosis for one patient with a trained model: the model folder (LoRA weights, head, ``config.json``,
``README.md`` and ``SHA256SUMS``, written atomically and checked on load) and the patient's prediction as plain data (risk score, risk group, survival curve).

The record (:mod:`PromptSegLib.prognosis.records`) becomes a prompt (:mod:`PromptSegLib.prognosis.prompt`) for
the DeepHit model (:mod:`PromptSegLib.prognosis.deephit`); :mod:`PromptSegLib.prognosis.validation` compares it
with a CoxPH baseline (:mod:`PromptSegLib.prognosis.metrics`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from PromptSegLib.errors import ModelError
from PromptSegLib.models.folder import CARD, CONFIG
from PromptSegLib.models.folder import PROGNOSIS_HEAD as HEAD
from PromptSegLib.prognosis.deephit import FORMAT, PrognosisModel
from PromptSegLib.prognosis.records import ClinicalRecord

LORA = "lora.safetensors"
def _card(model: PrognosisModel, extra: str) -> str:
    cfg = model.config
    inputs = "clinical prompt" + (f" + image features ({cfg['image_dim']})" if cfg["image_dim"] else "")
    return (f"# PromptSeg prognosis model\n\nDeepHit head on {inputs}; text encoder {cfg['encoder']} with LoRA "
            f"(r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']}, modules {', '.join(cfg['lora']['targets'])}).\n"
            f"Time bins (cut points): {', '.join(f'{c:g}' for c in cfg['cuts'])}; risk = cumulative incidence at "
            f"{cfg['horizon']:g}.\n\n{extra.strip()}\n")


def save_prognosis_model(folder: str | os.PathLike, model: PrognosisModel, card: str = "",
                         name: str | None = None, version: str = "0.1.0") -> Path:
    """Write the model folder atomically (``models.folder.write_model_folder``): LoRA adapter, head, config, card.
    Its config names it ``name`` (default: the folder's name) at ``version``, as every model kind does."""
    from safetensors.torch import save_file

    from PromptSegLib.models.folder import write_model_folder

    model.config.update(name=name or Path(folder).name, version=version)

    def write(tmp: Path) -> list[str]:
        save_file(model.lora_state(), str(tmp / LORA), metadata={"format": FORMAT})
        save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()}, str(tmp / HEAD),
                  metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(model.config, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(_card(model, card), encoding="utf-8")
        return [CONFIG, LORA, HEAD, CARD]

    return write_model_folder(folder, write)


def load_prognosis_model(folder: str | os.PathLike, encoder: str | os.PathLike | None = None) -> PrognosisModel:
    """Load a folder written by :func:`save_prognosis_model` after checking every file's SHA256.

    Raises:
        ModelError: missing folder or file, checksum mismatch, or a folder of another format.
    """
    from safetensors.torch import load_file

    from PromptSegLib.models.folder import verify_folder

    folder = verify_folder(folder, required=(CONFIG, LORA, HEAD))
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ModelError(f"{folder} is not a prognosis model folder (format {config.get('format')!r})")
    model = PrognosisModel(config, encoder, lora_state=load_file(str(folder / LORA)))
    model.head.load_state_dict(load_file(str(folder / HEAD)))
    model.encoder.eval()
    model.head.eval()
    return model


def patient_prognosis(model: PrognosisModel, record: ClinicalRecord, image: np.ndarray | None = None) -> dict:
    """One patient's prediction as plain data (``promptseg prognose`` JSON, the Slicer panel).

    Args:
        image: the patient's image features ``(1, C)`` when the model was trained with them.

    Returns:
        ``patient_id``, ``prompt``, ``risk_score`` (cumulative incidence at the model's horizon, in [0, 1]),
        ``risk_definition``, ``risk_group`` (low, intermediate or high: tertiles of the training risks) and
        ``survival_curve``: ``{"time": (K + 1,), "survival": (K + 1,)}``, from (0, 1) through the K time-bin
        edges (the endpoints' time unit, days for HECKTOR), non-increasing in [0, 1].
    """
    prediction = model.predict_records([record], image)
    return {"patient_id": record.patient_id, "prompt": model.prompt(record),
            "risk_score": float(prediction.risk[0]), "risk_definition":
            f"probability of the event by time {model.config['horizon']:g} (cumulative incidence)",
            "risk_group": prediction.groups[0],
            "survival_curve": {"time": [0.0] + prediction.times.tolist(),
                               "survival": [1.0] + prediction.survival[0].tolist()}}
