"""LoRA training throughput: loralab against Hugging Face PEFT, side by side.

Main figure: reviews per second of forward + backward + AdamW step, same model (the
default MiniLM), same rank, alpha, targets and trainable head, the same batches of the
lab's train data in the same order, the same precision (bf16 autocast where supported)
and optimiser. Also: (a) end to end as each is used by default (`loralab.train` against
PEFT + the Trainer with its defaults), (b) the LoRA layer alone against PEFT's
`lora.Linear`, (c) `loralab train` as it trains now (batch lengths bounded, padded by
under an eighth; on a CPU in passes of the memory of 1,024 tokens at 512) against each batch in one
pass, and against how it trained before #19 (exact lengths, one pass): the time those
memory levers cost.

    python benchmarks/lora_train.py [--reviews 96] [--repeats 5] [--padding-reviews 256] [--tiny]

Last line: `ratio: X`, loralab's reviews/s over PEFT's in the main figure.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import alternate, done, lab_batches, machine, median, table, training_pass

RANK, ALPHA = 6, 12


def models(name: str):
    from peft import LoraConfig, get_peft_model

    from loralab import inject_lora, load_model
    from loralab.surgery import default_targets, head_modules

    torch.manual_seed(0)
    base = load_model(name)
    ours = inject_lora(copy.deepcopy(base), RANK, ALPHA)
    config = LoraConfig(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, target_modules=default_targets(base),
                        modules_to_save=list(head_modules(base)), init_lora_weights=True)
    theirs = get_peft_model(copy.deepcopy(base), config)
    return ours, theirs


def epoch_timer(model, batches, precision: str, fast_dropout: bool):
    """Reviews per second of training over `batches` (one call: one pass)."""
    seconds = training_pass(model, batches, precision, fast_dropout)
    reviews = sum(len(b["labels"]) for b in batches)
    return lambda: reviews / seconds()


def layer_timer(layer, x, precision: str):
    def run() -> float:
        start = time.perf_counter()
        for _ in range(5):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                y = layer(x)
            y.float().sum().backward()
        return 5 / (time.perf_counter() - start)

    return run


def end_to_end(model_name: str, n_reviews: int, tiny: bool) -> dict[str, float]:
    """Each as used by default: `loralab.train` (its defaults) against PEFT + the Trainer
    with its defaults (float32, fixed-order batches padded by the collator), one epoch."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from loralab import load_model, load_tokenizer, train
    from loralab.data import limit_data, load_data
    from loralab.surgery import default_targets, head_modules
    from loralab.training import TrainSettings, tokenize

    tokenizer = load_tokenizer(model_name)
    data = limit_data(load_data(), n_reviews, 16)
    tokenized = tokenize(data, tokenizer, 128 if tiny else 512)
    settings = TrainSettings(epochs=1, quiet=True, max_length=128 if tiny else 512)

    def ours() -> float:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            train("lora", f"{tmp}/out", model_name, settings=settings, rank=RANK, tokenized=tokenized)
        return n_reviews / (time.perf_counter() - start)

    def theirs() -> float:
        start = time.perf_counter()
        base = load_model(model_name)
        model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA,
                                                target_modules=default_targets(base),
                                                modules_to_save=list(head_modules(base))))
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=tmp, num_train_epochs=1, eval_strategy="epoch", logging_steps=5,
                                     per_device_train_batch_size=8, report_to="none", disable_tqdm=True,
                                     save_strategy="no", use_cpu=True)
            Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["eval"],
                    data_collator=DataCollatorWithPadding(tokenizer)).train()
        return n_reviews / (time.perf_counter() - start)

    runs = alternate({"loralab train (defaults)": ours, "PEFT + Trainer (defaults)": theirs}, repeats=1 if tiny else 3,
                     warmup=0)
    return {k: median(v) for k, v in runs.items()}


