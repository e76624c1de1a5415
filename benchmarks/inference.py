"""Inference throughput: the base model with a trained head, the LoRA model unmerged, and
the LoRA model merged (`merge_and_unload`).

    python benchmarks/inference.py [--reviews 200] [--repeats 5] [--tiny]

Target: merged within 3% of the base model. Last line: `ratio: X`, merged reviews/s
over base reviews/s.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import alternate, done, machine, median, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--reviews", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="inference batch (default: loralab's)")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    max_length = 64 if args.tiny else 512
    if args.tiny:
        args.reviews, args.repeats = 16, 1

    from loralab import (
        inject_lora,
        load_model,
        load_tokenizer,
        lora_layers,
        merge_and_unload,
    )
    from loralab.data import limit_data, load_data
    from loralab.inference import bf16_supported
    from loralab.predict import predict_texts
    from loralab.training import TrainSettings

    tokenizer = load_tokenizer(args.model)
    texts = list(limit_data(load_data(), 1, args.reviews)["eval"]["text"])
    settings = TrainSettings(quiet=True, eval_batch_size=args.batch_size, max_length=max_length)
    precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    torch.manual_seed(0)
    base = load_model(args.model).eval()
    unmerged = inject_lora(copy.deepcopy(base), 6)
    for layer in lora_layers(unmerged).values():  # a trained adapter: B is not zero
        torch.nn.init.normal_(layer.B, std=0.01)
    merged = merge_and_unload(copy.deepcopy(unmerged))

    def timer(model):
        def run() -> float:
            start = time.perf_counter()
            predict_texts(model, tokenizer, texts, settings)
            return len(texts) / (time.perf_counter() - start)
        return run

    runs = alternate({"base model + head": timer(base), "LoRA r=6 unmerged": timer(unmerged),
                      "LoRA r=6 merged": timer(merged)}, repeats=args.repeats)
    base_rate = median(runs["base model + head"])
    print(f"# inference: {machine()}")
    print(f"# model {args.model}, {len(texts)} lab eval reviews, batches of {args.batch_size} sorted by length, "
          f"max {max_length} tokens, {precision}, inference mode, {args.repeats} alternating repeats\n")
    print(table(["model", "reviews/s (median)", "min", "max", "x base"],
                [[k, median(v), min(v), max(v), median(v) / base_rate] for k, v in runs.items()]))
    done(median(runs["LoRA r=6 merged"]) / base_rate)


if __name__ == "__main__":
    main()
