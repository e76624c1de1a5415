"""A whole `loralab train` run through `torch.compile` (inductor) against eager: wall time
from start to finish (loading, compiling, training, evaluation), training time and
accuracy, each run in a process of its own, eager and compiled alternating.

    python benchmarks/compile.py [--method lora|full] [--reviews 2000] [--eval-reviews 500]
                                 [--epochs 1] [--repeats 1] [--tiny]

Compiled, training uses inductor's dropout (loralab's CPU fast dropout does not trace) and
evaluation compiles its forward; every distinct batch shape is compiled (or made dynamic)
once, so the compile time is part of the figure, as a user pays it on a first run (each
run gets an empty inductor cache). #19's rule: compile becomes the default only where a
whole run is at least 15% faster with equal accuracy.
Last line: `ratio: X`, eager's median wall time over compiled's (above 1: compiled is faster).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from _common import alternate, done, loralab_train, machine, median, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--eval-reviews", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.reviews, args.eval_reviews, args.max_length, args.repeats = 16, 16, 64, 1

    flags = ["--method", args.method, "--rank", "6", "--model", args.model, "--limit-train", str(args.reviews),
             "--limit-eval", str(args.eval_reviews), "--epochs", str(args.epochs), "--max-length",
             str(args.max_length)]
    print(f"# compile: {machine()}")
    print(f"# model {args.model}, `loralab train --method {args.method}` defaults (LoRA r=6 where LoRA), "
          f"{args.reviews} lab train / {args.eval_reviews} eval reviews, {args.epochs:g} epoch(s), max "
          f"{args.max_length} tokens; each run a process of its own with an empty inductor cache (a first run's "
          f"compile time), {args.repeats} alternating repeat(s), no warm-up\n")
    runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
    with tempfile.TemporaryDirectory() as tmp:
        def side(name: str, extra: list[str]):
            def run() -> float:
                out = f"{tmp}/{name}-{len(runs[name])}"
                result = loralab_train(out, flags + extra, {"TORCHINDUCTOR_CACHE_DIR": f"{out}-inductor"})
                runs[name].append(result)
                print(f"measured {name}: {result['wall']:.0f} s", file=sys.stderr, flush=True)
                return result["wall"]
            return run

        walls = alternate({"eager": side("eager", []), "compiled": side("compiled", ["--compile"])},
                          repeats=args.repeats, warmup=0)
    rows = []
    for name, results in runs.items():
        rows.append([name, median(walls[name]), min(walls[name]), max(walls[name]),
                     median([r["seconds"] for r in results]), median([r["wall"] - r["seconds"] for r in results]),
                     " / ".join(f"{r['accuracy']:.3f}" for r in results), median([r["peak_mb"] for r in results])])
    print(f"Whole run ({runs['eager'][0]['precision']}; seconds, median over repeats; 'other' = wall - training: "
          "imports, loading, tokenizing, evaluation)")
    print(table(["side", "wall s", "min", "max", "train s", "other s", "eval accuracy", "peak MB"], rows))
    ratio = median(walls["eager"]) / median(walls["compiled"])
    if not args.tiny:
        print(f"\ncompiled {ratio:.2f}x eager's speed over a whole run: "
              f"{'at least' if ratio >= 1.15 else 'below'} the 1.15x that would make it the default")
    done(ratio)


if __name__ == "__main__":
    main()
