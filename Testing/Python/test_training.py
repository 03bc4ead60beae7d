"""A tiny training run on real data proves the loop, checkpoint/resume, the model card and evaluation.

It is far too short to learn anything; quality is checked on the bundled model instead.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptSegLib.cli.main import main
from PromptSegLib.errors import PromptSegError
from PromptSegLib.models.folder import load_model
from PromptSegLib.text.vocabulary import default_vocabulary
from PromptSegLib.train.augmentation import limit_field_of_view
from PromptSegLib.train.card import train_command
from PromptSegLib.train.config import TrainConfig
from PromptSegLib.train.datasets import load_spec, load_split, prepare_split
from PromptSegLib.train.loss import dice_bce_loss
from PromptSegLib.train.drawn import DRAWN_COUNTS, drawn_hint
from PromptSegLib.train.samples import CentreSampler, crop
from PromptSegLib.train.training import absent_elsewhere, train

from conftest import SHARED, needs_shared

STS = SHARED / "sts_pet_ct_mr" / "nifti"


def write_spec(path, cases, labels=None, modality="CT"):
    spec = {"datasets": [{"name": "sts_tiny", "modality": modality, "regions": ["extremity"],
                          "labels": labels or {"1": "gtv"},
                          "cases": [{"id": c, "split": split, "image": str(STS / c / "CT_image.nii.gz"),
                                     "label": str(STS / c / "CT_mask.nii.gz")} for c, split in cases]}]}
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    spec = write_spec(root / "spec.json", [("STS_001", "train"), ("STS_002", "train"), ("STS_025", "val")])
    config = TrainConfig(spec=str(spec), output=str(root / "model"), name="tiny", widths=(4, 8),
                         patch_size=(32, 32, 32), spacing_mm=6.0, batch_size=1, steps=3, validate_every=3,
                         checkpoint_every=2, threads=1)
    train(config)
    return root, config


@needs_shared()
def test_loop_writes_a_loadable_model_with_its_card(trained):
    root, config = trained
    model = load_model(config.output)
    assert model.config.targets == ["gross tumor volume"]
    from PromptSegLib.preprocessing.intensity import IntensityRule

    shared = IntensityRule.fit_many([sitk.GetArrayFromImage(sitk.ReadImage(str(STS / c / "CT_image.nii.gz")))
                                     for c in ("STS_001", "STS_002")], "CT")
    assert model.config.intensity["CT"] == pytest.approx([shared.low, shared.high, shared.mean, shared.std], rel=1e-5)
    assert model.config.regions == {"CT": ["extremity"]}
    card = (root / "model" / "README.md").read_text()
    assert "promptseg train" in card and "--steps 3" in card
    assert "| gross tumor volume |" in card  # the validation Dice this run measured
    assert "case `STS_025`" in card and "validation" in card
    assert "- crops: 67% centred on a voxel of a target, each target of a dataset equally often" in card
    rows = list(csv.DictReader(open(root / "model.work" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(np.isfinite(float(r["loss"])) for r in rows)


@needs_shared()
def test_a_run_cut_short_by_its_time_budget_validates_the_weights_it_saves(tmp_path):
    """``--minutes`` ends the run between two validations: the card's Dice is measured on the saved weights (the
    last step), and its steps line says how many ran of those planned."""
    spec = write_spec(tmp_path / "spec.json", [("STS_001", "train"), ("STS_025", "val")])
    config = TrainConfig(spec=str(spec), output=str(tmp_path / "model"), name="tiny", widths=(4, 8),
                         patch_size=(32, 32, 32), spacing_mm=6.0, batch_size=1, steps=100000, validate_every=3,
                         checkpoint_every=50000, threads=1, minutes=0.15)
    train(config)
    rows = list(csv.DictReader(open(tmp_path / "model.work" / "log.csv")))
    done = int(rows[-1]["step"])
    validated = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "model.work" / "validation.csv"))]
    assert 1 <= done < 100000 and validated[-1] == done
    assert f"- steps: {done} (of 100000 planned: the time budget ended the run)" in (tmp_path / "model" / "README.md"
                                                                                     ).read_text()


def test_the_cards_command_parses_back_to_the_same_settings(tmp_path):
    """The command a card records is one the command line accepts, and it trains the same settings: a
    switched-off default is spelt ``--no-augment`` (it was once written as a non-existent ``--augment``)."""
    from PromptSegLib.cli.main import build_parser

    config = TrainConfig(spec=str(tmp_path / "my spec.json"), output=str(tmp_path / "model"), augment=False,
                         resume=True, freeze_backbone=True, steps=10, patch_size=(48, 48, 32), spacing_mm=3.0)
    command = train_command(config)
    assert "--no-augment" in command and "--augment" not in command
    args = vars(build_parser().parse_args(command))
    parsed = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()
                            if k in TrainConfig.__dataclass_fields__ and v is not None})
    assert parsed == config


@needs_shared()
def test_lora_tunes_the_text_encoder_and_travels_with_the_model(tmp_path):
    """``--lora-rank``: peft adapters on the frozen MiniLM train with the network, are checkpointed (resume),
    saved in the model folder under its checksums, and used by inference."""
    import torch

    from PromptSegLib.errors import ModelError
    from PromptSegLib.segment.inference import Segmenter
    from PromptSegLib.text.encoder import TextEncoder

    spec = write_spec(tmp_path / "spec.json", [("STS_001", "train")])
    config = TrainConfig(spec=str(spec), output=str(tmp_path / "model"), name="tiny-lora", widths=(4, 8),
                         patch_size=(32, 32, 32), spacing_mm=6.0, batch_size=1, steps=2, checkpoint_every=2,
                         threads=1, lora_rank=4, lora_lr=0.05)
    train(config)
    config.steps, config.resume = 3, True
    train(config)
    folder = tmp_path / "model"
    model = load_model(folder)
    assert model.config.text_lora["r"] == 4 and "text_lora.safetensors" in (folder / "SHA256SUMS").read_text()
    assert "LoRA adapters (r=4, alpha=8)" in (folder / "README.md").read_text()
    text = ["A computed tomography of the gross tumor volume"]
    tuned = Segmenter(model, device="cpu").encoder.encode(text)
    assert not torch.allclose(tuned, TextEncoder().encode(text), atol=1e-4)  # the adapters moved
    assert torch.equal(Segmenter(load_model(folder), device="cpu").encoder.encode(text), tuned)
    with pytest.raises(PromptSegError, match="LoRA"):
        Segmenter(model, device="cpu", text_encoder=str(tmp_path))
    (folder / "text_lora.safetensors").unlink()
    with pytest.raises(ModelError, match="missing text_lora.safetensors"):
        load_model(folder)


@needs_shared()
def test_fine_tune_from_init_adds_an_mr_block_and_keeps_the_frozen_backbone(trained, tmp_path):
    import torch

    root, config = trained
    spec = {"datasets": [{"name": "sts_mr_tiny", "modality": "MR", "regions": ["extremity"], "labels": {"1": "gtv"},
                          "cases": [{"id": c, "split": split, "image": str(STS / c / "MR_T1_image.nii.gz"),
                                     "label": str(STS / c / "MR_T1_mask.nii.gz")}
                                    for c, split in (("STS_003", "train"), ("STS_025", "val"))]}]}
    (tmp_path / "mr.json").write_text(json.dumps(spec))
    output = tmp_path / "tuned"
    assert main(["train", str(tmp_path / "mr.json"), "-o", str(output), "--name", "tuned", "--init",
                 config.output, "--freeze-backbone", "--patch-size", "32", "32", "32", "--spacing-mm", "6",
                 "--batch-size", "1", "--steps", "2", "--validate-every", "2", "--threads", "1"]) == 0
    base, tuned = load_model(config.output), load_model(output)
    assert tuned.config.network.modalities == ("CT", "MR")
    assert tuned.config.regions == {"CT": ["extremity"], "MR": ["extremity"]}
    assert tuned.config.intensity["CT"] == base.config.intensity["CT"]  # the base's CT rule, not refitted
    before, after = base.network.state_dict(), tuned.network.state_dict()
    frozen = [k for k in before if not k.startswith("head.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))
    assert any(k.startswith("inputs.MR") for k in after)
    card, base_card = (output / "README.md").read_text(), (Path(config.output) / "README.md").read_text()
    assert f"--init {config.output}" in card
    # the base's own history is carried over: its command and its steps line
    assert f"- started from {base.config.name} {base.config.version} (`--init`)" in card
    base_command = base_card.split("```\n")[1].splitlines()[0]
    assert f"  - `{base_command}`" in card
    assert "  " + next(line for line in base_card.splitlines() if line.startswith("- steps: ")) in card


@needs_shared()
def test_resume_continues_from_the_checkpoint(trained):
    root, config = trained
    config.steps, config.resume = 5, True
    train(config)
    rows = list(csv.DictReader(open(root / "model.work" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]  # resumed at 3, not restarted
    lr = [float(r["lr"]) for r in rows]
    # the rate each step used: planned for 3 steps, so a new cosine cycle over steps 4-5 starts at the base rate
    assert lr[0] == pytest.approx(config.lr) and lr[2] < 0.3 * config.lr and lr[3] == pytest.approx(config.lr)
    assert 0.01 * config.lr < lr[4] < lr[3]
    assert "2 sessions (resumed from checkpoints): steps 1-3 in " in (root / "model" / "README.md").read_text()
    assert "; steps 4-5 in " in (root / "model" / "README.md").read_text()


@needs_shared()
def test_resume_at_or_past_its_steps_writes_the_checkpoints_model_without_training(tmp_path):
    spec = write_spec(tmp_path / "spec.json", [("STS_001", "train"), ("STS_025", "val")])
    config = TrainConfig(spec=str(spec), output=str(tmp_path / "model"), checkpoints=str(tmp_path / "ckpt"),
                         name="tiny", widths=(4, 8), patch_size=(32, 32, 32), spacing_mm=6.0, batch_size=1, steps=4,
                         validate_every=100, checkpoint_every=2, threads=1)
    train(config)
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file() and not (tmp_path / "model.work").exists()
    first = load_model(config.output).network.state_dict()
    config.steps, config.resume = 2, True  # stop early: the checkpoint (step 4) is taken as it is
    train(config)
    rows = list(csv.DictReader(open(tmp_path / "ckpt" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    again = load_model(config.output).network.state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "for steps 1-4" in card and "| gross tumor volume |" in card


@needs_shared()
def test_evaluate_command_with_ablations(trained, capsys):
    root, config = trained
    out = root / "scores.csv"
    assert main(["evaluate", config.spec, "--model", config.output, "-o", str(out), "--absent-target", "liver",
                 "--context-region", "brain", "--device", "cpu", "--threads", "1"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [(r["case"], r["target"]) for r in rows] == [("STS_025", "gross tumor volume"), ("STS_025", "liver")]
    assert rows[0]["context"] == "A computed tomography of the brain"
    assert int(rows[0]["truth_voxels"]) > 0 and int(rows[1]["truth_voxels"]) == 0
    assert (root / "scores.md").read_text().startswith("| dataset | target |")
    assert main(["evaluate", config.spec, "--model", config.output, "-o", str(root / "again.csv"), "--card",
                 "--title", "tiny check", "--device", "cpu"]) == 0
    card = (root / "model" / "README.md").read_text()
    assert "## Evaluation: split `val` of `spec.json`, tiny check" in card and "promptseg evaluate" in card
    load_model(config.output)  # the manifest was updated with the card


def test_evaluate_refuses_a_missing_output_folder_before_any_case(trained, monkeypatch, capsys):
    """The output folder is checked first: an evaluation of 33 CTs once ran 6 minutes and then failed on it."""
    root, config = trained

    def no_segmenting(*args, **kwargs):
        raise AssertionError("a case was segmented before the output was checked")

    monkeypatch.setattr("PromptSegLib.train.evaluation.evaluate_cases", no_segmenting)
    assert main(["evaluate", config.spec, "--model", config.output, "-o", str(root / "absent" / "scores.csv"),
                 "--device", "cpu"]) == 2
    assert "output folder" in capsys.readouterr().err and not (root / "absent").exists()


def test_a_missed_organ_has_no_hd95_and_the_table_says_how_many_its_mean_covers():
    from PromptSegLib.train.evaluation import Score, markdown_table

    scores = [Score("pt_1", "kbp", "brain stem", 0.8, 4.0, 100, 90, 1.0, "x"),
              Score("pt_2", "kbp", "brain stem", 0.0, float("nan"), 100, 0, 0.0, "x"),  # emptied: nothing found
              Score("pt_1", "kbp", "mandible", 0.9, 2.0, 100, 100, 1.0, "x")]
    rows = {line.split("|")[2].strip(): line.split("|") for line in markdown_table(scores).splitlines()[2:]}
    assert rows["brain stem"][4].strip() == "0.400" and rows["brain stem"][5].strip() == "4.0 (1 of 2)"
    assert rows["mandible"][5].strip() == "2.0"


def test_loss_pulls_absent_targets_to_empty_by_bce_only():
    """Soft Dice counts only targets present in the crop: on an absent one it would pull to exactly zero as
    hard as a present target's whole Dice (organs absent from most crops collapsed to probability 0)."""
    import torch
    from torch.nn import functional as F

    truth = torch.zeros(1, 2, 8, 8, 8)
    truth[0, 0, 2:6, 2:6, 2:6] = 1  # target 0 present, target 1 absent
    logits = torch.full((1, 2, 8, 8, 8), -3.0, requires_grad=True)
    loss = dice_bce_loss(logits, truth)
    probability = torch.sigmoid(torch.tensor(-3.0))
    present_dice = 1 - (2 * probability * 64 + 1) / (probability * 512 + 64 + 1)
    expected = present_dice + F.binary_cross_entropy_with_logits(logits.detach(), truth)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)  # no Dice term for the absent target
    loss.backward()
    absent_pull = logits.grad[0, 1].abs().mean().item()
    bce_only = torch.sigmoid(torch.tensor(-3.0)).item() / truth.numel()  # d BCE / d logit on a negative voxel
    assert absent_pull == pytest.approx(bce_only, rel=1e-4)
    empty = dice_bce_loss(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))
    assert torch.isfinite(empty) and empty.item() == pytest.approx(np.log(2), rel=1e-5)  # BCE of p = 0.5 only


