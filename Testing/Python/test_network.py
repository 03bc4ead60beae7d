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


@pytest.mark.parametrize("windows", [1, 2])
def test_generated_head_is_each_targets_three_layer_mlp_on_every_voxel(net, windows):
    """The head's batched products (per target for one window, stacked for several) are, on every voxel, the
    1x1x1 MLP of that window's and target's generated parameters, values and gradients."""
    torch.manual_seed(1)
    features = torch.randn(windows, 4, 6, 5, 7, requires_grad=True)
    params = net.head.generate(torch.randn(windows, 3, 384), torch.randn(windows, 16))
    w1, b1, w2, b2, w3, b3 = params
    hidden = torch.relu(torch.einsum("bthc,bczyx->bthzyx", w1, features) + b1[..., None, None, None])
    hidden = torch.relu(torch.einsum("btjh,bthzyx->btjzyx", w2, hidden) + b2[..., None, None, None])
    expected = (torch.einsum("btjh,bthzyx->btjzyx", w3, hidden) + b3[..., None, None, None])[:, :, 0]
    logits = net.head.apply(features, params)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(expected)
    grad, = torch.autograd.grad((logits * weights).sum(), features)
    expected_grad, = torch.autograd.grad((expected * weights).sum(), features)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("module", [
    torch.nn.Conv3d(5, 3, 1, bias=False), torch.nn.Conv3d(5, 3, 1, stride=2, bias=False), torch.nn.Conv3d(1, 4, 1),
    torch.nn.Conv3d(1, 4, 3, padding=1, bias=False), torch.nn.Conv3d(6, 3, 3, stride=2, padding=1),
    torch.nn.ConvTranspose3d(6, 3, 2, stride=2)], ids=str)
def test_cpu_routes_give_the_modules_numbers_and_gradients(module):
    from PromptSegLib.models.cpu_routes import conv3d, upsample2

    torch.manual_seed(1)
    route = upsample2 if isinstance(module, torch.nn.ConvTranspose3d) else conv3d
    x = torch.randn(2, module.in_channels, 7, 8, 9, requires_grad=True)  # odd and even sizes under a stride
    parameters = [p for p in (module.weight, module.bias) if p is not None]
    expected = module(x)
    expected.square().sum().backward()
    grads = [t.grad.clone() for t in (x, *parameters)]
    for t in (x, *parameters):
        t.grad = None
    got = route(x, module)
    got.square().sum().backward()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close([t.grad for t in (x, *parameters)], grads, rtol=1e-4, atol=1e-4)


def test_network_with_and_without_cpu_routes(net):
    from PromptSegLib.models.cpu_routes import modules_only, on_cpu_float32

    x, context, targets = torch.randn(1, 1, 16, 16, 16), torch.randn(384), torch.randn(2, 384)
    with torch.no_grad():
        routed = net(x, "CT", context, targets)
        with modules_only():
            own = net(x, "CT", context, targets)
    torch.testing.assert_close(routed, own, rtol=1e-4, atol=1e-5)
    assert on_cpu_float32(x)
    assert not on_cpu_float32(x.double())
    with modules_only():
        assert not on_cpu_float32(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16: the modules' own autocast path
        assert not on_cpu_float32(x)


def test_cpu_routes_leave_other_padding_modes_to_the_module():
    from PromptSegLib.models.cpu_routes import conv3d

    torch.manual_seed(2)
    module = torch.nn.Conv3d(2, 3, 3, padding=1, padding_mode="replicate")
    x = torch.randn(1, 2, 5, 6, 7)
    torch.testing.assert_close(conv3d(x, module), module(x))


def test_a_network_with_hints_starts_as_it_was_and_a_hint_of_nothing_drawn_changes_nothing():
    torch.manual_seed(0)
    plain = DuPLUSNet(NetworkConfig(widths=(4, 8, 16), film_hidden=16, pred_hidden=32)).eval()
    hinted = DuPLUSNet(NetworkConfig(widths=(4, 8, 16), film_hidden=16, pred_hidden=32, hints=True)).eval()
    hinted.load_state_dict(plain.state_dict(), strict=False)
    x, context, targets = torch.randn(1, 1, 16, 16, 16), torch.randn(384), torch.randn(2, 384)
    hint = torch.zeros(1, 2, 16, 16, 16)
    hint[0, :, 8] = 1.0  # one plane drawn, all of it inside the structure
    with torch.no_grad():
        torch.testing.assert_close(hinted(x, "CT", context, targets, hint), plain(x, "CT", context, targets))
        torch.nn.init.normal_(hinted.hint.weight)
        torch.testing.assert_close(hinted(x, "CT", context, targets, torch.zeros_like(hint)),
                                   plain(x, "CT", context, targets))
        assert (hinted(x, "CT", context, targets, hint) - plain(x, "CT", context, targets)).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="takes no drawn slices"):
        plain.backbone(x, "CT", context, hint)
    assert NetworkConfig.from_dict(hinted.config.to_dict()).hints
