"""The DuPLUS dual-prompt network (3D residual U-Net, FiLM by the context, generated prediction heads).

Shapes: images ``(B, 1, D, H, W)`` (each spatial size divisible by ``2 ** (len(widths) - 1)``), context
embedding ``E_T1`` ``(B, E)`` or ``(E,)``, target embeddings ``E_T2`` ``(T, E)`` or ``(B, T, E)``; logits
``(B, T, D, H, W)``. One backbone pass per (image, context) serves every target: only the tiny generated
head (three 1x1x1 convolutions) runs per target. A network with ``hints`` also takes slices a user drew,
``(B, 2, D, H, W)`` (see :data:`HINT_CHANNELS`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from PromptSegLib.models.cpu_routes import conv3d, upsample2

HINT_CHANNELS = ("drawn structure", "drawn planes")
"""The two channels of a hint, on the network's grid: 1 where the user drew the structure, and 1 on every plane the
user drew (in or out of it); 0 elsewhere. A plane drawn empty is a plane where the structure is not."""


@dataclass
class NetworkConfig:
    """Architecture of ``DuPLUSNet``.

    Attributes:
        modalities: one input block per modality, in this order.
        widths: channels per resolution level (level 0 = full resolution); depth = ``len(widths)``.
        text_dim: size E of the text embeddings.
        film_hidden: hidden units of each FiLM MLP.
        pred_hidden: hidden units of MLP_pred, which generates the head.
        head_channels: channels of the generated head's two hidden 1x1x1 convolutions.
        hints: whether the network takes drawn slices as a second input (:data:`HINT_CHANNELS`; a 3x3x3
            convolution of them is added to the input block's features).
    """

    modalities: tuple[str, ...] = ("CT", "MR", "PET")
    widths: tuple[int, ...] = (16, 32, 64, 128)
    text_dim: int = 384
    film_hidden: int = 128
    pred_hidden: int = 256
    head_channels: int = 8
    hints: bool = False

    @property
    def divisor(self) -> int:
        """Every spatial size of an input window must be a multiple of this."""
        return 2 ** (len(self.widths) - 1)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        names = set(cls.__dataclass_fields__)
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown network settings: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class ResBlock(nn.Module):
    """Two 3x3x3 convolutions with instance norm and LeakyReLU, plus a (strided 1x1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.InstanceNorm3d(cout, affine=True)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.InstanceNorm3d(cout, affine=True)
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.InstanceNorm3d(cout, affine=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place on fresh tensors (autograd allows it: the norms do not keep their outputs, LeakyReLU with a
        # positive slope keeps its own), the shortcut first and each temporary dropped once used: the peak holds
        # x, the shortcut and two full-size tensors of the block (at full resolution on a 96^3 window, 56 MB each)
        shortcut = x if isinstance(self.skip, nn.Identity) else self.skip[1](conv3d(x, self.skip[0]))
        y = F.leaky_relu(self.norm1(conv3d(x, self.conv1)), 0.01, inplace=True)
        y = conv3d(y, self.conv2)
        out = self.norm2(y)
        del y
        out += shortcut
        return F.leaky_relu(out, 0.01, inplace=True)


class FiLM(nn.Module):
    """``gamma * F + beta`` with ``(gamma, beta)`` from the context embedding by an MLP (identity at init)."""

    def __init__(self, text_dim: int, channels: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, D, H, W)``; context: ``(B, E)``."""
        gamma, beta = self.mlp(context).chunk(2, dim=-1)
        shape = (*gamma.shape, 1, 1, 1)
        return torch.addcmul(beta.view(shape), x, 1.0 + gamma.view(shape))  # one full-size tensor, not two


class DynamicHead(nn.Module):
    """MLP_pred([E_T2; F_dense]) -> kernels of three 1x1x1 convolutions (C->h->h->1), applied per target."""

    def __init__(self, text_dim: int, dense_dim: int, feat_dim: int, hidden: int, head_channels: int):
        super().__init__()
        h = head_channels
        self.shapes = [(h, feat_dim), (h,), (h, h), (h,), (1, h), (1,)]
        self.n_params = sum(torch.Size(s).numel() for s in self.shapes)
        self.mlp = nn.Sequential(nn.Linear(text_dim + dense_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, self.n_params))

    def generate(self, targets: torch.Tensor, dense: torch.Tensor) -> list[torch.Tensor]:
        """targets ``(B, T, E)``, dense ``(B, Cb)`` -> parameter tensors shaped ``(B, T, *shape)``."""
        b, t, _ = targets.shape
        joined = torch.cat([targets, dense[:, None, :].expand(b, t, dense.shape[-1])], dim=-1)
        flat = self.mlp(joined)
        params, start = [], 0
        for shape in self.shapes:
            n = torch.Size(shape).numel()
            params.append(flat[..., start:start + n].reshape(b, t, *shape))
            start += n
        return params

    @staticmethod
    def apply(features: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
        """features ``(B, C, D, H, W)`` -> logits ``(B, T, D, H, W)``, as batched matrix products.

        For one window (inference) the first layer is one product per target, each reading the window's features
        through a stride-0 view (no copy), rather than one product of all targets' stacked weights: the same
        numbers, and on 2 threads of the AMD EPYC its time held when the machine was busy (one 96^3 window, 10
        targets: 24-28 ms a window against 23-94 ms; ad hoc, ``Testing/benchmarks/bench_whole_volume.py`` times
        whole requests). Several windows (a training batch) keep the stacked product: per window the products would
        have to be joined (a copy), and a training step (batch 2) was no faster that way (0.73-0.75 s against 0.71 s,
        ``Testing/benchmarks/bench_training_step.py``, two runs each, in turns).
        """
        w1, b1, w2, b2, w3, b3 = params
        b, c, *spatial = features.shape
        t, h = w1.shape[1], w1.shape[2]
        flat = features.reshape(b, c, -1)
        if b == 1:
            x = torch.baddbmm(b1[0].unsqueeze(-1), w1[0], flat[0].expand(t, c, -1)).relu_()
        else:  # ReLU before the view: in place on a view, a training step took 0.78 s against 0.73 s
            x = torch.baddbmm(b1.reshape(b, t * h, 1), w1.reshape(b, t * h, c), flat).relu_().view(b * t, h, -1)
        x = torch.baddbmm(b2.reshape(b * t, h, 1), w2.reshape(b * t, h, h), x).relu_()
        x = torch.baddbmm(b3.reshape(b * t, 1, 1), w3.reshape(b * t, 1, h), x)
        return x.view(b, t, *spatial)


class DuPLUSNet(nn.Module):
    """Dual-prompt 3D residual U-Net: context FiLM in encoder and decoder, target-generated head."""

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        self.config = cfg = config or NetworkConfig()
        w = cfg.widths
        self.inputs = nn.ModuleDict({m: ResBlock(1, w[0]) for m in cfg.modalities})
        self.down = nn.ModuleList([ResBlock(w[i - 1], w[i], stride=2) for i in range(1, len(w))])
        self.up = nn.ModuleList([nn.ConvTranspose3d(w[i], w[i - 1], 2, stride=2) for i in range(len(w) - 1, 0, -1)])
        self.merge = nn.ModuleList([ResBlock(2 * w[i - 1], w[i - 1]) for i in range(len(w) - 1, 0, -1)])
        self.film_enc = nn.ModuleList([FiLM(cfg.text_dim, c, cfg.film_hidden) for c in w])
        self.film_dec = nn.ModuleList([FiLM(cfg.text_dim, w[i - 1], cfg.film_hidden) for i in range(len(w) - 1, 0, -1)])
        self.head = DynamicHead(cfg.text_dim, w[-1], w[0], cfg.pred_hidden, cfg.head_channels)
        self.hint = nn.Conv3d(len(HINT_CHANNELS), w[0], 3, 1, 1, bias=False) if cfg.hints else None
        if self.hint is not None:  # at first the hints change nothing (and, without a bias, a hint of zeros never)
            nn.init.zeros_(self.hint.weight)

    def backbone(self, image: torch.Tensor, modality: str, context: torch.Tensor,
                 hint: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass for one context.

        Args:
            image: ``(B, 1, D, H, W)`` normalised intensities.
            modality: which input block to use.
            context: E_T1, ``(B, E)`` or ``(E,)``.
            hint: ``(B, 2, D, H, W)`` drawn slices (:data:`HINT_CHANNELS`), for a network with ``hints``;
                ``None``: none drawn.

        Returns:
            decoder features ``(B, widths[0], D, H, W)`` and F_dense ``(B, widths[-1])`` (pooled bottleneck,
            also the image feature the prognosis head uses).
        """
        if modality not in self.inputs:
            raise KeyError(f"this network has no input block for {modality}; it has {', '.join(self.inputs)}")
        if hint is not None and self.hint is None:
            raise ValueError("this network takes no drawn slices (its config has no hints)")
        context = context.expand(image.shape[0], -1) if context.dim() == 1 else context
        x = self.inputs[modality](image)
        if hint is not None:
            x = x + conv3d(hint, self.hint)
        x = self.film_enc[0](x, context)
        skips = [x]
        for down, film in zip(self.down, self.film_enc[1:]):
            x = film(down(x), context)
            skips.append(x)
        dense = x.mean(dim=(2, 3, 4))
        skips.pop()  # the bottleneck itself
        for up, merge, film in zip(self.up, self.merge, self.film_dec):
            x = film(merge(torch.cat([upsample2(x, up), skips.pop()], dim=1)), context)  # each skip freed once joined
        return x, dense

    def predict(self, features: torch.Tensor, dense: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, D, H, W)`` for E_T2 ``targets`` ``(T, E)`` or ``(B, T, E)``."""
        targets = targets.expand(features.shape[0], -1, -1) if targets.dim() == 2 else targets
        return self.head.apply(features, self.head.generate(targets, dense))

    def forward(self, image: torch.Tensor, modality: str, context: torch.Tensor, targets: torch.Tensor,
                hint: torch.Tensor | None = None) -> torch.Tensor:
        features, dense = self.backbone(image, modality, context, hint)
        return self.predict(features, dense, targets)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
