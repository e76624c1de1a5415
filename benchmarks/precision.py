"""bfloat16 autocast against float32, settled at full size: LoRA r=6 trained with the tuned
settings (kaiming init, mean pooling, lr 3e-3, 3 epochs) on the lab's 2,000 / 500 reviews,
seeds 0, 1 and 2 in each precision, each run a `loralab train` process of its own, the
precisions alternating (bf16 seed 0, fp32 seed 0, bf16 seed 1, ...).

    python benchmarks/precision.py [--seeds 0,1,2] [--keep DIR] [--reviews 2000]
                                   [--eval-reviews 500] [--epochs 3] [--tiny]

A run takes 15-30 minutes on 2 cores: `--keep DIR` keeps each finished run's figures
(`DIR/<precision>-seed<N>.json`, with its flags and machine) and skips it when the script
is run again with the same flags, so a long comparison survives an interruption. On a CPU
without native bfloat16 (no AVX512-BF16 or AMX) bf16 is emulated: its accuracy still
counts, its time does not. #19's rule: if bf16's median accuracy is more than 1 point
below fp32's, find the operation that costs it or change the default.
Last line: `ratio: X`, fp32's median training time over bf16's (above 1: bf16 is faster).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import done, loralab_train, machine, median, table

PRECISIONS = ("bf16", "fp32")


def spread(values: list[float], fmt: str) -> str:
    """Median and min-max, as the study's tables give them."""
    return f"{median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def run(out: Path, flags: list[str]) -> dict:
    """One run's figures, kept in `out`.json and reused only where its flags are the same."""
    kept = out.with_suffix(".json")
    if kept.exists():
        saved = json.loads(kept.read_text())
        if saved["flags"] == flags:
            print(f"kept {out.name}", file=sys.stderr, flush=True)
            return saved
    result = {**loralab_train(str(out), flags), "flags": flags, "machine": machine()}
    kept.write_text(json.dumps(result, indent=1))
    print(f"measured {out.name}: accuracy {result['accuracy']:.3f}, {result['seconds']:.0f} s", file=sys.stderr,
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--keep", help="folder that keeps each finished run (resumes the comparison)")
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--eval-reviews", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.reviews, args.eval_reviews, args.max_length, args.epochs, args.seeds = 16, 16, 64, 1, "0"
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    from loralab.inference import bf16_supported

    native = bf16_supported(torch.device("cpu"))
    print(f"# precision: {machine()}")
    print(f"# model {args.model}, `loralab train --method lora --rank 6 --init kaiming --pooling mean --lr 3e-3`, "
          f"{args.reviews} lab train / {args.eval_reviews} eval reviews, {args.epochs:g} epoch(s), max "
          f"{args.max_length} tokens, seeds {args.seeds}; each run a process of its own, precisions alternating; "
          f"bf16 {'native' if native else 'EMULATED (no AVX512-BF16 or AMX): its times do not count'}\n")
    keep = Path(args.keep) if args.keep else None
    results: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            for precision in PRECISIONS:
                flags = ["--method", "lora", "--rank", "6", "--init", "kaiming", "--pooling", "mean",
                         "--lr", "3e-3", "--epochs", f"{args.epochs:g}", "--seed", str(seed),
                         "--precision", precision, "--model", args.model, "--limit-train", str(args.reviews),
                         "--limit-eval", str(args.eval_reviews), "--max-length", str(args.max_length)]
                results[precision].append(run(folder / f"{precision}-seed{seed}", flags))
    rows = []
    for precision, runs in results.items():
        rows.append([precision, spread([r["accuracy"] for r in runs], ".3f"),
                     " / ".join(f"{r['accuracy']:.3f}" for r in runs),
                     spread([r["seconds"] for r in runs], ",.0f"), median([r["peak_mb"] for r in runs])])
    print("LoRA r=6, eval accuracy and training seconds: median (min-max) over seeds")
    print(table(["precision", "eval accuracy", "by seed", "train s", "peak MB"], rows))
    machines = sorted({r.get("machine", "?, ?").split(", ", 1)[1].split(", commit")[0]  # no date, no commit
                       for runs in results.values() for r in runs})
    if len(machines) > 1:
        print("runs kept from several machines (compare their times with care): " + "; ".join(machines))
    accuracy = {p: median([r["accuracy"] for r in runs]) for p, runs in results.items()}
    seconds = {p: median([r["seconds"] for r in runs]) for p, runs in results.items()}
    gap = 100 * (accuracy["bf16"] - accuracy["fp32"])
    if not args.tiny:
        print(f"\nbf16's median accuracy {gap:+.1f} points against fp32's: "
              f"{'within' if gap >= -1 else 'more than'} 1 point below (#19's bound)")
    done(seconds["fp32"] / seconds["bf16"])


if __name__ == "__main__":
    main()
