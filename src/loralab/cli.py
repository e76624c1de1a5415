"""The `loralab` command line: it parses arguments and calls library functions.

Every command is one function of the library (see the README's Python examples); errors a
user can fix are printed as one message with a non-zero exit code, tracebacks only with
--debug.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .errors import LoralabError
from .settings import (
    CLASS_WEIGHTS,
    DEVICES,
    INITS,
    POOLINGS,
    PRECISIONS,
    PROFILES,
    SCORE_LABELS,
    SELECT_METRICS,
    TASKS,
    TRAIN_METHODS,
    study_metric,
)

logger = logging.getLogger("loralab")

# oneDNN, which runs CPU matmuls under autocast, caches a primitive per operation and
# shape, up to 1,024 of them, each with its own buffers. 64 lowered the peak of a LoRA
# epoch on the lab's 2,000 / 500 reviews by 6% and the memory after its evaluation by 17%,
# no slower; 8 saved more on 400 reviews but was 1.5x slower (benchmarks/README.md).
# It is read when oneDNN first runs, so the command sets it before any computation; a
# value already in the environment wins.
ONEDNN_CACHE_CAPACITY = "64"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", help="folder with train.csv and eval.csv (default: $LORALAB_DATA, "
                                  "the cache, then a download of aclImdb)")
    g.add_argument("--train", nargs="+", help="training files or globs (CSV, TSV, JSONL, Parquet)")
    g.add_argument("--eval", nargs="+", help="evaluation files or globs")
    g.add_argument("--text-column", help="column with the review text (default: review)")
    g.add_argument("--text-pair-column", help="sentence pairs: the column with each pair's second text (the model "
                   "reads both: [CLS] a [SEP] b [SEP]); default: none, single texts")
    g.add_argument("--label-column", help="column with the label, or a regression task's number (default: label)")
    g.add_argument("--task", choices=TASKS, help="classification (default): a class per row; regression: a number "
                   "per row (a similarity score, a rating), predicted by a one-output head with a mean-squared-error "
                   "loss and scored by Pearson / Spearman correlation")
    g.add_argument("--metric", choices=SELECT_METRICS, help="the score the report leads with and the tuned profile "
                   "chooses learning rates on (default: accuracy; pearson for regression)")
    g.add_argument("--labels", type=_name_list, help="the classes in order, comma-separated (default: from the "
                   "training data: 0/1 and the like are negative/positive, integers by value, strings alphabetically)")
    g.add_argument("--drop-invalid", action="store_true", default=None, help="skip rows with empty text")
    g.add_argument("--limit-train", type=int, help="use only N training rows (a seeded random subset)")
    g.add_argument("--limit-eval", type=int, help="use only N eval rows (a seeded random subset)")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, help="default: auto")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="bf16 autocast or float32 (default: auto, bf16 where the hardware has it)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="'minilm' (the packaged default), a local model folder, or a Hub id")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    _add_device_args(p)


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=int, help="longest input in tokens (default: 512)")
    p.add_argument("--batch-size", dest="eval_batch_size", type=int,
                   help="inference batch (default 16: fastest on a CPU)")
    _add_device_args(p)


def _add_class_weights(p) -> None:
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS,
                   help="balanced: weigh each class's loss by its inverse frequency (default: none)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: src/loralab/defaults.toml, [train])")
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--micro-batch-size", type=int,
                   help="examples per forward/backward pass, accumulated into each batch "
                   "(default: on a CPU at most 1,024 tokens a pass, on a GPU the whole batch)")
    g.add_argument("--learning-rate", "--lr", type=float)
    g.add_argument("--eval-batch-size", dest="eval_batch_size", type=int,
                   help="batch of the evaluation after each epoch (default: 16)")
    g.add_argument("--max-length", type=int)
    g.add_argument("--pad-to-multiple-of", type=int,
                   help="pad each batch to a multiple of N tokens (default 0: an eighth of its length's "
                   "power of two, at least 8; 1: to its longest row)")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None,
                   help="recompute each layer in the backward pass instead of keeping its activations: "
                   "less memory, more time")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile training and evaluation (inductor; needs a C++ compiler on a CPU)")
    g.add_argument("--report-to", help="experiment trackers, passed to the Trainer "
                   "(tensorboard, wandb, ...; default: none, nothing written outside --out)")
    g.add_argument("--save-steps", type=int, help="also checkpoint every N steps (default: each epoch)")
    _add_class_weights(g)
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def _add_executor_args(p) -> None:
    p.add_argument("--executor", choices=("local", "ray"),
                   help="local: processes on this machine (default); ray: the runs spread over a Ray cluster "
                        "(pip install 'loralab[ray]'; --out must be a path every node sees)")
    p.add_argument("--address", help="with --executor ray: the cluster to join (auto: the one `ray start` runs "
                                     "here; HOST:PORT); default: a Ray started on this machine for the study")


# Where each flag lands in the configuration (`defaults.toml`): flags override it, and
# every default a flag shows comes from there.
FLAG_KEYS = {
    "model": "model", "seed": "seed", "precision": "precision", "device": "device", "seeds": "seeds",
    "jobs": "jobs", "executor": "executor", "address": "address", "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "micro_batch_size": "train.micro_batch_size",
    "learning_rate": "train.learning_rate", "max_length": "train.max_length",
    "pad_to_multiple_of": "train.pad_to_multiple_of", "compile": "train.compile",
    "gradient_checkpointing": "train.gradient_checkpointing", "report_to": "train.report_to",
    "save_steps": "train.save_steps", "class_weights": "train.class_weights", "pooling": "train.pooling",
    "eval_batch_size": "train.eval_batch_size",
    "data": "data.dir", "train": "data.train", "eval": "data.eval", "text_column": "data.text_column",
    "text_pair_column": "data.text_pair_column", "task": "data.task", "metric": "data.metric",
    "label_column": "data.label_column", "labels": "data.labels", "drop_invalid": "data.drop_invalid",
    "limit_train": "data.limit_train",
    "limit_eval": "data.limit_eval", "targets": "lora.targets", "init": "lora.init", "dropout": "lora.dropout",
    "rslora": "lora.rslora", "lr_ratio": "lora.lr_ratio",
}


def config_of(args, **extra) -> dict:
    """The resolved configuration of a command: defaults < --config file < --profile <
    --quick < flags given (a flag not given is None and changes nothing)."""
    from .study.config import load_config

    flags = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name, None) is not None}
    return load_config(getattr(args, "config", None), quick=getattr(args, "quick", False),
                       profile=getattr(args, "profile", None), **flags, **extra)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    # --debug before or after the command: each subcommand takes it too (without a default
    # of its own, so that one given before the command is not reset after it).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = argparse.ArgumentParser(prog="loralab", description=__doc__.splitlines()[0], parents=[debug])
    parser.add_argument("--version", action="version", version=f"loralab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", parents=[debug],
                       help="the whole lab study: baselines, full, head, low-rank, LoRA, report")
    p.add_argument("--config", help="a TOML file overriding the defaults")
    p.add_argument("--out", help="output folder (default: runs/lab)")
    p.add_argument("--quick", action="store_true", help="the same pipeline on a small subset")
    p.add_argument("--profile", choices=PROFILES,
                   help="lab: the lab's settings (default); tuned: learning rates chosen on a validation "
                        "split, mean pooling")
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds, e.g. 0,1,2: every method once per seed")
    p.add_argument("--pooling", choices=POOLINGS, help="what the classification head reads")
    _add_class_weights(p)
    p.add_argument("--jobs", type=int, help="runs at a time, each in its own process (default: 1; on a GPU, "
                                            "several fill it)")
    _add_executor_args(p)
    _add_model_args(p)
    _add_data_args(p)

    p = sub.add_parser("glue", parents=[debug],
                       help="the study on every task of a suite (GLUE's five small tasks: examples/glue.toml), "
                            "each in its own folder, and one table across them")
    p.add_argument("suite", help="a suite file (TOML): its tasks, their files and metrics, published references")
    p.add_argument("--data-root", help="where the tasks' file paths start (default: the suite's data_root)")
    p.add_argument("--tasks", type=lambda t: [s.strip() for s in t.split(",") if s.strip()],
                   help="run only these tasks, comma-separated (default: all); the report keeps every task "
                        "with results in --out")
    p.add_argument("--config", help="a TOML file of loralab run settings for every task")
    p.add_argument("--out", default="runs/glue", help="output folder, one sub-folder per task (default: runs/glue)")
    p.add_argument("--quick", action="store_true", help="each task's pipeline on a small subset")
    p.add_argument("--profile", choices=PROFILES, help="lab (default) or tuned: learning rates chosen on a "
                   "validation split of each task")
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--jobs", type=int, help="runs at a time, each in its own process (default: 1)")
    _add_executor_args(p)
    _add_model_args(p)

    p = sub.add_parser("train", parents=[debug],
                       help="train one model: LoRA (or DoRA, PiSSA, VeRA, IA3), head-tuning or full fine-tuning")
    p.add_argument("--method", required=True, choices=TRAIN_METHODS,
                   help="lora, dora (a magnitude per output row), pissa (A, B from W0's top singular directions), "
                        "vera (two vectors per layer around shared random matrices; the [vera] table), ia3 (a "
                        "vector per layer rescaling keys, values, feed-forward activations; [ia3]), head, full")
    p.add_argument("--rank", type=int, help="the adapters' rank (default: 6; VeRA: [vera].rank, 256)")
    p.add_argument("--alpha", type=float, help="default: 2 * rank")
    p.add_argument("--targets", help="names or suffixes, or 'all-linear' (default: query and value)")
    p.add_argument("--init", choices=INITS, help="how A starts (default: normal, the lab's; tuned: kaiming, PEFT's)")
    p.add_argument("--dropout", type=float, help="LoRA dropout (default: 0)")
    p.add_argument("--rslora", action="store_true", default=None,
                   help="scale by alpha / sqrt(r) (rsLoRA) instead of alpha / r")
    p.add_argument("--lr-ratio", type=float, help="LoRA+: B learns this many times faster than A (default: 1)")
    p.add_argument("--pooling", choices=POOLINGS, help="what the head reads (default: cls; tuned: mean)")
    p.add_argument("--profile", choices=PROFILES,
                   help="tuned: choose the learning rate on a validation split carved from train, mean pooling")
    p.add_argument("--out", required=True, help="folder for the trained model or adapter")
    _add_model_args(p)
    _add_train_args(p)
    _add_data_args(p)

    p = sub.add_parser("evaluate", parents=[debug],
                       help="accuracy of a saved model or adapter on the eval data")
    p.add_argument("model_dir")
    _add_inference_args(p)
    _add_data_args(p)

    p = sub.add_parser("lowrank", parents=[debug],
                       help="approximated-model sweeps and the spectrum of the fine-tuning update")
    p.add_argument("--finetuned", required=True, help="folder of the fully fine-tuned model")
    p.add_argument("--headtuned", required=True, help="folder of the head-tuned model")
    p.add_argument("--pretrained", help="the base model both started from (default: minilm)")
    p.add_argument("--out", default="runs/lowrank", help="folder for JSON and PNG files")
    p.add_argument("--ranks", type=int, nargs="+", help="ranks to sweep (default: full rank halving to 1)")
    p.add_argument("--targets", help="layers (default: query and value)")
    p.add_argument("--lora", nargs="+", default=(), help="LoRA adapter folders to compare with dW")
    _add_inference_args(p)
    _add_data_args(p)

    p = sub.add_parser("extract", parents=[debug],
                       help="a LoRA adapter from a fully fine-tuned model (truncated SVD of its update)")
    p.add_argument("--finetuned", required=True, help="the fully fine-tuned model's folder")
    p.add_argument("--base", help="the model it was fine-tuned from (default: minilm)")
    p.add_argument("--out", required=True, help="folder for the adapter")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=int, help="one rank for every target layer")
    size.add_argument("--energy", type=float,
                      help="per layer, the smallest rank keeping this fraction of ||dW||^2, e.g. 0.9")
    p.add_argument("--max-rank", type=int, help="the largest rank a layer gets (with --energy)")
    p.add_argument("--targets", help="names or suffixes, or 'all-linear' (default: query and value)")
    p.add_argument("--keep", action="append", default=[], metavar="MODULE",
                   help="also save this module whole, e.g. embeddings (repeatable)")
    p.add_argument("--no-norms", action="store_true", help="leave out the layer norms (saved whole by default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", parents=[debug],
                       help="predict sentiment for texts or a file")
    p.add_argument("model_dir", help="a trained model or adapter folder")
    p.add_argument("texts", nargs="*", help="texts to classify, or - alone for one text per line on stdin; "
                   "for a model of sentence pairs, each pair as one text: \"first ||| second\"")
    p.add_argument("--input", help="CSV/TSV/JSONL/Parquet file, or - for one text per line on stdin")
    p.add_argument("--output", help="write predictions to this .csv or .jsonl file")
    p.add_argument("--text-column", help="column with the text in --input (default: review)")
    p.add_argument("--text-pair-column", help="sentence pairs: the column with each pair's second text in --input")
    p.add_argument("--labels", dest="labels_file", help="a file with a label column: also print accuracy")
    _add_inference_args(p)

    p = sub.add_parser("export", parents=[debug],
                       help="a plain Hugging Face folder (merged model or PEFT adapter) with a model card")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into the base weights")

    p = sub.add_parser("report", parents=[debug],
                       help="write report.md, report.html and plots for a study's output folder")
    p.add_argument("out_dir", help="the folder `loralab run` wrote")
    p.add_argument("--report-dir", help="where to write the report (default: OUT_DIR)")

    p = sub.add_parser("data", parents=[debug],
                       help="load and check the data; print its size")
    _add_data_args(p)
    return parser


def _data(config: dict):
    from .data import load_configured

    return load_configured(config["data"])


def cmd_data(args) -> None:
    from .data import class_counts, class_names_of

    data = _data(config_of(args))
    names = class_names_of(data["train"])
    for split in data:
        counts = class_counts(data[split])
        if not counts:  # a regression task: its targets' range
            values = data[split]["label"]
            print(f"{split}: {len(data[split])} rows (targets {min(values):g} to {max(values):g}, "
                  f"mean {sum(values) / len(values):.3f})")
            continue
        print(f"{split}: {len(data[split])} rows ({', '.join(f'{c} {n}' for n, c in zip(names, counts))})")


def _name_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"--labels names at least two classes, comma-separated; got {text!r}")
    return names


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def cmd_train(args) -> None:
    from contextlib import nullcontext

    from .locks import output_lock
    from .training import is_main_process

    # The learning-rate choice's scratch and the result: one writer. Under torchrun every
    # rank runs this command; rank 0 holds the folder.
    with output_lock(args.out) if is_main_process() else nullcontext():
        _train(args)


def _train(args) -> None:
    from .api import choose_learning_rate, train
    from .settings import TrainSettings
    from .study.config import select_metric
    from .study.plan import grid_of

    config = config_of(args)  # the profile's pooling, LoRA init, validation split and candidates
    data, selection = _data(config), None
    settings = TrainSettings.from_config(config, args.method, quiet=args.quiet,  # a --learning-rate given wins
                                         **({"learning_rate": args.learning_rate} if args.learning_rate else {}))
    lora = _adapter_options(args, config)
    if config["select"]["enabled"]:  # --profile tuned
        sel = config["select"]
        trial = settings.replace(epochs=sel["epochs"]) if sel["epochs"] else settings
        selection = choose_learning_rate(args.method, sel[grid_of(args.method)], data, model=config["model"],
                                         settings=trial, lora=lora, work=f"{args.out}.choose", resume=args.resume,
                                         metric=select_metric(config))
        settings = settings.replace(learning_rate=selection.learning_rate)
        print(f"{args.method}: learning rate {settings.learning_rate:g} chosen on "
              f"{selection.validation_rows} validation rows")
        del data["validation"]
    result = train(method=args.method, out=args.out, model=config["model"], data=data, settings=settings,
                   lora=lora, resume=args.resume, selection=selection, lock=False)
    metric = study_metric(config)
    print(f"{args.method}: eval {SCORE_LABELS[metric]} {result.metrics.score(metric):.4f}, "
          f"{result.trainable_params:,} trainable parameters, saved to {args.out}")


def _adapter_options(args, config: dict):
    """The options of `train --method`'s adapters: LoRA's table for LoRA, DoRA and PiSSA
    (--rank, default 6, and --alpha), [vera] (--rank, default its table's) or [ia3]; the
    flags --targets and --dropout reach VeRA's and IA3's too. None for head and full."""
    from .settings import LoraOptions, adapter_options

    if args.method in ("vera", "ia3"):
        changes = {"targets": args.targets} if args.targets else {}
        if args.method == "vera" and args.dropout is not None:
            changes["dropout"] = args.dropout
        return adapter_options(config, args.method, args.rank if args.method == "vera" else None, **changes)
    if args.method in ("head", "full"):
        return None
    return LoraOptions.from_config(config, args.rank or LoraOptions.rank,
                                   **({"alpha": args.alpha} if args.alpha else {}))


def _inference(args):
    """(configuration, settings) of a command that only runs models."""
    from .settings import TrainSettings

    config = config_of(args)
    return config, TrainSettings.from_config(config, quiet=args.quiet)


def cmd_evaluate(args) -> None:
    from .api import evaluate

    config, settings = _inference(args)
    d = config["data"]
    if d["eval"] and not d["train"]:  # --eval FILE alone: no training split is needed, or read
        from .data import data_options

        metrics = evaluate(args.model_dir, settings=settings, eval_files=d["eval"], options=data_options(d),
                           limit=d["limit_eval"])
    else:
        metrics = evaluate(args.model_dir, data=_data(config), settings=settings)
    if metrics.pearson is not None:  # a regression model
        print(f"eval mean squared error: {metrics.mse:.4f}")
        print(f"eval Spearman correlation: {metrics.spearman:.4f}")
        print(f"eval Pearson correlation: {metrics.pearson:.4f}")
        return
    print(f"eval macro-F1: {metrics.macro_f1:.4f}")
    print(f"eval Matthews correlation: {metrics.matthews:.4f}")
    if metrics.f1_positive is not None:
        print(f"eval F1 of {list(metrics.per_class)[1]}: {metrics.f1_positive:.4f}")  # the second class
    print(f"eval accuracy: {metrics.accuracy:.4f}")


def cmd_lowrank(args) -> None:
    from .api import lowrank

    config, settings = _inference(args)
    pretrained = args.pretrained or config["model"]
    metric = study_metric(config)
    rows, summary = lowrank(args.finetuned, args.headtuned, pretrained, out=args.out, data=_data(config),
                            settings=settings, ranks=args.ranks, targets=args.targets, lora_dirs=tuple(args.lora),
                            metric=metric)
    print(f"head-tuned {SCORE_LABELS[metric]}: {summary.headtuned_score:.4f}")
    for r in rows:
        print(f"{r.method} rank {r.rank:>4}: {SCORE_LABELS[metric]} {r.score(metric):.4f}")
    for approach, lowest in summary.lowest_rank_above_head.items():
        print(f"approximated model {approach}: lowest rank above head-tuning: "
              f"{lowest if lowest is not None else 'none'}")
    print(f"written: {args.out}/lowrank.json, spectrum.json, spectrum.png")


def cmd_predict(args) -> None:
    from .serve import predict

    if args.texts == ["-"] and not args.input:  # `loralab predict DIR -`: the texts come from stdin
        args.texts, args.input = [], "-"
    if not args.texts and not args.input:
        raise LoralabError("Give texts to classify, - for stdin, or --input FILE.")
    config, settings = _inference(args)
    from .serve import split_pair

    result = predict(args.model_dir, [split_pair(t) for t in args.texts] or None, input=args.input,
                     output=args.output, text_column=config["data"]["text_column"], labels=args.labels_file,
                     settings=settings, progress=not args.quiet,
                     text_pair_column=config["data"]["text_pair_column"] or None)
    if not args.output:
        texts = args.texts or [None] * len(result)
        for i, text in enumerate(texts):
            shown = f"  {text[:60]!r}" if text else ""  # a pair as it was typed
            # A regression model prints its predicted score; a classifier its class and that class's probability.
            print(f"{result.scores[i]:.4f}{shown}" if result.scores is not None
                  else f"{result.labels[i]}\t{result.probabilities[i].max():.4f}{shown}")
    else:
        print(f"{len(result)} predictions written to {args.output}")
    if result.accuracy is not None:
        print(f"accuracy: {result.accuracy:.4f}")
    if result.metrics is not None and result.metrics.pearson is not None:
        print(f"Pearson correlation: {result.metrics.pearson:.4f}, Spearman: {result.metrics.spearman:.4f}")


def cmd_extract(args) -> None:
    from .extraction import extract_adapter, save_extraction
    from .models import DEFAULT_MODEL

    result = extract_adapter(args.finetuned, args.base or DEFAULT_MODEL, rank=args.rank, energy=args.energy,
                             max_rank=args.max_rank, targets=args.targets, keep=args.keep,
                             keep_norms=not args.no_norms, progress=not args.quiet)
    save_extraction(result, args.out, source=args.finetuned)
    print(result.summary())
    print(f"adapter written to {args.out} (its README.md lists every layer)")


def cmd_export(args) -> None:
    from .serve import export

    print(f"exported to {export(args.model_dir, args.out, merge=args.merge)}")


def cmd_glue(args) -> None:
    from .study.suite import load_suite, run_suite, task_configs

    suite = load_suite(args.suite, args.data_root)
    flags = {key: getattr(args, name, None) for name, key in FLAG_KEYS.items() if hasattr(args, name)}
    configs = task_configs(suite, args.out, args.config, quick=args.quick, profile=args.profile, **flags)
    report = run_suite(suite, configs, args.out, quiet=args.quiet, only=args.tasks)
    print(report.read_text("utf-8").split("## Results", 1)[-1].split("\n## ", 1)[0].strip())
    print(f"\nReport: {report} and report.html; each task's study in {args.out}/TASK")


def cmd_report(args) -> None:
    from .report import write_report

    print(f"written: {write_report(args.out_dir, args.report_dir)} and report.html")


def cmd_run(args) -> None:
    from pathlib import Path

    from .report import write_report
    from .study import run_study, summary_table
    from .study.config import inside

    config = config_of(args, **({"out": args.out} if args.out else {}))
    result = run_study(config, quiet=args.quiet)
    report = write_report(config["out"], inside(config["out"], config["report_dir"], "report_dir"))
    print(summary_table(result.rows, study_metric(config)))
    print(f"\nResults: {Path(config['out']) / 'results.json'}\nReport: {report} and report.html")


COMMANDS = {"data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "lowrank": cmd_lowrank,
            "predict": cmd_predict, "extract": cmd_extract, "export": cmd_export, "report": cmd_report, "run": cmd_run,
            "glue": cmd_glue}


def main(argv: list[str] | None = None) -> int:
    from .logs import setup_logging

    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)
    args = build_parser().parse_args(argv)
    args.debug = getattr(args, "debug", False)  # --debug has no default: given before or after the command
    setup_logging(getattr(args, "quiet", False), args.debug)
    try:
        COMMANDS[args.command](args)
    except LoralabError as err:
        if args.debug:
            raise
        print(f"loralab: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file that cannot be read or written: name it, no traceback
        if args.debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"loralab: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loralab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
