"""What only a GPU shows, on a tiny model that needs no hub and no packaged model: LoRA
training with `--device auto` lands on the GPU in bf16; host and GPU memory are two
fields (`peak_memory_mb`, the process's resident memory; `peak_gpu_memory_mb`, the GPU's
allocated peak); a study with `--jobs 2` shares the GPU and its report shows both.

    python benchmarks/gpu_check.py [--out DIR]

Off a GPU the same code runs on the CPU and checks that the GPU field stays empty, so the
script cannot rot (tests/test_benchmarks.py runs it). Its last line: `checked: N`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

WORDS = ["good", "great", "fine", "moving", "bad", "dull", "awful", "weak", "film", "plot", "cast", "story"]


def tiny_model(folder: Path) -> Path:
    """A small BERT with its own word-level tokenizer, saved as a model folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def reviews(folder: Path) -> Path:
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 96), ("eval", 48)):
        rows = []
        for i in range(n):
            label = i % 2
            mood = WORDS[:4] if label else WORDS[4:8]
            filler = " ".join(rng.choice(WORDS[8:]) for _ in range(rng.randint(1, 8)))
            rows.append(f"{filler} {rng.choice(mood)},{label}")
        (folder / f"{split}.csv").write_text("review,label\n" + "\n".join(rows) + "\n")
    return folder


def main() -> int:
    import torch

    import loralab
    from _common import machine
    from loralab.study import load_config, run_study
    from loralab.training import TrainSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where to keep the study and its report (default: a temporary folder)")
    parser.add_argument("--tiny", action="store_true", help="accepted for the benchmark smoke test")
    parser.add_argument("--model", help="ignored: the check builds its own tiny model")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="loralab-gpu-"))
    model, data = tiny_model(out / "model"), reviews(out / "data")
    gpu = torch.cuda.is_available()
    checked = 0
    print(machine())

    settings = TrainSettings(epochs=2, max_length=32, learning_rate=3e-3, quiet=True)  # device and precision: auto
    info = loralab.train("lora", out / "lora", str(model), data=loralab.load_data(data), settings=settings,
                         rank=4, init="kaiming")
    r = info.result
    print(f"device: {torch.cuda.get_device_name(0) if gpu else 'cpu'}; precision {r.precision}; eval accuracy "
          f"{info.eval_accuracy:.3f}; host peak {r.peak_memory_mb:,.0f} MB; GPU peak {r.peak_gpu_memory_mb} MB")
    assert r.peak_memory_mb > 50, r.peak_memory_mb  # the process's resident memory: torch alone is more
    checked += 1
    if gpu:
        assert r.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), r.precision
        assert r.peak_gpu_memory_mb is not None and 0 < r.peak_gpu_memory_mb < r.peak_memory_mb, r
        saved = json.loads((out / "lora" / "loralab.json").read_text())
        assert saved["peak_gpu_memory_mb"] == r.peak_gpu_memory_mb
        checked += 2
    else:
        assert r.peak_gpu_memory_mb is None
        checked += 1

    config = load_config(None, out=str(out / "study"), model=str(model), jobs=2, **{
        "data.dir": str(data), "train.epochs": 1.0, "train.max_length": 32, "methods.lora_ranks": [2, 4],
        "methods.extract": False, "methods.sweep_points": 2})
    study = run_study(config, quiet=True)
    from loralab.report import write_report

    report = write_report(out / "study").read_text()
    trained = [row for row in study.rows if row.history]
    for row in trained:
        print(f"{row.method:6} r={row.rank}: accuracy {row.eval_accuracy:.3f}, host {row.peak_memory_mb:,.0f} MB, "
              f"GPU {row.peak_gpu_memory_mb} MB")
        assert (row.peak_gpu_memory_mb is not None) == gpu, row
        assert row.peak_memory_mb > 50
    assert ("Peak GPU memory (MB)" in report) == gpu
    checked += len(trained) + 1
    print(f"checked: {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
