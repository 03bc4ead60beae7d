"""Clinical records for prognosis: a HECKTOR-style clinical CSV and endpoint CSV read into
:class:`ClinicalRecord` s and a :class:`Cohort` (times and events), and one patient's record from the patient
module of a DICOM header (:func:`record_from_dicom`).

Missing values are kept as ``None`` (written "unknown" in the prompt); unknown columns, patients without an
endpoint, times <= 0 and events other than 0/1 are refused with a one-line reason (:class:`ClinicalDataError`).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from PromptSegLib.errors import PromptSegError


class ClinicalDataError(PromptSegError):
    """A clinical or endpoint table cannot be used: unknown columns, missing patients, invalid values."""


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
        return parse_record(pid, values, "record")


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


def parse_record(pid: str, raw: dict, where: str) -> ClinicalRecord:
    """A checked :class:`ClinicalRecord` from raw values keyed by field name (text, numbers or words such as
    "yes"/"male"); ``where`` names the source in error messages."""
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


def read_clinical_table(info_csv: str | os.PathLike) -> list[ClinicalRecord]:
    """Records of a clinical CSV (HECKTOR column names), in file order."""
    name = Path(info_csv).name
    return [parse_record(str(r["patient_id"]).strip(), r, name) for r in _read_csv(info_csv, INFO_COLUMNS, "clinical")]


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
            known[name] = getattr(parse_record(pid, {name: value}, "DICOM"), name)
        except ClinicalDataError:
            known[name] = None
    return ClinicalRecord(pid, **known)
