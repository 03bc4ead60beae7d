"""Prognosis from the clinical record as a text prompt (+ image features): LoRA text encoder and DeepHit head.

Pieces (DuPLUS section 3.2.6):

- :func:`load_cohort` / :func:`read_clinical_table` read a HECKTOR-style clinical CSV and endpoint CSV.
  Missing values are kept as ``None`` and written "unknown" in the prompt; unknown columns, patients
  without an endpoint, times <= 0 and events other than 0/1 are refused with a one-line reason.
- :func:`record_from_dicom` fills sex, age and weight from a DICOM header's patient module.
- :func:`build_prompt` writes the record as one sentence ("Predict the risk score of a male patient, 62 years
  old, with CT imaging of the Head & Neck, ...").
- :class:`PrognosisModel`: the MiniLM sentence encoder with LoRA adapters (peft) on the attention query and
  value projections, mean-pooled and L2-normalised as :class:`~PromptSegLib.text_encoder.TextEncoder`,
  optionally joined with image features F_dense ``(N, C)``, and a DeepHit head: a softmax over discrete time
  bins (cut at quantiles of the training event times, plus one bin for "after the last cut"). Loss = alpha *
  negative log-likelihood with censoring + (1 - alpha) * ranking loss exp(-(F_i(T_i) - F_j(T_i)) / sigma).
  Outputs: the risk score (cumulative incidence at the horizon, by default the median training follow-up),
  a risk group (tertiles of the training risks) and a survival curve per patient (:func:`patient_prognosis`).
- Metrics: Harrell's C-index and Antolini's time-dependent C-index (own code), CoxPH on the clinical
  variables (lifelines) as the baseline, and :func:`cross_validate` comparing both on the same folds.
- :func:`save_prognosis_model` / :func:`load_prognosis_model`: a folder with the LoRA weights, the head,
  ``config.json``, ``README.md`` and ``SHA256SUMS``, written atomically and checked on load.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ModelError, PromptSegError
from .text_encoder import LoraSettings, TextEncoder

FORMAT = "promptseg-prognosis-1"
CONFIG, HEAD, LORA, CARD = "config.json", "head.safetensors", "lora.safetensors", "README.md"


class ClinicalDataError(PromptSegError):
    """A clinical or endpoint table cannot be used: unknown columns, missing patients, invalid values."""


class UndefinedMetricError(PromptSegError):
    """A metric is undefined for the data given (e.g. the C-index when every patient is censored)."""


# ---------------------------------------------------------------------------------------------------------
# Clinical table
# ---------------------------------------------------------------------------------------------------------

#: column name (lower case, as in HECKTOR 2021/2022 tables) -> record field
INFO_COLUMNS = {
    "patientid": "patient_id", "patient id": "patient_id", "patient": "patient_id",
    "centerid": "centre", "centre": "centre", "center": "centre", "centreid": "centre",
    "gender (1=m,0=f)": "gender", "gender": "gender", "sex": "gender",
    "age": "age",
    "tobacco": "tobacco", "alcohol": "alcohol",
    "performance status": "performance_status",
    "tnm edition": "tnm_edition", "t-stage": "t_stage", "n-stage": "n_stage", "m-stage": "m_stage",
    "tnm group": "tnm_group",
    "hpv status (0=-, 1=+)": "hpv", "hpv status": "hpv", "hpv": "hpv",
    "surgery": "surgery", "chemotherapy": "chemotherapy",
    "estimated weight (kg) for suv": "weight", "weight": "weight", "weight (kg)": "weight",
}
ENDPOINT_COLUMNS = {
    "patientid": "patient_id", "patient id": "patient_id", "patient": "patient_id",
    "progression": "event", "relapse": "event", "event": "event",
    "progression free survival": "time", "rfs": "time", "time": "time",
}
MISSING = {"", "na", "nan", "n/a", "unknown", "none", "null", "?", "-"}


@dataclass
class ClinicalRecord:
    """One patient's record; ``None`` means unknown."""

    patient_id: str
    centre: str | None = None
    gender: int | None = None  # 1 male, 0 female
    age: float | None = None
    weight: float | None = None
    tobacco: int | None = None
    alcohol: int | None = None
    performance_status: int | None = None
    hpv: int | None = None
    t_stage: str | None = None
    n_stage: str | None = None
    m_stage: str | None = None
    tnm_group: str | None = None
    tnm_edition: str | None = None
    surgery: int | None = None
    chemotherapy: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClinicalRecord":
        """From a dict keyed by field names or by clinical CSV column names (missing keys are unknown)."""
        known = {f.name for f in fields(cls)}
        values, unknown = {}, []
        for key, value in data.items():
            name = key if key in known else INFO_COLUMNS.get(str(key).strip().lower())
            if name is None:
                unknown.append(str(key))
            else:
                values[name] = value
        if unknown:
            raise ClinicalDataError("unknown clinical field(s): " + ", ".join(sorted(unknown))
                                    + "; known: " + ", ".join(sorted(known)))
        pid = str(values.pop("patient_id", "") or "patient")
        return _parse_record(pid, values, "record")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip().lower() in MISSING


