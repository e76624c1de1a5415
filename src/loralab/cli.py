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

from .config import REMEMBERED_COLUMNS, Config
from .errors import LoralabError
from .methods import METHODS
from .settings import ENERGY, POSITIVE, POSITIVE_INT, PROFILES, SCORE_LABELS, SELECT_METRICS, TRAIN_METHODS

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
    g.add_argument("--data")
    g.add_argument("--train", nargs="+")
    g.add_argument("--eval", nargs="+")
    g.add_argument("--text-column")
    g.add_argument("--text-pair-column")
    g.add_argument("--label-column")
    g.add_argument("--task")
    g.add_argument("--metric", choices=SELECT_METRICS)
    g.add_argument("--labels", type=_name_list)
    g.add_argument("--drop-invalid", action="store_true", default=None)
    g.add_argument("--limit-train")
    g.add_argument("--limit-eval")


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device")
    p.add_argument("--precision")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model")
    p.add_argument("--seed")
    _add_device_args(p)


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length")
    p.add_argument("--batch-size", dest="eval_batch_size")
    _add_device_args(p)


def _add_class_weights(p) -> None:
    p.add_argument("--class-weights")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (the [train] table of the configuration: loralab.config)")
    g.add_argument("--epochs")
    g.add_argument("--batch-size")
    g.add_argument("--micro-batch-size")
    g.add_argument("--learning-rate", "--lr")
    g.add_argument("--eval-batch-size", dest="eval_batch_size")
    g.add_argument("--max-length")
    g.add_argument("--pad-to-multiple-of")
    g.add_argument("--gradient-checkpointing", action="store_true", default=None)
    g.add_argument("--compile", action="store_true", default=None)
    g.add_argument("--report-to")
    g.add_argument("--save-steps")
    _add_class_weights(g)
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def _add_overwrite(p, what: str = "--out") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"write into a non-empty {what} that loralab did not write (its files are kept; loralab "
                        "replaces only what it wrote and refuses to replace anything else)")


def _add_executor_args(p) -> None:
    p.add_argument("--executor")
    p.add_argument("--address")


# Where each flag lands in the configuration (`loralab.config.Config`): flags override it, and
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
    "host": "serve.host", "port": "serve.port", "max_batch": "serve.max_batch", "max_wait_ms": "serve.max_wait_ms",
    "max_texts": "serve.max_texts", "max_chars": "serve.max_chars", "mixing": "serve.mixing",
    "replicas": "serve.replicas", "adapters_per_replica": "serve.adapters_per_replica",
    "replica_cpus": "serve.replica_cpus",
}


