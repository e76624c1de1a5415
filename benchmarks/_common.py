"""Shared helpers of the benchmarks: machine facts, alternating timed runs, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = "?"
    return (f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), commit {commit or '?'}")


def alternate(sides: dict[str, Callable[[], float]], repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Run each side's measurement in turn (A B A B ...) after `warmup` rounds; each call
    returns one measurement. Returns every measurement per side."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    results = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            results[name].append(fn())
    return results


def training_pass(model, batches, precision: str, fast_dropout: bool = False) -> Callable[[], float]:
    """A timer of training steps (forward, backward, AdamW step) over `batches` under bf16
    autocast when `precision` is "bf16": each call runs one pass and returns its seconds."""
    import torch

    from loralab.fastdropout import fast_dropout_enabled

    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def run() -> float:
        start = time.perf_counter()
        with fast_dropout_enabled(model, fast_dropout):
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(**batch).loss
                loss.backward()
                optim.step()
                optim.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return run


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[f"{c:,.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def lab_batches(tokenizer, n_reviews: int, batch_size: int, max_length: int = 512, by_length: bool = False):
    """The first `n_reviews` of the lab's train data (seeded shuffle), tokenized and cut
    into padded batches in a fixed order: the same batches for every side. `by_length`
    sorts the reviews by length first, as `loralab train`'s length-grouped batches."""
    from loralab.data import limit_data, load_data

    data = limit_data(load_data(), n_reviews, 1)
    texts, labels = list(data["train"]["text"]), list(data["train"]["label"])
    import torch

    if by_length:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        texts, labels = [texts[i] for i in order], [labels[i] for i in order]

    batches = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        enc["labels"] = torch.tensor(labels[start:start + batch_size])
        batches.append(dict(enc))
    return batches


TRAIN_CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from loralab.cli import main
code = main(sys.argv[2:])
info = json.load(open(sys.argv[1] + "/loralab.json")) if code == 0 else {}
print(json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "wall": time.perf_counter() - start, "memory": info.get("memory"),
                  "seconds": info.get("train_seconds"), "accuracy": info.get("eval_accuracy"),
                  "precision": info.get("precision")}))
"""


def loralab_train(out: str, flags: list[str], env: dict | None = None) -> dict:
    """`loralab train --out OUT *flags` in a fresh process: its exit code, peak RSS (MB), wall
    seconds from before importing loralab to the end, and from its `loralab.json` the memory
    log, training seconds, eval accuracy and precision. Exits with the child's stderr if it
    fails."""
    cmd = [sys.executable, "-c", TRAIN_CHILD, out, "train", "--out", out, "--quiet", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"code": proc.returncode}
    if result["code"] != 0:
        sys.exit(f"loralab train {' '.join(flags)} failed: {proc.stderr[-2000:]}")
    return result


def done(ratio: float, name: str = "ratio") -> None:
    print(f"{name}: {ratio:.2f}")
    sys.stdout.flush()
