"""Adapters that train vectors, not matrices: VeRA and IA3, beside `loralab.lora`.

VeRA (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation",
arXiv:2310.11454) freezes one pair of random matrices shared by every adapted layer and
trains two scaling vectors per layer:

    y = base(x) + b * (B (d * (A x))),   A: (r, in),  B: (out, r)  frozen and shared,
                                         d: (r,) from 0.1,  b: (out,) from 0

so a layer costs out + r parameters (LoRA r = 1 costs in + out). A and B are drawn
kaiming-uniform from `torch.Generator().manual_seed(seed)` at the largest shape among the
adapted layers and sliced per layer, as PEFT draws them, and saved with the adapter.

IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", arXiv:2205.05638) learns one vector per layer that rescales the
keys and values (the layer's output: y = l * base(x)) and the feed-forward block's hidden
activations (the input of its second layer: y = base(l * x)), starting at ones.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .lora import Adapter

D_INITIAL = 0.1  # VeRA's d starts here (the paper's and PEFT's default; b starts at zero)


def vera_projections(rank: int, in_features: int, out_features: int,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """VeRA's shared A (rank, in) and B (out, rank): kaiming-uniform, bound sqrt(6 / fan_in),
    A drawn first, both from `torch.Generator().manual_seed(seed)` (PEFT's draw for its
    `projection_prng_key`, so the same seed gives the same matrices)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(shape: tuple[int, int]) -> torch.Tensor:
        bound = math.sqrt(6 / shape[1])  # fan_in of a (rows, cols) weight is cols
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)

    a = draw((rank, in_features))
    return a, draw((out_features, rank))


class VeRA(Adapter):
    """Wrap a frozen `nn.Linear` with VeRA's update b * B diag(d) A, A and B frozen.

    Args:
        pretrained: the linear layer to adapt (frozen, not copied).
        projection_a: the shared A, (r, in_max), at least this layer's `in_features` wide.
        projection_b: the shared B, (out_max, r). The tensors are kept, not copied: every
            layer of a model refers to the same pair.
        dropout: dropout on the adapter's input.
        d_initial: d's starting value (b starts at zero, so the layer starts as `pretrained`).
        projection_seed: the seed A and B were drawn from (`vera_projections`), kept so the
            adapter's config can say it (PEFT's `projection_prng_key`).
    """

    kind = "VeRA"

    def __init__(self, pretrained: nn.Linear, projection_a: torch.Tensor, projection_b: torch.Tensor,
                 dropout: float = 0.0, d_initial: float = D_INITIAL, projection_seed: int = 0):
        super().__init__(pretrained)
        rank = projection_a.shape[0]
        if projection_b.shape[1] != rank:
            raise ValueError(f"VeRA's A has rank {rank} but B has {projection_b.shape[1]}")
        if projection_a.shape[1] < self.in_features or projection_b.shape[0] < self.out_features:
            raise ValueError(f"VeRA's shared A {tuple(projection_a.shape)} and B {tuple(projection_b.shape)} are "
                             f"too small for a layer of {self.in_features} -> {self.out_features}")
        self.rank = rank
        self.d_initial = d_initial
        self.projection_seed = projection_seed  # what A and B were drawn from (PEFT's projection_prng_key)
        device = pretrained.weight.device
        self.register_buffer("A", projection_a.to(device), persistent=False)  # (r, in_max), shared
        self.register_buffer("B", projection_b.to(device), persistent=False)  # (out_max, r), shared
        self.lambda_d = nn.Parameter(torch.full((rank,), float(d_initial), device=device))
        self.lambda_b = nn.Parameter(torch.zeros(self.out_features, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = self._adapter_input(self.dropout(x), self.lambda_d)
        a, b = self.A[:, :self.in_features], self.B[:self.out_features]
        update = self.lambda_b * F.linear(self.lambda_d * F.linear(h, a), b)  # (..., r) then (..., out)
        return y + update.to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """b * B diag(d) A in `nn.Linear` layout (out, in), float32."""
        a, b = self.A[:, :self.in_features].float(), self.B[:self.out_features].float()
        d, scale = self.lambda_d.detach().float(), self.lambda_b.detach().float()
        return (scale[:, None] * b) @ (d[:, None] * a)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, merged={self.merged}"


class IA3(Adapter):
    """Wrap a frozen `nn.Linear` with IA3's learned rescaling, of its output (keys, values)
    or, with `feedforward`, of its input (a feed-forward block's second layer).

    Merging multiplies the weight's rows (output) or columns (input) by the vector, and the
    bias too for an output; unmerging divides, exact up to round-off while no entry is
    near zero (PEFT's unmerge divides too)."""

    kind = "IA3"

    def __init__(self, pretrained: nn.Linear, feedforward: bool = False):
        super().__init__(pretrained)
        self.feedforward = feedforward
        size = self.in_features if feedforward else self.out_features
        self.scale = nn.Parameter(torch.ones(size, device=pretrained.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.feedforward:
            return self.base((x * self.scale).to(x.dtype))
        y = self.base(x)
        return (y * self.scale).to(y.dtype)

    def _factor(self) -> torch.Tensor:
        """The vector shaped to multiply the (out, in) weight."""
        scale = self.scale.detach().float()
        return scale[None, :] if self.feedforward else scale[:, None]

    def delta_weight(self) -> torch.Tensor:
        """W' - W0 in `nn.Linear` layout (out, in), float32: W0 (l - 1) along rows or columns."""
        weight = self.base.weight.detach().float()
        if self.merged:  # W' = W0 l, so W' - W0 = W' (1 - 1 / l)
            return weight * (1 - 1 / self._factor())
        return weight * (self._factor() - 1)

    def delta_bias(self) -> torch.Tensor | None:
        if self.feedforward or self.base.bias is None:
            return None
        bias = self.base.bias.detach().float()
        scale = self.scale.detach().float()
        return bias * (1 - 1 / scale) if self.merged else bias * (scale - 1)

    def _add(self, sign: int) -> None:
        factor = self._factor() if sign > 0 else 1 / self._factor()
        weight = self.base.weight
        weight.copy_((weight.float() * factor).to(weight.dtype))
        if not self.feedforward and self.base.bias is not None:
            bias = self.base.bias
            bias.copy_((bias.float() * factor[:, 0]).to(bias.dtype))

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, feedforward={self.feedforward}, "
                f"merged={self.merged}")
