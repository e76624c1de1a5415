"""DoRA's training step against LoRA's, in loralab and in PEFT, side by side (#35).

One training step = forward + backward + AdamW step of the default model (MiniLM) with
adapters of the same rank and alpha on query and value and a trainable head, over the same
batches of the lab's train data in the same order, bf16 autocast where the CPU has it.
Four sides alternate: loralab LoRA, loralab DoRA, PEFT LoRA, PEFT DoRA (`use_dora=True`).
loralab's DoRA never forms the (out x in) adapted weight: the row norms come from an
(out x r) product (`loralab.lora.DoRA.weight_norm`); PEFT forms W0 + s B A every step.

    python benchmarks/dora_step.py [--reviews 32] [--max-length 256] [--repeats 5] [--tiny]

Last line: `ratio: X`, loralab DoRA's step time over loralab LoRA's (the goal: at most 1.3).
"""

from __future__ import annotations

import argparse
import copy

import torch

from _common import alternate, done, lab_batches, machine, median, table, training_pass

RANK, ALPHA = 8, 16


def sides(name: str) -> dict[str, torch.nn.Module]:
    from peft import LoraConfig, get_peft_model

    from loralab import inject_lora, load_model
    from loralab.surgery import default_targets, head_modules

    torch.manual_seed(0)
    base = load_model(name)
    out = {}
    for dora in (False, True):
        kind = "DoRA" if dora else "LoRA"
        out[f"loralab {kind}"] = inject_lora(copy.deepcopy(base), RANK, ALPHA, init="kaiming",
                                                variant="dora" if dora else "lora")
        config = LoraConfig(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, target_modules=default_targets(base),
                            modules_to_save=list(head_modules(base)), use_dora=dora)
        out[f"PEFT {kind}"] = get_peft_model(copy.deepcopy(base), config)
    return out


def step_timer(model, batches, precision: str):
    """Seconds per training step over `batches` (one call: one pass over them)."""
    seconds = training_pass(model, batches, precision)
    return lambda: seconds() / len(batches)


def main() -> None:
    from loralab.inference import bf16_supported
    from loralab.models import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--reviews", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a smoke run: few reviews, short texts, one repeat")
    args = parser.parse_args()
    if args.tiny:
        args.reviews, args.max_length, args.repeats = 8, 64, 1
    precision = "bf16" if bf16_supported(torch.device("cpu")) else "fp32"
    print(f"DoRA and LoRA training steps, r={RANK}, alpha={ALPHA}, query and value, {precision}; {machine()}")
    batches = lab_batches(load_tokenizer(args.model), args.reviews, args.batch_size, args.max_length)
    models = sides(args.model)
    runs = alternate({name: step_timer(model, batches, precision) for name, model in models.items()},
                     repeats=args.repeats)
    seconds = {name: median(values) for name, values in runs.items()}
    trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}
    print(f"\nSeconds per step, batch {args.batch_size} of {args.reviews} lab reviews cut to {args.max_length} "
          f"tokens (median of {args.repeats}, alternating)")
    print(table(["side", "trainable parameters", "s / step", "min", "max"],
                [[name, f"{trainable[name]:,}", seconds[name], min(runs[name]), max(runs[name])] for name in runs]))
    print(f"\nloralab DoRA / loralab LoRA step time: {seconds['loralab DoRA'] / seconds['loralab LoRA']:.2f}")
    print(f"PEFT DoRA / PEFT LoRA step time: {seconds['PEFT DoRA'] / seconds['PEFT LoRA']:.2f}")
    print(f"loralab DoRA / PEFT DoRA step time: {seconds['loralab DoRA'] / seconds['PEFT DoRA']:.2f}")
    done(seconds["loralab DoRA"] / seconds["loralab LoRA"])


if __name__ == "__main__":
    main()