@needs_shared()
def test_foreground_oversampling_finds_the_tumour(tmp_path):
    spec = write_spec(tmp_path / "spec.json", [("STS_003", "train")])
    case = prepare_split(load_spec(spec), "train", 6.0)[0]
    rng = np.random.default_rng(0)
    sampler = CentreSampler([case], 1.0)
    hits = [crop(case, (16, 16, 16), sampler.draw(rng)[1], rng)[1].any() for _ in range(10)]
    assert all(hits)
    image, label = crop(case, (64, 64, 64), None, rng)  # larger than the volume: padded
    assert image.shape == label.shape == (64, 64, 64)


@needs_shared("openkbp_hn_ct", "validation")
def test_crops_are_centred_on_each_target_equally_often_however_few_patients_have_it():
    """Eight OpenKBP patients, some organs contoured in only a few of them: each organ is still the centre of
    a seventh of the crops, always in a patient that has it, and the crop holds it."""
    from collections import Counter

    dataset = load_spec(Path(__file__).resolve().parents[2] / "Resources" / "Training" / "hn_oars_test.json")[0]
    dataset.cases = dataset.cases[:8]
    cases = prepare_split([dataset], "test", 6.0)
    targets = cases[0].dataset.targets
    holding = {t: sum(len(c.points(t)) > 0 for c in cases) for t in targets}
    assert min(holding.values()) <= 4 and max(holding.values()) == 8  # contoured in few and in all
    rng = np.random.default_rng(0)
    sampler = CentreSampler(cases, 1.0)
    draws = [sampler.draw(rng) for _ in range(7000)]
    counts = Counter(target for _, target in draws)
    assert set(counts) == set(targets) and all(850 <= n <= 1150 for n in counts.values()), counts
    assert all(len(case.points(target)) for case, target in draws)
    for case, target in draws[:20]:
        label = crop(case, (16, 16, 16), target, rng)[1]
        assert np.isin(label, case.dataset.values_of(target)).any()
    sampler = CentreSampler(cases, 0.0)
    anywhere = [sampler.draw(rng) for _ in range(50)]
    assert all(target is None for _, target in anywhere) and len({id(c) for c, _ in anywhere}) > 4


