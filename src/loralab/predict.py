"""Use a trained model: predict on texts or files (`loralab predict`).

    >>> from loralab import predict
    >>> predict("runs/lora-r6", ["A wonderful film.", "Dull and far too long."])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .adapters import class_names
from .api import load_trained
from .data.files import _check_readable, _read_file, label_ids, raw_labels, raw_targets
from .errors import DataError, LoralabError
from .fileio import atomic_path
from .inference import check_max_length, map_batches, pair_token_types
from .metrics import Metrics, classification_metrics, regression_metrics
from .settings import TrainSettings
from .training import encode

ID_COLUMNS = ("id", "index")


@dataclass
class Predictions:
    """What `predict` returns: a classifier's predicted class per text with every class's
    probability, or a regression model's predicted score per text; and, where the true
    labels were given, the accuracy (classes) and every score (`metrics`).

    There is one entry per input text, in order; an empty text has no prediction: its label
    is None, its probabilities (or score) NaN, and `errors` says why."""

    labels: list[str | None]    # predicted class names, one per text (None: empty; a regression model: none)
    probabilities: np.ndarray   # (texts, classes), in the order of `classes` (a regression model: (texts, 0))
    classes: list[str]          # the model's classes, in order (a regression model: ["score"])
    accuracy: float | None = None
    scores: np.ndarray | None = None  # a regression model: the predicted score of each text
    metrics: Metrics | None = None    # against the true labels, where given (texts with a prediction)
    errors: list[str | None] | None = None  # why a text has no prediction (None where it has one)

    def __len__(self) -> int:
        return len(self.probabilities)


PAIR_SEPARATOR = " ||| "  # on the command line and stdin: "first text ||| second text" is one pair
EMPTY_TEXT = "empty text: no prediction"


def split_pair(text: str) -> str | tuple[str, str]:
    """A text as given on the command line: "a ||| b" is the pair (a, b); else the text."""
    if PAIR_SEPARATOR.strip() in text:
        first, _, second = text.partition(PAIR_SEPARATOR.strip())
        return first.strip(), second.strip()
    return text


def is_empty(text) -> bool:
    """True for a text (or a pair with a text) that is missing, not text, or only white space."""
    parts = text if isinstance(text, tuple) else (text,)
    return any(not isinstance(t, str) or not t.strip() for t in parts)


def predict_texts(model: nn.Module, tokenizer, texts: list, settings: TrainSettings | None = None) -> np.ndarray:
    """Class probabilities (rows: texts, columns: classes), computed in the length-sorted
    batches of every loralab inference (`training.map_batches`); a regression model's one
    column is its predicted score, as it is. A text may be a pair (first, second),
    tokenized together as in training."""
    settings = settings or TrainSettings()
    pairs = [t for t in texts if isinstance(t, tuple)]
    if pairs and len(pairs) != len(texts):
        raise LoralabError("Give every text as a pair (first ||| second), or none: a model reads one kind.")
    firsts, seconds = zip(*texts) if pairs else (texts, None)
    encoded = encode(tokenizer, list(firsts), list(seconds) if pairs else None, settings.max_length)
    logits = map_batches(model, encoded["input_ids"], tokenizer, settings, "Predicting", model.config.num_labels,
                         lambda batch: model(**batch).logits, pair_token_types(encoded))
    if logits.shape[1] == 1:  # a regression model: the score itself
        return logits
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()


@dataclass
class Inputs:
    """Texts read for `predict`, each with the row it came from (a file's 1-based data row,
    stdin's line), the input's id column where it has one, and its true labels if any."""

    texts: list
    rows: list[int]
    ids: list | None = None
    id_column: str | None = None
    labels: list | None = None
    echo: bool = False  # write each text beside its prediction (stdin: nothing else names the row)


def read_texts(path: str, text_column: str = "review", text_pair_column: str | None = None,
               label_column: str = "label") -> Inputs:
    """The texts of a data file (pairs where `text_pair_column` is given; its `label_column`
    where it has one), or one text per line from stdin ("-"; "a ||| b" a pair). Every row
    is kept, empty ones too: each input row gets an output row."""
    if path == "-":
        texts = [split_pair(line.rstrip("\r\n")) for line in sys.stdin]
        return Inputs(texts, list(range(1, len(texts) + 1)), echo=True)
    file = Path(path)
    _check_readable(file)
    ds = _read_file(file)
    for column, flag in ((text_column, "--text-column"), (text_pair_column, "--text-pair-column")):
        if column and column not in ds.column_names:
            raise DataError(f"{file}: no column {column!r} ({flag}). Columns found: "
                            f"{', '.join(map(repr, ds.column_names))}.")
    texts = list(ds[text_column])
    if text_pair_column:
        texts = list(zip(texts, ds[text_pair_column]))
    id_column = next((c for c in ID_COLUMNS if c in ds.column_names), None)
    return Inputs(texts, list(range(1, len(texts) + 1)), list(ds[id_column]) if id_column else None, id_column,
                  list(ds[label_column]) if label_column in ds.column_names else None)


def _true_labels(path: str, column: str) -> list:
    file = Path(path)
    _check_readable(file)
    found = _read_file(file)
    if column not in found.column_names:
        raise DataError(f"{file}: no column {column!r} (--label-column: the true classes of --score-against). "
                        f"Columns found: {', '.join(map(repr, found.column_names))}.")
    return list(found[column])


def predict(model_dir: str | os.PathLike, texts: Iterable[str] | None = None, *, input: str | None = None,
            output: str | os.PathLike | None = None, text_column: str = "review", labels: str | None = None,
            chunk_size: int = 4096, settings: TrainSettings | None = None, progress: bool = True,
            text_pair_column: str | None = None, label_column: str = "label",
            overwrite: bool = False) -> Predictions:
    """Predict the class (or a regression model's score) of texts or a file's rows, and
    optionally write the predictions.

    Args:
        model_dir: a full or head-tuned model folder, or an adapter folder (its base model
            is resolved from `adapter_config.json`).
        texts: texts to classify (or use `input`); for a model of sentence pairs, pairs
            (first, second).
        input: a CSV/TSV/JSONL/Parquet file with `text_column`, or "-" for one text per line
            on stdin.
        output: a new `.csv` or `.jsonl` file (`overwrite`: or an existing one) with a row
            per input: its `row` number, the input's `id`/`index` column if it has one, the
            text itself for texts and stdin, then the label and each class's probability
            (or the score), and an `error` where a text was empty; written atomically.
        labels: a file whose `label_column` gives the true labels (or the input's own
            `label_column` is used); then accuracy is computed.
        chunk_size: texts tokenized at a time, so memory stays bounded for large files.
        settings: inference batches (`eval_batch_size`), `max_length`, precision, device.

    Returns:
        The `Predictions`: `labels` (predicted names), `probabilities` (an array) and
        `accuracy` (None without true labels), one entry per input text.
    """
    from tqdm.auto import tqdm

    from .outputs import check_output_file

    if output:
        check_output_file(output, overwrite=overwrite,
                          inputs=[("--input", input if input != "-" else None), ("MODEL_DIR", model_dir),
                                  ("--score-against", labels)])
    settings = (settings or TrainSettings()).replace(quiet=True)  # one bar, over the chunks
    model, tokenizer = load_trained(model_dir)
    check_max_length(model, tokenizer, settings, str(model_dir))
    if texts is None:
        if input is None:
            raise LoralabError("Give texts or an input file.")
        given = read_texts(input, text_column, text_pair_column, label_column)
    else:
        texts = list(texts)
        given = Inputs(texts, list(range(1, len(texts) + 1)), echo=True)
    true = _true_labels(labels, label_column) if labels else given.labels
    texts = given.texts
    if true is not None and len(true) != len(texts):
        raise DataError(f"{labels or input}: {len(true)} labels for {len(texts)} texts.")
    keep = [i for i, t in enumerate(texts) if not is_empty(t)]
    errors = [EMPTY_TEXT if is_empty(t) else None for t in texts]
    probs = np.full((len(texts), model.config.num_labels), np.nan, dtype=np.float32)
    bar = tqdm(total=len(keep), desc="Predicting", unit=_unit(texts), disable=not progress)
    for start in range(0, len(keep), chunk_size):
        chunk = keep[start:start + chunk_size]
        probs[chunk] = predict_texts(model, tokenizer, [texts[i] for i in chunk], settings)
        bar.update(len(chunk))
    bar.close()
    names = class_names(model)
    where = labels or input
    if probs.shape[1] == 1:  # a regression model
        scores, metrics = probs[:, 0], None
        if true is not None and keep:
            metrics = regression_metrics(scores[keep], raw_targets([true[i] for i in keep], where, label_column))
        result = Predictions([], np.zeros((len(scores), 0), dtype=np.float32), list(names),
                             scores=scores, metrics=metrics, errors=errors)
    else:
        predicted = [None if errors[i] else names[row.argmax()] for i, row in enumerate(probs)]
        accuracy, metrics = None, None
        if true is not None and keep:
            gold = label_ids(raw_labels([true[i] for i in keep], where, label_column), names, where, label_column,
                             rows=[given.rows[i] for i in keep],
                             advice="Fix the row, or predict with a model trained on these classes.")
            metrics = classification_metrics(probs[keep].argmax(-1), gold, names)
            accuracy = metrics.accuracy
        result = Predictions(predicted, probs, list(names), accuracy, metrics=metrics, errors=errors)
    if output:
        write_predictions(Path(output), result, given)
    return result


def _unit(texts: list) -> str:
    """The progress bar's unit: what the task reads."""
    return "pairs" if texts and isinstance(texts[0], tuple) else "texts"


def write_predictions(path: Path, result: Predictions, given: Inputs) -> None:
    """A row per input text: its `row`, the input's id column where it has one, the text
    where it came from stdin or the caller (`text`, and `text_pair` for pairs), then the
    predicted `label` and class probabilities (`prob_NAME`), or a regression model's
    `score`, and `error` where the text had no prediction."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise LoralabError(f"{path}: predictions are written as .csv or .jsonl.")
    regression = result.scores is not None
    any_error = any(result.errors or ())
    rows = []
    for i, text in enumerate(given.texts):
        entry = {"row": given.rows[i]}
        if given.ids is not None:
            entry[given.id_column] = given.ids[i]
        if given.echo:
            first, second = text if isinstance(text, tuple) else (text, None)
            entry["text"] = first
            if isinstance(text, tuple):
                entry["text_pair"] = second
        failed = result.errors[i] if result.errors else None
        if regression:
            entry["score"] = None if failed else round(float(result.scores[i]), 6)
        else:
            entry["label"] = result.labels[i]
            entry.update({f"prob_{name}": None if failed else round(float(p), 6)
                          for name, p in zip(result.classes, result.probabilities[i])})
        if any_error:
            entry["error"] = failed or ""
        rows.append(entry)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        if suffix == ".csv":
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["row", "label"])
            writer.writeheader()
            writer.writerows(rows)
        else:
            for entry in rows:
                fh.write(json.dumps(entry) + "\n")
