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
from .api import INFO_NAME, load_trained
from .data.files import _check_readable, _read_file, label_ids, raw_labels, raw_targets
from .errors import DataError, LoralabError, ModelLoadError
from .fileio import atomic_dir, atomic_path, write_text
from .inference import check_max_length, map_batches, pair_token_types
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
    labels were given, the accuracy (classes) and every score (`metrics`)."""

    labels: list[str]           # predicted class names, one per text (a regression model: none)
    probabilities: np.ndarray   # (texts, classes), in the order of `classes` (a regression model: (texts, 0))
    classes: list[str]          # the model's classes, in order (a regression model: ["score"])
    accuracy: float | None = None
    scores: np.ndarray | None = None  # a regression model: the predicted score of each text
    metrics: Metrics | None = None    # against the true labels, where given

    def __len__(self) -> int:
        return len(self.probabilities)


PAIR_SEPARATOR = " ||| "  # on the command line and stdin: "first text ||| second text" is one pair


def split_pair(text: str) -> str | tuple[str, str]:
    """A text as given on the command line: "a ||| b" is the pair (a, b); else the text."""
    if PAIR_SEPARATOR.strip() in text:
        first, _, second = text.partition(PAIR_SEPARATOR.strip())
        return first.strip(), second.strip()
    return text


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


def read_texts(path: str, text_column: str = "review", text_pair_column: str | None = None,
               ) -> tuple[list, list | None, list | None, str | None]:
    """(texts, ids, labels, id column) from a data file (pairs where `text_pair_column` is
    given), or one text per line from stdin ("-"; "a ||| b" a pair)."""
    if path == "-":
        texts = [split_pair(line.rstrip("\n")) for line in sys.stdin if line.strip()]
        return texts, None, None, None
    file = Path(path)
    _check_readable(file)
    ds = _read_file(file)
    for column, flag in ((text_column, "--text-column"), (text_pair_column, "--text-pair-column")):
        if column and column not in ds.column_names:
            raise DataError(f"{file}: no column {column!r} ({flag}). Columns found: "
                            f"{', '.join(map(repr, ds.column_names))}.")
    texts = list(ds[text_column])
    seconds = list(ds[text_pair_column]) if text_pair_column else [None] * len(texts)
    bad = [i + 1 for i, (t, u) in enumerate(zip(texts, seconds)) if not isinstance(t, str) or not t.strip()
           or (text_pair_column and (not isinstance(u, str) or not u.strip()))]
    if bad:
        raise DataError(f"{file}: rows {', '.join(map(str, bad[:10]))} have empty text.")
    if text_pair_column:
        texts = list(zip(texts, seconds))
    id_column = next((c for c in ID_COLUMNS if c in ds.column_names), None)
    ids = list(ds[id_column]) if id_column else None
    labels = list(ds["label"]) if "label" in ds.column_names else None
    return texts, ids, labels, id_column


def predict(model_dir: str | os.PathLike, texts: Iterable[str] | None = None, *, input: str | None = None,
            output: str | os.PathLike | None = None, text_column: str = "review", labels: str | None = None,
            chunk_size: int = 4096, settings: TrainSettings | None = None, progress: bool = True,
            text_pair_column: str | None = None) -> Predictions:
    """Predict sentiment for texts or a file and optionally write the predictions.

    Args:
        model_dir: a full or head-tuned model folder, or an adapter folder (its base model
            is resolved from `adapter_config.json`).
        texts: texts to classify (or use `input`); for a model of sentence pairs, pairs
            (first, second).
        input: a CSV/TSV/JSONL/Parquet file with `text_column`, or "-" for one text per line
            on stdin.
        output: a `.csv` or `.jsonl` file for label, probability of each class and the
            input's `id`/`index` column if it has one; written atomically.
        labels: a file whose `label` column gives the true labels (or the input's own
            `label` column is used); then accuracy is computed.
        chunk_size: texts tokenized at a time, so memory stays bounded for large files.
        settings: inference batches (`eval_batch_size`), `max_length`, precision, device.

    Returns:
        The `Predictions`: `labels` (predicted names), `probabilities` (an array) and
        `accuracy` (None without true labels).
    """
    from tqdm.auto import tqdm

    settings = (settings or TrainSettings()).replace(quiet=True)  # one bar, over the chunks
    model, tokenizer = load_trained(model_dir)
    check_max_length(model, tokenizer, settings, str(model_dir))
    ids, true, id_column = None, None, None
    if texts is None:
        if input is None:
            raise LoralabError("Give texts or an input file.")
        texts, ids, true, id_column = read_texts(input, text_column, text_pair_column)
    texts = list(texts)
    if labels:
        file = Path(labels)
        _check_readable(file)
        found = _read_file(file)
        if "label" not in found.column_names:
            raise DataError(f"{file}: no column 'label' (--labels names a file whose 'label' column holds the "
                            f"true classes). Columns found: {', '.join(map(repr, found.column_names))}.")
        true = list(found["label"])
    if true is not None and len(true) != len(texts):
        raise DataError(f"{labels or input}: {len(true)} labels for {len(texts)} texts.")
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    bar = tqdm(total=len(texts), desc="Predicting", unit="review", disable=not progress)
    for start in range(0, len(texts), chunk_size):
        chunk = texts[start:start + chunk_size]
        probs[start:start + len(chunk)] = predict_texts(model, tokenizer, chunk, settings)
        bar.update(len(chunk))
    bar.close()
    names = class_names(model)
    if probs.shape[1] == 1:  # a regression model
        scores, metrics = probs[:, 0], None
        if true is not None:
            metrics = regression_metrics(scores, raw_targets(true, labels or input, "label"))
        if output:
            write_predictions(Path(output), [], np.zeros((len(scores), 0)), [], ids, id_column, scores)
        return Predictions([], np.zeros((len(scores), 0), dtype=np.float32), list(names), scores=scores,
                           metrics=metrics)
    predicted = [names[i] for i in probs.argmax(-1)]
    accuracy, metrics = None, None
    if true is not None:
        gold = label_ids(raw_labels(true, labels or input, "label"), names, labels or input, "label",
                         advice="Fix the row, or predict with a model trained on these classes.")
        metrics = classification_metrics(probs.argmax(-1), gold, names)
        accuracy = metrics.accuracy
    if output:
        write_predictions(Path(output), predicted, probs, names, ids, id_column)
    return Predictions(predicted, probs, list(names), accuracy, metrics=metrics)


def write_predictions(path: Path, predicted, probs, names, ids=None, id_column=None, scores=None) -> None:
    """Each text's predicted label and class probabilities (`prob_NAME`), or a regression
    model's `score`, after the input's id column where it has one."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise LoralabError(f"{path}: predictions are written as .csv or .jsonl.")
    rows = []
    for i in range(len(scores) if scores is not None else len(predicted)):
        entry = {id_column: ids[i]} if ids is not None else {}
        if scores is not None:
            entry["score"] = round(float(scores[i]), 6)
        else:
            entry["label"] = predicted[i]
            entry.update({f"prob_{name}": round(float(p), 6) for name, p in zip(names, probs[i])})
        rows.append(entry)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        if suffix == ".csv":
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["label"])
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
    how = {"lora": f"LoRA (rank {rank}, alpha {alpha}) on {layers}",
           "dora": f"DoRA, weight-decomposed LoRA (rank {rank}, alpha {alpha}) on {layers}",
           "pissa": f"PiSSA (rank {rank}, alpha {alpha}) on {layers}, saved as a rank-{2 * (rank or 0)} LoRA adapter "
                    "of the unchanged base model",
           "vera": f"VeRA (rank {rank}: frozen random matrices shared by every layer, trained scaling vectors) "
                   f"on {layers}",
           "ia3": "IA3 (trained vectors rescaling the keys, the values and the feed-forward activations)",
           "head": "head-tuning (only the classification head trained)",
           "full": "full fine-tuning"}.get(method, method)
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


