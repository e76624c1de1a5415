"""The LoRA layer (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685).

A frozen linear layer y = x W0^T + b is adapted by a trainable low-rank update:

    y = base(x) + s * (x A) B,    A: (in, r),  B: (r, out),  s = alpha / r

(or s = alpha / sqrt(r) with rsLoRA, Kalajdzievski 2023, arXiv:2312.03732). B starts at
zero, so an adapter begins as the identity change. With `bias=True` the update has a bias
of its own, s * b (PEFT's `lora_bias`): an adapter extracted from a full fine-tune carries
the change of the layer's bias in it. The forward pass multiplies by A and
then by B and never forms the (in x out) product A B, which costs r (in + out) per token
instead of in x out.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .settings import INITS

# With Adam, each step moves B by about the learning rate whatever A is, so the update of
# the layer, s A dB, grows with A's size. PEFT's init (kaiming) draws A with std
# 1/sqrt(3 in); the lab's (normal) with std 1, sqrt(3 in) times larger (34x for in = 384).
# LoRA at kaiming trains well up to 3e-3 (the top of the tuned profile's grid, chosen on
# TREC-6 and SST-5); the lab's init at 3e-3, like kaiming at 0.1, fell to 0.30 on TREC-6.
KAIMING_RATE_LIMIT = 5e-3


def init_scale(init: str, rank: int, in_features: int) -> float:
    """How many times larger A starts than with PEFT's init (kaiming), by its std."""
    kaiming = 1 / math.sqrt(3 * in_features)
    return {"normal": 1.0, "kaiming": kaiming, "gaussian": 1 / math.sqrt(rank)}[init] / kaiming


def rate_warning(init: str, rank: int, in_features: int, learning_rate: float) -> str | None:
    """Why `learning_rate` does not suit LoRA with `init` (a sentence), or None where it does."""
    scale = init_scale(init, rank, in_features)
    if learning_rate * scale <= KAIMING_RATE_LIMIT:
        return None
    return (f"LoRA with init {init!r} at learning rate {learning_rate:g} moves each layer about {scale:.0f} times "
            f"as fast as init 'kaiming' (PEFT's) at that rate, like kaiming at {learning_rate * scale:.2g}: such a "
            f"run can diverge (seen: 0.30 accuracy on TREC-6). Use --init kaiming, or a learning rate at most "
            f"{KAIMING_RATE_LIMIT / scale:.2g}.")


