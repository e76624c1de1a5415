"""What the classification head reads: the first token, or the mean of the real tokens.

Sequence-classification models feed their head the first token's hidden state (``cls``).
Sentence-embedding models such as all-MiniLM-L6-v2 were trained to be read by the mean
of their token states, and their first token alone is a weaker summary of a review.
``set_pooling(model, "mean")`` makes the model's own head read the mean of the
non-padding tokens' last hidden states instead. The head keeps its modules, weights and
names, so adapters, checkpoints and head-tuning work unchanged.

The choice is stored in the model's config as ``loralab_pooling`` (and in an adapter's
metadata), and `loralab.models.load_model` applies it again. A plain transformers model
cannot express it: `loralab export` refuses mean-pooled models instead of writing one that
predicts differently.

    >>> set_pooling(model, "mean")  # doctest: +SKIP
    >>> pooling_of(model)  # doctest: +SKIP
    'mean'
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import LoralabError
from .settings import POOLINGS

CONFIG_KEY = "loralab_pooling"


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the sequence of `hidden` (batch, tokens, dim), counting only tokens whose
    `mask` is 1 (all tokens when `mask` is None)."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask[:, : hidden.shape[1]].unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class _MeanPooling:
    """Forward hooks: within a forward pass of the whole model, the encoder's attention mask
    and output are recorded, and the first head module is handed their masked mean in
    place of the first token. The encoder or the head called on its own (head-tuning
    encodes the data once, then trains the head on the features) is left alone."""

    def __init__(self, head_reads_sequence: bool | None):
        self.head_reads_sequence = head_reads_sequence  # None: a family not in loralab.arch, told by shape
        self.mask = None
        self.hidden = None
        self.inside = False  # within the whole model's forward
        self.done = False    # the head was handed the mean in this forward already

    def enter_model(self, module, args):
        self.inside, self.done, self.mask, self.hidden = True, False, None, None

    def leave_model(self, module, args, output):
        self.inside, self.mask, self.hidden = False, None, None

    def before_encoder(self, module, args, kwargs):
        if not self.inside:
            return
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]
        self.mask = mask

    def after_encoder(self, module, args, kwargs, output):
        if self.inside:
            self.hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    def before_head(self, module, args):
        if not self.inside or self.done:  # the head called on its own (head-tuning on cached features)
            return None
        (first, *rest) = args
        reads_sequence = first.dim() == 3 if self.head_reads_sequence is None else self.head_reads_sequence
        if reads_sequence:  # the head takes [:, 0] itself (BERT's pooler, RoBERTa's head)
            pooled = masked_mean(first, self.mask).unsqueeze(1)
        elif self.hidden is not None:  # the model took [:, 0] before the head (DistilBERT): pool its output
            pooled = masked_mean(self.hidden, self.mask).to(first.dtype)
        else:
            return None
        self.done = True
        return (pooled, *rest)


def pooling_of(model: nn.Module) -> str:
    """``"mean"`` or ``"cls"``: what the model's head reads."""
    return getattr(model.config, CONFIG_KEY, None) or "cls"


def set_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Make the head of `model` read the first token (``"cls"``) or the masked mean of the
    tokens (``"mean"``). Changes the model in place and returns it."""
    from .arch import ARCHITECTURES, model_type
    from .surgery import head_modules

    if pooling not in POOLINGS:
        raise LoralabError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    for handle in getattr(model, "_loralab_pooling_hooks", ()):
        handle.remove()
    model._loralab_pooling_hooks = []
    if pooling != "cls" or hasattr(model.config, CONFIG_KEY):
        model.config.update({CONFIG_KEY: pooling})
    if pooling == "cls":
        return model
    encoder = getattr(model, model.base_model_prefix)
    head = model.get_submodule(head_modules(model)[0])
    kind = model_type(model)
    state = _MeanPooling(ARCHITECTURES[kind].head_reads_sequence if kind in ARCHITECTURES else None)
    model._loralab_pooling_hooks = [
        model.register_forward_pre_hook(state.enter_model),
        model.register_forward_hook(state.leave_model),
        encoder.register_forward_pre_hook(state.before_encoder, with_kwargs=True),
        encoder.register_forward_hook(state.after_encoder, with_kwargs=True),
        head.register_forward_pre_hook(state.before_head),
    ]
    return model
