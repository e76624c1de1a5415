"""What a model scores: for classes, accuracy and macro-F1, per-class precision, recall
and F1, the confusion matrix, Matthews correlation and the positive class's F1; for a
real-valued target (regression), Pearson and Spearman correlation and the mean squared
error. Also the class weights of an imbalanced task's loss.

A model with one output is a regression model (Hugging Face's rule: `num_labels == 1`),
so every evaluation that has the model's outputs knows which scores apply (`scores_of`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .settings import (  # noqa: F401 - the task kinds and the scores' names
    CLASSIFICATION,
    REGRESSION,
    REGRESSION_LABELS,
    REGRESSION_SCORES,
    SCORE_LABELS,
    SCORE_TABLE,
    SELECT_METRICS,
    TASKS,
    default_metric,
    metric_task,
)


@dataclass
class Metrics:
    """What a model scores on a split: every evaluation's result, from the function that
    computes it (`scores_of`, `inference.evaluate_metrics`, the Trainer's last evaluation)
    to the record that stores it (`Row.eval_accuracy`, `Row.eval_pearson`, ...). A
    classifier's scores are the first six; a regression model's the last three."""

    accuracy: float | None = None
    macro_f1: float | None = None  # the unweighted mean of the classes' F1
    per_class: dict[str, dict] | None = None   # class name -> precision, recall, f1, support
    confusion: list[list[int]] | None = None   # true class x predicted class, counts
    matthews: float | None = None     # Matthews correlation (CoLA's GLUE metric), from -1 to 1
    f1_positive: float | None = None  # binary tasks: F1 of the positive class, the second (MRPC's GLUE metric)
    pearson: float | None = None      # regression: Pearson correlation of prediction and target (STS-B's)
    spearman: float | None = None     # regression: Spearman (rank) correlation
    mse: float | None = None          # regression: mean squared error (lower is better)

    def score(self, name: str) -> float | None:
        """The score a task is measured and chosen by: one of `SCORES`."""
        return getattr(self, name)

    def scores(self) -> dict[str, float]:
        """Every score this evaluation has, by name (the Trainer logs them as `eval_NAME`)."""
        return {name: value for name in SCORES if (value := self.score(name)) is not None}


# The scores a run records (`settings.SCORE_TABLE`), and those a study may lead with.
SCORES = tuple(SCORE_TABLE)
LEAD_SCORES = SELECT_METRICS


class Scored:
    """A result that holds its eval `metrics`: its scores under the names results.json and
    loralab.json give them (`eval_accuracy`, `eval_macro_f1`, `eval_pearson`, ...)."""

    metrics: Metrics

    @property
    def eval_accuracy(self) -> float | None:
        return self.metrics.accuracy

    @property
    def eval_macro_f1(self) -> float | None:
        return self.metrics.macro_f1

    def eval_scores(self) -> dict[str, float | None]:
        """Every score as a keyword of `Row`: ``{"eval_accuracy": ..., "eval_pearson": ...}``."""
        return eval_fields(self.metrics)


def eval_fields(metrics: Metrics) -> dict[str, float | None]:
    """The scores of `metrics` by the names results.json and loralab.json store them under."""
    return {f"eval_{name}": metrics.score(name) for name in SCORES}


def regression_metrics(predictions, targets) -> Metrics:
    """Pearson and Spearman correlation and the mean squared error of predicted scores
    against true ones (a correlation is 0 where either side is constant)."""
    from scipy.stats import pearsonr, spearmanr

    predictions, targets = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    constant = len(targets) < 2 or np.ptp(predictions) == 0 or np.ptp(targets) == 0
    return Metrics(pearson=0.0 if constant else float(pearsonr(predictions, targets)[0]),
                   spearman=0.0 if constant else float(spearmanr(predictions, targets)[0]),
                   mse=float(np.mean((predictions - targets) ** 2)) if len(targets) else None)


def scores_of(outputs, labels, names=None) -> Metrics:
    """The scores of a model's outputs (rows: examples, columns: its outputs): one column is
    a regression model's predicted score (`regression_metrics`), more are a classifier's
    logits (`classification_metrics` of their argmax, per class with `names`)."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return regression_metrics(outputs[:, 0], labels)
    return classification_metrics(outputs.argmax(-1), labels, names)


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
    labels = list(labels)
    if labels and isinstance(labels[0], float):
        from .errors import LoralabError

        raise LoralabError("class_weights = \"balanced\" weighs classes; a regression task has none "
                           "(use class_weights = \"none\").")
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
    """The Trainer's `compute_metrics`: every score of `scores_of` after each evaluation
    (the Trainer logs them as `eval_accuracy`, `eval_pearson`, ...), with the last
    evaluation's outputs kept for its full `Metrics` (`final`)."""

    def __init__(self):
        self.last = None  # (outputs, labels) of the last evaluation

    def __call__(self, eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        self.last = (np.asarray(logits), np.asarray(labels))
        return scores_of(*self.last).scores()

    def final(self, names) -> Metrics | None:
        """The last evaluation's scores, per class (of `names`) and confusion included."""
        return scores_of(*self.last, names) if self.last is not None else None
