"""What loralab knows about each model family, in one table: adding a family is one entry.

Every feature reads these facts: LoRA's default targets (`surgery.inject_lora`,
`surgery.extract`), the classification head that head-tuning and LoRA train
(`surgery.freeze_all_but_head`), the head applied to cached encoder features
(head-tuning, `head.train_head`) with its dropout, and where mean pooling hands the
head its input (`pooling.set_pooling`).

| model type         | default targets          | head modules              | head reads      |
|--------------------|--------------------------|---------------------------|-----------------|
| distilbert         | q_lin, v_lin             | pre_classifier, classifier| first token     |
| bert (MiniLM)      | query, value             | bert.pooler, classifier   | the sequence    |
| roberta, xlm-roberta, electra | query, value  | classifier                | the sequence    |
| deberta-v2         | query_proj, value_proj   | pooler, classifier        | the sequence    |
| deberta            | in_proj                  | pooler, classifier        | the sequence    |

IA3's defaults (`ia3`): the key and value projections, whose outputs it rescales, and the
feed-forward block's second layer, whose input (the block's hidden activations) it
rescales: bert and its kin `key, value` and `output.dense` outside the attention block
(PEFT's defaults name `output.dense` and so also rescale the attention's output
projection), distilbert `k_lin, v_lin` and `lin2`; deberta has none (its `in_proj` holds
query, key and value in one layer).

"Reads the sequence": the first head module takes (batch, seq, hidden) and picks the first
token itself; otherwise the model picks it before the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import LoralabError

# A head applied to the encoder's features (batch, hidden), with a dropout module of the
# model's classifier-dropout probability: returns logits (batch, num_labels).
HeadForward = Callable[[nn.Module, torch.Tensor, nn.Module], torch.Tensor]


def _distilbert_head(model, features, dropout):
    h = nn.functional.relu(model.pre_classifier(features))  # (batch, dim)
    return model.classifier(dropout(h))


def _bert_head(model, features, dropout):
    pooled = model.bert.pooler.activation(model.bert.pooler.dense(features))  # (batch, hidden)
    return model.classifier(dropout(pooled))


def _sequence_head(model, features, dropout):
    return model.classifier(features.unsqueeze(1))  # the head takes [:, 0] and has its own dropout


def _deberta_head(model, features, dropout):
    pooled = model.pooler(features.unsqueeze(1))  # ContextPooler takes [:, 0] itself
    return model.classifier(dropout(pooled))


@dataclass(frozen=True)
class Architecture:
    """The facts of one model family (see the module docstring)."""

    targets: tuple[str, ...]           # LoRA's default targets: the query and value projections
    head: tuple[str, ...]              # the classification head's modules, in forward order
    head_forward: HeadForward          # the head on cached features (head-tuning)
    dropout_keys: tuple[str, ...] = ()  # config attributes of the head's dropout, the first set wins
    head_reads_sequence: bool = True   # the first head module takes (batch, seq, hidden)
    ia3: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # IA3's (outputs scaled, inputs scaled)
    # Blocks whose layers are no feed-forward layer for IA3, though their names match one
    # (BERT's attention.output.dense ends in output.dense, as the feed-forward's second layer does).
    ia3_not_inside: tuple[str, ...] = ()

    def ia3_feedforward(self, names) -> list[str]:
        """Of `names` (layers matching `ia3`'s second part), the feed-forward ones."""
        return [n for n in names if not any(f".{block}." in f".{n}." for block in self.ia3_not_inside)]


_BERT_IA3 = {"ia3": (("key", "value"), ("output.dense",)), "ia3_not_inside": ("attention",)}

ARCHITECTURES: dict[str, Architecture] = {
    "distilbert": Architecture(("q_lin", "v_lin"), ("pre_classifier", "classifier"), _distilbert_head,
                               ("seq_classif_dropout",), head_reads_sequence=False,
                               ia3=(("k_lin", "v_lin"), ("lin2",))),
    "bert": Architecture(("query", "value"), ("bert.pooler", "classifier"), _bert_head,
                         ("classifier_dropout", "hidden_dropout_prob"), **_BERT_IA3),
    "roberta": Architecture(("query", "value"), ("classifier",), _sequence_head, **_BERT_IA3),
    "xlm-roberta": Architecture(("query", "value"), ("classifier",), _sequence_head, **_BERT_IA3),
    "electra": Architecture(("query", "value"), ("classifier",), _sequence_head, **_BERT_IA3),
    "deberta-v2": Architecture(("query_proj", "value_proj"), ("pooler", "classifier"), _deberta_head,
                               ("cls_dropout", "hidden_dropout_prob"), ia3=(("key_proj", "value_proj"),
                                                                             ("output.dense",)),
                               ia3_not_inside=("attention",)),
    "deberta": Architecture(("in_proj",), ("pooler", "classifier"), _deberta_head,
                            ("cls_dropout", "hidden_dropout_prob")),
}

# Heads of families not in the table: the usual names of sequence-classification heads.
USUAL_HEADS = ("pre_classifier", "pooler", "classifier", "score")


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") or ""


def architecture(model: nn.Module, what: str) -> Architecture:
    """The table entry of `model`'s family; `what` names the feature that needs it."""
    kind = model_type(model)
    if kind not in ARCHITECTURES:
        raise LoralabError(f"{what} is not known for {kind or type(model).__name__!r} models (known: "
                           f"{', '.join(ARCHITECTURES)}); add an entry to loralab.arch.ARCHITECTURES.")
    return ARCHITECTURES[kind]


def head_dropout(model: nn.Module) -> nn.Module:
    """A dropout of the probability the model's classification head uses."""
    for key in architecture(model, "Head-tuning on cached features").dropout_keys:
        p = getattr(model.config, key, None)
        if p is not None:
            return nn.Dropout(p)
    return nn.Identity()
