"""Reading data files: one loader for CSV, TSV, JSON Lines and Parquet that refuses bad input.

Every split comes back as a `datasets.Dataset` with two columns, `text` (str) and
`label`, a `datasets.ClassLabel` whose names are the task's classes in order (see
`label_names`): for IMDB 0 negative, 1 positive. A regression task's `label` is its
real-valued target (float32). Sentence pairs add `text_pair`. Problems are reported as `DataError`s
that name the file, the row (1-based data rows, the header not counted) and the column.
"""

from __future__ import annotations

import difflib
import glob
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DataError
from ..settings import BINARY_NAMES, CLASSIFICATION, REGRESSION, REGRESSION_LABELS, TASKS

logger = logging.getLogger("loralab")

# Builder name and options of `datasets.load_dataset` per file ending.
# No "NA"/"null" guessing: a review that says "NA" is a review, an empty cell stays empty.
CSV_OPTIONS = {"na_filter": False}
FORMATS = {
    ".csv": ("csv", CSV_OPTIONS),
    ".tsv": ("csv", {"delimiter": "\t", **CSV_OPTIONS}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
TEXT_FORMATS = {".csv", ".tsv", ".jsonl", ".json"}

# The binary spellings: a training split whose labels are all among these is the binary
# sentiment task, 0 negative and 1 positive, whatever the spelling.
LABEL_VALUES = {
    "0": 0, "1": 1,
    "neg": 0, "pos": 1,
    "negative": 0, "positive": 1,
    "false": 0, "true": 1,
}
FEW_ROWS = 10  # a class with fewer training rows than this gets a warning


@dataclass
class DataOptions:
    """How to read a data file.

    Args:
        text_column: column holding the review text.
        label_column: column holding the label: the binary spellings (0/1, neg/pos,
            negative/positive, false/true), or any integers or strings, one per class.
        drop_invalid: skip rows with empty or whitespace-only text instead of failing.
        labels: the classes in order (``("very negative", ..., "very positive")``); None
            takes them from the training split (see `label_names`).
        text_pair_column: for sentence pairs (entailment, paraphrase, answer matching), the
            column with each pair's second text; the model reads both (`[CLS] a [SEP] b [SEP]`).
        task: ``"classification"`` (a class per row), or ``"regression"``: `label_column`
            holds a number per row (a similarity score, a rating) that the model predicts.
    """

    text_column: str = "review"
    label_column: str = "label"
    drop_invalid: bool = False
    labels: tuple[str, ...] | None = None
    text_pair_column: str | None = None
    task: str = CLASSIFICATION

    def __post_init__(self):
        if self.task not in TASKS:
            raise DataError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        if self.task == REGRESSION and self.labels:
            raise DataError("--labels names classes; a regression task has a number per row instead.")


def expand_files(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Expand file names and globs (a list, or one string of comma-separated entries)."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [p for p in str(patterns).split(",") if p.strip()]
    files: list[Path] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern).strip())
        if glob.has_magic(pattern):
            matched = sorted(glob.glob(pattern))
            if not matched:
                raise DataError(f"No file matches {pattern!r}.")
            files.extend(Path(m) for m in matched)
        else:
            files.append(Path(pattern))
    if not files:
        raise DataError("No data file was given.")
    return files


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise DataError(f"Data file not found: {path}")
    if path.is_dir():
        raise DataError(f"Expected a data file but {path} is a directory.")
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown file type {suffix!r}; loralab reads "
                        f"{', '.join(sorted(FORMATS))}.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty.")
    if suffix in TEXT_FORMATS:
        lines = _check_utf8(path)
        if lines == 0:
            raise DataError(f"{path}: the file holds only white space.")
        if lines == 1 and suffix in {".csv", ".tsv"}:
            raise DataError(f"{path}: the file has a header but no rows.")
        _check_structure(path)


def _first_character(path: Path) -> str:
    """The first character of a text file that is not white space ("" for none), read
    without reading the whole file."""
    with open(path, encoding="utf-8-sig") as fh:
        while chunk := fh.read(4096):
            if chunk.strip():
                return chunk.lstrip()[0]
    return ""


