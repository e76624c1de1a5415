"""Resident memory of training: LoRA r=6 against full fine-tuning, each in a process of its
own (`loralab train` with its defaults), on the lab's reviews, with the memory after each
epoch; and the padding that bounded batch lengths cost.

    python benchmarks/memory.py [--reviews 2000] [--eval-reviews 500] [--epochs 1]
                                [--before] [--levers] [--checkpointing] [--tiny]

`--before` adds both methods as they trained before #19: each batch padded to its longest
review and run in one pass; `--levers` adds LoRA in that state with one other lever each
(oneDNN's primitive cache, glibc's arenas, jemalloc where installed); `--checkpointing`
adds LoRA with `--gradient-checkpointing` (each layer recomputed in the backward pass, only
its input kept). The defaults pad
each batch by less than an eighth of its length (multiples of 8 to 64 tokens by length;
multiples of 32 until the SST-5 study found them costly on sentences) and, on a CPU, run
each batch of 8 in passes of the memory of 1,024 tokens at 512 (`micro_batch_size`: 2 reviews
of 512, each batch cut at its own length).
Targets (#19): LoRA's peak at most 2,000 MB and at most half of full fine-tuning's;
resident memory after the last epoch within 10% of after the first. Last line:
`ratio: X`, LoRA's peak over full fine-tuning's (both with the defaults).
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile

from _common import done, loralab_train, machine, table

JEMALLOC = sorted(glob.glob("/usr/lib/*/libjemalloc.so.2") + glob.glob("/usr/lib/libjemalloc.so.2"))


def sides(args) -> list[tuple[str, str, list[str], dict]]:
    """(name, method, extra flags, extra environment) of every process to measure."""
    before = ["--pad-to-multiple-of", "1", "--micro-batch-size", "8"]
    out = [("full", "full", [], {}), ("LoRA r=6", "lora", [], {})]
    if args.before or args.levers:
        out += [("full, before", "full", before, {}), ("LoRA r=6, before", "lora", before, {})]
    if args.checkpointing:
        out.append(("LoRA r=6, checkpointing", "lora", ["--gradient-checkpointing"], {}))
    if args.levers:
        out += [("LoRA, before, oneDNN cache 8", "lora", before, {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "8"}),
                ("LoRA, before, MALLOC_ARENA_MAX=2", "lora", before, {"MALLOC_ARENA_MAX": "2"})]
        if JEMALLOC:
            out.append(("LoRA, before, jemalloc", "lora", before, {"LD_PRELOAD": JEMALLOC[0]}))
    return out


def measure(method: str, flags: list[str], env: dict, args, out: str) -> dict:
    rank = ["--rank", "6"] if method == "lora" else []  # full fine-tuning takes no rank
    return loralab_train(out, ["--method", method, *rank, "--model", args.model, "--limit-train",
                               str(args.reviews), "--limit-eval", str(args.eval_reviews), "--epochs", str(args.epochs),
                               "--max-length", str(args.max_length), *flags], env)


def padding(args) -> list[list]:
    """Tokens computed per real token, over one epoch of `loralab train`'s length-grouped
    batches (the Trainer's sampler, seed 0), for each padding multiple."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from loralab import load_tokenizer
    from loralab.data import limit_data, load_data
    from loralab.inference import bucket_length

    data = limit_data(load_data(), args.reviews, 1)
    lengths = [len(ids) for ids in load_tokenizer(args.model)(list(data["train"]["text"]), truncation=True,
                                                               max_length=args.max_length)["input_ids"]]
    order = list(LengthGroupedSampler(8, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    batches = [[lengths[i] for i in order[start:start + 8]] for start in range(0, len(order), 8)]
    real = sum(lengths)
    rows = []
    for multiple in (1, 8, 16, 32, 64, 0):
        padded = [bucket_length(max(b), multiple, args.max_length) for b in batches]
        rows.append([multiple or "auto (default)", sum(p * len(b) for p, b in zip(padded, batches)) / real,
                     len(set(padded))])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--eval-reviews", type=int, default=500)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--before", action="store_true",
                        help="also both methods as before #19 (exact padding, each batch in one pass)")
    parser.add_argument("--levers", action="store_true", help="also LoRA as before with each other lever")
    parser.add_argument("--checkpointing", action="store_true", help="also LoRA with --gradient-checkpointing")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.reviews, args.eval_reviews, args.max_length = 16, 16, 64
        args.checkpointing = True  # the smoke test covers every side's code

    print(f"# memory: {machine()}")
    print(f"# model {args.model}, `loralab train` defaults (batch 8 in passes of the memory of 1,024 tokens at "
          "512 on a CPU, "
          f"length-grouped, bf16 autocast where supported), {args.reviews} lab train / {args.eval_reviews} eval "
          f"reviews, {args.epochs:g} epoch(s), "
          f"max {args.max_length} tokens; peak RSS (ru_maxrss) of each process, loading and evaluation "
          "included; RSS after each epoch's training steps and after its evaluation\n")
    print("Padding: tokens computed per real token, one epoch of length-grouped batches")
    print(table(["multiple of", "tokens / real", "distinct lengths"], padding(args)))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, method, flags, env) in enumerate(sides(args)):
            results[name] = measure(method, flags, env, args, f"{tmp}/{i}")
            print(f"measured {name}", file=sys.stderr, flush=True)
    rows = []
    for name, r in results.items():
        epochs = r["memory"] or [{}]
        rss = [row.get("rss_mb") for row in epochs]
        growth = rss[-1] / rss[0] if len(rss) > 1 and rss[0] else float("nan")
        rows.append([name, r["peak_mb"], r["peak_mb"] / results["full"]["peak_mb"],
                     " / ".join(f"{row.get('train_rss_mb', 0):,.0f}" for row in epochs),
                     " / ".join(f"{value or 0:,.0f}" for value in rss), growth, r["seconds"], r["accuracy"]])
    print(f"\nResident memory ({results['full']['precision']}; after each epoch: MB after its training steps, "
          "and after its evaluation; 'before': exact padding, each batch in one pass)")
    print(table(["side", "peak MB", "x full", "after training", "after eval", "last / first", "train s",
                 "eval acc"], rows))
    lora, full = results["LoRA r=6"]["peak_mb"], results["full"]["peak_mb"]
    if not args.tiny:
        met = lora <= 2000 and lora <= full / 2
        print(f"\nLoRA r=6 peak {lora:,.0f} MB, {lora / full:.2f}x full fine-tuning's: {'met' if met else 'not met'} "
              "(target: at most 2,000 MB and at most half of full's)")
    if args.checkpointing:
        ckpt = results["LoRA r=6, checkpointing"]
        print(f"LoRA r=6 with --gradient-checkpointing: {ckpt['peak_mb']:,.0f} MB, {ckpt['peak_mb'] / full:.2f}x "
              f"full's, training {ckpt['seconds'] / results['LoRA r=6']['seconds']:.2f}x LoRA's time")
    done(lora / full)


if __name__ == "__main__":
    main()