def _as_float(value, what: str):
    if _missing(value):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ClinicalDataError(f"{what}: {value!r} is not a number") from None
    return number if math.isfinite(number) else None


def _as_flag(value, what: str, words: dict[str, int] | None = None):
    if _missing(value):
        return None
    text = str(value).strip().lower()
    if words and text in words:
        return words[text]
    number = _as_float(value, what)
    if number not in (0.0, 1.0):
        raise ClinicalDataError(f"{what}: {value!r} must be 0 or 1 (or empty for unknown)")
    return int(number)


def _as_text(value):
    if _missing(value):
        return None
    text = str(value).strip()
    return text[:-2] if text.endswith(".0") and text[:-2].isdigit() else text


def _parse_record(pid: str, raw: dict, where: str) -> ClinicalRecord:
    def what(name):
        return f"{where}, patient {pid}, {name}"

    yes_no = {"yes": 1, "y": 1, "true": 1, "no": 0, "n": 0, "false": 0}
    status = {"positive": 1, "+": 1, "pos": 1, "negative": 0, "neg": 0, **yes_no}
    ps = _as_float(raw.get("performance_status"), what("performance status"))
    if ps is not None and (ps != int(ps) or not 0 <= ps <= 4):
        raise ClinicalDataError(f"{what('performance status')}: {ps} is not an ECOG grade 0-4")
    age = _as_float(raw.get("age"), what("age"))
    if age is not None and not 0 <= age <= 120:
        raise ClinicalDataError(f"{what('age')}: {age} years is not plausible")
    weight = _as_float(raw.get("weight"), what("weight"))
    if weight is not None and not 1 <= weight <= 400:
        raise ClinicalDataError(f"{what('weight')}: {weight} kg is not plausible")
    return ClinicalRecord(
        patient_id=pid,
        centre=_as_text(raw.get("centre")),
        gender=_as_flag(raw.get("gender"), what("gender"), {"m": 1, "male": 1, "f": 0, "female": 0}),
        age=age, weight=weight,
        tobacco=_as_flag(raw.get("tobacco"), what("tobacco"), yes_no),
        alcohol=_as_flag(raw.get("alcohol"), what("alcohol"), yes_no),
        performance_status=None if ps is None else int(ps),
        hpv=_as_flag(raw.get("hpv"), what("HPV status"), status),
        t_stage=_as_text(raw.get("t_stage")), n_stage=_as_text(raw.get("n_stage")),
        m_stage=_as_text(raw.get("m_stage")), tnm_group=_as_text(raw.get("tnm_group")),
        tnm_edition=_as_text(raw.get("tnm_edition")),
        surgery=_as_flag(raw.get("surgery"), what("surgery"), yes_no),
        chemotherapy=_as_flag(raw.get("chemotherapy"), what("chemotherapy"), yes_no),
    )