def _check_structure(path: Path) -> None:
    """Find the first malformed row of a CSV, TSV or JSON Lines file and name it by its
    1-based data row (the header not counted), before a parser reports it by its own count
    (pyarrow's JSON rows count from 0, pandas' CSV lines from the header)."""
    import csv
    import json

    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        csv.field_size_limit(2**31 - 1)  # a review may be megabytes long; the parser reads it too
        with open(path, newline="", encoding="utf-8-sig") as fh:
            records = csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            row = 0
            try:
                header = next(records, [])
                for record in records:
                    if not record:  # a blank line: skipped by the reader
                        continue
                    row += 1
                    if len(record) != len(header):
                        raise DataError(f"{path}: row {row} has {len(record)} fields where the header has "
                                        f"{len(header)} ({', '.join(map(repr, header))}); a text that holds the "
                                        f"separator must be quoted.")
            except csv.Error as err:
                raise DataError(f"{path}: row {row + 1}: {err}.") from err
    elif suffix == ".jsonl" or (suffix == ".json" and _first_character(path) != "["):
        with open(path, encoding="utf-8-sig") as fh:
            row = 0
            for line in fh:
                if not line.strip():
                    continue
                row += 1
                try:
                    value = json.loads(line)
                except ValueError as err:
                    raise DataError(f"{path}: row {row} is not valid JSON ({err.msg} at character "
                                    f"{err.pos + 1}).") from err
                if not isinstance(value, dict):
                    raise DataError(f"{path}: row {row} is a JSON {type(value).__name__}, not an object with the "
                                    "text and label as fields.")


def _check_utf8(path: Path) -> int:
    """Fail with the line number of the first byte sequence that is not UTF-8; return the
    number of non-blank lines."""
    non_blank = 0
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            non_blank += bool(line.strip())
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: line {line_no} is not valid UTF-8 (byte "
                                f"{line[err.start:err.start + 1]!r} at column {err.start + 1}). "
                                "Save the file as UTF-8.") from err
    return non_blank


def _read_file(path: Path):
    import datasets

    builder, options = FORMATS[path.suffix.lower()]
    verbosity = datasets.logging.get_verbosity()
    bars = not datasets.are_progress_bars_disabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its error is ours to report, once
    datasets.disable_progress_bars()  # reading a file is quick; its bar is noise
    try:
        return datasets.load_dataset(builder, data_files=[str(path)], split="train", **options)
    except Exception as err:  # the builders raise many types; name the file either way
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise DataError(f"{path}: could not be parsed as {path.suffix.lower()[1:].upper()}: "
                        f"{type(cause).__name__}: {cause}") from err
    finally:
        if bars:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(verbosity)