def test_short_field_of_view_keeps_a_slab_and_repeats_its_end_slices():
    rng = np.random.default_rng(3)
    image = np.arange(48, dtype=np.float32)[:, None, None] * np.ones((48, 5, 5), np.float32)
    label = (image > 20).astype(np.uint8)
    for _ in range(20):
        short, short_label = limit_field_of_view(image, label, rng)
        column = short[:, 0, 0]
        kept = np.unique(column)
        assert short.shape == image.shape and 6 <= len(kept) <= 24
        assert np.array_equal(kept, np.arange(kept[0], kept[-1] + 1))  # one contiguous slab of the original
        assert np.array_equal(short_label, (short > 20).astype(np.uint8))  # the label follows the image


@needs_shared()
def test_bad_specs(tmp_path):
    with pytest.raises(PromptSegError, match="unknown target"):
        load_spec(write_spec(tmp_path / "a.json", [("STS_001", "train")], labels={"1": "tumour of doom"}))
    missing = tmp_path / "b.json"
    missing.write_text(json.dumps({"datasets": [{"name": "x", "modality": "CT", "regions": ["thorax"],
                                                 "labels": {"1": "liver"},
                                                 "cases": [{"id": "a", "image": "nope.nii.gz", "label": "nope.nii.gz"}]}]}))
    with pytest.raises(PromptSegError, match="no such file"):
        load_spec(missing)
    with pytest.raises(PromptSegError, match="no foreground"):
        prepare_split(load_spec(write_spec(tmp_path / "c.json", [("STS_001", "train")], labels={"7": "liver"})),
                      "train", 6.0)


