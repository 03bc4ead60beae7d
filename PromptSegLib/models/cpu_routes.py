"""Faster CPU routes for the convolutions of ``DuPLUSNet``: the same numbers (to float rounding) as the modules
themselves, which they call everywhere else (CUDA, bfloat16 under autocast).

PyTorch sends a plain-layout 3D convolution to oneDNN, which reorders both tensors to its blocked layout and
back, or, by its heuristic (batch x channels x depth x height below 20480), to a slow reference route. Measured
on 2 threads of an AVX2 CPU (AMD EPYC), tensors of one 96^3 window:

- a 1x1x1 convolution as a batched matrix product: 40 ms against 100 ms (32 -> 16 channels at 96^3), 6 ms
  against 36 ms with stride 2 (on the strided view), 22 ms against 33 ms from one channel (a product);
- a 3x3x3 convolution called on oneDNN directly: 43-50 ms against 81 ms from one channel at 96^3, 8 ms against
  21 ms at 128 channels and 12^3, both sent to the reference route by the heuristic; elsewhere the same route;
- a 2x2x2 stride-2 transposed convolution as a matrix product and one interleaving copy: 65 ms against 106 ms
  (32 -> 16 channels, 48^3 -> 96^3).

A whole 96^3 window's backbone, in turns with PyTorch's own choice (:func:`modules_only`): 1.15x faster in
``Testing/benchmarks/bench_cpu_parts.py`` (8 windows, 11.8 s against 13.5 s), 1.23x in a one-off script (1.43 s
against 1.75 s a window); two 48^3 windows in one call 1.06x. Autograd follows every route; a 3x3x3
convolution's weight gradient is one more oneDNN convolution (:class:`_OneDNNConv3d`): a training step of the
head-and-neck model (batch 2 of 48^3, 2 threads) takes 0.89 s, 1.25x faster than through the modules
(``Testing/benchmarks/bench_training_step.py --against-modules``; 1.01x with oneDNN's own weight gradient).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

_ROUTES = ContextVar("cpu_routes", default=True)


@contextmanager
def modules_only() -> Iterator[None]:
    """Inside, every convolution runs through its own module (PyTorch's choice): to compare with the routes."""
    token = _ROUTES.set(False)
    try:
        yield
    finally:
        _ROUTES.reset(token)


def on_cpu_float32(x: torch.Tensor) -> bool:
    """Whether ``x`` takes these routes: a float32 CPU tensor, outside CPU autocast and :func:`modules_only`."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and _ROUTES.get())


def conv3d(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(x)`` for ``x`` ``(B, C, D, H, W)``."""
    if not on_cpu_float32(x):
        return conv(x)
    if conv.kernel_size == (1, 1, 1) and conv.padding == (0, 0, 0) and conv.groups == 1:
        x = x[(slice(None), slice(None), *(slice(None, None, s) for s in conv.stride))]
        b, c, *spatial = x.shape
        if c == 1:
            y = x * conv.weight.view(1, conv.out_channels, 1, 1, 1)
        else:  # bmm, not matmul: matmul's (2D @ 3D) result is a transposed view, copied again by the norm
            weight = conv.weight.view(1, conv.out_channels, c).expand(b, -1, -1)
            y = torch.bmm(weight, x.reshape(b, c, -1)).view(b, conv.out_channels, *spatial)
        return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1, 1)
    if (torch.backends.mkldnn.is_available() and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros"
            and conv.dilation == (1, 1, 1) and conv.groups == 1):
        return _OneDNNConv3d.apply(x, conv.weight, conv.bias, conv.padding, conv.stride)
    return conv(x)


class _OneDNNConv3d(torch.autograd.Function):
    """oneDNN's 3D convolution (no dilation, one group) called directly, with its weight gradient computed as
    one more convolution: the input, batch and channels swapped, convolved with the output's gradient as the
    kernel (dilated by the stride), which oneDNN's own weight gradient takes 1.6-2.5x as long as (one-off
    timings, 2 threads of an AVX2 CPU, batch 2: 72 against 45 ms at 16 -> 16 channels and 48^3, 25 against 12 ms
    at 32 -> 32 and 24^3). Same numbers to float rounding (``test_network.py``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = padding, stride, bias is not None
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, (1, 1, 1), 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        padding, stride, has_bias = ctx.geometry
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, stride, padding, (1, 1, 1), False,
                                                         (0, 0, 0), 1, (True, False, False))[0]
        if ctx.needs_input_grad[1]:  # (C_in, C_out, >= k, ...), cut to the kernel
            swapped = torch.mkldnn_convolution(x.transpose(0, 1).contiguous(), grad.transpose(0, 1).contiguous(),
                                               None, padding, (1, 1, 1), stride, 1)
            grad_weight = swapped[(slice(None), slice(None), *(slice(0, k) for k in weight.shape[2:]))]
            grad_weight = grad_weight.transpose(0, 1).contiguous()
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3, 4))
        return grad_x, grad_weight, grad_bias, None, None


def upsample2(x: torch.Tensor, up: nn.ConvTranspose3d) -> torch.Tensor:
    """``up(x)`` for ``x`` ``(B, C, D, H, W)`` -> ``(B, C', 2D, 2H, 2W)`` when ``up`` has a 2x2x2 kernel and
    stride 2 (each input voxel writes its own 2x2x2 block: one matrix product, then the blocks interleaved)."""
    plain = up.padding == (0, 0, 0) and up.output_padding == (0, 0, 0) and up.dilation == (1, 1, 1)
    if not (on_cpu_float32(x) and up.kernel_size == (2, 2, 2) and up.stride == (2, 2, 2) and up.groups == 1
            and plain):
        return up(x)
    b, c, d, h, w = x.shape
    out = up.out_channels
    weight = up.weight.view(1, c, out * 8).transpose(1, 2).expand(b, -1, -1)  # (B, C' x 2 x 2 x 2, C)
    y = torch.bmm(weight, x.reshape(b, c, -1)).view(b, out, 2, 2, 2, d, h, w)
    y = y.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, out, 2 * d, 2 * h, 2 * w)
    return y if up.bias is None else y.add_(up.bias.view(1, -1, 1, 1, 1))
