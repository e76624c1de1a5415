"""How close LoRA training comes to this CPU's matrix-multiply peak.

Counts the matrix FLOPs of forward and backward of LoRA r=6 training steps on real lab
batches (torch's FlopCounterMode, the batches' token counts), divides by the measured
time, and compares with the bfloat16 and float32 matmul peaks measured in the same run.
The batches come twice: sorted by length, as `loralab train` groups them (the figure),
and in data order, padded to each batch's longest review. Then profiles one step and
lists the top operators by time: where the rest goes.

    python benchmarks/roofline.py [--reviews 48] [--tiny]

Last line: `fraction of bf16 peak: X`.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import done, lab_batches, machine, median, table


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--reviews", type=int, default=48)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    max_length = 64 if args.tiny else 512
    if args.tiny:
        args.reviews = 16

    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from loralab import inject_lora, load_model, load_tokenizer
    from loralab.fastdropout import fast_dropout_enabled

    tokenizer = load_tokenizer(args.model)
    orders = {"length-grouped (as loralab train)": lab_batches(tokenizer, args.reviews, 8, max_length, by_length=True),
              "data order": lab_batches(tokenizer, args.reviews, 8, max_length)}
    torch.manual_seed(0)
    model = inject_lora(load_model(args.model), 6).train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    def epoch(batches):
        for batch in batches:
            step(batch)

    measured, repeats = {}, 1 if args.tiny else 3
    with fast_dropout_enabled(model):
        for name, batches in orders.items():
            with FlopCounterMode(display=False) as counter:
                epoch(batches)  # also the warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                epoch(batches)
                times.append(time.perf_counter() - start)
            padded = sum(b["attention_mask"].numel() for b in batches)
            measured[name] = (counter.get_total_flops(), median(times), padded)
        grouped = orders["length-grouped (as loralab train)"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(grouped[len(grouped) // 2])

    # --tiny checks that the script runs: small matrices (a CPU without native bf16 takes
    # minutes for 2048^3 in bf16).
    size = 256 if args.tiny else 2048
    bf16_peak, fp32_peak = matmul_peak(torch.bfloat16, size), matmul_peak(torch.float32, size)
    tokens = sum(b["attention_mask"].sum().item() for b in grouped)
    print(f"# roofline: {machine()}")
    print(f"# model {args.model}, LoRA r=6, {args.reviews} lab train reviews ({tokens} tokens) in batches of 8, "
          f"bf16 autocast, fast dropout; matrix FLOPs of forward and backward as run (padding included); "
          f"peaks: 2048^3 matmul, median of 10; epochs: median of {repeats}\n")
    rows = [["measured bf16 matmul peak", bf16_peak / 1e9, "", "", ""],
            ["measured fp32 matmul peak", fp32_peak / 1e9, "", "", ""]]
    for name, (flops, seconds, padded) in measured.items():
        rows.append([f"LoRA training, {name}", flops / seconds / 1e9, f"{padded:,}", f"{flops / 1e9:.1f}",
                     f"{seconds:.2f}"])
    print(table(["figure", "GFLOP/s", "padded tokens", "GFLOP/epoch", "s/epoch"], rows))
    flops, seconds, padded = measured["length-grouped (as loralab train)"]
    achieved = flops / seconds
    print(f"\nlength-grouped: {100 * achieved / fp32_peak:.1f}% of the fp32 peak, "
          f"{100 * achieved / bf16_peak:.1f}% of the bf16 peak; on the reviews' own {tokens:,} tokens "
          f"(FLOPs scaled by {tokens:,} / {padded:,}, padding left out): "
          f"{100 * achieved * tokens / padded / bf16_peak:.1f}%")
    print("\nTop operators of one length-grouped training step by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    done(achieved / bf16_peak, "fraction of bf16 peak")


if __name__ == "__main__":
    main()
