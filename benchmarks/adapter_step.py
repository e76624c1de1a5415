"""Each adapter method's training step against LoRA's and against PEFT's same method,
side by side (#35): LoRA, DoRA, PiSSA, VeRA and IA3, in loralab and in PEFT.

One training step = forward + backward + AdamW step of the default model (MiniLM) with
the method's adapters and a trainable head, over the same batches of the lab's train data
in the same order, bf16 autocast where the CPU has it; the sides alternate. LoRA, DoRA and
PiSSA at r = 8, alpha = 16 on query and value; VeRA at r = 256 on query and value; IA3 on
keys, values and the feed-forward second layers (the same layers in both libraries).
loralab's DoRA never forms the (out x in) adapted weight: the row norms come from an
(out x r) product (`loralab.lora.DoRA.weight_norm`); PEFT forms W0 + s B A every step.

    python benchmarks/adapter_step.py [--reviews 32] [--max-length 256] [--repeats 5] [--tiny]

Last line: `ratio: X`, loralab DoRA's step time over loralab LoRA's (the goal: at most 1.3).
"""

from __future__ import annotations

import argparse
import copy

import torch

from _common import alternate, done, lab_batches, machine, median, table, training_pass

RANK, ALPHA, VERA_RANK = 8, 16, 256
METHODS = ("LoRA", "DoRA", "PiSSA", "VeRA", "IA3")


def sides(name: str) -> dict[str, torch.nn.Module]:
    """loralab's and PEFT's model of each method, alternating in `METHODS` order."""
    from peft import IA3Config, LoraConfig, VeraConfig, get_peft_model

    from loralab import inject_ia3, inject_lora, inject_vera, load_model
    from loralab.surgery import default_targets, head_modules, ia3_targets

    torch.manual_seed(0)
    base = load_model(name)
    head, targets = list(head_modules(base)), default_targets(base)
    scaled_out, scaled_in = ia3_targets(base)
    ours = {"LoRA": lambda m: inject_lora(m, RANK, ALPHA, init="kaiming"),
            "DoRA": lambda m: inject_lora(m, RANK, ALPHA, init="kaiming", variant="dora"),
            "PiSSA": lambda m: inject_lora(m, RANK, ALPHA, variant="pissa"),
            "VeRA": lambda m: inject_vera(m, VERA_RANK),
            "IA3": lambda m: inject_ia3(m)}
    lora = dict(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, target_modules=targets, modules_to_save=head)
    theirs = {"LoRA": LoraConfig(**lora), "DoRA": LoraConfig(**lora, use_dora=True),
              "PiSSA": LoraConfig(**lora, init_lora_weights="pissa"),
              "VeRA": VeraConfig(task_type="SEQ_CLS", r=VERA_RANK, target_modules=targets, modules_to_save=head),
              "IA3": IA3Config(task_type="SEQ_CLS", target_modules=scaled_out + scaled_in,
                               feedforward_modules=scaled_in, modules_to_save=head)}
    out = {}
    for method in METHODS:
        out[f"loralab {method}"] = ours[method](copy.deepcopy(base))
        out[f"PEFT {method}"] = get_peft_model(copy.deepcopy(base), theirs[method])
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
    print(f"Adapter training steps: LoRA, DoRA, PiSSA r={RANK} alpha={ALPHA} and VeRA r={VERA_RANK} on query and "
          f"value, IA3 on keys, values and feed-forward; {precision}; {machine()}")
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
    print()
    for method in METHODS[1:]:
        ours = seconds[f"loralab {method}"] / seconds["loralab LoRA"]
        theirs = seconds[f"PEFT {method}"] / seconds["PEFT LoRA"]
        print(f"loralab {method} / loralab LoRA step time: {ours:.2f}   (PEFT {method} / PEFT LoRA: {theirs:.2f})")
    for method in METHODS:
        print(f"loralab {method} / PEFT {method} step time: "
              f"{seconds[f'loralab {method}'] / seconds[f'PEFT {method}']:.2f}")
    done(seconds["loralab DoRA"] / seconds["loralab LoRA"])


if __name__ == "__main__":
    main()