@needs_shared()
def test_a_spec_includes_the_datasets_of_another(tmp_path):
    """``propagation_hn.json`` adds a fetched source to ``propagation.json`` by including it: the included
    datasets come first, paths resolved beside the included file; a spec cannot include itself, directly or
    through another."""
    (tmp_path / "sub").mkdir()
    base = write_spec(tmp_path / "sub" / "base.json", [("STS_001", "train"), ("STS_002", "val")])
    relative = json.loads(base.read_text())  # paths relative to the included spec, not to the including one
    for case in relative["datasets"][0]["cases"]:
        case["image"] = os.path.relpath(case["image"], base.parent)
        case["label"] = os.path.relpath(case["label"], base.parent)
    base.write_text(json.dumps(relative))
    extra = json.loads(write_spec(tmp_path / "extra.json", [("STS_003", "train")]).read_text())["datasets"]
    extra[0]["name"] = "extra"
    (tmp_path / "top.json").write_text(json.dumps({"include": ["sub/base.json"], "datasets": extra}))
    first, second = load_spec(tmp_path / "top.json")
    assert [d.name for d in (first, second)] == [load_spec(base)[0].name, "extra"]
    assert [(c.id, c.split) for c in first.cases] == [("STS_001", "train"), ("STS_002", "val")]
    assert first.cases[0].image.resolve() == (STS / "STS_001" / "CT_image.nii.gz").resolve()
    (tmp_path / "loop.json").write_text(json.dumps({"include": ["loop.json"], "datasets": []}))
    with pytest.raises(PromptSegError, match="includes itself"):
        load_spec(tmp_path / "loop.json")
    (tmp_path / "ring_a.json").write_text(json.dumps({"include": ["ring_b.json"], "datasets": []}))
    (tmp_path / "ring_b.json").write_text(json.dumps({"include": ["ring_a.json"], "datasets": []}))
    with pytest.raises(PromptSegError, match="includes itself"):  # through another spec
        load_spec(tmp_path / "ring_a.json")
    (tmp_path / "odd.json").write_text(json.dumps({"include": "sub/base.json", "datasets": []}))
    with pytest.raises(PromptSegError, match="'include' must be a list"):
        load_spec(tmp_path / "odd.json")


