"""Dropout with a cheaper random mask, for training on CPUs.

PyTorch's CPU dropout draws one random float per element (`bernoulli_`); on attention
probabilities of shape (batch, heads, seq, seq) that alone took about half of a LoRA
training step of the default model here. This dropout draws one random 16-bit integer per
element (four per 64-bit integer from the same generator, so `torch.manual_seed` still
fixes it) and keeps an element when it is at or above round(65536 p). The drop
probability is therefore p to within 1/131072 (0.1 stays 0.1000, an error of 6e-6,
where a byte per element made it 0.1016); survivors are scaled by 1 / (1 - p), as in
`nn.Dropout`.

Each step is the cheapest form measured on this CPU: 64-bit words over their full range
(no modulo per draw, 5x faster than 32-bit words in a range), the keep mask compared into
bytes of 0 and 1 and multiplied (a boolean mask and `masked_fill` were each several times
slower than a multiplication), and only that byte mask kept for the backward pass. The
16-bit draws cost about 4% of a LoRA training step over the earlier byte draws (MiniLM,
8 x 256 tokens, float32, 2 cores of an AMD EPYC without native bfloat16).

`fast_dropout_enabled(model)` swaps a model's `nn.Dropout` modules for `FastDropout` and
routes its attention through `attention`, which applies this dropout to the attention
probabilities while training and uses `scaled_dot_product_attention` otherwise. Where a
transformers version does not let it route the attention, it says so in the log and
leaves the attention's own dropout in place.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

logger = logging.getLogger("loralab")

ATTENTION_NAME = "loralab_fast_dropout"


LEVELS = 65536  # the random numbers are 16-bit: p is kept to within 1 / (2 * LEVELS)


def threshold_of(p: float) -> int:
    """The signed 16-bit value below which an element is dropped: round(65536 p) - 32768."""
    return min(LEVELS - 1, max(1, round(p * LEVELS))) - LEVELS // 2


def drop_probability(p: float) -> float:
    """The probability `fast_dropout` actually drops with: p to within 1/131072."""
    return (threshold_of(p) + LEVELS // 2) / LEVELS


def survivor_scale(p: float) -> float:
    """1 / (1 - p_dropped): what the survivors of `fast_dropout` are multiplied by."""
    return 1 / (1 - drop_probability(p))


def random_halves(shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Uniform random signed 16-bit integers of `shape`, four from each 64-bit draw of
    torch's generator."""
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)  # full range
    return words.view(torch.int16)[:n].view(shape)


def keep_mask(numbers: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
    """1 where an element survives dropout with probability p (its random number is at or
    above the threshold), 0 where it is dropped, in `dtype`."""
    return torch.ge(numbers, threshold_of(p), out=torch.empty(numbers.shape, dtype=dtype, device=numbers.device))


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """The mask `fast_dropout` draws next (True where dropped) and the survivors' scale."""
    return keep_mask(random_halves(shape, device), p, torch.uint8) == 0, survivor_scale(p)


class _MaskedDropout(torch.autograd.Function):
    """x * keep * scale, keeping the keep mask as one byte per element for the backward
    pass (as little as a boolean mask), which applies it to the gradient."""

    @staticmethod
    def forward(ctx, x, p: float, scale: float):
        keep = keep_mask(random_halves(x.shape, x.device), p, torch.uint8)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        out = x * keep  # uint8 times x's dtype: x's dtype, no cast of the mask first
        return out.mul_(scale) if scale != 1 else out

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        out = grad * keep
        return (out.mul_(ctx.scale) if ctx.scale != 1 else out), None, None


class _DroppedMatmul(torch.autograd.Function):
    """(probs * keep) @ value, keep a fresh dropout mask (survivors not rescaled), without
    keeping the dropped probabilities for the backward pass: it keeps `probs` (which the
    softmax before it keeps anyway, the same tensor) and the one-byte mask, and multiplies
    them again there. Per layer that is one (batch, heads, q, k) tensor less of the
    activations a step holds: 576 of 1,715 MB for the default model on 8 x 512 tokens."""

    @staticmethod
    def forward(ctx, probs, value, p: float):
        keep = keep_mask(random_halves(probs.shape, probs.device), p, torch.uint8)
        ctx.save_for_backward(probs, keep, value)
        return torch.matmul(probs * keep, value)

    @staticmethod
    def backward(ctx, grad):
        probs, keep, value = ctx.saved_tensors
        grad_probs = torch.matmul(grad, value.transpose(-1, -2)).mul_(keep) if ctx.needs_input_grad[0] else None
        grad_value = torch.matmul((probs * keep).transpose(-1, -2), grad) if ctx.needs_input_grad[1] else None
        return grad_probs, grad_value, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True, scale: bool = True) -> torch.Tensor:
    """Dropout of `x`; with `scale=False` the survivors are not rescaled (the caller
    multiplies by `survivor_scale(p)` later, where it is cheaper)."""
    if not training or p <= 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    return _MaskedDropout.apply(x, p, survivor_scale(p) if scale else 1.0)


class FastDropout(nn.Module):
    """Drop-in for `nn.Dropout` with a cheaper mask (see the module docstring)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An attention mask as a float to add to the scores: 0 where attended, the dtype's
    lowest value where not (a boolean mask is True where attended)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    # Through uint8 and arithmetic: boolean kernels are several times slower on CPUs.
    return (mask.view(torch.uint8).to(dtype) - 1).mul_(-torch.finfo(dtype).min)


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """Attention for `ALL_ATTENTION_FUNCTIONS`: fused SDPA without dropout, else the
    eager computation with `fast_dropout` on the probabilities.

    The eager path touches the (batch, heads, q, k) scores as few times as it can, since
    those passes, not the matrix products, are most of a training step on a CPU: the
    queries are scaled instead of the scores, the mask is added in place (its backward is free,
    where `masked_fill`'s is another pass), the softmax runs in the inputs' dtype
    (bfloat16 under autocast, no casts), and the survivors of dropout are rescaled in the
    (q x d) output.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout <= 0 or not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=0.0, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    with torch.autocast(query.device.type, enabled=False):
        key, value = key.to(query.dtype), value.to(query.dtype)
        scores = torch.matmul(query * scaling, key.transpose(2, 3))  # (batch, heads, q, k)
        if attention_mask is not None:
            scores.add_(additive_mask(attention_mask, scores.dtype))  # the product's backward needs no scores
        probs = torch.softmax(scores, dim=-1)
        out = _DroppedMatmul.apply(probs, value, dropout) * survivor_scale(dropout)  # (batch, heads, q, d)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def _swap(model: nn.Module, old: type, new: type) -> None:
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is old:
                setattr(module, child_name, new(child.p).train(child.training))


@contextmanager
def fast_dropout_enabled(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, `model` uses `FastDropout` and `attention`; afterwards its own
    `nn.Dropout` modules and attention come back, so what is saved is a plain model."""
    if not enabled:
        yield model
        return
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    _swap(model, nn.Dropout, FastDropout)
    switched = False
    try:
        register_attention()
        model.set_attn_implementation(ATTENTION_NAME)
        switched = True
    except (ImportError, AttributeError, ValueError) as err:  # older transformers: dropout modules only
        logger.warning("fast dropout: could not route %s's attention through loralab's (%s: %s); its attention "
                       "dropout stays PyTorch's, its other dropout layers use the fast mask.",
                       type(model).__name__, type(err).__name__, err)
    try:
        yield model
    finally:
        _swap(model, FastDropout, nn.Dropout)
        if switched and previous:
            model.set_attn_implementation(previous)
