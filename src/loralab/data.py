"""The data layer: one loader for CSV, TSV, JSON Lines and Parquet that refuses bad input.

Every split comes back as a `datasets.Dataset` with two columns, `text` (str) and
`label`, a `datasets.ClassLabel` whose names are the task's classes in order (see
`label_names`): for IMDB 0 negative, 1 positive. Problems are reported as `DataError`s
that name the file, the row (1-based data rows, the header not counted) and the column.

Where the IMDB lab sample comes from, in order: `--data DIR`, `$LORALAB_DATA`, the
cache folder `~/.cache/loralab/imdb-lab`, and last a download of the official aclImdb
archive from which the lab's exact 2,000/500 sample is rebuilt (see `download_lab_sample`).
"""

from __future__ import annotations

import csv
import difflib
import glob
import json
import logging
import math
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from .errors import DataError
from .fileio import atomic_path
from .settings import BINARY_NAMES

logger = logging.getLogger("loralab")

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
LAB_FILES = {"train": "train.csv", "eval": "eval.csv"}

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
    """

    text_column: str = "review"
    label_column: str = "label"
    drop_invalid: bool = False
    labels: tuple[str, ...] | None = None


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
                                "Save the file as UTF-8.") from None
    return non_blank


def _read_file(path: Path):
    import datasets

    builder, options = FORMATS[path.suffix.lower()]
    verbosity = datasets.logging.get_verbosity()
    bars = not datasets.are_progress_bars_disabled()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # reading a file is quick; its bar is noise
    try:
        return datasets.load_dataset(builder, data_files=[str(path)], split="train", **options)
    except Exception as err:  # the builders raise many types; name the file either way
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise DataError(f"{path}: could not be parsed as {path.suffix.lower()[1:].upper()}: "
                        f"{type(cause).__name__}: {cause}") from None
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
    """Every label of a file as text (`raw_label`); a row without one is a `DataError`."""
    raw = [raw_label(v) for v in values]
    missing = next((row for row, value in enumerate(raw, start=1) if value is None), None)
    if missing:
        raise DataError(f"{path}: row {missing}: no label in column {column!r}.")
    return raw


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


def label_ids(raw: Sequence[str], names: Sequence[str], path, column: str) -> list[int]:
    """Each raw label's class number among `names`; a label that is not one of them is a
    `DataError` naming the file, row, value and the known labels."""
    def canonical(text: str) -> str:  # integers by value ("01" is 1), binary spellings in any case
        number = _as_int(text)
        return str(number) if number is not None else text.lower() if binary else text

    binary = tuple(names) == BINARY_NAMES
    lookup = {canonical(n): i for i, n in enumerate(names)} | (LABEL_VALUES if binary else {})
    ids = []
    for row, value in enumerate(raw, start=1):
        found = lookup.get(canonical(value))
        if found is None:
            known = ", ".join(map(repr, names))
            raise DataError(f"{path}: row {row}: label {value!r} in column {column!r} is not one of the "
                            f"training data's labels ({known}). Fix the row, or name every class with --labels.")
        ids.append(found)
    return ids


def _read_rows(path: str | os.PathLike, options: DataOptions) -> tuple[list[str], list[str]]:
    """(texts, raw labels) of one data file, checked: columns present, no missing label,
    no empty text (or those rows dropped with `drop_invalid`)."""
    path = Path(path)
    _check_readable(path)
    ds = _read_file(path)
    if len(ds) == 0:
        raise DataError(f"{path}: the file has a header but no rows.")
    for column, flag in ((options.text_column, "--text-column"), (options.label_column, "--label-column")):
        if column not in ds.column_names:
            raise _missing_column(path, column, flag, ds.column_names)

    texts = ds[options.text_column]
    raw = raw_labels(ds[options.label_column], path, options.label_column)

    invalid = [row for row, text in enumerate(texts, start=1)
               if not isinstance(text, str) or not text.strip()]
    if invalid:
        shown = ", ".join(map(str, invalid[:10])) + (" ..." if len(invalid) > 10 else "")
        if not options.drop_invalid:
            raise DataError(f"{path}: {len(invalid)} row(s) with empty or whitespace-only text "
                            f"in column {options.text_column!r}: rows {shown}. Fix them, or pass "
                            "--drop-invalid to skip them.")
        logger.warning("%s: dropped %d row(s) with empty text (rows %s).", path, len(invalid), shown)
        bad = set(invalid)
        keep = [i for i in range(len(texts)) if i + 1 not in bad]
        texts = [texts[i] for i in keep]
        raw = [raw[i] for i in keep]
        if not texts:
            raise DataError(f"{path}: no rows left after dropping invalid ones.")
    return list(texts), raw


def _make_dataset(texts: list[str], labels: list[int], names: Sequence[str]):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


def load_file(path: str | os.PathLike, options: DataOptions | None = None, names: Sequence[str] | None = None):
    """Load one data file into a `Dataset` with columns `text` and `label` (a ClassLabel of
    `names`, or of the file's own labels)."""
    return load_split(path, options, names)


def load_split(patterns, options: DataOptions | None = None, names: Sequence[str] | None = None):
    """Load one split from one or more files or globs, concatenated in order, its labels
    numbered among `names` (default: the split's own classes, see `label_names`)."""
    options = options or DataOptions()
    files = expand_files(patterns)
    parts = [(path, *_read_rows(path, options)) for path in files]
    if names is None:
        names = label_names([v for _, _, raw in parts for v in raw], options.labels)
    if options.labels and len(set(names)) != len(names):
        raise DataError(f"--labels names a class twice: {', '.join(names)}.")
    texts, ids = [], []
    for path, part_texts, raw in parts:
        texts += part_texts
        ids += label_ids(raw, names, path, options.label_column)
    return _make_dataset(texts, ids, names)


def class_names_of(split) -> list[str]:
    """The class names of a split: its ClassLabel's, or, for a plain integer label column,
    negative/positive where it holds only 0 and 1, else "0", "1", ... up to its largest."""
    names = getattr(split.features["label"], "names", None)
    if names:
        return list(names)
    top = max(split["label"])
    return list(BINARY_NAMES) if top <= 1 else [str(i) for i in range(top + 1)]


def class_counts(split) -> list[int]:
    """Rows per class of a split, in the order of its classes (`class_names_of`)."""
    counts = [0] * len(class_names_of(split))
    for label in split["label"]:
        counts[label] += 1
    return counts


def check_classes(train, where: str = "the training data") -> None:
    """Refuse a training split with fewer than two classes; warn about classes with very
    few rows (or none)."""
    names, counts = class_names_of(train), class_counts(train)
    present = [n for n, c in zip(names, counts) if c]
    if len(present) < 2:
        raise DataError(f"{where}: every row has the label {present[0]!r}; a classifier needs at least two "
                        "classes.")
    for name, count in zip(names, counts):
        if count < FEW_ROWS:
            logger.warning("%s: the class %r has only %d row(s); its scores will be noisy.", where, name, count)


def warn_overlap(train, eval_) -> int:
    """Warn when reviews appear in both splits; return how many eval rows do."""
    train_texts = set(train["text"])
    overlap = sum(1 for t in eval_["text"] if t in train_texts)
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
    """
    for split, limit in (("train", train), ("eval", eval)):
        if limit and limit < len(data[split]):
            data[split] = data[split].shuffle(seed=0).select(range(limit))
    return data


def load_configured(table: dict):
    """The data a configuration's [data] table names: its files read and checked, limited
    to seeded random subsets, and split into train and validation where it asks for one."""
    options = DataOptions(table["text_column"], table["label_column"], table["drop_invalid"],
                          tuple(table["labels"]) or None)
    data = load_data(table["dir"] or None, train=table["train"] or None, eval=table["eval"] or None,
                     options=options)
    data = limit_data(data, table["limit_train"], table["limit_eval"])
    if table["validation"]:
        data = split_validation(data, table["validation"], table["split_seed"])
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
        column = "text" if "text" in ds.column_names else "input_ids"
        for value, label in zip(ds[column], ds["label"]):
            digest.update((value if isinstance(value, str) else json.dumps(list(value))).encode())
            digest.update(f"\0{label}\0".encode())
    return digest.hexdigest()[:16]


def split_validation(data, fraction: float, seed: int = 0):
    """Carve a `validation` split from `train` to choose settings on, never from `eval`.

    The split is stratified by label and seeded. Identical reviews stay on one side, and a
    training review that also appears in `eval` is never put in `validation`: the validation
    split shares no text with the reviews trained on or with `eval`. `train` keeps the rest
    (the training set as trained), in its original order.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DataError(f"The validation fraction must be between 0 and 1, got {fraction}.")
    texts, labels = list(data["train"]["text"]), list(data["train"]["label"])
    in_eval = set(data["eval"]["text"])
    first = {}  # each distinct text -> its first row's label
    for text, label in zip(texts, labels):
        first.setdefault(text, label)
    candidates = [t for t in first if t not in in_eval]
    wanted = round(fraction * len(texts))
    if wanted < 2 or len(candidates) - wanted < 2:
        raise DataError(f"A validation fraction of {fraction} of {len(texts)} training rows leaves too "
                        "few rows on one side; use more data or another fraction.")
    strata = [first[t] for t in candidates]
    counts = np.bincount(strata)
    stratify = strata if counts[counts > 0].min() >= 2 else None
    _, held_out = train_test_split(candidates, test_size=wanted, random_state=seed, stratify=stratify)
    held_out = set(held_out)
    keep = [i for i, t in enumerate(texts) if t not in held_out]
    chosen = [i for i, t in enumerate(texts) if t in held_out]
    data["validation"] = data["train"].select(chosen)
    data["train"] = data["train"].select(keep)
    return data


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "loralab" / "imdb-lab"


def _has_lab_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in LAB_FILES.values())


