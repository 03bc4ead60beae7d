"""The segmentation loss of both trainers (``train.training`` on dataset specs, ``train.pack_training`` on packs)."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def dice_bce_loss(logits: torch.Tensor, truth: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice over the (sample, target) pairs whose truth is not empty, + BCE over every voxel of every
    target (which alone pushes an absent target towards empty).

    Args:
        logits, truth: ``(B, T, D, H, W)``.
        known: ``(B, T)``, 0 for a (sample, target) pair whose truth is unknown (an organ not delineated for
            that patient): it adds nothing to either term. Default: every pair known.

    Why not Dice on empty truths too: there it is ``1 - 1 / (sum p + 1)``, a pull to exactly zero as strong as
    a present target's whole Dice. A target absent from most crops (an organ smaller than the liver) then
    collapsed to probability 0.00 everywhere, even on its training image."""
    probabilities = torch.sigmoid(logits)
    dims = tuple(range(2, logits.dim()))
    intersection = (probabilities * truth).sum(dims)
    sizes = truth.sum(dims)
    soft_dice = (2 * intersection + 1.0) / (probabilities.sum(dims) + sizes + 1.0)
    known = torch.ones_like(sizes) if known is None else known.to(sizes.dtype)
    present = (sizes > 0) & (known > 0)
    dice_term = (1 - soft_dice)[present].mean() if present.any() else logits.new_zeros(())
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none").mean(dims)
    bce_term = (bce * known).sum() / known.sum().clamp(min=1.0)
    return dice_term + bce_term