def config_of(args, **extra) -> dict:
    """The resolved configuration of a command: defaults < --config file < --profile <
    --quick < flags given (a flag not given is None and changes nothing)."""
    from .config import load_config

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
    p.add_argument("--out", help="output folder (default: runs/lab): new, empty, or a study's to resume")
    _add_overwrite(p)
    p.add_argument("--quick", action="store_true", help="the same pipeline on a small subset")
    p.add_argument("--profile", choices=PROFILES,
                   help="lab: the lab's settings (default); tuned: learning rates chosen from a grid on a "
                        "validation split, mean pooling; searched: each method's recipe searched there (Optuna)")
    p.add_argument("--seeds")
    p.add_argument("--pooling")
    _add_class_weights(p)
    p.add_argument("--jobs")
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
    _add_overwrite(p)
    p.add_argument("--quick", action="store_true", help="each task's pipeline on a small subset")
    p.add_argument("--limit-train")
    p.add_argument("--limit-eval")
    p.add_argument("--profile", choices=PROFILES, help="lab (default); tuned: learning rates chosen from a grid "
                   "on a validation split of each task; searched: each method's recipe searched there (Optuna)")
    p.add_argument("--seeds")
    p.add_argument("--jobs")
    _add_executor_args(p)
    _add_model_args(p)

    p = sub.add_parser("train", parents=[debug],
                       help="train one model: LoRA (or DoRA, PiSSA, VeRA, IA3), head-tuning or full fine-tuning")
    p.add_argument("--method", required=True, choices=TRAIN_METHODS,  # what each trains: the methods table's words
                   help="; ".join(f"{m}: {METHODS[m].trains}" for m in TRAIN_METHODS).replace("%", "%%"))
    p.add_argument("--rank", type=POSITIVE_INT, help="the adapters' rank (default: 6; VeRA: [vera].rank, 256)")
    p.add_argument("--alpha", type=POSITIVE, help="default: 2 * rank")
    p.add_argument("--targets")
    p.add_argument("--init")
    p.add_argument("--dropout")
    p.add_argument("--rslora", action="store_true", default=None)
    p.add_argument("--lr-ratio")
    p.add_argument("--pooling")
    p.add_argument("--profile", choices=PROFILES,
                   help="tuned: choose the learning rate from a grid on a validation split carved from train, "
                        "mean pooling; searched: search the recipe there (Optuna), stop at its best epoch")
    p.add_argument("--config", help="a TOML file of settings (the tables of `loralab run`'s: [train], [lora], "
                   "[search], ...)")
    p.add_argument("--out", required=True, help="folder for the trained model or adapter: new, empty, or one "
                   "loralab trained into")
    _add_overwrite(p)
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
    _add_overwrite(p)
    p.add_argument("--ranks", type=POSITIVE_INT, nargs="+", help="ranks to sweep (default: full rank halving to 1)")
    p.add_argument("--targets")
    p.add_argument("--lora", nargs="+", default=(), help="LoRA adapter folders to compare with dW")
    _add_inference_args(p)
    _add_data_args(p)

    p = sub.add_parser("extract", parents=[debug],
                       help="a LoRA adapter from a fully fine-tuned model (truncated SVD of its update)")
    p.add_argument("--finetuned", required=True, help="the fully fine-tuned model's folder")
    p.add_argument("--base", help="the model it was fine-tuned from (default: the base its loralab.json records, "
                   "else minilm)")
    p.add_argument("--out", required=True, help="folder for the adapter")
    _add_overwrite(p)
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=POSITIVE_INT, help="one rank for every target layer")
    size.add_argument("--energy", type=ENERGY,
                      help="per layer, the smallest rank keeping this fraction of ||dW||^2, e.g. 0.9")
    p.add_argument("--max-rank", type=POSITIVE_INT, help="the largest rank a layer gets (with --energy)")
    p.add_argument("--targets")
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
    p.add_argument("--output", help="write predictions to this .csv or .jsonl file (a new one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--text-column")
    p.add_argument("--text-pair-column")
    p.add_argument("--label-column")
    p.add_argument("--score-against", metavar="FILE", help="a file whose --label-column holds the true label of "
                   "each input row: also print accuracy")
    _add_inference_args(p)

    p = sub.add_parser("export", parents=[debug],
                       help="a plain Hugging Face folder (merged model or PEFT adapter) with a model card")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True, help="folder for the export: new, empty, or an earlier export's")
    _add_overwrite(p)
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into the base weights")

    p = sub.add_parser("serve", parents=[debug],
                       help="serve every adapter folder under a folder on one base model over HTTP (the serve extra)")
    p.add_argument("adapters_dir", help="a folder of adapter folders (loralab's or PEFT's), each served by its name")
    p.add_argument("--model", help="the base model (default: the one the adapters name)")
    p.add_argument("--config", help="a TOML file whose [serve] (and [train]) tables set these")
    for flag in ("--host", "--port", "--max-batch", "--max-wait-ms", "--max-texts", "--max-chars", "--mixing",
                 "--max-length", "--replicas", "--adapters-per-replica", "--replica-cpus", "--address"):
        p.add_argument(flag)
    _add_device_args(p)

    p = sub.add_parser("report", parents=[debug],
                       help="write report.md, report.html and plots for a study's output folder")
    p.add_argument("out_dir", help="the folder `loralab run` wrote")
    p.add_argument("--report-dir", help="where to write the report (default: OUT_DIR)")
    _add_overwrite(p, "--report-dir")

    p = sub.add_parser("data", parents=[debug],
                       help="load and check the data; print its size")
    _add_data_args(p)
    _from_fields(parser)
    return parser