@needs_shared()
def test_overlapping_targets_and_targets_absent_from_other_regions(tmp_path):
    """BRATS sub-regions overlap (whole tumour contains the oedema): one label value serves several targets.
    A brain dataset is prompted with abdominal organs as certainly absent, never with a tumour that may be
    anywhere, and the reverse."""
    brats = SHARED / "brats2015" / "brats_2013_pat0003_1"
    spec = {"datasets": [
        {"name": "flair", "modality": "MR", "regions": ["brain"], "labels": {"1,2,3,4": "whole tumor", "2": "edema"},
         "cases": [{"id": "p3", "image": str(brats / "Flair_subtrMeanDivStd.nii.gz"),
                    "label": str(brats / "OTMultiClass.nii.gz")}]},
        {"name": "ct", "modality": "CT", "regions": ["abdomen"], "labels": {"5": "liver", "1": "spleen"}, "cases": []},
        {"name": "sts", "modality": "PET", "regions": ["lower limb"], "labels": {"1": "gtv"}, "cases": []}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    datasets = load_spec(tmp_path / "spec.json")
    assert datasets[0].labels == {"whole tumor": (1, 2, 3, 4), "edema": (2,)}
    case = prepare_split(datasets, "train", 4.0)[0]
    whole, edema = case.masks(["whole tumor", "edema"])
    assert edema.sum() > 0 and whole.sum() > edema.sum() and not (edema > whole).any()
    absent = absent_elsewhere(datasets, default_vocabulary())
    assert absent == {"flair": ["liver", "spleen"], "ct": ["edema", "whole tumor"], "sts": ["edema", "liver", "spleen", "whole tumor"]}
    # a healthy-control dataset lists the tumours it certainly lacks: prompted there with an empty truth
    spec["datasets"].append({"name": "healthy", "modality": "MR", "regions": ["brain"], "labels": {"2": "white matter"},
                             "absent": ["whole tumour", "edema"], "cases": []})
    (tmp_path / "healthy.json").write_text(json.dumps(spec))
    datasets = load_spec(tmp_path / "healthy.json")
    assert datasets[-1].absent == ["edema", "whole tumor"]  # names resolved through the vocabulary
    assert absent_elsewhere(datasets, default_vocabulary())["healthy"] == ["edema", "liver", "spleen", "whole tumor"]
    spec["datasets"][-1]["absent"] = ["white matter"]
    (tmp_path / "both.json").write_text(json.dumps(spec))
    with pytest.raises(PromptSegError, match="both labelled and listed as absent"):
        load_spec(tmp_path / "both.json")
    spec["datasets"].pop()
    spec["datasets"][0]["labels"] = {"1;2": "whole tumor"}
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(PromptSegError, match="comma-separated"):
        load_spec(tmp_path / "bad.json")


@needs_shared()
def test_label_on_another_grid_is_resampled(tmp_path):
    label = sitk.ReadImage(str(STS / "STS_001" / "CT_mask.nii.gz"))
    shifted = sitk.Resample(label, [s // 2 for s in label.GetSize()], sitk.Transform(), sitk.sitkNearestNeighbor,
                            label.GetOrigin(), [2 * s for s in label.GetSpacing()], label.GetDirection())
    sitk.WriteImage(shifted, str(tmp_path / "coarse_mask.nii.gz"))
    spec = {"datasets": [{"name": "x", "modality": "CT", "regions": ["extremity"], "labels": {"1": "gtv"},
                          "cases": [{"id": "STS_001", "image": str(STS / "STS_001" / "CT_image.nii.gz"),
                                     "label": "coarse_mask.nii.gz"}]}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    case = prepare_split(load_spec(tmp_path / "spec.json"), "train", 6.0)[0]
    assert case.label_original.GetSize() == sitk.ReadImage(str(STS / "STS_001" / "CT_image.nii.gz")).GetSize()
    assert case.label.any()


@needs_shared()
@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_decathlon_and_nnunet_folders(tmp_path, layout):
    task = tmp_path / "Task01_Sarcoma"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    ids = ["STS_004", "STS_005"]
    for case in ids:
        image_name = f"{case}.nii.gz" if layout == "msd" else f"{case}_0000.nii.gz"
        (task / "imagesTr" / image_name).symlink_to(STS / case / "MR_T1_image.nii.gz")
        (task / "labelsTr" / f"{case}.nii.gz").symlink_to(STS / case / "MR_T1_mask.nii.gz")
    if layout == "msd":
        meta = {"labels": {"0": "background", "1": "tumour"},
                "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]}
    else:
        meta = {"labels": {"background": 0, "tumour": 1}, "file_ending": ".nii.gz"}
    (task / "dataset.json").write_text(json.dumps(meta))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datasets": [{"name": "sts_mr", "modality": "MR", "regions": ["lower limb"],
                                              "folder": "Task01_Sarcoma", "val": ["STS_005"]}]}))
    dataset = load_spec(spec)[0]
    assert dataset.labels == {"gross tumor volume": (1,)}
    assert [(c.id, c.split) for c in dataset.cases] == [("STS_004", "train"), ("STS_005", "val")]
    assert prepare_split([dataset], "val", 6.0)[0].label.any()
    spec.write_text(json.dumps({"datasets": [{"name": "sts_mr", "modality": "MR", "regions": ["lower limb"],
                                              "folder": "Task01_Sarcoma", "val": ["STS_05"]}]}))
    with pytest.raises(PromptSegError, match="lists STS_05 in its val/test split, but has no such case"):
        load_spec(spec)  # a typo would have left STS_005 in the training split


@needs_shared()
def test_hecktor_folder_gives_a_ct_and_a_pet_dataset(tmp_path):
    """The HECKTOR layout, built from two sarcoma patients' CT, PET and CT-grid mask: one CT and one PET
    dataset with the same case ids, GTVp/GTVn targets, the label resampled onto the PET grid."""
    folder = tmp_path / "hecktor"
    folder.mkdir()
    for case in ("STS_025", "STS_026"):
        (folder / f"{case}__CT.nii.gz").symlink_to(STS / case / "CT_image.nii.gz")
        (folder / f"{case}__PT.nii.gz").symlink_to(STS / case / "PET_image.nii.gz")
        (folder / f"{case}.nii.gz").symlink_to(STS / case / "CT_mask.nii.gz")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datasets": [{"name": "hn", "layout": "hecktor", "folder": "hecktor",
                                              "val": ["STS_026"]}]}))
    ct, pet = load_spec(spec)
    assert (ct.name, ct.modality, pet.name, pet.modality) == ("hn_ct", "CT", "hn_pet", "PET")
    assert ct.labels == pet.labels == {"primary tumor": (1,), "malignant lymph node": (2,)}
    assert ct.regions == ["head and neck"]
    assert [(c.id, c.split) for c in pet.cases] == [("STS_025", "train"), ("STS_026", "val")]
    (pet_case,) = load_split([pet], "val")
    assert pet_case.label.GetSize() == pet_case.image.GetSize()  # on the PET grid
    assert sitk.GetArrayViewFromImage(pet_case.label).any()
    (folder / "STS_025__PT.nii.gz").unlink()
    with pytest.raises(PromptSegError, match="no PET .* for STS_025"):
        load_spec(spec)


