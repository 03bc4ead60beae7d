"""``promptseg tune``: post-processing chosen on validation cases (raw vs largest component) and the smallest
training volumes, written into the model's config and card with its manifest kept valid."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from PromptSegLib.cli.main import main
from PromptSegLib.errors import ModelError
from PromptSegLib.models.folder import ModelConfig, load_model, replace_file, save_model
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.preprocessing.preprocess import enclosed_air_cm2

from conftest import SHARED, needs_shared

KBP = SHARED / "openkbp_hn_ct" / "validation"
pytestmark = needs_shared("openkbp_hn_ct", "validation")
LABELS = {"1": "brain stem", "2": "spinal cord", "3": "right parotid", "4": "left parotid", "5": "esophagus",
          "6": "larynx", "7": "mandible"}


@pytest.fixture()
def tiny_hn_model(tmp_path):
    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig(modalities=("CT",), widths=(4, 8), film_hidden=16, pred_hidden=32))
    config = ModelConfig("tiny-hn", "0", network.config, patch_size=(32, 32, 32), spacing_mm=8.0,
                         targets=["brain stem", "mandible"], regions={"CT": ["head and neck"]}, threshold=0.3)
    return save_model(tmp_path / "tiny-hn", network, config, "# tiny untrained test model\n")


def _spec(folder, labels: dict[str, str] = LABELS) -> str:
    """A spec of two OpenKBP patients: pt_201 for training (volumes and extremes), pt_202 for validation."""
    spec = folder / "spec.json"
    cases = [{"id": p, "split": s, "image": str(KBP / p / "ct.nii.gz"), "label": str(KBP / p / "oars.nii.gz")}
             for p, s in (("pt_201", "train"), ("pt_202", "val"))]
    spec.write_text(json.dumps({"datasets": [{"name": "kbp", "modality": "CT", "regions": ["head and neck"],
                                              "labels": labels, "cases": cases}]}))
    return str(spec)


def test_tune_writes_the_choice_and_the_volumes_and_refuses_the_test_split(tiny_hn_model, tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main(["tune", str(spec), "--model", str(tiny_hn_model), "--split", "test"]) == 2
    assert main(["tune", str(spec), "--model", str(tiny_hn_model), "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| brain stem | 1 |" in out and "| mandible | 1 |" in out
    model = load_model(tiny_hn_model)  # the manifest still verifies
    label = sitk.ReadImage(str(KBP / "pt_201" / "oars.nii.gz"))
    brainstem_ml = float((sitk.GetArrayFromImage(label) == 1).sum()) * float(np.prod(label.GetSpacing())) / 1000
    assert model.config.plausible_ml["brain stem"] == pytest.approx(brainstem_ml, abs=0.01)
    # the widest body on the brain stem's middle slice: a head's cross-section (well below an abdomen's 600 cm²)
    ct = sitk.ReadImage(str(KBP / "pt_201" / "ct.nii.gz"))
    body = (sitk.GetArrayFromImage(ct) > -500).sum(axis=(1, 2)) * ct.GetSpacing()[0] * ct.GetSpacing()[1] / 100
    z = np.nonzero(sitk.GetArrayFromImage(label) == 1)[0]
    row = next(line for line in out.splitlines() if line.startswith("| brain stem |")).split(" | ")
    assert float(row[-4]) == pytest.approx(body[int(np.median(z))], abs=0.5) and 150 < float(row[-4]) < 350
    # the air the head encloses on that slice (the airway, sinuses): a few cm², far below a chest's lungs
    air = enclosed_air_cm2(ct)[int(np.median(z))]
    assert float(row[-3]) == pytest.approx(air, abs=0.05) and float(row[-3]) < 30
    # kept in the config exactly where the chosen option does as well with the region check first
    chosen = float(row[2 + ["all", "largest component"].index(row[-6])])
    checked = (row[-1] == "yes |")
    assert ("brain stem" in model.config.widest_body_cm2) == checked == (float(row[-2]) >= chosen)
    assert ("brain stem" in model.config.most_air_cm2) == checked
    assert set(model.config.largest_component) <= {"brain stem", "mandible"} and model.config.own_side == []
    assert "## Post-processing (chosen on the validation cases)" in (tiny_hn_model / "README.md").read_text()
    assert main(["tune", str(spec), "--model", str(tiny_hn_model), "--device", "cpu"]) == 2  # already tuned


def test_tune_again_chooses_the_window_overlap_on_validation_and_segmenting_uses_it(tiny_hn_model, tmp_path,
                                                                                   capsys):
    spec = _spec(tmp_path)
    assert main(["tune", spec, "--model", str(tiny_hn_model), "--device", "cpu", "--threads", "1"]) == 0
    assert load_model(tiny_hn_model).config.overlap == 0.25  # the default, not written
    assert "overlap" not in json.loads((tiny_hn_model / "config.json").read_text())
    assert main(["tune", spec, "--model", str(tiny_hn_model), "--overlaps", "1.0", "--again", "--device", "cpu"]) == 2
    assert "overlap 1.0 is not in [0, 1)" in capsys.readouterr().err
    assert main(["tune", spec, "--model", str(tiny_hn_model), "--overlaps", "0.75", "0.5", "--again",
                 "--device", "cpu", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    means = {float(o): float(m) for o, m in (line.strip("| ").split(" | ") for line in out.splitlines()
                                             if line.startswith(("| 0.5 |", "| 0.75 |")))}
    assert set(means) == {0.5, 0.75}
    chosen = max(means, key=lambda o: (means[o], -o))
    model = load_model(tiny_hn_model)  # the manifest still verifies
    assert model.config.overlap == chosen == json.loads((tiny_hn_model / "config.json").read_text())["overlap"]
    assert "chosen among 2" in (tiny_hn_model / "README.md").read_text()
    # segmenting without an overlap uses the model's: the same maps as asking for it, not as the default's
    # (its post-processing set aside, which may empty an untrained model's masks; windows of 16^3, as the 32^3
    # windows cover this body box in one)
    from dataclasses import replace

    from PromptSegLib.segment.inference import Segmenter

    segmenter = Segmenter(tiny_hn_model, device="cpu", threads=1)
    segmenter.model.config = replace(segmenter.model.config.untuned(), overlap=chosen, patch_size=(16, 16, 16))
    ct = sitk.ReadImage(str(KBP / "pt_202" / "ct.nii.gz"))
    maps = [segmenter.segment(ct, "CT", "head and neck", ["brain stem"], overlap=o).probability(0)
            for o in (None, chosen, 0.25)]
    assert np.array_equal(maps[0], maps[1]) and not np.array_equal(maps[0], maps[2])


def test_a_model_config_keeps_its_overlap_and_refuses_one_outside_zero_to_one():
    from PromptSegLib.errors import ModelError

    config = ModelConfig("m", "1", NetworkConfig(modalities=("CT",), widths=(4, 8)), overlap=0.5)
    assert ModelConfig.from_dict(config.to_dict()).overlap == 0.5
    assert config.untuned().overlap == 0.25
    with pytest.raises(ModelError, match="overlap"):
        ModelConfig.from_dict({**config.to_dict(), "overlap": 1.0})


def test_tune_refuses_validation_cases_without_any_target_of_the_model(tiny_hn_model, tmp_path, capsys):
    spec = _spec(tmp_path, {"6": "larynx"})
    assert main(["tune", spec, "--model", str(tiny_hn_model), "--device", "cpu", "--threads", "1"]) == 2
    assert "no validation case holds a target of model tiny-hn" in capsys.readouterr().err
    assert load_model(tiny_hn_model).config.plausible_ml == {}  # nothing written


def test_anchor_measures_the_reach_on_training_truth_and_writes_it(tiny_hn_model, tmp_path, capsys):
    """``promptseg anchor``: pt_201's brain stem against its mandible, in mm along LPS z, into the config (which
    ``tune`` leaves alone) and the card; a target that is not the model's, or the anchor itself, is refused."""
    spec = _spec(tmp_path)
    assert main(["anchor", spec, "--model", str(tiny_hn_model), "--anchor", "mandible", "--targets", "larynx"]) == 2
    assert "larynx: not targets of model tiny-hn" in capsys.readouterr().err
    assert main(["anchor", spec, "--model", str(tiny_hn_model), "--anchor", "mandible", "--targets", "mandible"]) == 2
    assert main(["anchor", spec, "--model", str(tiny_hn_model), "--anchor", "mandible", "--targets",
                 "brain stem"]) == 0
    label = sitk.ReadImage(str(KBP / "pt_201" / "oars.nii.gz"))
    array = sitk.GetArrayFromImage(label)
    z = lambda value: sorted(label.TransformIndexToPhysicalPoint((0, 0, int(k)))[2]  # noqa: E731
                             for k in np.nonzero((array == value).any(axis=(1, 2)))[0][[0, -1]])
    stem, mandible = z(1), z(7)
    anchored = load_model(tiny_hn_model).config.anchored["brain stem"]
    assert anchored == ["mandible", pytest.approx(mandible[0] - stem[1], abs=0.1),
                        pytest.approx(stem[0] - mandible[1], abs=0.1)]
    assert stem[1] > mandible[1]  # the brain stem reaches above the mandible: it starts below the mandible's top
    assert "## Anchors (measured on the training cases)" in (tiny_hn_model / "README.md").read_text()
    assert main(["tune", spec, "--model", str(tiny_hn_model), "--device", "cpu", "--threads", "1"]) == 0
    assert load_model(tiny_hn_model).config.anchored["brain stem"] == anchored
    # a chain (the brain stem's anchor anchored to the brain stem) is refused, by the command and in a config
    assert main(["anchor", spec, "--model", str(tiny_hn_model), "--anchor", "brain stem", "--targets",
                 "mandible"]) == 2
    assert "an anchor cannot be anchored itself" in capsys.readouterr().err
    config = json.loads((tiny_hn_model / "config.json").read_text())
    config["anchored"]["mandible"] = ["brain stem", 0.0, 0.0]
    replace_file(tiny_hn_model, "config.json", json.dumps(config))
    with pytest.raises(ModelError, match="anchors brain stem, mandible are anchored themselves"):
        load_model(tiny_hn_model)