def _from_fields(parser: argparse.ArgumentParser) -> None:
    """Each flag that sets a configuration field (`FLAG_KEYS`) takes that field's values (its
    range as the flag's type, its choices) and gets its docstring and default as help
    (`loralab.config`): one rule and one text per option, for the file and the flag alike.
    Commands that read a trained model's own columns say so."""
    from .config import config_field, defaults, field_doc

    table = defaults()
    for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        for command, subparser in sub.choices.items():
            for action in subparser._actions:
                key = FLAG_KEYS.get(action.dest)
                if key is None:
                    continue
                f = config_field(key)
                within = f.metadata.get("within")
                if within and action.type is None and action.nargs != 0:  # a list in one word: 0,1,2
                    action.type = _CommaList(within) if isinstance(f.default, tuple) and not action.nargs else within
                if f.metadata.get("choices") and action.choices is None and action.nargs != 0:
                    action.choices = f.metadata["choices"]
                if action.help is not None:
                    continue
                default = table
                for part in key.split("."):
                    default = default[part]
                shown = "none" if default in ("", [], ()) else default
                if command in ("predict", "evaluate") and key.split(".")[-1] in REMEMBERED_COLUMNS:
                    shown = f"the model's own, else {shown}"
                action.help = f"{field_doc(key)} (default: {shown})".replace("%", "%%")


def _data(config: Config):
    from .data import load_configured

    return load_configured(config.data)


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


class _CommaList:
    """The argparse type of a flag that sets a list field in one word (--seeds 0,1,2): each
    item in the field's range."""

    def __init__(self, within):
        self.within = within

    def __call__(self, text: str) -> list:
        try:
            return [self.within(item.strip()) for item in text.split(",") if item.strip()]
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentTypeError(f"each item {err} (a comma-separated list: 0,1,2)") from None


def cmd_train(args) -> None:
    from .search import train_configured

    config = config_of(args)  # the profile's pooling, LoRA init, validation split and candidates
    result = train_configured(args.method, args.out, config, lora=_adapter_options(args, config),
                              learning_rate=args.learning_rate, quiet=args.quiet, resume=args.resume,
                              overwrite=args.overwrite)
    if result.selection is not None:
        print(f"{args.method}: learning rate {result.learning_rate:g} chosen on "
              f"{result.selection.validation_rows} validation rows")
    print(f"{args.method}: eval {SCORE_LABELS[config.metric]} {result.metrics.score(config.metric):.4f}, "
          f"{result.trainable_params:,} trainable parameters, saved to {args.out}")


# The flags of `train` that set adapters up (LoRA's and its variants' all of them).
ADAPTER_FLAGS = ("rank", "alpha", "targets", "init", "dropout", "rslora", "lr_ratio")


def _adapter_options(args, config: Config):
    """The options of `train --method`'s adapters: its table in the configuration (LoRA's for
    LoRA, DoRA and PiSSA, at --rank, default 6; [vera] at --rank or its own; [ia3]), with the
    adapter flags its options type has as fields (`ADAPTER_FLAGS`); a flag it has not is
    refused by name. None for head and full."""
    from dataclasses import fields

    from .settings import OPTIONS, LoraOptions, adapter_options

    kind = OPTIONS.get(args.method)
    takes = [name for name in ADAPTER_FLAGS if kind and name in {f.name for f in fields(kind)}]
    ignored = [f"--{name.replace('_', '-')}" for name in ADAPTER_FLAGS
               if getattr(args, name, None) is not None and name not in takes]
    if ignored:
        raise LoralabError(f"--method {args.method} takes no {', '.join(ignored)}: "
                           + ("it trains no adapters." if not takes else
                              f"its adapters take {', '.join('--' + n.replace('_', '-') for n in takes)}."))
    if kind is None:
        return None
    rank = args.rank if args.rank is not None else LoraOptions.rank if kind is LoraOptions else None
    changes = {name: getattr(args, name) for name in takes if name != "rank" and getattr(args, name) is not None}
    return adapter_options(config, args.method, rank, **changes)




def _remembered(model_dir) -> dict:
    """The data settings `model_dir` was trained with, as configuration keys; {} where it
    records none (a model trained elsewhere, or by an earlier loralab)."""
    from .api import read_info

    data = read_info(model_dir).get("data")
    if not isinstance(data, dict):
        return {}
    return {f"data.{key}": data[key] for key in REMEMBERED_COLUMNS if isinstance(data.get(key), str)}


