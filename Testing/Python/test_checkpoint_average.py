"""``promptseg train --keep-every`` keeps checkpoints along a run; ``promptseg average-models --checkpoints``
turns them into one model whose weights are their mean (stochastic weight averaging), on a tiny real run."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from PromptSegLib.cli.main import main
from PromptSegLib.errors import ModelError, PromptSegError
from PromptSegLib.models.average import average_checkpoints, checkpoint_fields
from PromptSegLib.models.folder import load_model, replace_file
from PromptSegLib.train.config import TrainConfig
from PromptSegLib.train.training import train

from conftest import SHARED, needs_shared

STS = SHARED / "sts_pet_ct_mr" / "nifti"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Four steps of a tiny model on two real soft-tissue sarcoma CTs, a checkpoint kept every two steps."""
    root = tmp_path_factory.mktemp("swa")
    spec = {"datasets": [{"name": "sts_tiny", "modality": "CT", "regions": ["extremity"], "labels": {"1": "gtv"},
                          "cases": [{"id": c, "split": "train", "image": str(STS / c / "CT_image.nii.gz"),
                                     "label": str(STS / c / "CT_mask.nii.gz")} for c in ("STS_001", "STS_002")]}]}
    (root / "spec.json").write_text(json.dumps(spec))
    config = TrainConfig(spec=str(root / "spec.json"), output=str(root / "model"), checkpoints=str(root / "ckpt"),
                         name="tiny", widths=(4, 8), patch_size=(32, 32, 32), spacing_mm=6.0, batch_size=1, steps=4,
                         lr=0.05, checkpoint_every=1, keep_every=2, threads=1)
    train(config)
    return root


@needs_shared()
def test_a_run_keeps_the_checkpoints_of_every_so_many_steps(run):
    kept = sorted(p.name for p in (run / "ckpt").iterdir() if p.name.startswith("checkpoint"))
    assert kept == ["checkpoint-step2.pt", "checkpoint-step4.pt", "checkpoint.pt"]
    steps = [torch.load(run / "ckpt" / n, weights_only=True)["step"] for n in kept]
    assert steps == [2, 4, 4]
    assert not [p for p in (run / "ckpt").iterdir() if "partial" in p.name]


@needs_shared()
def test_the_mean_of_kept_checkpoints_is_a_model_untuned_with_its_card(run, capsys):
    files = [str(run / "ckpt" / f"checkpoint-step{s}.pt") for s in (2, 4)]
    assert main(["average-models", str(run / "model"), "--checkpoints", *files, "-o", str(run / "mean"),
                 "--version", "0.2.0"]) == 0
    assert "untuned" in capsys.readouterr().out
    states = [torch.load(f, weights_only=True)["network"] for f in files]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])  # the run moved the weights
    mean = load_model(run / "mean")
    for key, value in mean.network.state_dict().items():
        expected = (states[0][key].float() + states[1][key].float()) / 2
        torch.testing.assert_close(value, expected.half().float(), atol=1e-3, rtol=1e-3)  # stored as float16
    assert mean.config.version == "0.2.0" and mean.config.targets == load_model(run / "model").config.targets
    card = (run / "mean" / "README.md").read_text()
    assert "(steps 2, 4)" in card and "--checkpoints" in card and "### Training" in card


@needs_shared()
def test_bad_checkpoints_are_refused_and_nothing_is_written(run, tmp_path, capsys):
    good = run / "ckpt" / "checkpoint-step2.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot be read"):
        average_checkpoints([good, truncated], run / "model", tmp_path / "out", "1")
    state = torch.load(good, weights_only=True)
    state["network_config"] = {**state["network_config"], "widths": [8, 16]}
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(ModelError, match="another architecture"):
        average_checkpoints([good, other], run / "model", tmp_path / "out", "1")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    # a model of another grid than the run's (an --init base trained at 3 mm, say) would mislabel the mean
    assert state["model_fields"] == checkpoint_fields(load_model(run / "model").config)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run / "model", elsewhere)
    config = json.loads((elsewhere / "config.json").read_text())
    replace_file(elsewhere, "config.json", json.dumps({**config, "spacing_mm": 3.0}))
    with pytest.raises(ModelError, match="another spacing_mm than model"):
        average_checkpoints([good], elsewhere, tmp_path / "out", "1")
    assert not (tmp_path / "out").exists()
    assert main(["average-models", str(run / "model"), str(run / "model"), "--checkpoints", str(good),
                 "-o", str(tmp_path / "out"), "--version", "1"]) == 2
    assert "name one model folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_kept_checkpoints_must_fall_on_saved_steps():
    with pytest.raises(PromptSegError, match="multiple of the checkpoint interval"):
        TrainConfig(spec="spec.json", output="model", checkpoint_every=100, keep_every=250)
    assert TrainConfig(spec="spec.json", output="model", checkpoint_every=250, keep_every=500).keep_every == 500
