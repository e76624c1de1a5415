"""The `loralab` command line: it parses arguments and calls library functions.

Every command is one function of the library (see the README's Python examples); errors a
user can fix are printed as one message with a non-zero exit code, tracebacks only with
--debug.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import LoralabError

logger = logging.getLogger("loralab")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", help="folder with train.csv and eval.csv (default: $LORALAB_DATA, "
                                  "the cache, then a download of aclImdb)")
    g.add_argument("--train", nargs="+", help="training files or globs (CSV, TSV, JSONL, Parquet)")
    g.add_argument("--eval", nargs="+", help="evaluation files or globs")
    g.add_argument("--text-column", help="column with the review text (default: review)")
    g.add_argument("--label-column", help="column with the label (default: label)")
    g.add_argument("--drop-invalid", action="store_true", help="skip rows with empty text")
    g.add_argument("--limit-train", type=int, help="use only the first N training reviews (after a seeded shuffle)")
    g.add_argument("--limit-eval", type=int, help="use only the first N eval reviews (after a seeded shuffle)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm",
                   help="'minilm' (the packaged default), a local model folder, or a Hub id")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="bf16 autocast or float32 (default: auto, bf16 where the hardware has it)")
    p.add_argument("--seed", type=int, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-length", type=int, default=512, help="longest input in tokens")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=float, default=3)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--learning-rate", "--lr", type=float, default=5e-5)
    g.add_argument("--max-length", type=int, default=512)
    g.add_argument("--report-to", default="none", help="experiment trackers, passed to the Trainer "
                   "(tensorboard, wandb, ...; default: none, nothing written outside --out)")
    g.add_argument("--save-steps", type=int, default=0, help="also checkpoint every N steps (default: each epoch)")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loralab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole lab study: baselines, full, head, low-rank, LoRA, report")
    p.add_argument("--config", help="a TOML file overriding the defaults")
    p.add_argument("--out", help="output folder (default: runs/lab)")
    p.add_argument("--quick", action="store_true", help="the same pipeline on a small subset")
    p.add_argument("--profile", choices=["lab", "tuned"],
                   help="lab: the lab's settings (default); tuned: learning rates chosen on a validation "
                        "split, mean pooling")
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds, e.g. 0,1,2: every method once per seed")
    p.add_argument("--pooling", choices=["cls", "mean"], help="what the classification head reads")
    p.add_argument("--jobs", type=int, help="runs at a time, each in its own process (default: 1; on a GPU, "
                                            "several fill it)")
    _add_model_args(p)
    _add_data_args(p)

    p = sub.add_parser("train", help="train one model: LoRA, head-tuning or full fine-tuning")
    p.add_argument("--method", required=True, choices=["lora", "head", "full"])
    p.add_argument("--rank", type=int, default=6)
    p.add_argument("--alpha", type=float, help="default: 2 * rank")
    p.add_argument("--targets", help="names or suffixes, or 'all-linear' (default: query and value)")
    p.add_argument("--init", choices=["normal", "kaiming", "gaussian"],
                   help="how A starts (default: normal, the lab's; tuned: kaiming, PEFT's)")
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    p.add_argument("--rslora", action="store_true", help="scale by alpha / sqrt(r) (rsLoRA) instead of alpha / r")
    p.add_argument("--lr-ratio", type=float, default=1.0, help="LoRA+: B learns this many times faster than A")
    p.add_argument("--pooling", choices=["cls", "mean"], help="what the head reads (default: cls; tuned: mean)")
    p.add_argument("--profile", choices=["lab", "tuned"], default="lab",
                   help="tuned: choose the learning rate on a validation split carved from train, mean pooling")
    p.add_argument("--out", required=True, help="folder for the trained model or adapter")
    _add_model_args(p)
    _add_train_args(p)
    _add_data_args(p)

    p = sub.add_parser("evaluate", help="accuracy of a saved model or adapter on the eval data")
    p.add_argument("model_dir")
    p.add_argument("--batch-size", type=int, default=16, help="inference batch (default 16: fastest on a CPU)")
    _add_inference_args(p)
    _add_data_args(p)

    p = sub.add_parser("lowrank", help="approximated-model sweeps and the spectrum of the fine-tuning update")
    p.add_argument("--finetuned", required=True, help="folder of the fully fine-tuned model")
    p.add_argument("--headtuned", required=True, help="folder of the head-tuned model")
    p.add_argument("--pretrained", default="minilm", help="the base model both started from")
    p.add_argument("--out", default="runs/lowrank", help="folder for JSON and PNG files")
    p.add_argument("--ranks", type=int, nargs="+", help="ranks to sweep (default: full rank halving to 1)")
    p.add_argument("--targets", help="layers (default: query and value)")
    p.add_argument("--lora", nargs="+", default=(), help="LoRA adapter folders to compare with dW")
    _add_inference_args(p)
    _add_data_args(p)

    p = sub.add_parser("predict", help="predict sentiment for texts or a file")
    p.add_argument("model_dir", help="a trained model or adapter folder")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--input", help="CSV/TSV/JSONL/Parquet file, or - for one text per line on stdin")
    p.add_argument("--output", help="write predictions to this .csv or .jsonl file")
    p.add_argument("--text-column", default="review")
    p.add_argument("--labels", help="a file with a label column: also print accuracy")
    p.add_argument("--batch-size", type=int, default=16, help="inference batch (default 16: fastest on a CPU)")
    _add_inference_args(p)

    p = sub.add_parser("export", help="a plain Hugging Face folder (merged model or PEFT adapter) with a model card")
    p.add_argument("model_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into the base weights")

    p = sub.add_parser("report", help="write report.md, report.html and plots for a study's output folder")
    p.add_argument("out_dir", help="the folder `loralab run` wrote")
    p.add_argument("--report-dir", help="where to write the report (default: OUT_DIR)")

    p = sub.add_parser("data", help="load and check the data; print its size")
    _add_data_args(p)
    return parser


def _data(args):
    from .data import DataOptions, limit_data, load_data

    options = DataOptions(args.text_column or "review", args.label_column or "label", args.drop_invalid)
    data = load_data(args.data, train=args.train, eval=args.eval, options=options)
    return limit_data(data, args.limit_train, args.limit_eval)


def _settings(args, **overrides):
    from .training import TrainSettings

    values = {k: getattr(args, k) for k in ("epochs", "batch_size", "learning_rate", "max_length",
                                             "precision", "seed", "device", "report_to", "quiet", "save_steps")
              if getattr(args, k, None) is not None}
    return TrainSettings(**{**values, **overrides})


def cmd_data(args) -> None:
    data = _data(args)
    for split in ("train", "eval"):
        labels = data[split]["label"]
        print(f"{split}: {len(labels)} reviews ({sum(labels)} positive, {len(labels) - sum(labels)} negative)")


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def cmd_train(args) -> None:
    from .api import choose_learning_rate, train
    from .config import load_config

    data, notes = _data(args), None
    profile = load_config(profile=args.profile)  # the profile's pooling, LoRA init and choices
    lora = dict(rank=args.rank, alpha=args.alpha, targets=args.targets, init=args.init or profile["lora"]["init"],
                dropout=args.dropout, rslora=args.rslora) if args.method == "lora" else {}
    settings = _settings(args, pooling=args.pooling or profile["train"]["pooling"])
    if args.profile == "tuned":
        from .data import split_validation

        data = split_validation(data, profile["data"]["validation"], profile["data"]["split_seed"])
        candidates = profile["select"][args.method]
        trial = settings.replace(epochs=profile["select"]["epochs"] or settings.epochs)
        notes = {"selection": choose_learning_rate(args.method, candidates, data, model=args.model, settings=trial,
                                                   work=f"{args.out}.choose", lr_ratio=args.lr_ratio, **lora)}
        settings = settings.replace(learning_rate=notes["selection"]["learning_rate"])
        print(f"{args.method}: learning rate {settings.learning_rate:g} chosen on "
              f"{notes['selection']['validation_rows']} validation reviews")
        del data["validation"]
    result = train(method=args.method, out=args.out, model=args.model, data=data, settings=settings,
                   resume=args.resume, lr_ratio=args.lr_ratio, notes=notes, **lora)
    print(f"{args.method}: eval accuracy {result['eval_accuracy']:.4f}, "
          f"{result['trainable_params']:,} trainable parameters, saved to {args.out}")


def cmd_evaluate(args) -> None:
    from .api import evaluate

    acc = evaluate(args.model_dir, data=_data(args),
                   settings=_settings(args, eval_batch_size=args.batch_size))
    print(f"eval accuracy: {acc:.4f}")


def cmd_lowrank(args) -> None:
    from .api import lowrank

    rows, summary = lowrank(args.finetuned, args.headtuned, args.pretrained, out=args.out, data=_data(args),
                            settings=_settings(args), ranks=args.ranks, targets=args.targets,
                            lora_dirs=tuple(args.lora))
    print(f"head-tuned accuracy: {summary['headtuned_accuracy']:.4f}")
    for r in rows:
        print(f"{r['method']} rank {r['rank']:>4}: accuracy {r['eval_accuracy']:.4f}")
    for approach in (1, 2):
        lowest = summary[f"approx{approach}_lowest_rank_above_head"]
        print(f"approximated model {approach}: lowest rank above head-tuning: "
              f"{lowest if lowest is not None else 'none'}")
    print(f"written: {args.out}/lowrank.json, spectrum.json, spectrum.png")


def cmd_predict(args) -> None:
    from .serve import predict

    if not args.texts and not args.input:
        raise LoralabError("Give texts to classify or --input FILE.")
    result = predict(args.model_dir, args.texts or None, input=args.input, output=args.output,
                     text_column=args.text_column, labels=args.labels, batch_size=args.batch_size,
                     max_length=args.max_length, settings=_settings(args), progress=not args.quiet)
    if not args.output:
        texts = args.texts or [None] * len(result["labels"])
        for text, label, probs in zip(texts, result["labels"], result["probabilities"]):
            shown = f"  {text[:60]!r}" if text else ""
            print(f"{label}\t{probs.max():.4f}{shown}")
    else:
        print(f"{len(result['labels'])} predictions written to {args.output}")
    if result["accuracy"] is not None:
        print(f"accuracy: {result['accuracy']:.4f}")


def cmd_export(args) -> None:
    from .serve import export

    print(f"exported to {export(args.model_dir, args.out, merge=args.merge)}")


def cmd_report(args) -> None:
    from .report import write_report

    print(f"written: {write_report(args.out_dir, args.report_dir)} and report.html")


def cmd_run(args) -> None:
    from .study import main_run

    main_run(args)


COMMANDS = {"data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate, "lowrank": cmd_lowrank,
            "predict": cmd_predict, "export": cmd_export, "report": cmd_report, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    from .logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "quiet", False), args.debug)
    try:
        COMMANDS[args.command](args)
    except LoralabError as err:
        if args.debug:
            raise
        print(f"loralab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loralab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