def _trained_from(model_dir) -> str | None:
    """The base model `model_dir`'s loralab.json records (where loralab trained it)."""
    from .api import read_info

    base = read_info(model_dir).get("base_model")
    return base if isinstance(base, str) and base else None


def _inference(args):
    """(configuration, settings) of a command that only runs models: a model folder's own
    data columns and task unless a flag names others."""
    from .settings import TrainSettings

    remembered = _remembered(args.model_dir) if getattr(args, "model_dir", None) else {}
    config = config_of(args, **{key: value for key, value in remembered.items()
                                if getattr(args, key.split(".")[1], None) is None})
    return config, TrainSettings.from_config(config, quiet=args.quiet)


def cmd_evaluate(args) -> None:
    from .api import evaluate

    config, settings = _inference(args)
    d = config.data
    if d.eval and not d.train:  # --eval FILE alone: no training split is needed, or read
        from .data import data_options

        metrics = evaluate(args.model_dir, settings=settings, eval_files=d.eval, options=data_options(d),
                           limit=d.limit_eval)
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
    from .report.render import write_lowrank

    config, settings = _inference(args)
    metric = config.metric
    rows, summary = write_lowrank(args.finetuned, args.headtuned, args.pretrained or config.model, args.out,
                                  overwrite=args.overwrite, lora_dirs=tuple(args.lora), data=_data(config),
                                  settings=settings, ranks=args.ranks, targets=args.targets, metric=metric)
    print(f"head-tuned {SCORE_LABELS[metric]}: {summary.headtuned_score:.4f}")
    for r in rows:
        print(f"{r.method} rank {r.rank:>4}: {SCORE_LABELS[metric]} {r.score(metric):.4f}")
    for approach, lowest in summary.lowest_rank_above_head.items():
        print(f"approximated model {approach}: lowest rank above head-tuning: "
              f"{lowest if lowest is not None else 'none'}")
    print(f"written: {args.out}/lowrank.json, spectrum.json, spectrum.png")


def cmd_predict(args) -> None:
    from .predict import predict, split_pair

    if args.texts == ["-"] and not args.input:  # `loralab predict DIR -`: the texts come from stdin
        args.texts, args.input = [], "-"
    if not args.texts and not args.input:
        raise LoralabError("Give texts to classify, - for stdin, or --input FILE.")
    config, settings = _inference(args)
    d = config.data
    result = predict(args.model_dir, [split_pair(t) for t in args.texts] or None, input=args.input,
                     output=args.output, text_column=d.text_column, labels=args.score_against,
                     settings=settings, progress=not args.quiet, text_pair_column=d.text_pair_column or None,
                     label_column=d.label_column, overwrite=args.overwrite)
    if not args.output:
        texts = args.texts or [None] * len(result)
        for i, text in enumerate(texts):
            shown = f"  {text[:60]!r}" if text else ""  # a pair as it was typed
            # A regression model prints its predicted score; a classifier its class and that class's probability;
            # an empty line a dash and why, so the output keeps a line per input line.
            if result.errors and result.errors[i]:
                print(f"-\t{result.errors[i]}{shown}")
            elif result.scores is not None:
                print(f"{result.scores[i]:.4f}{shown}")
            else:
                print(f"{result.labels[i]}\t{result.probabilities[i].max():.4f}{shown}")
    else:
        print(f"{len(result)} predictions written to {args.output}")
    if result.accuracy is not None:
        print(f"accuracy: {result.accuracy:.4f}")
    if result.metrics is not None and result.metrics.pearson is not None:
        print(f"Pearson correlation: {result.metrics.pearson:.4f}, Spearman: {result.metrics.spearman:.4f}")