def padding_sides(model_name: str, n_reviews: int, tiny: bool) -> dict[str, list[float]]:
    """Seconds of one `loralab train` epoch (LoRA r=6, training and its evaluation, PeakMemory's
    clock): the defaults, one pass per batch, and exact lengths in one pass, alternating."""
    import tempfile

    from loralab import load_tokenizer, train
    from loralab.data import limit_data, load_data
    from loralab.training import TrainSettings, tokenize

    tokenizer = load_tokenizer(model_name)
    max_length = 128 if tiny else 512
    tokenized = tokenize(limit_data(load_data(), n_reviews, 16 if tiny else 100), tokenizer, max_length)

    def side(multiple: int, micro: int):
        def run() -> float:
            settings = TrainSettings(epochs=1, quiet=True, max_length=max_length, pad_to_multiple_of=multiple,
                                     micro_batch_size=micro)
            with tempfile.TemporaryDirectory() as tmp:
                return train("lora", f"{tmp}/out", model_name, settings=settings, rank=RANK,
                             tokenized=tokenized).result.train_seconds
        return run

    return alternate({"bounded lengths, passes by memory (default)": side(0, 0),
                      "bounded lengths, one pass": side(0, 8), "exact lengths, one pass (before)": side(1, 8)},
                     repeats=1 if tiny else 3, warmup=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--reviews", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--padding-reviews", type=int, default=256, help="reviews of section (c)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: few reviews, short sequences")
    args = parser.parse_args()
    if args.tiny:
        args.reviews, args.repeats, args.max_length, args.padding_reviews = 16, 1, 64, 16

    from loralab import load_tokenizer
    from loralab.inference import bf16_supported

    precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    tokenizer = load_tokenizer(args.model)
    batches = lab_batches(tokenizer, args.reviews, 8, args.max_length)
    tokens = sum(b["attention_mask"].sum().item() for b in batches)
    print(f"# lora_train: {machine()}")
    print(f"# model {args.model}, LoRA r={RANK} alpha={ALPHA} on query/value + head, {args.reviews} lab train "
          f"reviews in {len(batches)} batches of 8 (mean {tokens / args.reviews:.0f} tokens, max {args.max_length}), "
          f"{precision}, AdamW, {args.repeats} alternating repeats after a warm-up\n")

    ours, theirs = models(args.model)
    main_runs = alternate({
        "loralab (fast dropout)": epoch_timer(ours, batches, precision, True),
        "loralab (torch dropout)": epoch_timer(ours, batches, precision, False),
        "PEFT get_peft_model": epoch_timer(theirs, batches, precision, False),
    }, repeats=args.repeats)
    peft = median(main_runs["PEFT get_peft_model"])
    rows = [[name, median(v), min(v), max(v), median(v) / peft] for name, v in main_runs.items()]
    print("Training step throughput (forward + backward + AdamW)")
    print(table(["side", "reviews/s (median)", "min", "max", "x PEFT"], rows))

    from peft import LoraConfig
    from peft.tuners.lora import Linear as PeftLinear

    from loralab import LoRA

    layer_rows = []
    for dim in (384, 768):
        torch.manual_seed(0)
        base = torch.nn.Linear(dim, dim)
        mine = LoRA(copy.deepcopy(base), RANK, ALPHA)
        peft_layer = PeftLinear(copy.deepcopy(base), "default", LoraConfig(r=RANK, lora_alpha=ALPHA),
                                r=RANK, lora_alpha=ALPHA)
        x = torch.randn(8, 64 if args.tiny else 256, dim, requires_grad=True)
        runs = alternate({"loralab": layer_timer(mine, x, precision), "peft": layer_timer(peft_layer, x, precision)},
                         repeats=args.repeats)
        layer_rows.append([f"{dim}x{dim}", median(runs["loralab"]), median(runs["peft"]),
                           median(runs["loralab"]) / median(runs["peft"])])
    print(f"\n(b) One LoRA layer, forward + backward, batch 8 x 256 tokens, {precision} (calls/s)")
    print(table(["layer", "loralab", "PEFT lora.Linear", "ratio"], layer_rows))

    e2e = end_to_end(args.model, args.reviews, args.tiny)
    names = list(e2e)
    print(f"\n(a) End to end as used by default, one epoch of {args.reviews} reviews incl. loading and eval "
          "(reviews/s)")
    print(table(["side", "reviews/s"], [[k, v] for k, v in e2e.items()]))
    print(f"end-to-end ratio: {e2e[names[0]] / e2e[names[1]]:.2f}")

    pads = padding_sides(args.model, args.padding_reviews, args.tiny)
    before = median(pads["exact lengths, one pass (before)"])
    print(f"\n(c) loralab train, LoRA r={RANK}, one epoch of {args.padding_reviews} reviews and its evaluation: "
          "seconds (median, alternating)")
    print(table(["padding, passes", "seconds", "min", "max", "x before"],
                [[k, median(v), min(v), max(v), median(v) / before] for k, v in pads.items()]))
    done(median(main_runs["loralab (fast dropout)"]) / peft)


if __name__ == "__main__":
    main()
