"""The DuPLUS network: shapes, FiLM, generated heads, one backbone pass for many targets."""
from __future__ import annotations

import pytest
import torch

from PromptSegLib.models.network import DuPLUSNet, FiLM, NetworkConfig


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DuPLUSNet(NetworkConfig(widths=(4, 8, 16), film_hidden=16, pred_hidden=32)).eval()


def test_shapes_and_dense_features(net):
    x = torch.randn(2, 1, 16, 24, 32)
    features, dense = net.backbone(x, "CT", torch.randn(384))
    assert features.shape == (2, 4, 16, 24, 32)
    assert dense.shape == (2, 16)
    assert net(x, "MR", torch.randn(2, 384), torch.randn(5, 384)).shape == (2, 5, 16, 24, 32)


def test_many_targets_equal_one_at_a_time(net):
    x, context, targets = torch.randn(1, 1, 16, 16, 16), torch.randn(384), torch.randn(4, 384)
    with torch.no_grad():
        together = net(x, "CT", context, targets)
        alone = torch.cat([net(x, "CT", context, targets[i:i + 1]) for i in range(4)], dim=1)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_target_prompt_changes_the_output(net):
    x, context = torch.randn(1, 1, 16, 16, 16), torch.randn(384)
    with torch.no_grad():
        a = net(x, "CT", context, torch.randn(1, 384))
        b = net(x, "CT", context, torch.randn(1, 384))
    assert (a - b).abs().mean() > 1e-3


def test_film_is_identity_at_init_and_then_modulates():
    film = FiLM(384, 3, 8)
    x = torch.randn(2, 3, 4, 4, 4)
    torch.testing.assert_close(film(x, torch.randn(2, 384)), x)
    torch.nn.init.normal_(film.mlp[-1].weight)
    assert not torch.allclose(film(x, torch.randn(2, 384)), x)


def test_context_changes_the_backbone(net):
    for film in list(net.film_enc) + list(net.film_dec):
        torch.nn.init.normal_(film.mlp[-1].weight, std=0.1)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, _ = net.backbone(x, "CT", torch.randn(384))
        b, _ = net.backbone(x, "CT", torch.randn(384))
    assert (a - b).abs().mean() > 1e-4


def test_unknown_modality(net):
    with pytest.raises(KeyError, match="no input block for US"):
        net.backbone(torch.randn(1, 1, 8, 8, 8), "US", torch.randn(384))


def test_config_round_trip():
    config = NetworkConfig(modalities=("CT",), widths=(8, 16))
    assert NetworkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown network settings: depth"):
        NetworkConfig.from_dict({**config.to_dict(), "depth": 3})
