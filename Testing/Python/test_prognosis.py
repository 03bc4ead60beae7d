"""Prognosis: HECKTOR 2021 clinical table -> prompts, C-indices against lifelines, LoRA + DeepHit, the image
branch on a generated cohort, the model folder, the command line and bad inputs.

Trainings here are tiny (a few patients, few epochs): they test mechanics. The cross-validated figures on the
whole table come from ``promptseg train-prognosis`` (see the model card it writes).
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from PromptSegLib.cli.main import main
from PromptSegLib.errors import ModelError
from PromptSegLib.prognosis.deephit import DeepHitSettings, bin_index, deephit_loss, time_cuts, train_deephit
from PromptSegLib.prognosis.metrics import UndefinedMetricError, antolini_c_index, harrell_c_index
from PromptSegLib.prognosis.model import load_prognosis_model, save_prognosis_model
from PromptSegLib.prognosis.prompt import build_prompt
from PromptSegLib.prognosis.records import ClinicalDataError, ClinicalRecord, load_cohort, record_from_dicom
from PromptSegLib.prognosis.validation import CoxBaseline

from conftest import SHARED, needs_shared

CLINICAL = SHARED / "clinical"
INFO = CLINICAL / "hecktor2021_patient_info_training.csv"
ENDPOINTS = CLINICAL / "hecktor2021_patient_endpoint_training.csv"


@pytest.fixture(scope="module")
def cohort():
    return load_cohort(INFO, ENDPOINTS)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


# ------------------------------------------------------------------------------------------ table, prompt

@needs_shared()
def test_real_table_loads_with_unknowns(cohort):
    assert len(cohort) == 222 and int(cohort.events.sum()) == 55 and (cohort.times > 0).all()
    first = cohort.records[0]
    assert first.patient_id == "CHGJ007" and first.gender == 1 and first.age == 62 and first.hpv == 1
    assert first.tobacco is None and first.weight is None  # empty cells are unknown, not dropped
    prompt = build_prompt(first)
    assert prompt.startswith("Predict the risk score of a male patient, 62 years old, with CT imaging of the "
                             "Head & Neck, a weight of unknown kilograms")
    for words in ("unknown smoking history", "unknown alcohol consumption", "performance status unknown",
                  "HPV positive", "T4 N2B M0", "stage IVA", "treated with chemotherapy"):
        assert words in prompt
    women = [r for r in cohort.records if r.gender == 0]
    assert women and "a female patient" in build_prompt(women[0])
    known = [r for r in cohort.records if r.tobacco is not None and r.weight is not None]
    if known:
        assert "kilograms" in build_prompt(known[0]) and "unknown kilograms" not in build_prompt(known[0])
    assert len({build_prompt(r) for r in cohort.records}) > 200


def test_empty_record_is_all_unknown():
    prompt = build_prompt(ClinicalRecord("X"))
    assert "a patient of unknown sex" in prompt and "of unknown age" in prompt and "HPV status unknown" in prompt
    record = ClinicalRecord.from_dict({"Gender (1=M,0=F)": "0", "Age": "", "HPV status (0=-, 1=+)": "1",
                                       "Tobacco": "yes"})
    assert record.gender == 0 and record.age is None and record.hpv == 1 and record.tobacco == 1


def test_record_from_dicom_patient_tags():
    import pydicom

    ds = pydicom.Dataset()
    ds.PatientID, ds.PatientSex, ds.PatientAge, ds.PatientWeight = "P7", "F", "045Y", "71.5"
    assert record_from_dicom(ds) == ClinicalRecord("P7", gender=0, age=45.0, weight=71.5)
    ds.PatientAge = "006M"
    assert record_from_dicom(ds).age == 0.5
    # no age tag: birth date to study date; sex "O" and weight 0 (often written for "not measured") are unknown
    ds.PatientAge, ds.PatientBirthDate, ds.StudyDate, ds.PatientSex, ds.PatientWeight = "", "19600301", "20200301", "O", "0"
    assert record_from_dicom(ds) == ClinicalRecord("P7", age=60.0)
    assert record_from_dicom(pydicom.Dataset()) == ClinicalRecord("patient")


@needs_shared()
def test_unknown_columns_named(tmp_path):
    rows = _rows(INFO)
    rows[0].append("Favourite colour")
    for row in rows[1:]:
        row.append("blue")
    with pytest.raises(ClinicalDataError, match="unknown column.*'Favourite colour'"):
        load_cohort(_write(tmp_path / "info.csv", rows), ENDPOINTS)
    with pytest.raises(ClinicalDataError, match="unknown clinical field.*shoe size"):
        ClinicalRecord.from_dict({"Age": 50, "shoe size": 44})


@needs_shared()
def test_patients_missing_from_endpoints_listed(tmp_path):
    rows = _rows(ENDPOINTS)
    dropped = [rows[5][0], rows[9][0]]
    kept = [r for r in rows if r[0] not in dropped]
    with pytest.raises(ClinicalDataError, match="2 patient") as err:
        load_cohort(INFO, _write(tmp_path / "end.csv", kept))
    assert all(pid in str(err.value) for pid in dropped)


@needs_shared()
@pytest.mark.parametrize("value", ["0", "-30", ""])
def test_non_positive_time_refused(tmp_path, value):
    rows = _rows(ENDPOINTS)
    rows[3][2] = value
    with pytest.raises(ClinicalDataError, match="must be positive.*" + rows[3][0]):
        load_cohort(INFO, _write(tmp_path / "end.csv", rows))


@needs_shared()
def test_invalid_values_refused(tmp_path):
    rows = _rows(INFO)
    rows[1][2] = "3"  # gender
    with pytest.raises(ClinicalDataError, match="gender.*must be 0 or 1"):
        load_cohort(_write(tmp_path / "info.csv", rows), ENDPOINTS)


# ------------------------------------------------------------------------------------------------ metrics

@needs_shared()
def test_harrell_matches_lifelines(cohort):
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(0)
    times = rng.integers(1, 30, 300).astype(float)  # many tied times
    events = rng.integers(0, 2, 300)
    risks = rng.integers(0, 10, 300).astype(float)  # many tied predictions
    assert harrell_c_index(times, events, risks) == pytest.approx(concordance_index(times, -risks, events))
    cox = CoxBaseline().fit(cohort.records, cohort.times, cohort.events)
    risk = cox.risk(cohort.records)
    ours = harrell_c_index(cohort.times, cohort.events, risk)
    assert ours == pytest.approx(concordance_index(cohort.times, -risk, cohort.events))
    assert ours > 0.6  # in-sample Cox on the real table


def test_antolini_equals_harrell_for_proportional_curves():
    rng = np.random.default_rng(1)
    times, events = rng.exponential(10, 200) + 0.1, rng.integers(0, 2, 200)
    risk = times * -0.3 + rng.normal(size=200)  # informative, so the check is not about 0.5
    grid = np.sort(times)  # curves known at every observed time: no step ties
    survival = np.exp(-np.exp(risk)[:, None] * grid[None, :] / 10)
    assert antolini_c_index(times, events, grid, survival) == pytest.approx(harrell_c_index(times, events, risk))


@needs_shared()
def test_all_censored_c_index_undefined(cohort):
    with pytest.raises(UndefinedMetricError, match="every patient is censored"):
        harrell_c_index(cohort.times, np.zeros(len(cohort)), np.arange(len(cohort)))
    with pytest.raises(UndefinedMetricError, match="censored"):
        train_deephit(["a", "b", "c"], [1.0, 2.0, 3.0], [0, 0, 0])
    with pytest.raises(ClinicalDataError, match="positive"):
        harrell_c_index([1.0, 0.0], [1, 1], [0.2, 0.3])


def test_deephit_loss_prefers_the_truth():
    times, events = np.array([1.0, 5.0, 9.0, 9.5]), np.array([1, 1, 0, 1])
    cuts = time_cuts(times, events, 3)
    bins, ev = torch.from_numpy(bin_index(times, cuts)), torch.from_numpy(events)
    right = torch.full((4, len(cuts) + 1), -5.0)
    right[torch.arange(4), bins + torch.tensor([0, 0, 1, 0])] = 5.0  # mass where each patient belongs
    wrong = right.flip(1)
    assert deephit_loss(right, bins, ev) < deephit_loss(wrong, bins, ev)


# ---------------------------------------------------------------------------------------- LoRA + DeepHit

@pytest.fixture(scope="module")
def tiny_model(cohort):
    small = cohort.subset(np.arange(20))
    prompts = [build_prompt(r) for r in small.records]
    settings = DeepHitSettings(head_epochs=30, lora_epochs=1, batch_size=10, lora_lr=5e-3, bins=4)
    return train_deephit(prompts, small.times, small.events, settings=settings), small, prompts


@needs_shared()
def test_lora_changes_only_adapter_weights(tiny_model):
    from transformers import AutoModel

    from PromptSegLib.text.encoder import default_encoder_folder

    model, _, _ = tiny_model
    base = AutoModel.from_pretrained(default_encoder_folder(), local_files_only=True).state_dict()
    trained = model.encoder.state_dict()
    lora = {k: v for k, v in trained.items() if "lora_" in k}
    assert len(lora) == 6 * 2 * 2  # 6 layers x (query, value) x (A, B)
    assert all(("query" in k or "value" in k) for k in lora)
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    others = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in trained.items()
              if "lora_" not in k}
    assert set(others) == set(base)
    assert all(torch.equal(others[k], base[k]) for k in base)
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@needs_shared()
def test_save_load_roundtrip_and_checksum(tiny_model, tmp_path):
    model, small, prompts = tiny_model
    folder = save_prognosis_model(tmp_path / "prog", model, "test card")
    assert {p.name for p in folder.iterdir()} == {"config.json", "lora.safetensors", "head.safetensors",
                                                   "README.md", "SHA256SUMS"}
    loaded = load_prognosis_model(folder)
    a, b = model.predict(prompts), loaded.predict(prompts)
    assert np.allclose(a.risk, b.risk, atol=1e-6) and a.groups == b.groups
    assert a.survival.shape == (20, len(a.times)) and (np.diff(a.survival, axis=1) <= 1e-9).all()
    assert set(a.groups) <= {"low", "intermediate", "high"}
    with open(folder / "head.safetensors", "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x00")
    with pytest.raises(ModelError, match="sha256"):
        load_prognosis_model(folder)


@needs_shared()
def test_prognose_command(tiny_model, tmp_path, capsys):
    model, _, _ = tiny_model
    folder = save_prognosis_model(tmp_path / "prog", model)
    assert main(["prognose", str(folder), "--clinical", str(INFO), "--patient", "CHGJ007"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["patient_id"] == "CHGJ007" and 0 <= out["risk_score"] <= 1
    assert out["risk_group"] in ("low", "intermediate", "high")
    curve = out["survival_curve"]
    assert curve["survival"][0] == 1.0 and len(curve["time"]) == len(curve["survival"])
    (tmp_path / "rec.json").write_text(json.dumps({"Gender (1=M,0=F)": 1, "Age": 52, "weight": 82, "Tobacco": 1}))
    assert main(["prognose", str(folder), "--record", str(tmp_path / "rec.json"), "-o", str(tmp_path / "o.json")]) == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert "a male patient, 52 years old" in out["prompt"] and "82 kilograms" in out["prompt"]
    assert main(["prognose", str(folder), "--clinical", str(INFO), "--patient", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err


@needs_shared()
def test_train_prognosis_command(tmp_path, capsys):
    from PromptSegLib.models.folder import folder_identity

    info, end = _rows(INFO), _rows(ENDPOINTS)
    keep = {r[0] for r in end[1:41]}
    info_small = _write(tmp_path / "info.csv", [info[0]] + [r for r in info[1:] if r[0] in keep])
    end_small = _write(tmp_path / "end.csv", [end[0]] + [r for r in end[1:] if r[0] in keep])
    code = main(["train-prognosis", str(info_small), str(end_small), "--folds", "2", "--epochs", "0",
                 "--head-epochs", "20", "-q", "-o", str(tmp_path / "model"), "--cv-json", str(tmp_path / "cv.json")])
    printed = capsys.readouterr().out
    assert code == 0 and "DeepHit(text)" in printed and "CoxPH(clinical)" in printed
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert len(cv["folds"]) == 2 and cv["n"] == 40
    assert "Cross-validated C-index" in (tmp_path / "model" / "README.md").read_text()
    identity = folder_identity(tmp_path / "model")  # named like every model kind: by default, its folder's name
    assert (identity.kind, identity.name, identity.version) == ("prognosis", "model", "0.1.0")
    bad = _rows(info_small)
    bad[0][3] = "Agee"
    code = main(["train-prognosis", str(_write(tmp_path / "bad.csv", bad)), str(end_small), "-o",
                 str(tmp_path / "m2")])
    assert code == 2 and "'Agee'" in capsys.readouterr().err and not (tmp_path / "m2").exists()


# ------------------------------------------------------------------------- image branch, generated cohort

@needs_shared()
def test_image_branch_learns_known_feature(cohort):
    """Survival depends on image feature 0 only (hazard exp(1.5 x0)); prompts are real records (no signal)."""
    rng = np.random.default_rng(0)
    n, n_train = 300, 200
    image = rng.normal(size=(n, 6)).astype(np.float32)
    event_time = rng.exponential(1000 * np.exp(-1.5 * image[:, 0]))
    censor = rng.uniform(200, 3000, n)
    times, events = np.minimum(event_time, censor) + 1.0, (event_time <= censor).astype(int)
    prompts = [build_prompt(cohort.records[i % 12]) for i in range(n)]
    settings = DeepHitSettings(lora_epochs=0, head_epochs=200, seed=0)
    train, test = np.arange(n_train), np.arange(n_train, n)

    model = train_deephit([prompts[i] for i in train], times[train], events[train], image[train], settings)
    pred = model.predict([prompts[i] for i in test], image[test])
    c = harrell_c_index(times[test], events[test], pred.risk)
    assert c > 0.7, c
    assert antolini_c_index(times[test], events[test], pred.times, pred.survival) > 0.65

    shuffled = rng.permutation(n)  # times no longer belong to the features
    model = train_deephit([prompts[i] for i in train], times[shuffled][train], events[shuffled][train],
                          image[train], settings)
    pred = model.predict([prompts[i] for i in test], image[test])
    c_shuffled = harrell_c_index(times[shuffled][test], events[shuffled][test], pred.risk)
    assert abs(c_shuffled - 0.5) < 0.1, c_shuffled

    with pytest.raises(Exception, match="image features"):
        model.predict([prompts[0]], None)


# ---------------------------------------------------------------------------------- the bundled model

@needs_shared()
def test_bundled_prognosis_model_reproduces_its_training_tertiles(cohort):
    from PromptSegLib.models.folder import BUNDLED_MODELS

    folder = BUNDLED_MODELS / "promptseg-prognosis-hecktor"
    model = load_prognosis_model(folder)  # checksums verified
    assert model.config["image_dim"] == 0 and len(model.cuts) == 10
    prediction = model.predict_records(cohort.records)
    counts = [prediction.groups.count(g) for g in ("low", "intermediate", "high")]
    assert max(counts) - min(counts) <= 2, counts  # the risk groups are the tertiles of these very patients
    card = (folder / "README.md").read_text()
    assert "0.606 ± 0.075" in card and "0.664 ± 0.049" in card  # DeepHit vs CoxPH, cross-validated
