"""The splits a command works on: train and eval read and checked, limited to seeded
subsets, a validation split carved from train, and the digest that keys cached work."""

from __future__ import annotations

import logging
import os

from ..errors import DataError
from .files import DataOptions, check_classes, class_names_of, expand_files, is_regression, load_split
from .imdb import LAB_FILES, resolve_data_dir

logger = logging.getLogger("loralab")


def warn_overlap(train, eval_) -> int:
    """Warn when reviews appear in both splits; return how many eval rows do."""
    train_texts = set(texts_of(train))
    overlap = sum(1 for t in texts_of(eval_) if t in train_texts)
    if overlap:
        logger.warning("%d eval row(s) also appear in the training data; eval scores "
                       "will be optimistic.", overlap)
    return overlap


def load_data(data_dir: str | os.PathLike | None = None, *, train=None, eval=None,
              options: DataOptions | None = None, download: bool = True):
    """Load the train and eval splits as a `datasets.DatasetDict`.

    Args:
        data_dir: folder with `train.csv` and `eval.csv`; None resolves it (see module doc).
        train, eval: files or globs that override the folder's files for that split.
        options: column names and invalid-row handling.
        download: allow the last-resort download when no local copy is found.
    """
    import datasets

    if train is None or eval is None:
        folder = resolve_data_dir(data_dir, download=download)
        train = train if train is not None else folder / LAB_FILES["train"]
        eval = eval if eval is not None else folder / LAB_FILES["eval"]
    train_split = load_split(train, options)
    check_classes(train_split, ", ".join(map(str, expand_files(train))))
    splits = {"train": train_split, "eval": load_split(eval, options, class_names_of(train_split))}
    warn_overlap(splits["train"], splits["eval"])
    return datasets.DatasetDict(splits)


def limit_data(data, train: int | None = None, eval: int | None = None):
    """Keep a random `train`/`eval` reviews of each split (all when None or 0).

    The subset is drawn with a fixed seed, so that changing the training seed keeps the data.
    A limit below 0 is a `DataError`.
    """
    for split, limit in (("train", train), ("eval", eval)):
        if limit is not None and limit < 0:
            raise DataError(f"--limit-{split} must be 0 (all rows) or more, got {limit}.")
        if limit and limit < len(data[split]):
            data[split] = data[split].shuffle(seed=0).select(range(limit))
    return data


def data_options(table) -> DataOptions:
    """How a configuration's [data] table (`config.DataConfig`) says to read its files."""
    return DataOptions(table.text_column, table.label_column, table.drop_invalid,
                       tuple(table.labels) or None, table.text_pair_column or None,
                       table.task or "classification")


def texts_of(split) -> list:
    """Each row's input as one hashable value: its text, or (text, second text) for pairs."""
    if "text_pair" in split.column_names:
        return list(zip(split["text"], split["text_pair"]))
    return list(split["text"])


def load_configured(table):
    """The data a configuration's [data] table names: its files read and checked, limited
    to seeded random subsets, and split into train and validation where it asks for one."""
    options = data_options(table)
    data = load_data(table.dir or None, train=table.train or None, eval=table.eval or None,
                     options=options)
    data = limit_data(data, table.limit_train, table.limit_eval)
    if table.limit_train:  # what is trained on must hold two classes, not only the file
        check_classes(data["train"], f"the training data limited to {table.limit_train} rows (--limit-train)")
    if table.validation:
        data = split_validation(data, table.validation, table.split_seed)
    return data


def data_digest(data, splits) -> str:
    """A short hash of the named splits' texts (or token ids) and labels: work computed from
    them is reused only while it is unchanged."""
    import hashlib
    import json

    digest = hashlib.sha256()
    for split in splits:
        ds = data[split]
        digest.update(json.dumps([split, class_names_of(ds)]).encode())  # the names reach the model
        values = texts_of(ds) if "text" in ds.column_names else ds["input_ids"]
        for value, label in zip(values, ds["label"]):
            digest.update((value if isinstance(value, str) else json.dumps(list(value))).encode())
            digest.update(f"\0{label}\0".encode())
    return digest.hexdigest()[:16]


def split_validation(data, fraction: float, seed: int = 0):
    """Carve a `validation` split from `train` to choose settings on, never from `eval`.

    The split is stratified by label (a regression task's target, by its quartile) and
    seeded. Identical reviews stay on one side, and a training review that also appears in
    `eval` is never put in `validation`: the validation split shares no text with the
    reviews trained on or with `eval`. `train` keeps the rest (the training set as
    trained), in its original order.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DataError(f"The validation fraction must be between 0 and 1, got {fraction}.")
    texts, labels = texts_of(data["train"]), list(data["train"]["label"])
    in_eval = set(texts_of(data["eval"]))
    first = {}  # each distinct text -> its first row's label
    for text, label in zip(texts, labels):
        first.setdefault(text, label)
    candidates = [t for t in first if t not in in_eval]
    wanted = round(fraction * len(texts))
    if wanted < 2 or len(candidates) - wanted < 2:
        raise DataError(f"A validation fraction of {fraction} of {len(texts)} training rows leaves too "
                        "few rows on one side; use more data or another fraction.")
    strata = [first[t] for t in candidates]
    if is_regression(data["train"]):  # a real target: stratified by its quartile
        strata = list(np.searchsorted(np.quantile(strata, [0.25, 0.5, 0.75]), strata, side="right"))
    counts = np.bincount(strata)
    stratify = strata if counts[counts > 0].min() >= 2 else None
    _, held_out = train_test_split(candidates, test_size=wanted, random_state=seed, stratify=stratify)
    held_out = set(held_out)
    keep = [i for i, t in enumerate(texts) if t not in held_out]
    chosen = [i for i, t in enumerate(texts) if t in held_out]
    data["validation"] = data["train"].select(chosen)
    data["train"] = data["train"].select(keep)
    return data