class Adapter(nn.Module):
    """A frozen `nn.Linear` (`base`) and a trainable change of it: what every adapter layer
    (LoRA and its variants here, VeRA and IA3 in `loralab.vectors`) shares. A subclass
    gives `delta_weight()` (and `delta_bias()` where it changes the bias); merge, unmerge,
    `original_weight()` and `merge_and_unload` follow from them.
    """

    kind = "adapter"  # what the layer is called in messages

    def __init__(self, pretrained: nn.Linear):
        super().__init__()
        if isinstance(pretrained, Adapter):  # checked first: an adapter layer is no nn.Linear either
            raise TypeError(f"this layer already has a {pretrained.kind} adapter; wrapping it twice would stack two "
                            "updates (merge_and_unload it first)")
        if not isinstance(pretrained, nn.Linear):
            raise TypeError(f"{self.kind} wraps nn.Linear layers, got {type(pretrained).__name__}")
        self.base = pretrained
        self.base.requires_grad_(False)
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The change of the weight in `nn.Linear` layout, (out, in), in float32."""
        raise NotImplementedError

    def delta_bias(self) -> torch.Tensor | None:
        """The change of the bias, in float32 (None: the bias is unchanged)."""
        return None

    def original_weight(self) -> torch.Tensor:
        """W0, the frozen weight without the change, in float32 (also while merged)."""
        weight = self.base.weight.detach().float()
        return weight - self.delta_weight() if self.merged else weight

    def _check_finite(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.parameters(recurse=False)):
            raise ValueError("refusing to merge: the adapter weights contain NaN or inf")

    @torch.no_grad()
    def merge(self) -> None:
        """Add the change into the base layer; harmless when already merged."""
        if self.merged:
            return
        self._check_finite()
        self._add(+1)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the change out of the base layer again; harmless when not merged."""
        if not self.merged:
            return
        self._add(-1)
        self.merged = False

    def _add(self, sign: int) -> None:
        delta_bias = self.delta_bias()
        weight = self.base.weight
        weight.copy_((weight.float() + sign * self.delta_weight()).to(weight.dtype))
        if delta_bias is not None:
            bias = self.base.bias
            bias.copy_((bias.float() + sign * delta_bias).to(bias.dtype))

    def _adapter_input(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`x` in the adapter's dtype (float32) where autocast does not cast it already."""
        if not torch.is_autocast_enabled(x.device.type) and x.dtype != like.dtype:
            return x.to(like.dtype)
        return x


class LoRA(Adapter):
    """Wrap a frozen `nn.Linear` with a trainable rank-`rank` update.

    Args:
        pretrained: the linear layer to adapt; its weight and bias are frozen, not copied.
        rank: r, the inner dimension of the update.
        alpha: scale numerator; the update is multiplied by alpha / r.
        dropout: dropout on the adapter's input (the base path sees `x` unchanged).
        init: how A starts: ``"normal"`` (the lab's: standard normal), ``"kaiming"``
            (PEFT's default: uniform with bound 1/sqrt(in)) or ``"gaussian"``
            (normal with variance 1/r). B always starts at zero.
        rslora: scale by alpha / sqrt(r) instead of alpha / r.
        bias: give the update a bias `b` of its own (zeros at first), added as s * b.
    """

    kind = "LoRA"

    def __init__(self, pretrained: nn.Linear, rank: int = 12, alpha: float = 24,
                 dropout: float = 0.0, init: str = "normal", rslora: bool = False, bias: bool = False):
        super().__init__(pretrained)
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.rank = rank
        self.alpha = alpha
        self.rslora = rslora
        self.init = init
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Adapters train in float32 even when the frozen base is stored in bfloat16.
        device = pretrained.weight.device
        self.A = nn.Parameter(torch.empty(pretrained.in_features, rank, device=device))
        self.B = nn.Parameter(torch.zeros(rank, pretrained.out_features, device=device))
        if bias and pretrained.bias is None:
            raise ValueError("bias=True needs a layer with a bias to merge into")
        self.b = nn.Parameter(torch.zeros(pretrained.out_features, device=device)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "normal":
                nn.init.normal_(self.A)
            elif self.init == "kaiming":
                # Same distribution as PEFT: kaiming_uniform_(a=sqrt(5)) of the (r, in) weight.
                nn.init.kaiming_uniform_(self.A.T, a=math.sqrt(5))
            else:
                nn.init.normal_(self.A, std=1 / math.sqrt(self.rank))
            nn.init.zeros_(self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        if self.merged:
            return y
        h = self._adapter_input(self.dropout(x), self.A)
        update = (h @ self.A) @ self.B  # (..., r) then (..., out)
        if self.b is not None:
            update = update + self.b
        return y + (self.scaling * update).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The update in `nn.Linear` layout, (out, in): s * (A B)^T, in float32."""
        return self.scaling * (self.A.detach().float() @ self.B.detach().float()).T

    def delta_bias(self) -> torch.Tensor | None:
        """The update's bias, s * b, in float32 (None without `bias`)."""
        return None if self.b is None else self.scaling * self.b.detach().float()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, init={self.init!r}, rslora={self.rslora}, bias={self.b is not None}, "
                f"merged={self.merged}")




class DoRA(LoRA):
    """Weight-decomposed LoRA (Liu et al. 2024, "DoRA", arXiv:2402.09353): the adapted weight
    is a learned magnitude per output row times the direction of the LoRA-updated weight,

        W' = m * (W0 + s (A B)^T) / ||W0 + s (A B)^T||_c,

    with m (out,) trainable, starting at the rows' norms of W0 (so W' = W0 at first, as B
    starts at zero), and the norm treated as a constant: computed without a gradient, as the
    paper's section 4.3 says (PEFT does the same). The forward pass never forms the
    (out x in) matrix W0 + s (A B)^T: its row norms come from ||W0||^2 (fixed),
    2 s <W0, (A B)^T> = 2 s rowsum((W0 A) * B^T) and s^2 rowsum((B^T A^T A) * B^T), an
    (out x r) product per step, and the output is m / ||.|| * (x W0^T + s (x A) B) + bias.
    Parameters: LoRA's plus `out_features`. Merging writes W' into the base layer and keeps
    the norms it used, so that unmerging restores W0.
    """

    def __init__(self, pretrained: nn.Linear, rank: int = 12, alpha: float = 24, dropout: float = 0.0,
                 init: str = "normal", rslora: bool = False, bias: bool = False):
        if bias:
            raise ValueError("DoRA takes no bias of its own (PEFT's DoRA has none)")
        super().__init__(pretrained, rank, alpha, dropout, init, rslora, bias=False)
        with torch.no_grad():
            weight = pretrained.weight.float()
            self.register_buffer("base_norm_sq", weight.square().sum(1), persistent=False)  # ||W0||^2 per row
            self.magnitude = nn.Parameter(weight.norm(dim=1))                                   # m, (out,)
        self.register_buffer("merged_norm", torch.zeros_like(self.magnitude), persistent=False)

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """||W0 + s (A B)^T|| of each output row, in float32, without a gradient and without
        forming the (out x in) matrix."""
        a, b = self.A.float(), self.B.float()                     # (in, r), (r, out)
        cross = ((self.original_weight() @ a) * b.T).sum(1)      # <W0_i, (A B)^T_i>
        lowrank_sq = ((b.T @ (a.T @ a)) * b.T).sum(1)            # ||(A B)^T_i||^2
        s = self.scaling
        return (self.base_norm_sq + 2 * s * cross + s * s * lowrank_sq).clamp_min(0).sqrt()

    def original_weight(self) -> torch.Tensor:
        """W0 in float32, also while merged (recovered from the merged weight)."""
        weight = self.base.weight.float()
        if not self.merged:
            return weight
        return weight * (self.merged_norm / self.magnitude.detach().float())[:, None] - super().delta_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        y = nn.functional.linear(x, self.base.weight)            # x W0^T, no bias
        h = self._adapter_input(self.dropout(x), self.A)
        update = self.scaling * ((h @ self.A) @ self.B)
        scale = self.magnitude / self.weight_norm()              # the gradient reaches m, not the norm
        out = scale * (y + update)
        if self.base.bias is not None:
            out = out + self.base.bias
        return out.to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """W' - W0 in `nn.Linear` layout (out, in), float32: full rank, as DoRA's change is."""
        with torch.no_grad():
            w0 = self.original_weight()
            norm = self.merged_norm if self.merged else self.weight_norm()
            adapted = w0 + super().delta_weight()
            return adapted * (self.magnitude.detach().float() / norm)[:, None] - w0

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        self._check_finite()
        norm = self.weight_norm()
        weight = self.base.weight
        adapted = (weight.float() + super().delta_weight()) * (self.magnitude.float() / norm)[:, None]
        weight.copy_(adapted.to(weight.dtype))
        self.merged_norm.copy_(norm)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        weight = self.base.weight
        weight.copy_(self.original_weight().to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"


class PiSSA(LoRA):
    """Principal singular values and vectors adaptation (Meng et al. 2024, "PiSSA",
    arXiv:2404.02948): LoRA whose A and B start as the top-`rank` singular directions of W0,
    s (A B)^T = U_r S_r V_r^T, with the frozen base holding the residual W0 - s (A B)^T, so the
    layer starts as W0 and trains its principal part. A and B are split from the singular
    values as PEFT does (sqrt(S_r / s) on each side), so the same W0 gives the same start.

    The starting factors are kept (`A0`, `B0`): the trained layer is W0 + s (A B - A0 B0)^T,
    which `saved_factors` writes as a rank-2r LoRA adapter of the *unchanged* base
    ([A, A0] and [B; -B0], PEFT's conversion), so several PiSSA adapters share one base
    model; it costs twice the rank's storage, and loads as plain LoRA.
    """

    def __init__(self, pretrained: nn.Linear, rank: int = 12, alpha: float = 24, dropout: float = 0.0,
                 init: str = "normal", rslora: bool = False, bias: bool = False):
        if bias:
            raise ValueError("PiSSA takes no bias of its own")
        super().__init__(pretrained, rank, alpha, dropout, "kaiming", rslora, bias=False)
        self.init = "pissa"
        with torch.no_grad():
            weight = pretrained.weight.float()
            w0_bf16 = weight.to(torch.bfloat16)  # a copy: `weight` may be the layer's own tensor, changed below
            u, s, vh = torch.linalg.svd(weight, full_matrices=False)  # weight = u diag(s) vh
            root = (s[:rank] / self.scaling).sqrt()
            self.A.copy_((root[:, None] * vh[:rank]).T)              # (in, r)
            self.B.copy_((u[:, :rank] * root).T)                      # (r, out)
            pretrained.weight.copy_((weight - self.scaling * (self.A @ self.B).T).to(pretrained.weight.dtype))
        self.register_buffer("A0", self.A.detach().clone())
        self.register_buffer("B0", self.B.detach().clone())
        # W0 as `adapters.base_fingerprint` rounds it: the residual plus A0 B0 differs from W0
        # by float32 round-off, which flips a few of a large layer's bfloat16 values (about 4
        # of all-MiniLM-L6-v2's 147k per 384 x 384 layer), so that an adapter saved from it
        # named another base model and failed to load.
        self.register_buffer("w0_bf16", w0_bf16, persistent=False)

    def reset_parameters(self) -> None:  # the SVD sets A and B in __init__; nothing to draw
        if hasattr(self, "A0"):
            with torch.no_grad():
                self.A.copy_(self.A0)
                self.B.copy_(self.B0)

    def original_weight(self) -> torch.Tensor:
        """W0, the weight before PiSSA took its principal part out, in float32."""
        residual = self.base.weight.float() - (super().delta_weight() if self.merged else 0)
        return residual + self.scaling * (self.A0.float() @ self.B0.float()).T

    def saved_factors(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A', B', alpha') of the rank-2r LoRA of the unchanged base that this layer equals:
        W0 + s' (A' B')^T with A' = [A, A0], B' = [B; -B0] and s' = s."""
        a = torch.cat([self.A.detach(), self.A0], dim=1)
        b = torch.cat([self.B.detach(), -self.B0], dim=0)
        alpha = self.scaling * (math.sqrt(2 * self.rank) if self.rslora else 2 * self.rank)
        return a, b, alpha

    def extra_repr(self) -> str:
        return super().extra_repr() + ", pissa=True"
