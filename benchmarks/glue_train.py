"""A GLUE-shaped training epoch: loralab's training loop against PEFT + the Trainer and
against a bare loop over the same batches.

A searched GLUE suite spends its hours in epochs of short sentence pairs (MRPC: about 50
tokens a pair, batches of 16), where a step is a few small matrix products and any cost
around them shows. Each side trains LoRA r=8 (alpha 16) on query and value plus the
classifier head of the default model for one epoch of the same MRPC rows, batch 16, the
same learning rate, AdamW, bf16 autocast where the hardware has it (else fp32):

- loralab: `loralab.train` as the suite trains a trial (length-grouped batches padded to a
  bucket, passes sized by `training.micro_batch_size`, an evaluation and a checkpoint at the
  epoch's end on a small eval set), its training seconds;
- loralab, passes for the longest (before): the same with each batch cut into passes sized
  for the data's longest padded row (at most 1,024 tokens), as loralab cut them before it cut
  each batch at its own length; and one pass a batch (`micro_batch_size = batch_size`):
  what any split into passes costs on short texts;
- PEFT + Trainer: `get_peft_model` and a plain `transformers.Trainer` (its own collator,
  random batches, the same epoch-end evaluation), the peer a practitioner would use;
- bare loop: forward, backward and AdamW over loralab's own batches (one pass each), no
  Trainer: the floor any loop over those batches could reach.

    python benchmarks/glue_train.py [--task mrpc|rte|cola] [--rows 640] [--repeats 3] [--tiny]

Sides alternate after a warm-up round; medians of the repeats. The data are
../shared/data/glue/TASK (or $LORALAB_GLUE_DATA/TASK). Last line: `ratio: X`, loralab's
rows/s over PEFT + Trainer's.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

from _common import alternate, done, machine, median, table, training_pass

RANK, ALPHA, LR, BATCH, MAX_LENGTH = 8, 16, 5e-4, 16, 256


def glue_root() -> Path:
    root = os.environ.get("LORALAB_GLUE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
    return Path(root)


# The suite's files of three tasks across its lengths: RTE's pairs (about 70 tokens, a few
# cut at 256), MRPC's (about 50) and CoLA's single sentences (about 11): a CoLA step is a
# few tiny products.
TASKS = {
    "rte": dict(text_column="sentence1", text_pair_column="sentence2", labels=("entailment", "not_entailment")),
    "mrpc": dict(text_column="sentence1", text_pair_column="sentence2", labels=("not_equivalent", "equivalent")),
    "cola": dict(text_column="sentence", labels=("unacceptable", "acceptable")),
}


def glue_task(task: str, rows: int, eval_rows: int):
    from loralab.data import DataOptions, limit_data, load_data

    folder = glue_root() / task
    options = DataOptions(**TASKS[task])
    return limit_data(load_data(train=str(folder / "train.csv"), eval=str(folder / "dev.csv"), options=options),
                      rows, eval_rows)


def passes_for_the_longest(lengths: list[int]) -> int:
    """The rows a pass held before: the largest divisor of the batch whose passes hold at most
    `MICRO_BATCH_TOKENS` at the data's longest padded length."""
    from loralab.inference import bucket_length
    from loralab.settings import TrainSettings
    from loralab.training import MICRO_BATCH_TOKENS

    longest = bucket_length(max(lengths), TrainSettings().pad_to_multiple_of, MAX_LENGTH)
    return max(d for d in range(1, BATCH + 1) if BATCH % d == 0 and (d == 1 or d * longest <= MICRO_BATCH_TOKENS))


def loralab_side(data, tokenized, precision: str, micro: int, model_name: str):
    from loralab import train
    from loralab.settings import TrainSettings

    settings = TrainSettings(epochs=1, batch_size=BATCH, learning_rate=LR, max_length=MAX_LENGTH, quiet=True,
                             precision=precision, micro_batch_size=micro)

    def run() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            info = train("lora", Path(tmp) / "out", model=model_name, data=data, tokenized=tokenized,
                         settings=settings, rank=RANK, alpha=ALPHA, init="kaiming")
        return info.result.train_seconds

    return run


