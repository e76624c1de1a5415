"""Dropout with a cheaper random mask, for training on CPUs.

PyTorch's CPU dropout draws one random float per element (`bernoulli_`); on attention
probabilities of shape (batch, heads, seq, seq) that alone took about half of a LoRA
training step of the default model here. This dropout draws one random *byte* per element
(four per 32-bit integer from the same generator, so `torch.manual_seed` still fixes it)
and keeps an element when its byte is at or above round(256 p). The drop probability is
therefore p rounded to a multiple of 1/256 (0.1 becomes 26/256 = 0.1016); survivors are
scaled by 1 / (1 - p_rounded), so the expectation is unchanged, as in `nn.Dropout`.

`fast_dropout_enabled(model)` swaps a model's `nn.Dropout` modules for `FastDropout` and
routes its attention through `attention`, which applies this dropout to the attention
probabilities while training and uses `scaled_dot_product_attention` otherwise.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

ATTENTION_NAME = "loralab_fast_dropout"


def drop_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of the elements to drop, with probability p rounded to 1/256, and
    the scale 1 / (1 - p_rounded) for the survivors."""
    threshold = min(255, max(1, round(p * 256)))
    n = 1
    for size in shape:
        n *= size
    words = torch.randint(-2**31, 2**31 - 1, ((n + 3) // 4,), dtype=torch.int32, device=device)
    bytes_ = words.view(torch.uint8)[:n].view(shape)  # one random byte per element
    return bytes_ < threshold, 256 / (256 - threshold)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True, scale: bool = True) -> torch.Tensor:
    """Dropout of `x`; with `scale=False` the survivors are not rescaled (the caller
    multiplies by `1 / (1 - p_rounded)` later, where it is cheaper)."""
    if not training or p <= 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    drop, factor = drop_mask(x.shape, p, x.device)
    out = x.masked_fill(drop, 0)
    return out * factor if scale else out


def survivor_scale(p: float) -> float:
    threshold = min(255, max(1, round(p * 256)))
    return 256 / (256 - threshold)


class FastDropout(nn.Module):
    """Drop-in for `nn.Dropout` with a byte-resolution mask (see the module docstring)."""

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
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """Attention for `ALL_ATTENTION_FUNCTIONS`: fused SDPA without dropout, else the
    eager computation with `fast_dropout` on the probabilities.

    The eager path touches the (batch, heads, q, k) scores as few times as it can, since
    those passes, not the matrix products, are most of a training step on a CPU: the
    queries are scaled instead of the scores, the mask is added (its backward is free,
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
            scores = scores + additive_mask(attention_mask, scores.dtype)
        probs = fast_dropout(torch.softmax(scores, dim=-1), dropout, scale=False)
        out = torch.matmul(probs, value) * survivor_scale(dropout)  # (batch, heads, q, d)
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
    except (ImportError, AttributeError, ValueError):  # older transformers: dropout modules only
        pass
    try:
        yield model
    finally:
        _swap(model, FastDropout, nn.Dropout)
        if switched and previous:
            model.set_attn_implementation(previous)
