"""Shared fixtures: offline always, the lab sample from ../shared/data, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if "LORALAB_DATA" not in os.environ and (SHARED_DATA / "imdb-lab").is_dir():
    os.environ["LORALAB_DATA"] = str(SHARED_DATA / "imdb-lab")

import pytest  # noqa: E402
import torch  # noqa: E402

LAB_DATA = Path(os.environ.get("LORALAB_DATA", SHARED_DATA / "imdb-lab"))
needs_lab_data = pytest.mark.skipif(not (LAB_DATA / "train.csv").exists(), reason="no IMDB lab sample")


def write_csv(path, header, rows) -> None:
    """A CSV file of a header and rows (tests' data)."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def tiny_bert(num_labels: int = 2, seed: int = 0, **overrides):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        **overrides)
    return BertForSequenceClassification(config).eval()


def tiny_distilbert(seed: int = 0):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, num_labels=2)
    return DistilBertForSequenceClassification(config).eval()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def distilbert():
    return tiny_distilbert()


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: (exit code, stdout, stderr); a value the parser refuses is
    argparse's exit 2, as a process would end."""
    from loralab.cli import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as stop:
            code = stop.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny BERT saved as a model folder with the default model's tokenizer: a stand-in
    for a real model that trains in seconds."""
    from transformers import BertConfig, BertForSequenceClassification

    from loralab.models import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the system picks it), so tests
    that start a server or a process group can run side by side."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, read from its header; fails on anything else."""
    import struct

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


def count_fraction(value: float, n: int) -> int:
    """`value` as a count of `n` rows: an accuracy of n rows is k / n for a whole k."""
    count = round(value * n)
    assert abs(value - count / n) < 1e-6, f"{value} is not a fraction of {n} rows"
    return count


POSITIVE = ["wonderful", "moving", "brilliant", "funny", "superb", "charming", "great", "lovely"]
NEGATIVE = ["dull", "boring", "awful", "clumsy", "tedious", "weak", "bad", "lifeless"]
SUBJECTS = ["film", "story", "cast", "script", "ending", "music", "director", "plot"]


def write_synthetic_reviews(folder: Path, n_train: int = 96, n_eval: int = 64, seed: int = 0) -> Path:
    """Small made-up IMDB-like data (review,label; half positive) that a tiny model can
    learn from: stands in for the lab sample wherever accuracy on it is not the point."""
    import csv
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("eval", n_eval)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["review", "label"])
            for i in range(n):
                label = i % 2
                words = POSITIVE if label else NEGATIVE
                length = rng.randint(1, 12)  # many distinct lengths, as real reviews have
                filler = " ".join(rng.choice(SUBJECTS) for _ in range(length))
                writer.writerow([f"{split} {i}: the {filler} was {rng.choice(words)} and {rng.choice(words)}.",
                                 label])
    return folder


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
    return write_synthetic_reviews(tmp_path_factory.mktemp("synthetic-reviews"))


@pytest.fixture(scope="module")
def synthetic_data(synthetic_data_dir):
    """Point LORALAB_DATA at the synthetic reviews for a module (its module fixtures too)."""
    old = os.environ.get("LORALAB_DATA")
    os.environ["LORALAB_DATA"] = str(synthetic_data_dir)
    yield synthetic_data_dir
    if old is None:
        os.environ.pop("LORALAB_DATA", None)
    else:
        os.environ["LORALAB_DATA"] = old


TINY_STUDY = """
model = "{model}"
[data]
limit_train = 64
limit_eval = 48
[train]
epochs = 1
max_length = 64
learning_rate = 1e-3
[methods]
lora_ranks = [2]
sweep_points = 3
extract_ranks = [1, 4]
extract_energies = [0.9]
"""


@pytest.fixture
def tiny_study_config(tmp_path, tiny_model_dir):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_STUDY.format(model=tiny_model_dir))
    return path
