"""Use a trained model: predict on texts or files, and export plain Hugging Face folders.

    >>> from loralab import predict, export
    >>> predict("runs/lora-r6", ["A wonderful film.", "Dull and far too long."])  # doctest: +SKIP
    >>> export("runs/lora-r6", "exported/lora-r6-merged", merge=True)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .adapters import CONFIG_NAME, MINILM_HUB_ID, class_names
from .api import load_trained, read_info
from .data.files import _check_readable, _read_file, label_ids, raw_labels, raw_targets
from .errors import DataError, LoralabError
from .fileio import atomic_path, write_text
from .inference import check_max_length, map_batches, pair_token_types
from .methods import METHODS
from .metrics import Metrics, classification_metrics, regression_metrics
from .pooling import pooling_of
from .settings import BINARY_NAMES, REGRESSION_LABELS, SCORE_LABELS, TrainSettings
from .surgery import adapter_layers, merge_and_unload
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


# ---------------------------------------------------------------------------------------
# Export


def model_card(info: dict, base_model: str, merged: bool, adapter: bool) -> str:
    """A README.md in the Hugging Face model-card convention."""
    method = info.get("method", "unknown")
    rank = info.get("rank")
    acc = info.get("eval_accuracy")
    targets = info.get("targets")
    layers = ("every linear layer but the head" if targets == "all-linear" else
              f"the layers matching {targets!r}" if targets else "the query and value layers")
    alpha = info.get("alpha", 2 * (rank or 0))
    how = METHODS[method].made_by(rank, alpha, layers) if method in METHODS else method
    labels = list(info.get("labels") or BINARY_NAMES)
    sentiment = tuple(labels) == BINARY_NAMES
    regression = tuple(labels) == REGRESSION_LABELS
    if adapter:
        load = ("```python\nfrom transformers import AutoModelForSequenceClassification\n"
                "from peft import PeftModel\n\n"
                f"labels = {labels!r}\n"
                f"base = AutoModelForSequenceClassification.from_pretrained(\n    \"{base_model}\", "
                "num_labels=len(labels), id2label=dict(enumerate(labels)),\n"
                "    label2id={name: i for i, name in enumerate(labels)})\n"
                f"model = PeftModel.from_pretrained(base, \"PATH/TO/THIS/FOLDER\")\n```")
    else:
        load = ("```python\nfrom transformers import pipeline\n\n"
                "classify = pipeline(\"text-classification\", model=\"PATH/TO/THIS/FOLDER\")\n"
                f"classify(\"{'A wonderful film.' if sentiment else 'Some text to classify.'}\")\n```")
    front = ["---", "library_name: " + ("peft" if adapter else "transformers"), f"base_model: {base_model}",
             "pipeline_tag: text-classification", "tags:", "- loralab", f"- {method}",
             *(["- sentiment-analysis", "datasets:", "- imdb"] if sentiment else []),
             "metrics:", *(["- pearsonr", "- spearmanr"] if regression else ["- accuracy", "- f1"]), "---", ""]
    task = ("IMDB sentiment" if sentiment else "regression (a score per text)" if regression
            else f"{len(labels)}-class text classification")
    f1 = info.get("eval_macro_f1")
    body = [f"# {base_model} fine-tuned for {task} ({method}{f', r={rank}' if rank else ''})", "",
            f"Made with [loralab](https://pypi.org/project/loralab/) by {how}"
            f"{', with the adapter merged into the weights' if merged else ''}.", "",
            "| | |", "|---|---|",
            f"| base model | {base_model} |", f"| method | {method} |",
            f"| rank | {rank if rank is not None else '-'} |",
            f"| trainable parameters | {info.get('trainable_params', 0):,} |",
            *(["| training data | IMDB movie reviews (Maas et al. 2011), lab sample |"] if sentiment else []),
            *([f"| eval accuracy | {acc:.4f} |" if acc is not None else "| eval accuracy | not measured |"]
              if not regression else []),
            *([f"| eval macro-F1 | {f1:.4f} |"] if f1 is not None else []),
            *(f"| eval {SCORE_LABELS[k]} | {info[f'eval_{k}']:.4f} |" for k in ("pearson", "spearman", "mse")
              if info.get(f"eval_{k}") is not None),
            "", "## Labels", "", "| id | label |", "|---:|---|",
            *[f"| {i} | {name} |" for i, name in enumerate(labels)], "", "## How to load it", "", load, ""]
    return "\n".join(front + body)


def export(model_dir: str | os.PathLike, out: str | os.PathLike, *, merge: bool = False,
           overwrite: bool = False) -> Path:
    """Export a trained model as a plain Hugging Face folder with a model card.

    With `merge`, a LoRA adapter is merged into its base model and the result saved as a
    regular model (config, safetensors weights, tokenizer) that
    `transformers.pipeline("text-classification", model=out)` loads without loralab.
    Without it, an adapter is exported in PEFT's format and a full or head-tuned model as
    it is.

    `out` is a new folder, or one an earlier export wrote; `overwrite` lets it be a folder
    of the user's, whose files are kept (`loralab.outputs.check_output`). It may not be,
    hold or lie inside `model_dir` or the base model.
    """
    from .models import local_folder
    from .outputs import check_output, output_dir

    model_dir = Path(model_dir)
    info = read_info(model_dir)
    is_adapter = (model_dir / CONFIG_NAME).exists()
    base = (json.loads((model_dir / CONFIG_NAME).read_text()).get("base_model_name_or_path") if is_adapter
            else info.get("base_model")) or "unknown"
    check_output(out, "export", overwrite=overwrite,
                 inputs=[("MODEL_DIR", model_dir), ("the base model", local_folder(base))])
    base = MINILM_HUB_ID if base == "minilm" else base
    model, tokenizer = load_trained(model_dir)
    if pooling_of(model) != "cls":
        raise LoralabError(f"{model_dir} was trained with --pooling {pooling_of(model)}, which a plain "
                           "transformers model (or PEFT) cannot express: exported, it would read the first "
                           "token and predict differently. Serve it with `loralab predict` or "
                           "`loralab.load_trained`, or train with --pooling cls to export.")
    with output_dir(out, "export") as tmp:
        if is_adapter and not merge:
            for name in (CONFIG_NAME, "adapter_model.safetensors"):
                shutil.copy2(model_dir / name, tmp / name)
            tokenizer.save_pretrained(tmp)
        else:
            if adapter_layers(model):
                model = merge_and_unload(model)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        info = {**info, "labels": class_names(model)}
        write_text(tmp / "README.md", model_card(info, base, merged=merge and is_adapter,
                                                 adapter=is_adapter and not merge))
    return Path(out)