def peft_side(data, tokenizer, precision: str, model_name: str):
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from loralab import load_model
    from loralab.surgery import default_targets, head_modules

    texts = [c for c in ("text", "text_pair") if c in data["train"].column_names]

    def encode(batch):
        return tokenizer(*(batch[c] for c in texts), truncation=True, max_length=MAX_LENGTH)

    encoded = {split: data[split].map(encode, batched=True, remove_columns=texts)
               for split in ("train", "eval")}
    base = load_model(model_name, num_labels=2)

    def run() -> float:
        torch.manual_seed(0)
        config = LoraConfig(task_type="SEQ_CLS", r=RANK, lora_alpha=ALPHA, target_modules=default_targets(base),
                            modules_to_save=list(head_modules(base)))
        model = get_peft_model(copy.deepcopy(base), config)
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=BATCH,
                                     learning_rate=LR, eval_strategy="epoch", save_strategy="epoch",
                                     bf16=precision == "bf16", use_cpu=True, report_to=[], disable_tqdm=True,
                                     logging_strategy="no", seed=0)
            trainer = Trainer(model=model, args=args, train_dataset=encoded["train"], eval_dataset=encoded["eval"],
                              data_collator=DataCollatorWithPadding(tokenizer))
            trainer.remove_callback(PrinterCallback)
            start = time.perf_counter()
            trainer.train()
            return time.perf_counter() - start

    return run


def loop_side(tokenized, tokenizer, precision: str, model_name: str):
    """A timer of the bare loop over the batches loralab's Trainer draws (same sampler, same
    collator), each in one pass."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from loralab import inject_lora, load_model
    from loralab.inference import BucketedPadding
    from loralab.settings import TrainSettings
    from loralab.training import EpochSeededSampler

    train_set = tokenized["train"]
    sampler = EpochSeededSampler(LengthGroupedSampler(BATCH, dataset=train_set), 0)
    order = list(sampler)
    collate = BucketedPadding(tokenizer, TrainSettings().pad_to_multiple_of, MAX_LENGTH)
    keep = ["input_ids", "attention_mask", "token_type_ids", "label"]
    rows = [{k: train_set[i][k] for k in keep if k in train_set.column_names} for i in order]
    batches = []
    for start in range(0, len(rows), BATCH):
        batch = collate(rows[start:start + BATCH])
        batch["labels"] = batch.pop("label") if "label" in batch else batch.pop("labels")
        batches.append(dict(batch))
    torch.manual_seed(0)
    model = inject_lora(load_model(model_name, num_labels=2), RANK, ALPHA, init="kaiming")
    return training_pass(model, batches, precision, fast_dropout=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--task", default="mrpc", choices=sorted(TASKS))
    parser.add_argument("--rows", type=int, default=640, help="training rows (an epoch)")
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.eval_rows, args.repeats = 64, 16, 1

    import datasets
    from transformers.utils import logging as hf_logging

    from loralab.inference import resolve_precision
    from loralab.models import load_tokenizer
    from loralab.settings import TrainSettings
    from loralab.training import tokenize

    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    precision = resolve_precision(TrainSettings(), torch.device("cpu"))
    data = glue_task(args.task, args.rows, args.eval_rows)
    tokenizer = load_tokenizer(args.model)
    tokenized = tokenize(data, tokenizer, MAX_LENGTH)
    lengths = [len(ids) for ids in tokenized["train"]["input_ids"]]
    loop = loop_side(tokenized, tokenizer, precision, args.model)
    sides = {
        "loralab": loralab_side(data, tokenized, precision, 0, args.model),
        "loralab, passes for the longest (before)": loralab_side(data, tokenized, precision,
                                                                 passes_for_the_longest(lengths), args.model),
        "loralab, one pass a batch": loralab_side(data, tokenized, precision, BATCH, args.model),
        "PEFT + Trainer": peft_side(data, tokenizer, precision, args.model),
        "bare loop (floor)": loop,
    }
    print(f"# {machine()}")
    print(f"# model {args.model}, LoRA r={RANK} alpha={ALPHA} on query/value + head, {args.rows} {args.task} rows "
          f"(mean {sum(lengths) / len(lengths):.0f} tokens, max {max(lengths)}), batch {BATCH}, {precision}, "
          f"AdamW, one epoch; {args.repeats} alternating repeats after a warm-up")
    results = alternate(sides, repeats=args.repeats)
    peft = median(results["PEFT + Trainer"])
    floor = median(results["bare loop (floor)"])
    rows = [[name, args.rows / median(s), args.rows / max(s), args.rows / min(s), peft / median(s), floor / median(s)]
            for name, s in results.items()]
    print(table(["side", "rows/s (median)", "min", "max", "x PEFT", "x floor"], rows))
    ours = median(results["loralab"])
    print(f"loralab's epoch: {ours:.2f} s; the bare loop's {floor:.2f} s: loralab at {floor / ours:.2f}x the floor")
    done(peft / ours)


if __name__ == "__main__":
    main()
