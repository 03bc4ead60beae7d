"""Validating prognosis: the CoxPH baseline on the clinical variables (lifelines) and :func:`cross_validate`,
DeepHit against it on the same stratified folds (Harrell's and Antolini's C-index)."""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from typing import Callable, Sequence

import numpy as np

from PromptSegLib.prognosis.deephit import DeepHitSettings, train_deephit
from PromptSegLib.prognosis.metrics import UndefinedMetricError, antolini_c_index, harrell_c_index
from PromptSegLib.prognosis.prompt import build_prompt
from PromptSegLib.prognosis.records import ClinicalDataError, ClinicalRecord, Cohort


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
