"""The IMDB lab sample (2,000 training and 500 eval reviews) and where it comes from.

In order: `--data DIR`, `$LORALAB_DATA`, the cache folder `~/.cache/loralab/imdb-lab`, and
last a download of the official aclImdb archive from which the lab's exact sample is
rebuilt (see `download_lab_sample`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tarfile
import urllib.request
from importlib import resources
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_path

logger = logging.getLogger("loralab")

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
LAB_FILES = {"train": "train.csv", "eval": "eval.csv"}


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
                        "or pass --data DIR.") from err
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
                        "run again to download it anew.") from err
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