@needs_shared()
def test_torchrun_two_processes_train_without_code_changes(tmp_path):
    """DistributedDataParallel on the CPU (gloo): two ranks, two modalities (so some input blocks get no
    gradient in a step), one model written by rank 0."""
    import shutil
    import subprocess
    import sys

    cases = [("STS_001", "train"), ("STS_025", "val")]
    spec = {"datasets": [{"name": f"sts_{m.lower()}", "modality": m, "regions": ["extremity"], "labels": {"1": "gtv"},
                          "cases": [{"id": c, "split": s, "image": str(STS / c / f"{p}_image.nii.gz"),
                                     "label": str(STS / c / f"{p}_mask.nii.gz")} for c, s in cases]}
                         for m, p in (("CT", "CT"), ("PET", "PET"))]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "PromptSegLib", "train", str(tmp_path / "spec.json"),
                           "-o", str(tmp_path / "model"), "--widths", "4", "8", "--patch-size", "32", "32", "32",
                           "--spacing-mm", "6", "--batch-size", "1", "--steps", "4", "--validate-every", "4",
                           "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote model") == 1
    assert load_model(tmp_path / "model").config.network.modalities == ("CT", "PET")


@needs_shared()
def test_one_spec_reader_serves_propagation_with_names_as_written(tmp_path):
    from PromptSegLib.propagate.data import load_split, scored

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"datasets": [
        {"name": "sts", "modality": "CT", "evaluate": {"tumour of doom": [1]},
         "cases": [{"id": "STS_001", "split": "val", "image": str(STS / "STS_001" / "CT_image.nii.gz"),
                    "label": str(STS / "STS_001" / "CT_mask.nii.gz")}]},
        {"name": "named", "modality": "CT", "labels": {"1": "blob"},
         "cases": [{"id": "STS_002", "image": str(STS / "STS_002" / "CT_image.nii.gz"),
                    "label": str(STS / "STS_002" / "CT_mask.nii.gz")}]}]}))
    with pytest.raises(PromptSegError, match="lacks 'labels'"):  # segmentation needs named, known targets
        load_spec(spec)
    unnamed, named = load_spec(spec, as_written=True)
    assert unnamed.labels == {} and unnamed.regions == [] and unnamed.evaluate == {"tumour of doom": (1,)}
    assert scored(unnamed) == {"tumour of doom": [1]} and scored(named) == {"blob": [1]}
    assert named.labels == {"blob": (1,)} and named.cases[0].split == "train"
    ((volume, evaluate),) = load_split([unnamed, named], "val")
    assert volume.name == "sts/STS_001" and list(volume.units) == ["1"] and evaluate == {"tumour of doom": [1]}
    assert volume.mask(["1"]).sum() > 1000
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"datasets": [dict(json.loads(spec.read_text())["datasets"][1], evaluate=["blob"])]}))
    with pytest.raises(PromptSegError, match="'evaluate' must map names"):
        load_spec(bad, as_written=True)


