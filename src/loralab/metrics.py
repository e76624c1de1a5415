"""What a classifier scores: accuracy and macro-F1, per-class precision, recall and F1,
the confusion matrix, and the class weights of an imbalanced task's loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Metrics:
    """What a classifier scores on a split: every evaluation's result, from the function
    that computes it (`classification_metrics`, `inference.evaluate_metrics`, the Trainer's
    last evaluation) to the record that stores it (`Row.eval_accuracy`, ...)."""

    accuracy: float
    macro_f1: float  # the unweighted mean of the classes' F1
    per_class: dict[str, dict] | None = None   # class name -> precision, recall, f1, support
    confusion: list[list[int]] | None = None   # true class x predicted class, counts
    matthews: float | None = None     # Matthews correlation (CoLA's GLUE metric), from -1 to 1
    f1_positive: float | None = None  # binary tasks: F1 of the positive class, the second (MRPC's GLUE metric)

    def score(self, name: str) -> float | None:
        """The score a task is measured and chosen by: one of `SCORES`."""
        return getattr(self, name)


# The scores a run records and the tuned profile may choose on (`select.metric`).
SCORES = ("accuracy", "macro_f1", "matthews", "f1_positive")


class Scored:
    """A result that holds its eval `metrics`: its scores under the names results.json and
    loralab.json give them (`eval_accuracy`, `eval_macro_f1`)."""

    metrics: Metrics

    @property
    def eval_accuracy(self) -> float:
        return self.metrics.accuracy

    @property
    def eval_macro_f1(self) -> float:
        return self.metrics.macro_f1


def classification_metrics(predictions, labels, names=None) -> Metrics:
    """Accuracy and macro-F1 (the unweighted mean of the classes' F1, over the classes
    that occur in `labels` or `predictions`, as scikit-learn computes it); with the class
    `names`, also each class's scores and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, f1_score, matthews_corrcoef

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    binary = len(names) == 2 if names is not None else max(predictions.max(initial=0), labels.max(initial=0)) <= 1
    metrics = Metrics(accuracy=float((predictions == labels).mean()),
                      macro_f1=float(f1_score(labels, predictions, average="macro", zero_division=0)),
                      matthews=float(matthews_corrcoef(labels, predictions)) if len(labels) else None,
                      f1_positive=float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))
                      if binary else None)
    if names is not None:
        metrics.per_class = per_class_metrics(predictions, labels, names)
        metrics.confusion = confusion_matrix(labels, predictions, labels=list(range(len(names)))).tolist()
    return metrics


def per_class_metrics(predictions, labels, names) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class, by name."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, n = precision_recall_fscore_support(labels, predictions, labels=list(range(len(names))),
                                                 zero_division=0)
    return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(n[i])}
            for i, name in enumerate(names)}


def class_weights(labels, num_labels: int, kind: str) -> torch.Tensor | None:
    """The loss's weight of each class: None for ``"none"``; for ``"balanced"``
    n / (K n_class), the inverse of the class's frequency in `labels` (scikit-learn's
    "balanced"; a class absent from `labels` gets weight 0)."""
    if kind == "none":
        return None
    counts = torch.bincount(torch.as_tensor(list(labels)), minlength=num_labels).float()
    return torch.where(counts > 0, counts.sum() / (int((counts > 0).sum()) * counts.clamp(min=1)), 0.0)


def weighted_loss(weights: torch.Tensor | None):
    """The Trainer's `compute_loss_func` for class weights (None keeps the model's loss)."""
    if weights is None:
        return None

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        mean = nn.functional.cross_entropy(logits.float(), labels, weight=weights.to(logits.device))
        # The Trainer leaves a custom loss unscaled for gradient accumulation: this micro-batch's
        # share of the step's examples does it (1 without accumulation).
        return mean if num_items_in_batch is None else mean * (labels.numel() / num_items_in_batch)

    return loss


class EvalMetrics:
    """The Trainer's `compute_metrics`: each of `SCORES` after each evaluation (the Trainer
    logs them as `eval_accuracy`, `eval_macro_f1`, ...), with the last evaluation's
    predictions kept for its full `Metrics` (`final`)."""

    def __init__(self):
        self.last = None  # (predictions, labels) of the last evaluation

    def __call__(self, eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        self.last = (np.argmax(logits, axis=-1), np.asarray(labels))
        scores = classification_metrics(*self.last)
        return {name: value for name in SCORES if (value := scores.score(name)) is not None}

    def final(self, names) -> Metrics | None:
        """The last evaluation's scores, per class (of `names`) and confusion included."""
        return classification_metrics(*self.last, names) if self.last is not None else None
