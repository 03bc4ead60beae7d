"""The clinical record as a text prompt: one sentence in the DuPLUS style ("Predict the risk score of a male
patient, 62 years old, with CT imaging of the Head & Neck, ..."), every unknown value written "unknown"."""
from __future__ import annotations

from PromptSegLib.prognosis.records import ClinicalRecord


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