def resolve_data_dir(data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Find the lab sample: `data_dir`, `$LORALAB_DATA`, the cache, then a download."""
    for source, value in (("--data", data_dir), ("LORALAB_DATA", os.environ.get("LORALAB_DATA"))):
        if value:
            folder = Path(value).expanduser()
            if not folder.is_dir():
                raise DataError(f"{source} points to {folder}, which is not a directory.")
            missing = [n for n in LAB_FILES.values() if not (folder / n).is_file()]
            if missing:
                raise DataError(f"{source} points to {folder}, which has no {' or '.join(missing)}.")
            return folder
    cached = cache_dir()
    if _has_lab_files(cached):
        return cached
    if not download:
        raise DataError("No IMDB data found: pass --data DIR (a folder with train.csv and "
                        "eval.csv) or set LORALAB_DATA.")
    return download_lab_sample(cached)


def _lab_indices(indices_file: str | os.PathLike | None = None) -> list[tuple[int, str]]:
    """(index, split) of every review of the lab sample. The label is implied by the
    index (positives come first), and is read from the archive's folder names."""
    if indices_file is None:
        text = resources.files("loralab").joinpath("resources/imdb_lab_indices.json").read_text("utf-8")
    else:
        text = Path(indices_file).read_text("utf-8")
    splits = json.loads(text)
    return [(int(index), split) for split in LAB_FILES for index in splits[split]]


def _download(url: str, dest: Path) -> None:
    from tqdm.auto import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=60)
    except OSError as err:
        raise DataError(f"Could not download the IMDB archive from {url}: {err}. Offline? "
                        "Set LORALAB_DATA to a folder with the lab's train.csv and eval.csv, "
                        "or pass --data DIR.") from None
    total = int(response.headers.get("Content-Length") or 0) or None
    with response, atomic_path(dest) as tmp, open(tmp, "wb") as out, tqdm(
        total=total, unit="B", unit_scale=True, desc="Downloading aclImdb"
    ) as bar:
        while chunk := response.read(1 << 20):
            out.write(chunk)
            bar.update(len(chunk))