@needs_shared()
def test_a_run_from_an_averaged_model_keeps_its_whole_card(trained, tmp_path):
    """A mean of runs' weights has no single training record to copy line by line: the card of a run started
    from it carries that model's card in full, so no step of the history is lost."""
    from PromptSegLib.models.average import average_models
    from PromptSegLib.train.card import init_parts

    root, config = trained
    assert init_parts(config.output)[1] == []  # a trained model's record is copied line by line instead
    averaged = average_models([config.output, config.output], tmp_path / "averaged", "0.2.0")
    section = "\n".join(init_parts(str(averaged))[1])
    assert section.startswith("\n## Started from: tiny 0.2.0 (its card)")
    assert "### Source 1: tiny 0.1.0" in section and "promptseg train " in section  # the source run's command


@needs_shared()
def test_hints_teach_the_network_the_drawn_slices_from_a_model_that_had_none(trained, tmp_path):
    root, config = trained
    output = tmp_path / "hinted"
    assert main(["train", str(root / "spec.json"), "-o", str(output), "--name", "hinted", "--init", config.output,
                 "--hints", "--patch-size", "32", "32", "32", "--spacing-mm", "6", "--batch-size", "1", "--steps",
                 "3", "--validate-every", "3", "--foreground-ratio", "1", "--threads", "1"]) == 0
    base, hinted = load_model(config.output), load_model(output)
    assert not base.config.network.hints and hinted.config.network.hints
    assert hinted.network.hint.weight.abs().sum() > 0  # it started at zero and learnt
    assert "--hints" in (output / "README.md").read_text()


def test_a_drawn_hint_shows_the_structure_on_a_few_planes_spread_over_its_extent():
    mask = np.zeros((40, 12, 12), bool)
    mask[10:30, 3:9, 4:8] = True
    rng = np.random.default_rng(3)
    counts = set()
    for _ in range(40):
        hint = drawn_hint(mask, rng)
        planes = np.nonzero(hint[1].any(axis=(1, 2)))[0]
        counts.add(len(planes))
        assert hint[1][planes].all() and not hint[1][np.setdiff1d(np.arange(40), planes)].any()
        assert np.array_equal(hint[0] > 0, mask & (hint[1] > 0))  # the structure, on the drawn planes only
        assert planes.min() >= 10 and planes.max() < 30
    # each count drawn (two planes of neighbouring parts may fall on one: 7 planes of 8)
    assert set(DRAWN_COUNTS) - {8} <= counts and max(counts) <= max(DRAWN_COUNTS)
