"""The lab's pipeline as the lab's notebook runs it, against `loralab run`, on one subset.

Lab side, as in the notebook: tokenize with `padding=True` in `map` batches of 1,000,
float32, the Trainer evaluating after each epoch, head-tuning through the frozen encoder
every epoch, the lab's LoRA module (it forms A @ B on every forward pass), one SVD per
rank and model in the sweeps, and every evaluation through `Trainer.evaluate`. (The
notebook's mistakes are not copied: its LoRA scaled A by 0.01, its head-tuned model was
untrained, its replace test used a model trained in place.)

loralab side: `loralab run` with the same subset and settings (its defaults otherwise:
dynamic padding, length-grouped batches, bf16 autocast, fast dropout, length-sorted
evaluation batches, cached head features, one SVD per matrix, a process per training run
forked from a fork server).

    python benchmarks/lab_pipeline.py [--train 500] [--eval 200] [--lr 5e-5] [--tiny]

Last line: `ratio: X`, the lab pipeline's wall time over loralab's.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from _common import done, machine, table


class LabLoRA(nn.Module):
    """The notebook's adapter, without its 0.01 scaling mistake: W0 x + (alpha/r) x (A B),
    with A B formed on every call."""

    def __init__(self, pretrained: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.pretrained = pretrained.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(pretrained.in_features, rank))
        self.B = nn.Parameter(torch.zeros(rank, pretrained.out_features))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.pretrained(x) + x @ (self.A @ self.B) * self.scaling


def lab_side(data, model_name: str, ranks: list[int], workdir: str, lr: float) -> tuple[dict, dict]:
    from transformers import Trainer, TrainingArguments

    from loralab import freeze_all_but_head, load_model, load_tokenizer, replace
    from loralab.baselines import run_baseline
    from loralab.lab import extract  # the lab's name for surgery.target_layers
    from loralab.lowrank import approximate
    from loralab.surgery import clone_linear

    times, accs = {}, {}
    clock = time.perf_counter()
    tokenizer = load_tokenizer(model_name)
    tokenized = data.map(lambda b: tokenizer(b["text"], padding=True, truncation=True), batched=True)
    args = TrainingArguments(output_dir=workdir, eval_strategy="epoch", logging_steps=5, num_train_epochs=1,
                             learning_rate=lr, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                             seed=0)

    def compute_metrics(pred):
        logits, labels = pred
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    def make_trainer(model):
        return Trainer(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["eval"],
                       compute_metrics=compute_metrics)

    def train(model):
        trainer = make_trainer(model)
        trainer.train()
        return [e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e][-1]

    def evaluate(model):
        return make_trainer(model).evaluate()["eval_accuracy"]

    def step(name, fn):
        start = time.perf_counter()
        result = fn()
        times[name] = time.perf_counter() - start
        return result

    times["tokenize"] = time.perf_counter() - clock
    for method in ("tfidf-lr", "tfidf-nb"):
        accs[method] = step(method, lambda m=method: run_baseline(m, data["train"], data["eval"]).eval_accuracy)
    torch.manual_seed(0)
    finetuned = load_model(model_name)
    accs["full"] = step("full", lambda: train(finetuned))
    torch.manual_seed(0)
    headtuned = freeze_all_but_head(load_model(model_name))
    accs["head"] = step("head", lambda: train(headtuned))

    def replace_test():
        model = copy.deepcopy(finetuned)
        layers = extract(model)
        original = evaluate(model)
        replace(model, {n: clone_linear(layer) for n, layer in layers.items()})
        evaluate(model)
        replace(model, layers)
        return evaluate(model) == original

    accs["replace restores"] = step("replace-test", replace_test)
    pretrained = load_model(model_name)

    def sweep(approach):
        results = {}
        for rank in ranks:
            model = copy.deepcopy(headtuned)
            ft, pre = extract(finetuned), extract(pretrained)
            layers = {}
            for name, layer in ft.items():
                new = copy.deepcopy(layer)
                with torch.no_grad():
                    if approach == 1:
                        new.weight.copy_(approximate(layer.weight, rank))
                    else:
                        new.weight.copy_(pre[name].weight + approximate(layer.weight - pre[name].weight, rank))
                layers[name] = new
            results[rank] = evaluate(replace(model, layers))
        return results

    for approach in (1, 2):
        for rank, acc in step(f"approx{approach} sweep", lambda a=approach: sweep(a)).items():
            accs[f"approx{approach} r={rank}"] = acc

    def lora():
        torch.manual_seed(0)
        model = load_model(model_name)
        model.requires_grad_(False)
        replace(model, {n: LabLoRA(layer, 6, 12) for n, layer in extract(model).items()})
        freeze_all_but_head(model)
        for module in model.modules():
            if isinstance(module, LabLoRA):
                module.A.requires_grad_(True)
                module.B.requires_grad_(True)
        return train(model)

    accs["lora r=6"] = step("lora r=6", lora)
    times["total"] = time.perf_counter() - clock
    return times, accs


def loralab_side(args, ranks: list[int], out: str) -> tuple[dict, dict]:
    from loralab.records import REPLACE_TEST, RESULT_NAME, read_record
    from loralab.study import load_config, run_study

    config = load_config(None, out=out, model=args.model if args.model != "minilm" else None,
                         **{"data.limit_train": args.train, "data.limit_eval": args.eval, "train.epochs": 1,
                            "train.max_length": args.max_length, "train.learning_rate": args.lr,
                            "methods.lora_ranks": [6],
                            "methods.sweep_ranks": ranks})
    start = time.perf_counter()
    study = run_study(config, quiet=True)
    total = time.perf_counter() - start
    records = {run.name: read_record(Path(out) / run.name / RESULT_NAME) for run in study.runs}
    times = {name: record.seconds for name, record in records.items()}
    times["total"] = total
    accs = {}
    for r in study.rows:
        key = {"lora": "lora r=6"}.get(r.method, r.method)
        if r.method.startswith("approx"):
            key = f"{r.method} r={r.rank}"
        accs[key] = r.eval_accuracy
    accs["replace restores"] = records[REPLACE_TEST].replace_test.restored_logits_identical
    return times, accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-5, help="every method's learning rate, both sides "
                        "(default: the Trainer's and the lab's)")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.train, args.eval, args.max_length = 24, 16, 64

    from loralab import load_model
    from loralab.data import limit_data, load_data
    from loralab.lowrank import halving_ranks
    from loralab.surgery import target_layers as extract

    full_rank = min(next(iter(extract(load_model(args.model)).values())).weight.shape)
    all_ranks = halving_ranks(full_rank)
    ranks = [all_ranks[0], all_ranks[len(all_ranks) // 2], all_ranks[-2]]
    data = limit_data(load_data(), args.train, args.eval)
    if args.max_length < 512:
        data = data.map(lambda b: {"text": [t[: args.max_length * 4] for t in b["text"]]}, batched=True)
    with tempfile.TemporaryDirectory() as tmp:
        ours_t, ours_a = loralab_side(args, ranks, f"{tmp}/loralab")
        lab_t, lab_a = lab_side(data, args.model, ranks, f"{tmp}/lab", args.lr)

    print(f"# lab_pipeline: {machine()}")
    print(f"# model {args.model}, {args.train} train / {args.eval} eval lab reviews, 1 epoch, lr {args.lr:g}, "
          f"LoRA r=6, sweeps over ranks {ranks}; lab: fp32, padding=True, Trainer; loralab: `loralab run` "
          "defaults; one run each\n")
    steps = [("baselines", ["tfidf-lr", "tfidf-nb"], ["tfidf-lr", "tfidf-nb"]), ("full", ["full"], ["full"]),
             ("head", ["head"], ["head"]), ("replace test", ["replace-test"], ["replace-test"]),
             ("both sweeps", ["approx1 sweep", "approx2 sweep"], ["lowrank"]), ("LoRA r=6", ["lora r=6"], ["lora-r6"]),
             ("total (wall)", ["total"], ["total"])]
    rows = []
    for name, lab_keys, our_keys in steps:
        lab_s, our_s = sum(lab_t[k] for k in lab_keys), sum(ours_t[k] for k in our_keys)
        rows.append([name, lab_s, our_s, lab_s / our_s if our_s else math.nan])
    print(table(["step", "lab (s)", "loralab (s)", "speed-up"], rows))
    print()
    acc_rows, worst = [], 0.0
    for key in lab_a:
        if key == "replace restores":
            acc_rows.append([key, str(lab_a[key]), str(ours_a.get(key)), ""])
            continue
        diff = (ours_a.get(key, math.nan) - lab_a[key]) * 100
        worst = max(worst, abs(diff))
        acc_rows.append([key, f"{lab_a[key]:.4f}", f"{ours_a.get(key, math.nan):.4f}", f"{diff:+.1f}"])
    print(table(["accuracy", "lab", "loralab", "points"], acc_rows))
    print(f"\nlargest accuracy difference: {worst:.1f} points")
    done(lab_t["total"] / ours_t["total"])


if __name__ == "__main__":
    main()