def _missing_column(path: Path, column: str, flag: str, found: Sequence[str]) -> DataError:
    close = difflib.get_close_matches(column, found, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return DataError(f"{path}: no column {column!r} ({flag}). Columns found: "
                     f"{', '.join(repr(c) for c in found)}.{hint}")


def raw_label(value) -> str | None:
    """A label value as text ("1" for 1, 1.0 or "1 "), or None where it is missing."""
    if value is None or isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def raw_labels(values, path, column: str) -> list[str]:
    """Every label of a file as text (`raw_label`); a row without one, or with a value that
    is no class label (a list, an object, a fraction such as 0.5), is a `DataError`."""
    raw = []
    for row, value in enumerate(values, start=1):
        if isinstance(value, (list, dict)) or (isinstance(value, float) and not math.isnan(value)
                                               and not value.is_integer()):
            raise DataError(f"{path}: row {row}: label {value!r} in column {column!r} is not a class label (a "
                            "whole number or a name).")
        label = raw_label(value)
        if label is None:
            raise DataError(f"{path}: row {row}: no label in column {column!r}.")
        raw.append(label)
    return raw


def raw_targets(values, path, column: str) -> list[float]:
    """Every value of a regression target column as a number; a row whose value is missing
    or does not read as a finite number is a `DataError` naming the row and the value."""
    targets = []
    for row, value in enumerate(values, start=1):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            what = "no target" if value is None or (isinstance(value, str) and not value.strip()) else \
                f"the target {value!r}"
            raise DataError(f"{path}: row {row}: {what} in column {column!r} is not a number; a regression task "
                            "(--task regression) needs a number in every row.")
        targets.append(number)
    return targets


def _as_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _refuse_mixed_labels(parts, column: str) -> None:
    """Classes read from the data alone are all numbers or all names: a column holding
    `0`, `1`, `pos` and `1.5` is a mistake, not four classes. A fraction (`1.5`) is no
    class; the binary spellings (0/1, neg/pos, ...) mix freely. `--labels` names the
    classes and lifts this."""
    numbers, words, binary_words = [], [], []  # (file, row, label)
    for path, part in parts:
        for row, value in zip(part.rows, part.raw):
            number = _as_number(value)
            if number is not None and not number.is_integer():
                raise DataError(f"{path}: row {row}: label {value} in column {column!r} is not a class label (a "
                                "whole number or a name); a number per row is a regression task (--task "
                                "regression).")
            if number is not None:
                numbers.append((path, row, value))
            elif value.lower() in LABEL_VALUES:
                binary_words.append((path, row, value))
            else:
                words.append((path, row, value))
    if (words and numbers) or (binary_words and any(v not in ("0", "1") for _, _, v in numbers)):
        path, row, value = (words or binary_words)[0]
        shown = ", ".join(sorted({v for _, _, v in numbers}, key=_as_number)[:5])
        raise DataError(f"{path}: row {row}: the label {value!r} in column {column!r} is a word where other rows "
                        f"hold numbers ({shown}); a column of classes holds numbers or names, not both. Fix the "
                        "rows, or name every class in order with --labels.")


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def label_names(raw: Sequence[str], given: Sequence[str] | None = None) -> tuple[str, ...]:
    """The classes of a training split, in order: `given` where the user named them; the
    binary sentiment task (negative, positive) where every label is a binary spelling;
    integers in numeric order; otherwise strings in alphabetical order."""
    if given:
        return tuple(given)
    values = set(raw)
    if all(v.lower() in LABEL_VALUES for v in values):
        return BINARY_NAMES
    if all(_as_int(v) is not None for v in values):
        return tuple(str(i) for i in sorted({_as_int(v) for v in values}))
    return tuple(sorted(values))


def label_ids(raw: Sequence[str], names: Sequence[str], path, column: str, rows: Sequence[int] | None = None,
              advice: str = "Fix the row, or name every class with --labels.") -> list[int]:
    """Each raw label's class number among `names`; a label that is not one of them is a
    `DataError` naming the file, row (`rows`: each label's 1-based data row in the file,
    where rows were dropped; else its position), value and the known labels."""
    def canonical(text: str) -> str:  # integers by value ("01" is 1), binary spellings in any case
        number = _as_int(text)
        return str(number) if number is not None else text.lower() if binary else text

    binary = tuple(names) == BINARY_NAMES
    lookup = {canonical(n): i for i, n in enumerate(names)} | (LABEL_VALUES if binary else {})
    ids = []
    for row, value in zip(rows or range(1, len(raw) + 1), raw):
        found = lookup.get(canonical(value))
        if found is None:
            known = ", ".join(map(repr, names))
            raise DataError(f"{path}: row {row}: label {value!r} in column {column!r} is not one of the "
                            f"training data's labels ({known}). {advice}")
        ids.append(found)
    return ids


@dataclass
class _Rows:
    """One file's rows, checked: texts (and second texts of pairs), raw labels, and each
    row's 1-based data row in the file (rows dropped with `drop_invalid` keep their numbers)."""

    texts: list[str]
    pairs: list[str] | None
    raw: list  # raw labels as text; a regression task's targets as numbers
    rows: list[int]


def _check_texts(path: Path, values, column: str, flag: str) -> list[int]:
    """The rows of a text column that hold no text (empty or white space); a value that is
    not text at all (a number in JSON Lines) is a `DataError` naming its row."""
    not_text = [(row, v) for row, v in enumerate(values, start=1) if not isinstance(v, str) and v is not None]
    if not_text:
        row, value = not_text[0]
        raise DataError(f"{path}: row {row}: the value {value!r} in column {column!r} is not text "
                        f"({len(not_text)} row(s) like it); quote it in the file, or pick the text column with "
                        f"{flag}.")
    return [row for row, v in enumerate(values, start=1) if not isinstance(v, str) or not v.strip()]


def _read_rows(path: str | os.PathLike, options: DataOptions) -> _Rows:
    """One data file's rows, checked: columns present, no missing label, no empty text
    (or those rows dropped with `drop_invalid`)."""
    path = Path(path)
    _check_readable(path)
    ds = _read_file(path)
    if len(ds) == 0:
        raise DataError(f"{path}: the file has a header but no rows.")
    columns = [(options.text_column, "--text-column"), (options.label_column, "--label-column")]
    if options.text_pair_column:
        columns.append((options.text_pair_column, "--text-pair-column"))
    for column, flag in columns:
        if column not in ds.column_names:
            raise _missing_column(path, column, flag, ds.column_names)

    texts = ds[options.text_column]
    pairs = ds[options.text_pair_column] if options.text_pair_column else None
    read = raw_targets if options.task == REGRESSION else raw_labels
    raw = read(ds[options.label_column], path, options.label_column)
    invalid = set(_check_texts(path, texts, options.text_column, "--text-column"))
    if pairs is not None:
        invalid |= set(_check_texts(path, pairs, options.text_pair_column, "--text-pair-column"))
    rows = list(range(1, len(texts) + 1))
    if invalid:
        invalid = sorted(invalid)
        shown = ", ".join(map(str, invalid[:10])) + (" ..." if len(invalid) > 10 else "")
        named = " or ".join(repr(c) for c in (options.text_column, options.text_pair_column) if c)
        if not options.drop_invalid:
            raise DataError(f"{path}: {len(invalid)} row(s) with empty or whitespace-only text "
                            f"in column {named}: rows {shown}. Fix them, or pass "
                            "--drop-invalid to skip them.")
        logger.warning("%s: dropped %d row(s) with empty text (rows %s).", path, len(invalid), shown)
        bad = set(invalid)
        keep = [i for i in range(len(texts)) if i + 1 not in bad]
        texts = [texts[i] for i in keep]
        pairs = [pairs[i] for i in keep] if pairs is not None else None
        raw = [raw[i] for i in keep]
        rows = [rows[i] for i in keep]
        if not texts:
            raise DataError(f"{path}: no rows left after dropping invalid ones.")
    return _Rows(list(texts), list(pairs) if pairs is not None else None, raw, rows)


def _make_dataset(texts: list[str], labels: list, names: Sequence[str], pairs: list[str] | None = None):
    """A split: `text` (and `text_pair`, the second text of sentence pairs) and `label`:
    class numbers of `names`, or a regression task's targets (`names` `REGRESSION_LABELS`)."""
    import datasets

    columns = {"text": texts, **({"text_pair": pairs} if pairs is not None else {}), "label": labels}
    label = datasets.Value("float32") if tuple(names) == REGRESSION_LABELS else datasets.ClassLabel(names=list(names))
    features = datasets.Features({**{c: datasets.Value("string") for c in columns if c != "label"},
                                  "label": label})
    return datasets.Dataset.from_dict(columns, features=features)


def load_file(path: str | os.PathLike, options: DataOptions | None = None, names: Sequence[str] | None = None):
    """Load one data file into a `Dataset` with columns `text` and `label` (a ClassLabel of
    `names`, or of the file's own labels)."""
    return load_split(path, options, names)


def load_split(patterns, options: DataOptions | None = None, names: Sequence[str] | None = None):
    """Load one split from one or more files or globs, concatenated in order, its labels
    numbered among `names` (default: the split's own classes, see `label_names`)."""
    options = options or DataOptions()
    files = expand_files(patterns)
    parts = [(path, _read_rows(path, options)) for path in files]
    regression = options.task == REGRESSION
    if names is not None and (tuple(names) == REGRESSION_LABELS) != regression:
        raise DataError(f"{files[0]}: read as a regression task, but the model predicts the classes "
                        f"{', '.join(map(repr, names))}; give the classification data it was trained for."
                        if regression else f"{files[0]}: the model predicts a number (a regression model); read "
                        "the data with --task regression.")
    if regression:
        names = REGRESSION_LABELS
    elif names is None:
        if not options.labels:
            _refuse_mixed_labels(parts, options.label_column)
        names = label_names([v for _, part in parts for v in part.raw], options.labels)
    if options.labels and len(set(names)) != len(names):
        raise DataError(f"--labels names a class twice: {', '.join(names)}.")
    texts, pairs, ids = [], [] if options.text_pair_column else None, []
    for path, part in parts:
        texts += part.texts
        if pairs is not None:
            pairs += part.pairs
        # A regression task's targets are its numbers; classes are numbered among `names`.
        ids += part.raw if regression else label_ids(part.raw, names, path, options.label_column, part.rows)
    return _make_dataset(texts, ids, names, pairs)


def is_regression(split) -> bool:
    """True for a regression task's split: its `label` column holds real numbers."""
    dtype = getattr(split.features["label"], "dtype", "")
    return dtype.startswith("float")


def class_names_of(split) -> list[str]:
    """The class names of a split: its ClassLabel's, or, for a plain integer label column,
    negative/positive where it holds only 0 and 1, else "0", "1", ... up to its largest.
    A regression task's split has the one name of its output (`REGRESSION_LABELS`)."""
    if is_regression(split):
        return list(REGRESSION_LABELS)
    names = getattr(split.features["label"], "names", None)
    if names:
        return list(names)
    top = max(split["label"])
    return list(BINARY_NAMES) if top <= 1 else [str(i) for i in range(top + 1)]


def class_counts(split) -> list[int]:
    """Rows per class of a split, in the order of its classes (`class_names_of`); none for
    a regression task."""
    if is_regression(split):
        return []
    counts = [0] * len(class_names_of(split))
    for label in split["label"]:
        counts[label] += 1
    return counts


def check_classes(train, where: str = "the training data") -> None:
    """Refuse a training split with fewer than two classes (a regression task's, with one
    target value); warn about classes with very few rows (or none)."""
    if is_regression(train):
        values = set(train["label"])
        if len(values) < 2:
            raise DataError(f"{where}: every row has the target {next(iter(values), None)!r}; a regression task "
                            "needs targets that vary.")
        return
    names, counts = class_names_of(train), class_counts(train)
    present = [n for n, c in zip(names, counts) if c]
    if len(present) < 2:
        raise DataError(f"{where}: every row has the label {present[0]!r}; a classifier needs at least two "
                        "classes.")
    for name, count in zip(names, counts):
        if count < FEW_ROWS:
            logger.warning("%s: the class %r has only %d row(s); its scores will be noisy.", where, name, count)