def _read_csv(path: str | os.PathLike, columns: dict[str, str], kind: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ClinicalDataError(f"no such {kind} table: {path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        unknown = [c for c in header if c.strip().lower() not in columns]
        if unknown:
            raise ClinicalDataError(f"{path.name}: unknown column(s) " + ", ".join(repr(c) for c in unknown)
                                    + f" in the {kind} table; known columns: "
                                    + ", ".join(sorted(set(columns))))
        mapped = {c: columns[c.strip().lower()] for c in header}
        if "patient_id" not in mapped.values():
            raise ClinicalDataError(f"{path.name}: no patient id column (PatientID) in the {kind} table")
        rows = [{mapped[k]: v for k, v in row.items() if k in mapped} for row in reader]
    ids = [str(r.get("patient_id") or "").strip() for r in rows]
    if any(not i for i in ids):
        raise ClinicalDataError(f"{path.name}: row {ids.index('') + 2} has no patient id")
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ClinicalDataError(f"{path.name}: patient(s) listed twice: " + ", ".join(duplicated[:10]))
    return rows


DICOM_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def _dicom_age_years(ds) -> float | None:
    """PatientAge (``062Y``, ``006M``, ``010W``, ``005D``) in years, else the years from PatientBirthDate to the
    StudyDate (or SeriesDate); None when neither is usable."""
    from datetime import datetime

    text = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(text) >= 2 and text[:-1].isdigit() and text[-1] in DICOM_AGE_UNITS:
        return round(int(text[:-1]) * DICOM_AGE_UNITS[text[-1]], 1)
    birth, when = ds.get("PatientBirthDate"), ds.get("StudyDate") or ds.get("SeriesDate")
    try:
        days = (datetime.strptime(str(when)[:8], "%Y%m%d") - datetime.strptime(str(birth)[:8], "%Y%m%d")).days
    except (TypeError, ValueError):
        return None
    return round(days / 365.25, 1) if days >= 0 else None


def record_from_dicom(ds) -> ClinicalRecord:
    """The patient module of a DICOM header as a clinical record: PatientID, PatientSex (M/F; O is unknown),
    age (see ``_dicom_age_years``) and PatientWeight (kg). Absent, empty or implausible tags stay unknown."""
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    raw = {"gender": {"M": 1, "F": 0}.get(sex), "age": _dicom_age_years(ds), "weight": ds.get("PatientWeight")}
    pid = str(ds.get("PatientID", "") or "").strip() or "patient"
    known = {}
    for name, value in raw.items():  # one implausible tag (weight 0 for "unknown") must not lose the others
        try:
            known[name] = getattr(_parse_record(pid, {name: value}, "DICOM"), name)
        except ClinicalDataError:
            known[name] = None
    return ClinicalRecord(pid, **known)


def read_clinical_table(info_csv: str | os.PathLike) -> list[ClinicalRecord]:
    """Records of a clinical CSV (HECKTOR column names), in file order."""
    name = Path(info_csv).name
    return [_parse_record(str(r["patient_id"]).strip(), r, name) for r in _read_csv(info_csv, INFO_COLUMNS, "clinical")]


@dataclass
class Cohort:
    """Records with their endpoint: ``times`` (> 0, e.g. days) and ``events`` (1 event, 0 censored)."""

    records: list[ClinicalRecord]
    times: np.ndarray
    events: np.ndarray

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, index: Sequence[int]) -> "Cohort":
        index = np.asarray(index)
        return Cohort([self.records[i] for i in index], self.times[index], self.events[index])


def _list(ids: Sequence[str], limit: int = 10) -> str:
    ids = list(ids)
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_endpoints(times: np.ndarray, events: np.ndarray, ids: Sequence[str] | None = None) -> None:
    """Refuse times that are not finite and positive, and events other than 0/1."""
    ids = list(ids) if ids is not None else [str(i) for i in range(len(times))]
    bad = [ids[i] for i in np.flatnonzero(~np.isfinite(times) | (times <= 0))]
    if bad:
        raise ClinicalDataError(f"survival time must be positive: zero, negative or missing for {_list(bad)}")
    wrong = [ids[i] for i in np.flatnonzero(~np.isin(events, (0, 1)))]
    if wrong:
        raise ClinicalDataError(f"event must be 0 (censored) or 1 (event): not so for {_list(wrong)}")


def load_cohort(info_csv: str | os.PathLike, endpoint_csv: str | os.PathLike) -> Cohort:
    """Clinical records joined with their endpoints by patient id (order of the clinical table).

    Raises:
        ClinicalDataError: unknown columns (named), patients missing from the endpoint table (listed),
            times <= 0 or events not 0/1 (patients listed).
    """
    records = read_clinical_table(info_csv)
    rows = {str(r["patient_id"]).strip(): r for r in _read_csv(endpoint_csv, ENDPOINT_COLUMNS, "endpoint")}
    name = Path(endpoint_csv).name
    for needed in ("time", "event"):
        if not rows or needed not in next(iter(rows.values())):
            raise ClinicalDataError(f"{name}: no {needed} column in the endpoint table")
    missing = [r.patient_id for r in records if r.patient_id not in rows]
    if missing:
        raise ClinicalDataError(f"{len(missing)} patient(s) of {Path(info_csv).name} missing from the endpoint "
                                f"table {name}: {_list(missing)}")
    times = np.array([_as_float(rows[r.patient_id]["time"], f"{name}, patient {r.patient_id}, time")
                      for r in records], dtype=float)
    events = np.array([_as_float(rows[r.patient_id]["event"], f"{name}, patient {r.patient_id}, event")
                       for r in records], dtype=float)
    check_endpoints(times, events, [r.patient_id for r in records])
    return Cohort(records, times, events.astype(int))


# ---------------------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------------------

def _flag_phrase(value, yes: str, no: str, unknown: str) -> str:
    return unknown if value is None else (yes if value else no)


def build_prompt(record: ClinicalRecord, modality: str = "CT", region: str = "Head & Neck") -> str:
    """The record as one sentence in the DuPLUS style; every unknown value is written "unknown"."""
    sex = {1: "a male patient", 0: "a female patient"}.get(record.gender, "a patient of unknown sex")
    age = f"{record.age:g} years old" if record.age is not None else "of unknown age"
    weight = f"a weight of {record.weight:g} kilograms" if record.weight is not None else "a weight of unknown kilograms"
    stage = " ".join(f"{s or 'unknown'}" for s in (
        record.t_stage and record.t_stage.upper(), record.n_stage and record.n_stage.upper(),
        record.m_stage and record.m_stage.upper()))
    group = f"stage {record.tnm_group}" if record.tnm_group else "stage unknown"
    edition = f" (TNM edition {record.tnm_edition})" if record.tnm_edition else ""
    parts = [
        f"Predict the risk score of {sex}, {age}, with {modality} imaging of the {region}",
        weight,
        _flag_phrase(record.tobacco, "a history of smoking", "no history of smoking", "unknown smoking history"),
        _flag_phrase(record.alcohol, "alcohol consumption", "no alcohol consumption", "unknown alcohol consumption"),
        f"performance status {record.performance_status}" if record.performance_status is not None
        else "performance status unknown",
        _flag_phrase(record.hpv, "HPV positive", "HPV negative", "HPV status unknown"),
        f"tumour {stage}, {group}{edition}",
        _flag_phrase(record.surgery, "treated with surgery", "no surgery", "surgery unknown")
        if record.surgery is not None else None,
        _flag_phrase(record.chemotherapy, "treated with chemotherapy", "no chemotherapy", "chemotherapy unknown"),
        f"treated at centre {record.centre}" if record.centre else "treated at an unknown centre",
    ]
    return ", ".join(p for p in parts if p) + "."


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------

def _comparable(times: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) where i had the event first: T_i < T_j, or T_i == T_j with j censored (as lifelines)."""
    t_i, t_j = times[:, None], times[None, :]
    e_i, e_j = events[:, None].astype(bool), events[None, :].astype(bool)
    mask = e_i & ((t_i < t_j) | ((t_i == t_j) & ~e_j))
    return np.nonzero(mask)


def _validate(times, events, *arrays):
    times = np.asarray(times, dtype=float).ravel()
    events = np.asarray(events).ravel().astype(int)
    for a in arrays:
        if len(a) != len(times):
            raise ValueError(f"{len(times)} times but {len(a)} predictions")
    check_endpoints(times, events)
    if events.sum() == 0:
        raise UndefinedMetricError("C-index undefined: every patient is censored (no event, so no comparable pair)")
    return times, events


def harrell_c_index(times, events, risks) -> float:
    """Harrell's C: among comparable pairs, the fraction where the earlier event has the higher risk (ties 1/2).

    Raises:
        UndefinedMetricError: all patients censored, or no comparable pair.
    """
    risks = np.asarray(risks, dtype=float).ravel()
    times, events = _validate(times, events, risks)
    i, j = _comparable(times, events)
    if i.size == 0:
        raise UndefinedMetricError("C-index undefined: no comparable pair (every event tied with later events)")
    concordant = (risks[i] > risks[j]).sum() + 0.5 * (risks[i] == risks[j]).sum()
    return float(concordant / i.size)


def antolini_c_index(times, events, curve_times, survival) -> float:
    """Antolini's time-dependent C: comparable pairs where S_i(T_i) < S_j(T_i) (ties 1/2).

    Args:
        curve_times: ``(K,)`` increasing times at which ``survival`` ``(N, K)`` is given (step function:
            S(t) = survival at the last curve time <= t, 1 before the first).
    """
    survival = np.asarray(survival, dtype=float)
    times, events = _validate(times, events, survival)
    i, j = _comparable(times, events)
    if i.size == 0:
        raise UndefinedMetricError("C-index undefined: no comparable pair")
    step = np.searchsorted(np.asarray(curve_times, dtype=float), times, side="right") - 1
    padded = np.concatenate([np.ones((len(times), 1)), survival], axis=1)
    at = step[i] + 1
    s_i, s_j = padded[i, at], padded[j, at]
    return float(((s_i < s_j).sum() + 0.5 * (s_i == s_j).sum()) / i.size)


# ---------------------------------------------------------------------------------------------------------
# DeepHit
# ---------------------------------------------------------------------------------------------------------

@dataclass
class DeepHitSettings:
    bins: int = 10                 # cut points at quantiles of the training event times
    hidden: int = 32
    dropout: float = 0.2
    alpha: float = 0.5             # loss = alpha * NLL + (1 - alpha) * ranking
    sigma: float = 0.1
    head_epochs: int = 300         # phase 1: head on frozen prompt embeddings (full batch)
    head_lr: float = 1e-3
    weight_decay: float = 1e-3
    lora_epochs: int = 2           # phase 2: LoRA adapters + head (mini-batches); 0 = no LoRA training
    lora_lr: float = 5e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    batch_size: int = 32
    seed: int = 0
    horizon: float | None = None   # risk = cumulative incidence at this time; None = median training time

    @classmethod
    def from_dict(cls, data: dict) -> "DeepHitSettings":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def time_cuts(times: np.ndarray, events: np.ndarray, bins: int) -> np.ndarray:
    """Bin upper edges: quantiles of the event times (unique, increasing, ending at the last event time)."""
    event_times = times[events.astype(bool)]
    if event_times.size == 0:
        raise UndefinedMetricError("cannot train DeepHit: every patient is censored (no event time to bin)")
    return np.unique(np.quantile(event_times, np.linspace(0, 1, bins + 1)[1:]))


def bin_index(times: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Bin of each time: 0 for t <= cuts[0], ..., len(cuts) for t > cuts[-1]."""
    return np.searchsorted(cuts, times, side="left")


def deephit_loss(logits: torch.Tensor, bins: torch.Tensor, events: torch.Tensor, alpha: float = 0.5,
                 sigma: float = 0.1) -> torch.Tensor:
    """DeepHit loss for one risk: alpha * NLL (with censoring) + (1 - alpha) * ranking loss.

    Args:
        logits: ``(N, K + 1)`` scores over the time bins.
        bins: ``(N,)`` bin of each patient's time; events: ``(N,)`` 1 event, 0 censored.

    NLL: an event in bin b contributes -log p_b; a patient censored in bin b (alive at its time, so
    certainly past the previous bin) contributes -log sum_{k >= b} p_k. Ranking: for pairs with an event of i
    in bin b_i before j's time, exp(-(F_i(b_i) - F_j(b_i)) / sigma), averaged over such pairs.
    """
    pmf = torch.softmax(logits, dim=1)
    cif = torch.cumsum(pmf, dim=1)
    bins = bins.long()
    events = events.float()
    eps = 1e-7
    p_event = pmf.gather(1, bins[:, None]).squeeze(1)
    survive_before = 1.0 - torch.where(bins > 0, cif.gather(1, (bins - 1).clamp_min(0)[:, None]).squeeze(1),
                                       torch.zeros_like(p_event))
    nll = -(events * torch.log(p_event + eps) + (1 - events) * torch.log(survive_before.clamp_min(0) + eps)).mean()
    f_at = cif[:, bins]  # f_at[j, i] = F_j(b_i)
    diag = f_at.diagonal()
    pair = (events[:, None] > 0) & (bins[:, None] < bins[None, :])
    if pair.any():
        diff = diag[:, None] - f_at.t()  # [i, j] = F_i(b_i) - F_j(b_i)
        rank = torch.exp(-diff / sigma)[pair].mean()
    else:
        rank = logits.sum() * 0.0
    return alpha * nll + (1 - alpha) * rank


class DeepHitHead(nn.Module):
    """MLP: features -> logits over len(cuts) + 1 time bins."""

    def __init__(self, in_dim: int, n_bins: int, hidden: int = 32, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, n_bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class Prediction:
    """Per patient: ``risk`` (N,), ``survival`` (N, K) at ``times`` (K,), ``groups`` (N,) low/intermediate/high."""

    risk: np.ndarray
    survival: np.ndarray
    times: np.ndarray
    groups: list[str]
    expected_bin_time: np.ndarray


class PrognosisModel:
    """Prompt encoder (MiniLM + LoRA) [+ image features] -> DeepHit head."""

    def __init__(self, config: dict, encoder_folder: str | os.PathLike | None = None,
                 lora_state: dict[str, torch.Tensor] | None = None):
        self.config = config
        lora = config["lora"]
        self.text = TextEncoder(encoder_folder if encoder_folder is not None else config["encoder"],
                                lora=LoraSettings(lora["r"], lora["alpha"], lora["dropout"], tuple(lora["targets"])),
                                lora_state=lora_state)
        self.config["encoder"] = self.text.encoder_id
        self.encoder = self.text.model  # the peft-wrapped encoder (frozen but for its adapters)
        self.head = DeepHitHead(config["in_dim"], len(config["cuts"]) + 1, config["hidden"], config["dropout"]).eval()
        self.cuts = np.asarray(config["cuts"], dtype=float)

    # -- features ---------------------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text.embed(list(prompts))

    def features(self, prompts: Sequence[str], image: np.ndarray | None = None, batch_size: int = 64) -> torch.Tensor:
        """Standardised head input ``(N, in_dim)``: prompt embedding [+ image features]."""
        return self._join(self.embed(prompts, batch_size), image)

    def embed(self, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Prompt embeddings ``(N, D)`` through the adapted encoder (each distinct prompt encoded once)."""
        unique = list(dict.fromkeys(prompts))
        with torch.no_grad():
            self.encoder.eval()
            table = torch.cat([self._encode(unique[k:k + batch_size]) for k in range(0, len(unique), batch_size)])
        row = {p: i for i, p in enumerate(unique)}
        return table[[row[p] for p in prompts]]

    def _join(self, text: torch.Tensor, image: np.ndarray | None) -> torch.Tensor:
        cfg = self.config
        text = (text - torch.tensor(cfg["text_mean"])) / torch.tensor(cfg["text_std"])
        if cfg["image_dim"] == 0:
            if image is not None:
                raise PromptSegError("this prognosis model was trained without image features; do not pass any")
            return text
        if image is None:
            raise PromptSegError(f"this prognosis model needs image features (N, {cfg['image_dim']}) too")
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2 or image.shape != (text.shape[0], cfg["image_dim"]):
            raise PromptSegError(f"image features must be ({text.shape[0]}, {cfg['image_dim']}), got {image.shape}")
        if not np.isfinite(image).all():
            raise PromptSegError("image features contain NaN or infinite values")
        image = (torch.from_numpy(image) - torch.tensor(cfg["image_mean"])) / torch.tensor(cfg["image_std"])
        return torch.cat([text, image], dim=1)

    # -- prediction -------------------------------------------------------------------------------------
    def predict_features(self, x: torch.Tensor) -> Prediction:
        with torch.no_grad():
            pmf = torch.softmax(self.head.eval()(x), dim=1).double().numpy()
        cif = np.cumsum(pmf, axis=1)
        survival = np.clip(1.0 - cif[:, :-1], 0.0, 1.0)  # S at each cut
        risk = self.risk_from_cif(cif)
        mids = np.concatenate([self.cuts, [self.cuts[-1]]])
        low, high = self.config.get("risk_tertiles", [np.inf, np.inf])
        groups = ["high" if r > high else "intermediate" if r > low else "low" for r in risk]
        return Prediction(risk, survival, self.cuts.copy(), groups, pmf @ mids)

    def risk_from_cif(self, cif: np.ndarray) -> np.ndarray:
        """Cumulative incidence at the horizon (linear between cut points)."""
        grid = np.concatenate([[0.0], self.cuts])
        values = np.concatenate([np.zeros((cif.shape[0], 1)), cif[:, :-1]], axis=1)
        h = float(self.config["horizon"])
        return np.array([np.interp(h, grid, row) for row in values])

    def predict(self, prompts: Sequence[str], image: np.ndarray | None = None) -> Prediction:
        return self.predict_features(self.features(prompts, image))

    def predict_records(self, records: Sequence[ClinicalRecord], image: np.ndarray | None = None) -> Prediction:
        return self.predict([self.prompt(r) for r in records], image)

    def prompt(self, record: ClinicalRecord) -> str:
        return build_prompt(record, self.config["modality"], self.config["region"])

    def lora_state(self) -> dict[str, torch.Tensor]:
        return self.text.lora_state()


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


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_deephit(prompts: Sequence[str], times, events, image: np.ndarray | None = None,
                  settings: DeepHitSettings | None = None, encoder: str | os.PathLike | None = None,
                  modality: str = "CT", region: str = "Head & Neck",
                  log: Callable[[str], None] | None = None) -> PrognosisModel:
    """Train LoRA + DeepHit head on prompts (+ image features ``(N, C)``) and endpoints.

    Phase 1 trains the head on the frozen prompt embeddings (LoRA B matrices start at zero, so the
    adapted encoder equals the frozen one); phase 2 trains the LoRA adapters and the head together.
    Only LoRA and head parameters ever receive gradients.
    """
    settings = settings or DeepHitSettings()
    times = np.asarray(times, dtype=float)
    events = np.asarray(events).astype(int)
    if len(prompts) != len(times) or len(events) != len(times):
        raise ClinicalDataError(f"{len(prompts)} prompts, {len(times)} times and {len(events)} events differ in number")
    check_endpoints(times, events)
    if events.sum() == 0:
        raise UndefinedMetricError("cannot train DeepHit: every patient is censored (no event)")
    if image is not None:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2 or image.shape[0] != len(times):
            raise ClinicalDataError(f"image features must be (N={len(times)}, C), got {image.shape}")
        if not np.isfinite(image).all():
            raise ClinicalDataError("image features contain NaN or infinite values")
    _set_seed(settings.seed)
    cuts = time_cuts(times, events, settings.bins)
    config = {
        "format": FORMAT, "encoder": None, "modality": modality, "region": region,
        "lora": {"r": settings.lora_r, "alpha": settings.lora_alpha, "dropout": settings.lora_dropout,
                 "targets": ["query", "value"]},
        "cuts": cuts.tolist(), "hidden": settings.hidden, "dropout": settings.dropout,
        "horizon": float(settings.horizon if settings.horizon is not None else np.median(times)),
        "image_dim": 0 if image is None else int(image.shape[1]), "settings": asdict(settings),
    }
    model_config = dict(config, in_dim=1, text_mean=0.0, text_std=1.0)
    model = PrognosisModel(model_config, encoder)
    raw = model.embed(list(prompts))
    model.config["text_mean"] = raw.mean(0).tolist()
    model.config["text_std"] = [float(raw.std(0).pow(2).sum().sqrt().clamp_min(1e-4))] * raw.shape[1]
    if image is not None:
        model.config["image_mean"] = image.mean(0).tolist()
        model.config["image_std"] = np.maximum(image.std(0), 1e-6).tolist()
    model.config["in_dim"] = model.config["image_dim"] + raw.shape[1]
    model.head = DeepHitHead(model.config["in_dim"], len(cuts) + 1, settings.hidden, settings.dropout)
    x = model._join(raw, image)
    b = torch.from_numpy(bin_index(times, cuts))
    e = torch.from_numpy(events)

    optimizer = torch.optim.AdamW(model.head.parameters(), lr=settings.head_lr, weight_decay=settings.weight_decay)
    model.head.train()
    for epoch in range(settings.head_epochs):
        optimizer.zero_grad()
        loss = deephit_loss(model.head(x), b, e, settings.alpha, settings.sigma)
        loss.backward()
        optimizer.step()
        if log and (epoch + 1) % 100 == 0:
            log(f"head epoch {epoch + 1}/{settings.head_epochs}: loss {loss.item():.4f}")

    if settings.lora_epochs > 0:
        lora_params = model.text.lora_parameters()
        optimizer = torch.optim.AdamW([{"params": lora_params, "lr": settings.lora_lr},
                                       {"params": model.head.parameters(), "lr": settings.head_lr}],
                                      weight_decay=settings.weight_decay)
        generator = np.random.default_rng(settings.seed)
        image_t = None if image is None else image
        # the encoder stays in eval mode: BERT's own dropout would perturb the embeddings the head was fitted
        # to (LoRA dropout, if set, is also off); gradients still reach the adapters
        model.encoder.eval()
        for epoch in range(settings.lora_epochs):
            model.head.train()
            order = generator.permutation(len(times))
            total = 0.0
            for start in range(0, len(order), settings.batch_size):
                idx = order[start:start + settings.batch_size]
                optimizer.zero_grad()
                text = model._encode([prompts[i] for i in idx])
                xb = model._join(text, None if image_t is None else image_t[idx])
                loss = deephit_loss(model.head(xb), b[idx], e[idx], settings.alpha, settings.sigma)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            if log:
                log(f"LoRA epoch {epoch + 1}/{settings.lora_epochs}: loss {total / len(order):.4f}")
    model.head.eval()
    if settings.lora_epochs > 0:
        train_risk = model.predict(list(prompts), image).risk
    else:  # the encoder did not change: reuse the embeddings
        train_risk = model.predict_features(x).risk
    model.config["risk_tertiles"] = np.quantile(train_risk, [1 / 3, 2 / 3]).tolist()
    return model


# ---------------------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------------------

def _card(model: PrognosisModel, extra: str) -> str:
    cfg = model.config
    inputs = "clinical prompt" + (f" + image features ({cfg['image_dim']})" if cfg["image_dim"] else "")
    return (f"# PromptSeg prognosis model\n\nDeepHit head on {inputs}; text encoder {cfg['encoder']} with LoRA "
            f"(r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']}, modules {', '.join(cfg['lora']['targets'])}).\n"
            f"Time bins (cut points): {', '.join(f'{c:g}' for c in cfg['cuts'])}; risk = cumulative incidence at "
            f"{cfg['horizon']:g}.\n\n{extra.strip()}\n")


def save_prognosis_model(folder: str | os.PathLike, model: PrognosisModel, card: str = "") -> Path:
    """Write the model folder atomically (``model_io.write_model_folder``): LoRA adapter, head, config, card."""
    from safetensors.torch import save_file

    from .model_io import write_model_folder

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

    from .model_io import verify_folder

    folder = verify_folder(folder, required=(CONFIG, LORA, HEAD))
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ModelError(f"{folder} is not a prognosis model folder (format {config.get('format')!r})")
    model = PrognosisModel(config, encoder, lora_state=load_file(str(folder / LORA)))
    model.head.load_state_dict(load_file(str(folder / HEAD)))
    model.encoder.eval()
    model.head.eval()
    return model


# ---------------------------------------------------------------------------------------------------------
# CoxPH baseline and cross-validation
# ---------------------------------------------------------------------------------------------------------

def _stage_family(value: str | None, prefix: str) -> str:
    if not value:
        return "unknown"
    text = value.upper().strip()
    return text[:2] if text.startswith(prefix) and len(text) >= 2 else "unknown"


def clinical_design(records: Sequence[ClinicalRecord]) -> "pandas.DataFrame":  # noqa: F821
    """Covariates for CoxPH: age and weight (median-imputed + missing flag), one-hot categories with an
    explicit "unknown" level (gender, centre, tobacco, alcohol, performance status, HPV, T/N/M, chemotherapy,
    surgery)."""
    import pandas as pd

    def cat(value):
        return "unknown" if value is None else str(value)

    rows = []
    for r in records:
        rows.append({"age": r.age, "weight": r.weight, "gender": cat(r.gender), "centre": cat(r.centre),
                     "tobacco": cat(r.tobacco), "alcohol": cat(r.alcohol), "ps": cat(r.performance_status),
                     "hpv": cat(r.hpv), "T": _stage_family(r.t_stage, "T"), "N": _stage_family(r.n_stage, "N"),
                     "M": _stage_family(r.m_stage, "M"), "chemo": cat(r.chemotherapy), "surgery": cat(r.surgery)})
    frame = pd.DataFrame(rows)
    for col in ("age", "weight"):
        values = frame[col].astype(float)
        frame[col + "_missing"] = values.isna().astype(float)
        frame[col] = values.fillna(values.median() if values.notna().any() else 0.0)
    return pd.get_dummies(frame, columns=["gender", "centre", "tobacco", "alcohol", "ps", "hpv", "T", "N", "M",
                                          "chemo", "surgery"], dtype=float)


class CoxBaseline:
    """lifelines CoxPHFitter (ridge penalty) on :func:`clinical_design` covariates, standardised."""

    def __init__(self, penalizer: float = 0.1):
        self.penalizer = penalizer

    def fit(self, records, times, events) -> "CoxBaseline":
        from lifelines import CoxPHFitter

        design = clinical_design(records)
        keep = [c for c in design.columns if design[c].std() > 0]
        self.columns = keep
        self.mean, self.std = design[keep].mean(), design[keep].std()
        frame = (design[keep] - self.mean) / self.std
        frame["time"], frame["event"] = np.asarray(times, float), np.asarray(events, int)
        with warnings.catch_warnings():  # lifelines warns about near-constant one-hot columns; the penalty copes
            warnings.simplefilter("ignore")
            self.fitter = CoxPHFitter(penalizer=self.penalizer).fit(frame, "time", "event")
        return self

    def _frame(self, records):
        design = clinical_design(records).reindex(columns=self.columns, fill_value=0.0)
        return (design - self.mean) / self.std

    def risk(self, records) -> np.ndarray:
        return np.asarray(self.fitter.predict_partial_hazard(self._frame(records)), dtype=float).ravel()

    def survival(self, records, curve_times) -> np.ndarray:
        sf = self.fitter.predict_survival_function(self._frame(records), times=curve_times)
        return np.asarray(sf, dtype=float).T


def stratified_folds(events: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Test indices of ``k`` folds, stratified by event so every fold holds events."""
    if k < 2:
        raise ClinicalDataError(f"cross-validation needs at least 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for value in (1, 0):
        idx = rng.permutation(np.flatnonzero(events == value))
        for n, i in enumerate(idx):
            folds[n % k].append(int(i))
    if min(len(f) for f in folds) == 0:
        raise ClinicalDataError(f"too few patients ({len(events)}) for {k} folds")
    if int(np.sum(events)) < k:
        raise UndefinedMetricError(f"only {int(np.sum(events))} events for {k} folds: some test folds would have "
                                   "no event, where the C-index is undefined")
    return [np.sort(np.array(f)) for f in folds]


def _safe(metric, *args) -> float:
    try:
        return metric(*args)
    except UndefinedMetricError:
        return float("nan")


def cross_validate(cohort: Cohort, k: int = 5, seed: int = 0, settings: DeepHitSettings | None = None,
                   image: np.ndarray | None = None, encoder: str | os.PathLike | None = None,
                   log: Callable[[str], None] | None = None) -> dict:
    """k-fold comparison on the same folds: DeepHit(text [+ image]) vs CoxPH(clinical).

    Returns:
        ``{"folds": [{"fold", "n_test", "events", "deephit_c", "deephit_td_c", "cox_c", "cox_td_c"}, ...],
        "summary": {metric: [mean, sd]}, "k", "seed", "n", "events"}``.
    """
    settings = settings or DeepHitSettings(seed=seed)
    if cohort.events.sum() == 0:
        raise UndefinedMetricError("C-index undefined: every patient is censored")
    prompts = [build_prompt(r) for r in cohort.records]
    rows = []
    for n, test in enumerate(stratified_folds(cohort.events, k, seed)):
        train = np.setdiff1d(np.arange(len(cohort)), test)
        tr, te = cohort.subset(train), cohort.subset(test)
        model = train_deephit([prompts[i] for i in train], tr.times, tr.events,
                              None if image is None else image[train], settings, encoder)
        pred = model.predict([prompts[i] for i in test], None if image is None else image[test])
        cox = CoxBaseline().fit(tr.records, tr.times, tr.events)
        row = {"fold": n + 1, "n_test": int(len(test)), "events": int(te.events.sum()),
               "deephit_c": _safe(harrell_c_index, te.times, te.events, pred.risk),
               "deephit_td_c": _safe(antolini_c_index, te.times, te.events, pred.times, pred.survival),
               "cox_c": _safe(harrell_c_index, te.times, te.events, cox.risk(te.records)),
               "cox_td_c": _safe(antolini_c_index, te.times, te.events, pred.times,
                                 cox.survival(te.records, pred.times))}
        rows.append(row)
        if log:
            log(f"fold {n + 1}/{k}: DeepHit C {row['deephit_c']:.3f} (td {row['deephit_td_c']:.3f}), "
                f"CoxPH C {row['cox_c']:.3f} (td {row['cox_td_c']:.3f})")
    summary = {m: [float(np.nanmean([r[m] for r in rows])), float(np.nanstd([r[m] for r in rows]))]
               for m in ("deephit_c", "deephit_td_c", "cox_c", "cox_td_c")}
    return {"folds": rows, "summary": summary, "k": k, "seed": seed, "n": len(cohort),
            "events": int(cohort.events.sum()), "settings": asdict(settings)}
