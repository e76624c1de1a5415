"""Peak resident memory of training: full fine-tuning, head-tuning and LoRA r=6, each in a
process of its own (`loralab train` with its defaults), on the same lab reviews.

    python benchmarks/memory.py [--reviews 64] [--tiny]

Target: LoRA below full fine-tuning. Last line: `ratio: X`, LoRA's peak over full
fine-tuning's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _common import done, machine, table

CHILD = """
import json, resource, sys
from loralab.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(method: str, args, out: str) -> float:
    cmd = [sys.executable, "-c", CHILD, "train", "--method", method, "--rank", "6", "--model", args.model,
           "--limit-train", str(args.reviews), "--limit-eval", "16", "--epochs", "1",
           "--max-length", str(args.max_length), "--out", out, "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        sys.exit(f"{method} failed: {proc.stderr[-2000:]}")
    return result["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--reviews", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.reviews, args.max_length = 16, 64
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("full", "head", "lora"):
            peaks[method] = measure(method, args, f"{tmp}/{method}")
    print(f"# memory: {machine()}")
    print(f"# model {args.model}, `loralab train` defaults (bf16 autocast where supported, dynamic padding, "
          f"batch 8), {args.reviews} lab train reviews, 1 epoch, max {args.max_length} tokens; peak RSS "
          f"(ru_maxrss) of each process, model loading and evaluation included\n")
    print(table(["method", "peak MB", "x full"], [[m, p, p / peaks["full"]] for m, p in peaks.items()]))
    done(peaks["lora"] / peaks["full"])


if __name__ == "__main__":
    main()