def cmd_extract(args) -> None:
    from .extraction import extract_adapter, save_extraction
    from .models import DEFAULT_MODEL, local_folder
    from .outputs import check_output

    base = args.base or _trained_from(args.finetuned) or DEFAULT_MODEL
    check_output(args.out, "extract", overwrite=args.overwrite,  # before the SVDs
                 inputs=[("--finetuned", args.finetuned), ("--base", local_folder(base))])
    result = extract_adapter(args.finetuned, base, rank=args.rank, energy=args.energy,
                             max_rank=args.max_rank, targets=args.targets, keep=args.keep,
                             keep_norms=not args.no_norms, progress=not args.quiet)
    save_extraction(result, args.out, source=args.finetuned, overwrite=args.overwrite, base=local_folder(base))
    print(result.summary())
    print(f"adapter written to {args.out} (its README.md lists every layer)")


def cmd_export(args) -> None:
    from .export import export

    print(f"exported to {export(args.model_dir, args.out, merge=args.merge, overwrite=args.overwrite)}")


def glue_configs(args):
    """(suite, each task's resolved configuration) of `loralab glue`'s arguments."""
    from .study.suite import load_suite, task_configs

    suite = load_suite(args.suite, args.data_root)
    flags = {key: getattr(args, name, None) for name, key in FLAG_KEYS.items() if hasattr(args, name)}
    return suite, task_configs(suite, args.out, args.config, quick=args.quick, profile=args.profile, **flags)


def cmd_glue(args) -> None:
    from .report.suite import results_table
    from .study.suite import run_suite

    suite, configs = glue_configs(args)
    report = run_suite(suite, configs, args.out, quiet=args.quiet, only=args.tasks, overwrite=args.overwrite)
    print(results_table(suite, args.out, args.tasks))
    print(f"\nReport: {report} and report.html; each task's study in {args.out}/TASK")


def cmd_serve(args) -> None:
    from .settings import TrainSettings

    try:
        from .serve.app import serve
    except ImportError as err:
        raise LoralabError(f"loralab serve needs the serve extra: pip install 'loralab[serve]' ({err}).") from err
    config = config_of(args)
    model = args.model or _adapters_base(args.adapters_dir)
    train = TrainSettings.from_config(config, quiet=True)
    if config.serve.replicas:
        try:
            from .serve.replicas import serve_replicas
        except ImportError as err:
            raise LoralabError(f"--replicas needs Ray Serve: pip install 'ray[serve]' ({err}).") from err
        serve_replicas(args.adapters_dir, model, config.serve, train, config.address)
    else:
        serve(args.adapters_dir, model, config.serve, train)


def _adapters_base(folder: str) -> str:
    """The base model the adapter folders under `folder` name (`--model`'s default)."""
    import json
    from pathlib import Path

    from .adapters import CONFIG_NAME, adapter_base
    from .models import DEFAULT_MODEL

    bases = {}
    for config in sorted(Path(folder).glob(f"*/{CONFIG_NAME}")):
        try:
            bases.setdefault(adapter_base(json.loads(config.read_text("utf-8"))) or DEFAULT_MODEL, config.parent.name)
        except (ValueError, AttributeError):
            continue  # a damaged folder: the server refuses it by name
    if len(bases) > 1:
        named = ", ".join(f"{base} ({name})" for base, name in bases.items())
        raise LoralabError(f"{folder}: the adapters name several base models ({named}); one server serves one "
                           "base: give --model, and the others are refused.")
    return next(iter(bases), DEFAULT_MODEL)


def cmd_report(args) -> None:
    from .report import write_report

    print(f"written: {write_report(args.out_dir, args.report_dir, overwrite=args.overwrite)} and report.html")


def cmd_run(args) -> None:
    from pathlib import Path

    from .config import inside
    from .report import write_report
    from .study import run_study, summary_table

    config = config_of(args, **({"out": args.out} if args.out else {}))
    result = run_study(config, quiet=args.quiet, overwrite=args.overwrite)
    report = write_report(config.out, inside(config.out, config.report_dir, "report_dir"))
    print(summary_table(result.rows, config.metric))
    print(f"\nResults: {Path(config.out) / 'results.json'}\nReport: {report} and report.html")


COMMANDS = {"data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "lowrank": cmd_lowrank,
            "predict": cmd_predict, "extract": cmd_extract, "export": cmd_export, "report": cmd_report,
            "serve": cmd_serve, "run": cmd_run, "glue": cmd_glue}


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
