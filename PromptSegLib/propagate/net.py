"""The 2D dual-encoder U-Net of the Prompt U-Net design, used to carry a mask from one slice to the next.

Two encoders of the same shape: the *image encoder* sees the query slice (1 channel), the *prompt encoder*
sees the prompt slice and its mask (2 channels). Their features are added at every scale; the sum feeds
one decoder with skip connections. All convolutions are 3x3 (the 1x1 output head aside).

Shapes (``N`` slices, square side ``S`` divisible by ``2 ** (levels - 1)``)::

    query        (N, 1, S, S)   normalised query slice
    prompt_image (N, 1, S, S)   normalised prompt slice
    prompt_mask  (N, 1, S, S)   its mask in {0, 1}
    -> logits    (N, 1, S, S)   query mask logits
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PAPER_WIDTHS = (32, 64, 128, 256, 512)
CPU_WIDTHS = (16, 32, 64, 128)


@dataclass
class PropagationNetConfig:
    """Architecture of a :class:`PromptUNet2D`.

    Attributes:
        widths: channels per level, shallow to deep (paper: 32-64-128-256-512; CPU default 16-32-64-128).
    """

    widths: tuple[int, ...] = CPU_WIDTHS

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this (one 2x pooling per level below the first)."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        return {"widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict) -> "PropagationNetConfig":
        widths = tuple(int(w) for w in data["widths"])
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths {widths}: need at least two positive levels")
        return cls(widths)


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, instance norm, LeakyReLU): ``(N, c_in, H, W) -> (N, c_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.InstanceNorm2d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.InstanceNorm2d(c_out, affine=True),
            nn.LeakyReLU(0.01, inplace=True))


class Encoder(nn.Module):
    """``(N, c_in, S, S)`` -> features per level ``[(N, w_0, S, S), (N, w_1, S/2, S/2), ...]``."""

    def __init__(self, c_in: int, widths: tuple[int, ...]):
        super().__init__()
        self.blocks = nn.ModuleList([ConvBlock(c_in, widths[0])] +
                                    [ConvBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x if index == 0 else self.pool(x))
            features.append(x)
        return features


class PromptUNet2D(nn.Module):
    """Dual-encoder U-Net: query-image features + (prompt image, prompt mask) features, added per scale."""

    def __init__(self, config: PropagationNetConfig | None = None):
        super().__init__()
        self.config = config or PropagationNetConfig()
        widths = self.config.widths
        self.image_encoder = Encoder(1, widths)
        self.prompt_encoder = Encoder(2, widths)
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in range(len(widths) - 1)])
        self.decode = nn.ModuleList([ConvBlock(2 * widths[i], widths[i]) for i in range(len(widths) - 1)])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, query: torch.Tensor, prompt_image: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Query-mask logits ``(N, 1, S, S)`` from three ``(N, 1, S, S)`` inputs (see the module docstring)."""
        fused = [a + b for a, b in zip(self.image_encoder(query),
                                       self.prompt_encoder(torch.cat([prompt_image, prompt_mask], dim=1)))]
        x = fused[-1]
        for level in range(len(fused) - 2, -1, -1):
            x = self.decode[level](torch.cat([self.up[level](x), fused[level]], dim=1))
        return self.head(x)
