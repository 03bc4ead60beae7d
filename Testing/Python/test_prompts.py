"""Prompt building, the vocabulary's synonyms and codes, and the frozen text encoder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from PromptSegLib.errors import ModelError, PromptError
from PromptSegLib.text.encoder import TextEncoder
from PromptSegLib.text.prompts import (context_prompt, paraphrases, raw_target_query, sort_target_lines, target_prompt,
                                       target_query)
from PromptSegLib.text.vocabulary import DEFAULT_VOCABULARY, default_vocabulary, other_side, side_of


def test_dual_prompts_as_in_duplus():
    assert context_prompt("CT", "abdomen") == "A computed tomography of the abdomen"
    assert target_prompt("ct", "liver") == "A computed tomography of the liver"
    assert context_prompt("MRI", "brain") == "A magnetic resonance imaging of the brain"
    assert target_prompt("PT", "primary tumor") == "A positron emission tomography of the primary tumor"


@pytest.mark.parametrize("said, meant", [
    ("hepatic", "liver"), ("L kidney", "left kidney"), ("kidney_left", "left kidney"), ("Left-Kidney", "left kidney"),
    ("R lung", "right lung"), ("the spleen", "spleen"), ("GTV", "gross tumor volume"), ("oedema", "edema"),
])
def test_synonyms_resolve(said, meant):
    assert default_vocabulary().target(said).name == meant


def test_every_sided_target_has_its_other_side_in_the_vocabulary():
    vocabulary = default_vocabulary()
    sided = [name for name in vocabulary.targets if side_of(vocabulary.target(name))]
    assert "left parotid" in sided and "right kidney" in sided
    for name in sided:
        assert side_of(vocabulary.target(other_side(name))) != side_of(vocabulary.target(name))
        assert other_side(other_side(name)) == name
    assert other_side("liver") is None


def test_a_side_no_rule_keeps_is_named_in_a_warning(recwarn):
    """Asked for one side of a pair it was trained on, a model without the own-side rule for it says so (the
    starter's left and right kidney masks overlapped at Dice 0.93 on its training CT, check_laterality.py); the
    head-and-neck model keeps each parotid on its side (chosen on validation), so asking for one gives no warning."""
    from PromptSegLib.models.folder import read_config
    from PromptSegLib.segment.inference import UnsidedTargetWarning, model_queries

    models = Path(__file__).resolve().parents[2] / "PromptSegLib" / "models"
    vocabulary = default_vocabulary()
    with pytest.warns(UnsidedTargetWarning, match="no mask to its own side of the body for: left kidney "):
        model_queries(read_config(models / "promptseg-starter"), vocabulary, "CT", ["left kidney", "liver"])
    recwarn.clear()
    model_queries(read_config(models / "promptseg-starter"), vocabulary, "CT", ["liver", "spleen"])
    model_queries(read_config(models / "promptseg-hn-oars"), vocabulary, "CT", ["left parotid", "brainstem"])
    assert not [w for w in recwarn if "own side" in str(w.message)]


def test_target_query_uses_the_canonical_name():
    query = target_query("CT", "hepatic")
    assert (query.name, query.prompt) == ("liver", "A computed tomography of the liver")
    assert query.target.type == ("SCT", "10200004", "Liver")


def test_unknown_target_lists_nearest():
    with pytest.raises(PromptError, match=r"unknown target 'livr'.*nearest known: liver"):
        default_vocabulary().target("livr")


def test_unknown_region():
    with pytest.raises(PromptError, match="unknown region"):
        default_vocabulary().region("planet")


def test_raw_text_is_used_as_is_and_named_after_what_it_mentions():
    query = raw_target_query("Segment the L kidney please")
    assert query.prompt == "Segment the L kidney please"
    assert query.name == "left kidney"
    free = raw_target_query("A computed tomography of the whatever")
    assert free.target is None and free.name == "A computed tomography of the whatever"


def test_every_target_has_colour_and_snomed_codes():
    data = json.loads(DEFAULT_VOCABULARY.read_text(encoding="utf-8"))
    for entry in data["targets"]:
        assert len(entry["color"]) == 3 and all(0 <= c <= 1 for c in entry["color"]), entry["name"]
        assert entry["category"][0] == "SCT" and entry["type"][0] == "SCT", entry["name"]
    # the lookup index refuses a synonym naming two targets: loading proves there is none
    assert len(default_vocabulary().targets) == len(data["targets"])


def test_paraphrases_start_with_the_canonical_prompt():
    options = paraphrases("CT", "liver", ("hepatic",))
    assert options[0] == "A computed tomography of the liver"
    assert any("hepatic" in o for o in options) and len(set(options)) == len(options)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_encoder_gives_unit_norm_384_d_embeddings(encoder):
    e = encoder.encode(["A computed tomography of the liver", "A computed tomography of the spleen"])
    assert e.shape == (2, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(2))
    assert float(e[0] @ e[1]) < 0.99  # different targets, different embeddings


def test_encoder_is_deterministic_and_cached(encoder):
    a = encoder.encode(["A computed tomography of the aorta"])
    assert "A computed tomography of the aorta" in encoder._cache
    b = encoder.encode(["A computed tomography of the aorta"])
    torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_encoder_folder_must_be_local(tmp_path):
    with pytest.raises(ModelError, match="never downloads"):
        TextEncoder("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(ModelError, match="not a local"):
        TextEncoder(tmp_path)


def test_a_target_list_gets_the_prompts_of_the_command_line():
    """One prompt path for Slicer's target box and the command line: a name the vocabulary knows is a target at
    any length (its canonical T2, as ``--target``), an unknown sentence is raw text (as ``--target-text``), an
    unknown short line stays a target so that it fails with the nearest names."""
    lines = ["upper lobe of left lung", "  Lung_L ", "", "the dark organ under the right ribs", "livr"]
    targets, texts = sort_target_lines(lines)
    assert targets == ["upper lobe of left lung", "Lung_L", "livr"]
    assert texts == ["the dark organ under the right ribs"]
    assert target_query("CT", targets[0]).prompt == target_prompt("CT", "left lung upper lobe")
    with pytest.raises(PromptError, match="liver"):
        target_query("CT", targets[2])
