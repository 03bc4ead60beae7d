"""Sliding windows over a volume, each target's map summed in a tensor of its own.

The windows and their Gaussian weights are those of MONAI's ``sliding_window_inference`` (the positions of its
``dense_patch_slices`` and the weights of its ``compute_importance_map``, computed here without importing MONAI; a
volume smaller than a window padded the same way; ``Testing/Python/test_inference.py`` checks the windows, the
weights and the sums against MONAI's). What differs is where the sums live: MONAI
keeps one ``(T, Z, Y, X)`` tensor and a weight sum in the output's type; here each of the T targets has its own
tensor, float16 when asked, and one float32 weight sum serves them all. A caller can then free the targets one
at a time, and float16 halves their memory without rounding the weights.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Windows ``(B, 1, *roi)`` float32 -> probabilities ``(B, T, *roi)`` float32, which the caller may overwrite."""


def window_starts(size: int, roi: int, interval: int) -> list[int]:
    """Where the windows of one axis start (MONAI's ``dense_patch_slices``): every ``interval`` voxels until a
    window reaches the end of ``size`` voxels, the last one moved back to end there."""
    count = next((d for d in range(-(-size // interval)) if d * interval + roi >= size), 0) + 1
    return [min(d * interval, size - roi) for d in range(count)]


def window_slices(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """The windows (index slices) MONAI visits in a volume of ``shape`` (at least ``roi`` in every axis), in its
    order (the last axis fastest). Computed here rather than by MONAI: importing MONAI took 4.3 s of a request's
    86 s (a 512x512x300 CT, 2 threads), and inference needs nothing else of it."""
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(shape, roi)]
    starts = [window_starts(s, r, i) for s, r, i in zip(shape, roi, interval)]
    return [tuple(slice(a, a + r) for a, r in zip(corner, roi)) for corner in itertools.product(*starts)]


def gaussian_weights(roi: Sequence[int], device: torch.device) -> torch.Tensor:
    """The weight of each voxel of a window ``roi`` float32: MONAI's Gaussian importance map (the product of one
    Gaussian per axis with sigma = roi / 8, centred on the window, clamped at its smallest value or 0.001)."""
    weights = None
    for size in roi:
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float, device=device)
        x = torch.exp(x ** 2 / (-2 * (size * 0.125) ** 2))
        weights = x if weights is None else weights.unsqueeze(-1) * x
    return weights.clamp_(min=max(weights.min().item(), 1e-3))


def sliding_windows(volume: torch.Tensor, roi: Sequence[int], overlap: float, predict: Predictor, targets: int,
                    per_call: int = 1, padding_mode: str = "constant", cval: float = 0.0,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    extra: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per target, the Gaussian-weighted mean of the windows' probabilities ``(Z, Y, X)`` of ``dtype``.

    Args:
        volume: ``(Z, Y, X)`` float32 on the CPU.
        roi: window size in voxels; a volume smaller in some axis is padded as MONAI pads it (``padding_mode``:
            ``constant`` with ``cval``, or ``replicate``) and the result cut back.
        overlap: fraction of a window shared with its neighbour.
        predict: called with ``per_call`` windows at a time, on ``device``.
        targets: T, the channels ``predict`` returns.
        dtype: of the sums and the result (float16 halves their memory).
        extra: ``(C, Z, Y, X)`` float32 channels that travel with ``volume`` (padded with zeros): the windows
            ``predict`` gets are then ``(B, 1 + C, *roi)``.
    """
    roi = [int(r) for r in roi]
    pad = []  # as MONAI: from the last axis, half before and the rest after
    for size, r in zip(reversed(volume.shape), reversed(roi)):
        diff = max(r - size, 0)
        pad += [diff // 2, diff - diff // 2]
    padded = volume[None, None]
    if any(pad):
        padded = F.pad(padded, pad, mode=padding_mode, value=cval) if padding_mode == "constant" else \
            F.pad(padded, pad, mode=padding_mode)
    if extra is not None:
        padded = torch.cat([padded, F.pad(extra[None], pad) if any(pad) else extra[None]], dim=1)
    shape = padded.shape[2:]
    slices = window_slices(shape, roi, overlap)
    weights = gaussian_weights(roi, torch.device(device))
    sums = [torch.zeros(shape, dtype=dtype) for _ in range(targets)]
    staged = torch.empty((targets, *roi), dtype=dtype)  # one block for every window
    for start in range(0, len(slices), per_call):
        group = slices[start:start + per_call]
        windows = torch.cat([padded[(slice(None), slice(None), *s)] for s in group]).to(device)
        probabilities = predict(windows)
        for index, where in enumerate(group):
            staged.copy_(probabilities[index].mul_(weights))  # (T, *roi) in the sums' type, on the CPU
            for total, part in zip(sums, staged):  # (adding float32 to float16 in place is 5x slower)
                total[where] += part
    weight_sum = torch.zeros(shape, dtype=torch.float32)  # made after the windows: not beside their network
    on_cpu = weights.cpu()
    for where in slices:
        weight_sum[where] += on_cpu
    kept = tuple(slice(before, before + size) for before, size in zip(pad[::2][::-1], volume.shape))
    for total in sums:
        total.copy_(total.float().div_(weight_sum))  # one float32 target at a time
    return [total[kept] for total in sums]