def read_info(model_dir: Path) -> dict:
    """A model folder's `loralab.json` (how it was made), or {} where it has none."""
    path = model_dir / INFO_NAME
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text("utf-8"))
    except ValueError as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err}); remove it or train the model again.") from err
    if not isinstance(info, dict):
        raise ModelLoadError(f"{path}: a JSON object describing the model is expected, not a {type(info).__name__}.")
    return info


def export(model_dir: str | os.PathLike, out: str | os.PathLike, *, merge: bool = False) -> Path:
    """Export a trained model as a plain Hugging Face folder with a model card.

    With `merge`, a LoRA adapter is merged into its base model and the result saved as a
    regular model (config, safetensors weights, tokenizer) that
    `transformers.pipeline("text-classification", model=out)` loads without loralab.
    Without it, an adapter is exported in PEFT's format and a full or head-tuned model as
    it is.
    """
    model_dir = Path(model_dir)
    info = read_info(model_dir)
    is_adapter = (model_dir / CONFIG_NAME).exists()
    base = (json.loads((model_dir / CONFIG_NAME).read_text()).get("base_model_name_or_path") if is_adapter
            else info.get("base_model")) or "unknown"
    base = MINILM_HUB_ID if base == "minilm" else base
    model, tokenizer = load_trained(model_dir)
    if pooling_of(model) != "cls":
        raise LoralabError(f"{model_dir} was trained with --pooling {pooling_of(model)}, which a plain "
                           "transformers model (or PEFT) cannot express: exported, it would read the first "
                           "token and predict differently. Serve it with `loralab predict` or "
                           "`loralab.load_trained`, or train with --pooling cls to export.")
    with atomic_dir(out) as tmp:
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
