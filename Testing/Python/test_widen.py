"""``promptseg widen``: more channels per level, the same function, copies that training separates."""
from __future__ import annotations

import shutil

import pytest
import torch

from PromptSegLib.errors import ModelError
from PromptSegLib.models.folder import load_model
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig
from PromptSegLib.models.widen import widen_network

from conftest import SHARED, needs_shared

PATIENT = SHARED / "openkbp_hn_ct" / "validation" / "pt_201"


def perturbed_network() -> DuPLUSNet:
    """Three levels, two modalities, every parameter moved off its initial value (FiLM starts as the identity,
    which would hide a wrongly widened FiLM layer)."""
    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig(modalities=("CT", "MR"), widths=(4, 8, 16)))
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return network.eval()


def inputs(size: int = 16):
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 1, size, size, size, generator=generator)
    texts = torch.nn.functional.normalize(torch.randn(4, 384, generator=generator), dim=-1)
    return image, texts[0], texts[1:]


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_the_wider_network_computes_the_same_features_and_logits(modality):
    network = perturbed_network()
    wide = widen_network(network, (6, 13, 20), seed=3)
    assert wide.config.widths == (6, 13, 20)
    image, context, targets = inputs()
    with torch.no_grad():
        features, dense = network.backbone(image, modality, context)
        wide_features, wide_dense = wide.backbone(image, modality, context)
        logits, wide_logits = network(image, modality, context, targets), wide(image, modality, context, targets)
    torch.testing.assert_close(wide_features[:, :4], features, rtol=1e-4, atol=1e-4)  # old channels first
    torch.testing.assert_close(wide_dense[:, :16], dense, rtol=1e-4, atol=1e-4)
    scale = logits.abs().max()
    assert scale > 1.0  # the check below is not of a network that outputs nothing
    torch.testing.assert_close(wide_logits, logits, rtol=1e-5, atol=1e-5 * float(scale))


def test_a_training_step_separates_the_copies():
    wide = widen_network(perturbed_network(), (6, 13, 20), seed=3).train()
    first = wide.down[0].conv1.weight  # level 1: 13 channels, 5 of them copies of the first 8
    assert len(first.detach().flatten(1).unique(dim=0)) == 8  # before: 13 rows, 8 distinct
    optimizer = torch.optim.AdamW(wide.parameters(), lr=1e-3)
    image, context, targets = inputs()
    wide(image, "CT", context, targets).sigmoid().mean().backward()
    optimizer.step()
    assert len(first.detach().flatten(1).unique(dim=0)) == 13


def test_narrower_or_other_depth_widths_are_refused():
    network = perturbed_network()
    with pytest.raises(ModelError, match="none narrower"):
        widen_network(network, (4, 6, 16))
    with pytest.raises(ModelError, match="as many levels"):
        widen_network(network, (4, 8, 16, 32))


@needs_shared("openkbp_hn_ct", "validation", "pt_201")
def test_widening_the_head_and_neck_model_keeps_its_masks_on_a_patient(tmp_path):
    """The bundled model widened by the command line: the same masks on an OpenKBP validation patient, its card
    with the command, the measured change and the source's card."""
    import SimpleITK as sitk

    from PromptSegLib.cli.main import main
    from PromptSegLib.models.catalogue import resolve_model
    from PromptSegLib.segment.inference import Segmenter

    source = shutil.copytree(resolve_model("promptseg-hn-oars"), tmp_path / "source")
    assert main(["widen", str(source), "-o", str(tmp_path / "wide"), "--widths", "16", "40", "80", "160",
                 "--version", "9.9"]) == 0
    wide = load_model(tmp_path / "wide")
    assert wide.config.network.widths == (16, 40, 80, 160) and wide.config.version == "9.9"
    assert wide.config.largest_component == load_model(source).config.largest_component
    card = (tmp_path / "wide" / "README.md").read_text()
    assert "promptseg widen" in card and "Largest logit change" in card and "## promptseg-hn-oars" in card
    image, organs = sitk.ReadImage(str(PATIENT / "ct.nii.gz")), ["brain stem", "left parotid", "mandible"]
    results = [Segmenter(folder, threads=2).segment(image, "CT", "head and neck", organs)
               for folder in (source, tmp_path / "wide")]
    for index, organ in enumerate(organs):
        before, after = results[0].mask(index), results[1].mask(index)
        assert before.sum() > 100, organ
        assert (before != after).sum() <= 0.01 * before.sum(), organ
