"""Head-tuning on cached features: the frozen encoder runs once over every review, and the
classification head trains on what it hands the head, with the same optimiser, schedule,
batch size and epochs as every other method (`train_head`). Also what the encoder hands
the head (`encode_features`), which the replace test and the lab's checks read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .adapters import class_names
from .arch import architecture, head_dropout
from .fileio import write_json
from .inference import map_batches, pair_token_types, resolve_precision
from .measure import PeakMemory
from .metrics import EvalMetrics, class_weights
from .models import pick_device
from .pooling import masked_mean, pooling_of
from .settings import TrainSettings
from .surgery import head_modules
from .training import TrainResult, _quiet_trainer, _training_arguments, epoch_history


class HeadOnFeatures(nn.Module):
    """The model's own classification head, fed the frozen encoder's cached features.

    The head modules are shared with the model, so training this trains the model's head.
    """

    def __init__(self, model: nn.Module, weights: torch.Tensor | None = None):
        super().__init__()
        self.arch = architecture(model, "Head-tuning on cached features")
        self.weights = weights  # the classes' loss weights (None: plain cross-entropy)
        self.heads = nn.ModuleDict({n.replace(".", "_"): model.get_submodule(n) for n in head_modules(model)})
        self.model = [model]  # a list keeps it out of this module's parameters
        self.dropout = head_dropout(model)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.arch.head_forward(self.model[0], features, self.dropout)
        if labels is None:
            loss = None
        elif logits.shape[-1] == 1:  # a regression head: the model's own mean squared error
            loss = nn.functional.mse_loss(logits.float().squeeze(-1), labels.float())
        else:
            loss = nn.functional.cross_entropy(logits.float(), labels, weight=self.weights)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def head_forward(model: nn.Module, features: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
    """The head of a sequence-classification model applied to first-token features."""
    return architecture(model, "Head-tuning on cached features").head_forward(model, features, dropout)


def encoder(model: nn.Module) -> nn.Module:
    return getattr(model, model.base_model_prefix)


def encode_features(model: nn.Module, ds, tokenizer, settings: TrainSettings, desc: str) -> np.ndarray:
    """What the frozen encoder hands the head for every row, in row order: the first
    token's hidden state, or the masked mean of all tokens' for a mean-pooled model."""
    if pooling_of(model) == "mean":
        def features(batch):
            return masked_mean(encoder(model)(**batch).last_hidden_state, batch.get("attention_mask"))
    else:
        def features(batch):
            return encoder(model)(**batch).last_hidden_state[:, 0]  # (batch, hidden)
    return map_batches(model, ds["input_ids"], tokenizer, settings, desc, model.config.hidden_size, features,
                       pair_token_types(ds))


def head_features(model: nn.Module, tokenized, settings: TrainSettings, tokenizer):
    """The frozen encoder's features (what it hands the head) and the labels of the
    `train` and `eval` splits, as a torch-formatted DatasetDict, computed once."""
    import datasets

    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({
            "features": encode_features(model, tokenized[split], tokenizer, settings, f"Encoding {split}"),
            "labels": np.asarray(tokenized[split]["label"]),  # class numbers, or a regression's float targets
        }).with_format("torch")
        for split in ("train", "eval")
    })


def train_head(model: nn.Module, tokenized, settings: TrainSettings, out_dir: str | os.PathLike,
               tokenizer, features=None, callbacks: tuple = ()) -> TrainResult:
    """Head-tuning: features of the frozen encoder computed once (or passed in as
    `features`, from `head_features`), then the head trained on them with the same
    optimiser, schedule, batch size and epochs as every other method."""
    from transformers import Trainer, default_data_collator

    out_dir = Path(out_dir)
    device = pick_device(settings.device)
    with PeakMemory(device) as mem:
        cached = features if features is not None else head_features(model, tokenized, settings, tokenizer)
        head = HeadOnFeatures(model, class_weights(tokenized["train"]["label"], model.config.num_labels,
                                                  settings.class_weights))
        # The head is tiny: float32 is as fast as bfloat16 here and needs no autocast.
        args = _training_arguments(settings.replace(group_by_length=False, compile=False), out_dir, device, "fp32",
                                   save_strategy="no")
        metrics = EvalMetrics()
        trainer = Trainer(model=head, args=args, train_dataset=cached["train"], eval_dataset=cached["eval"],
                          data_collator=default_data_collator, compute_metrics=metrics, callbacks=list(callbacks))
        _quiet_trainer(trainer, settings)
        trainer.train()
    history = epoch_history(trainer.state.log_history)
    if trainer.is_world_process_zero():
        write_json(out_dir / "train_log.json", trainer.state.log_history)
    model.eval()
    return TrainResult(metrics.final(class_names(model)), train_seconds=mem.seconds, peak_memory_mb=mem.peak_mb,
                       history=history, precision=resolve_precision(settings, device),
                       peak_gpu_memory_mb=mem.gpu_peak_mb)