def download_lab_sample(dest: str | os.PathLike, *, url: str | None = None,
                        indices_file: str | os.PathLike | None = None) -> Path:
    """Download aclImdb and rebuild the lab's exact train/eval sample in `dest`.

    A review's `index` is its position in the Stanford train split listed positives first
    and then negatives, file names in lexicographic order inside each folder (so the
    negatives start at the number of positives, 12,500). The lab's 2,500 indices ship
    with loralab; the reviews come from the archive.
    """
    url = url or os.environ.get("LORALAB_IMDB_URL", IMDB_URL)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "aclImdb_v1.tar.gz"
    if not archive.exists():
        _download(url, archive)
    wanted = _lab_indices(indices_file)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            folders = {label: sorted(n for n in members if _in_train_folder(n, label))
                       for label in ("pos", "neg")}
            ordered = folders["pos"] + folders["neg"]
            rows = {"train": [], "eval": []}
            for index, split in wanted:
                if index >= len(ordered):
                    raise DataError(f"{archive}: has {len(ordered)} train reviews, "
                                    f"but the lab sample needs index {index}.")
                name = ordered[index]
                label = int(name.split("/")[-2] == "pos")
                text = tar.extractfile(members[name]).read().decode("utf-8")
                rows[split].append((index, text, label))
    except (tarfile.TarError, EOFError, OSError) as err:
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive}: the downloaded archive is damaged ({err}); it was removed, "
                        "run again to download it anew.") from None
    for split, name in LAB_FILES.items():
        with atomic_path(dest / name) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["index", "review", "label"])
            writer.writerows(rows[split])
    archive.unlink()
    logger.info("Rebuilt the lab sample in %s (%d train, %d eval).", dest,
                len(rows["train"]), len(rows["eval"]))
    return dest


def _in_train_folder(name: str, label: str) -> bool:
    parts = name.split("/")
    return len(parts) >= 3 and parts[-3] == "train" and parts[-2] == label and parts[-1].endswith(".txt")

