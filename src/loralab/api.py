"""One function per CLI command: train, evaluate, load what was trained.

    >>> import loralab
    >>> result = loralab.train(method="lora", rank=6, out="runs/lora-r6")  # doctest: +SKIP
    >>> loralab.evaluate("runs/lora-r6")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import DatasetDict
from torch import nn

from .adapters import CONFIG_NAME, adapter_base, class_names, load_adapter, save_adapter
from .errors import LoralabError, ModelLoadError
from .fileio import write_json
from .head import head_features, train_head
from .inference import check_max_length, evaluate_metrics
from .lora import rate_warning
from .methods import ADAPTERS
from .metrics import SCORES, Metrics, Scored
from .models import (
    DEFAULT_MODEL,
    load_model,
    load_tokenizer,
    local_folder,
    num_trainable_parameters,
    refuse_other_classes,
)
from .outputs import check_output, output_dir
from .pooling import set_pooling
from .records import LowrankSummary, Row, Selection, fingerprint, read_json
from .settings import (
    OPTIONS,
    REGRESSION,
    REGRESSION_LABELS,
    TRAIN_METHODS,
    AdapterOptions,
    LoraOptions,
    default_options,
)
from .surgery import freeze_all_but_head, inject_ia3, inject_lora, inject_vera, lora_layers
from .training import TrainResult, TrainSettings, is_main_process, tokenize, train_with_trainer

logger = logging.getLogger("loralab")

INFO_NAME = "loralab.json"


@dataclass
class TrainInfo(Scored):
    """What `train` made and how: returned by `train`, stored as `loralab.json` beside the
    saved model (flat, as `to_json` writes it), and read by `export` for the model card and
    by the study for its `Row`."""

    method: str                      # lora, dora, pissa, vera, ia3, head or full
    base_model: str
    labels: list[str]                # the classes, in order
    trainable_params: int
    seed: int
    pooling: str
    learning_rate: float
    result: TrainResult
    lora: AdapterOptions | None = None  # the adapters' options: LoRA's (rank, alpha, targets, ...), VeRA's, IA3's
    selection: Selection | None = None  # where the learning rate was chosen on a validation split
    # The data it was trained on, as `evaluate` and `predict` read it again by default: the
    # files' `REMEMBERED_COLUMNS`.
    columns: dict | None = None

    @property
    def metrics(self) -> Metrics:
        return self.result.metrics

    @property
    def rank(self) -> int | None:
        return self.lora.rank if self.lora else None

    @property
    def alpha(self) -> float | None:
        return (self.lora.alpha or 2 * self.lora.rank) if isinstance(self.lora, LoraOptions) else None

    def row(self, chosen_on: str | None = None) -> Row:
        """The study's record of this training (a line of results.json)."""
        r, m = self.result, self.result.metrics
        return Row(self.method, self.rank, self.trainable_params, train_seconds=r.train_seconds,
                   peak_memory_mb=r.peak_memory_mb, history=r.history, seed=self.seed, precision=r.precision,
                   learning_rate=self.learning_rate, pooling=self.pooling, chosen_on=chosen_on,
                   per_class=m.per_class, confusion=m.confusion, memory=r.memory,
                   peak_gpu_memory_mb=r.peak_gpu_memory_mb, **self.eval_scores())

    def to_json(self) -> dict:
        """`loralab.json`: flat, every field by the name loralab 0.1 wrote it under."""
        r, m = self.result, self.result.metrics
        data = {"method": self.method, "base_model": self.base_model, "rank": self.rank,
                "targets": self.lora.targets if self.lora else None, "alpha": self.alpha,
                "trainable_params": self.trainable_params, **self.eval_scores(),
                "per_class": m.per_class, "confusion": m.confusion,
                "labels": list(self.labels), "train_seconds": r.train_seconds, "peak_memory_mb": r.peak_memory_mb,
                "peak_gpu_memory_mb": r.peak_gpu_memory_mb,
                "precision": r.precision, "history": r.history, "memory": r.memory, "seed": self.seed,
                "pooling": self.pooling, "learning_rate": self.learning_rate,
                "lr_ratio": getattr(self.lora, "lr_ratio", None),
                "lora": asdict(self.lora) if self.lora else None}
        if self.selection is not None:
            data["selection"] = asdict(self.selection)
        if self.columns:
            data["data"] = dict(self.columns)
        return data


def read_info(model_dir: str | os.PathLike) -> dict:
    """A model folder's `loralab.json` (how it was made), or {} where it has none."""
    path = Path(model_dir) / INFO_NAME
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text("utf-8"))
    except ValueError as err:
        raise ModelLoadError(f"{path}: not valid JSON ({err}); remove it or train the model again.") from err
    if not isinstance(info, dict):
        raise ModelLoadError(f"{path}: a JSON object describing the model is expected, not a {type(info).__name__}.")
    return info


def prepare_model(method: str, model: str | nn.Module = DEFAULT_MODEL, *, lora: AdapterOptions | None = None,
                  pooling: str = "cls", labels=None, **lora_options) -> nn.Module:
    """A model set up for `method`: a head for the classes `labels` (names in order; None:
    the model's own, or negative/positive), reading the first token (``pooling="cls"``) or
    the mean of the tokens (``"mean"``), and adapters injected (`lora`: `LoraOptions` for
    LoRA, DoRA and PiSSA, `VeraOptions`, `IA3Options`; or its fields as keywords) or
    everything but the head frozen."""
    if method not in TRAIN_METHODS:
        raise LoralabError(f"method must be one of {', '.join(TRAIN_METHODS)}, got {method!r}")
    net = load_model(model, labels) if not isinstance(model, nn.Module) else model
    set_pooling(net, pooling)
    if method in ADAPTERS:
        inject_adapters(net, method, (lora or default_options(method)).replace(**lora_options))
    elif method == "head":
        freeze_all_but_head(net)
    return net


def inject_adapters(net: nn.Module, method: str, options: AdapterOptions) -> nn.Module:
    """Put `method`'s adapter layers into `net` as `options` say; only they and the head train."""
    wanted = OPTIONS[method]
    if not isinstance(options, wanted):
        raise LoralabError(f"{method} takes {wanted.__name__}, got {type(options).__name__}")
    return INJECT.get(method, _inject_lora)(net, method, options)


def _inject_lora(net: nn.Module, method: str, options: LoraOptions) -> nn.Module:
    return inject_lora(net, options.rank, variant=method, **options.layer_options)


# How each method's adapters go in (LoRA's, for LoRA and its variants, where a method has none here).
INJECT = {"vera": lambda net, method, options: inject_vera(net, options.rank, **options.layer_options),
          "ia3": lambda net, method, options: inject_ia3(net, **options.layer_options)}


def save_trained(net: nn.Module, tokenizer, directory: str | os.PathLike, info: TrainInfo,
                 extra_files: tuple = ()) -> Path:
    """Save an adapter (LoRA) or a whole model (head, full) atomically, with a tokenizer,
    `loralab.json` describing how it was made (its `TrainInfo`),
    and copies of `extra_files` (logs)."""
    data = info.to_json()
    with output_dir(directory, "model") as tmp:
        for extra in map(Path, extra_files):
            if extra.is_dir():
                shutil.copytree(extra, tmp / extra.name)
            elif extra.exists():
                shutil.copy2(extra, tmp / extra.name)
        if data.get("method") in ADAPTERS:
            save_adapter(net, tmp)
        else:
            net.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / INFO_NAME, data)
    return Path(directory)


def load_trained(directory: str | os.PathLike):
    """(model, tokenizer) from a folder written by `save_trained`, a PEFT adapter folder,
    or any Hugging Face model folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"Model folder not found: {directory}")
    if (directory / CONFIG_NAME).exists():
        net = load_adapter(None, directory)
        tok_source = directory if (directory / "tokenizer_config.json").exists() else \
            adapter_base(json.loads((directory / CONFIG_NAME).read_text()))
        return net, load_tokenizer(tok_source)
    return load_model(directory), load_tokenizer(directory)


# Settings a resumed run may change: where and how much it reports and checkpoints, not what it trains.
RESUME_MAY_CHANGE = ("quiet", "report_to", "save_steps", "eval_batch_size", "device")
RESUME_NAME = "resume.json"


def _check_resumed_settings(work: Path, resume: bool, made_with: dict) -> None:
    """Keep what a run trains with beside its checkpoints (`work/resume.json`); a resume
    whose settings differ is refused, naming each change (the Trainer would go on with the
    old schedule while loralab.json recorded the new, or fail on a rank's other shapes)."""
    path = work / RESUME_NAME
    made_with = json.loads(json.dumps(made_with))  # as it reads back: tuples are lists
    if resume and path.exists():
        before = read_json(path)
        if not isinstance(before, dict):
            raise LoralabError(f"{path}: unreadable; run again without --resume to start over.")
        changes = _differences(before, made_with)
        if changes:
            raise LoralabError(f"--resume: the checkpoints in {work} were made with other settings ("
                               f"{'; '.join(changes)}). Resume with the settings they were made with, or run "
                               "without --resume to start over.")
        return
    write_json(path, made_with)


def _differences(before, now, where: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now)):
            out += _differences(before.get(key), now.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if before == now else [f"{where} {before!r}, now {now!r}"]


def train_in_place(net: nn.Module, method: str, tokenized, settings: TrainSettings, work, tokenizer, *,
                   lora: LoraOptions | None = None, resume: bool = False, callbacks: tuple = ()) -> TrainResult:
    """Train a model `prepare_model` set up for `method` in place: the head alone (on its
    cached inputs) or every trainable parameter, B at LoRA+'s `lora.lr_ratio` times the rate.
    Checkpoints and logs go to `work`; `callbacks` are more `TrainerCallback`s."""
    if method == "head":
        return train_head(net, tokenized, settings, work, tokenizer, callbacks=callbacks)
    return train_with_trainer(net, tokenized, settings, work, tokenizer=tokenizer, resume=resume,
                              lr_ratio=getattr(lora, "lr_ratio", 1.0), callbacks=callbacks)




def train(method: str = "lora", out: str | os.PathLike = "runs/model", model: str = DEFAULT_MODEL,
          data=None, settings: TrainSettings | None = None, *, lora: AdapterOptions | None = None,
          tokenized=None, resume: bool = False, selection: Selection | None = None, lock: bool = True,
          overwrite: bool = False, columns: dict | None = None, callbacks: tuple = (), **lora_options) -> TrainInfo:
    """Train one model and save it to `out`.

    Args:
        method: ``"lora"``, ``"dora"`` (weight-decomposed LoRA), ``"pissa"`` (LoRA started from
            the principal singular directions), ``"vera"`` (scaling vectors around shared
            random matrices), ``"ia3"`` (rescaled keys, values and feed-forward activations),
            ``"head"`` or ``"full"``.
        out: folder for the adapter (LoRA) or the whole model.
        model: base model name or folder.
        data: a DatasetDict with `train`/`eval` (default: `load_data()`).
        settings: training settings (default: the lab's).
        lora: the adapters' options (`LoraOptions` for LoRA, DoRA and PiSSA, `VeraOptions`,
            `IA3Options`); or give their fields as keywords (LoRA's `rank`, `alpha`,
            `targets`, `init`, `dropout`, `rslora`, `lr_ratio`).
        tokenized: already tokenized data, to skip tokenizing again.
        resume: continue from the newest checkpoint of an interrupted run with the same
            `out` (checkpoints live in `.OUT.work/` beside it until the run finishes).
        selection: where `settings.learning_rate` was chosen on a validation split
            (`choose_learning_rate`), recorded in `loralab.json`.
        lock: hold `out`'s lock (`loralab.locks`) while training; a study that holds its
            own folder's lock trains its runs without.
        columns: the data files' `text_column`, `text_pair_column`, `label_column` and
            `task`, kept in `loralab.json` so `evaluate` and `predict` read files alike.
        callbacks: more `transformers.TrainerCallback`s (a search's pruner, `stop_after_epoch`).
        overwrite: `out` may be a non-empty folder that loralab did not write; its files
            are kept (`loralab.outputs.check_output`). Without it such a folder, an
            existing file, or the base model's own folder is refused before training.

    Returns:
        The `TrainInfo` saved as `loralab.json`: `eval_accuracy`, `trainable_params`,
        and the `TrainResult` (`result`: metrics, time, memory, history, precision).
    """
    import torch

    from .data import class_names_of, data_digest, load_data
    if method not in TRAIN_METHODS:
        raise LoralabError(f"method must be one of {', '.join(TRAIN_METHODS)}, got {method!r}")
    check_output(out, "model", overwrite=overwrite, inputs=[("--model", local_folder(model))])
    if lock and is_main_process():  # under torchrun every rank trains; rank 0 holds the folder
        from .locks import output_lock

        with output_lock(out):
            return train(method, out, model, data, settings, lora=lora, tokenized=tokenized, resume=resume,
                         selection=selection, lock=False, overwrite=overwrite, columns=columns, callbacks=callbacks,
                         **lora_options)
    settings = settings or TrainSettings()
    lora = (lora or default_options(method)).replace(**lora_options) if method in ADAPTERS else None
    out = Path(out)
    work = out.with_name(f".{out.name}.work")  # the Trainer's scratch; the result lands in `out`
    if not resume and is_main_process():
        shutil.rmtree(work, ignore_errors=True)
    torch.manual_seed(settings.seed)  # the adapters' and head's initial weights
    tokenizer = load_tokenizer(model)
    if tokenized is None:
        tokenized = tokenize(data if data is not None else load_data(), tokenizer, settings.max_length)
    labels = class_names_of(tokenized["train"])
    net = prepare_model(method, model, lora=lora, pooling=settings.pooling, labels=labels)
    check_max_length(net, tokenizer, settings, str(model))
    if isinstance(lora, LoraOptions) and method != "pissa":  # a rate that suits kaiming diverges at the lab's init
        first = next(iter(lora_layers(net).values()))
        warning = rate_warning(lora.init, lora.rank, first.in_features, settings.learning_rate * (lora.lr_ratio or 1))
        if warning:
            logger.warning("%s", warning)
    trainable = num_trainable_parameters(net)
    if is_main_process():
        _check_resumed_settings(work, resume, {
            "method": method, "model": str(model), "labels": list(labels),
            "settings": {k: v for k, v in asdict(settings).items() if k not in RESUME_MAY_CHANGE},
            "lora": asdict(lora) if lora else None, "data": data_digest(tokenized, ("train", "eval"))})
    result = train_in_place(net, method, tokenized, settings, work, tokenizer, lora=lora, resume=resume,
                            callbacks=callbacks)
    info = TrainInfo(method, str(model), list(labels), trainable, settings.seed, settings.pooling,
                     settings.learning_rate, result, lora, selection, columns)
    if is_main_process():  # under torchrun every rank trains; one writes
        # Experiment-tracker logs (--report-to tensorboard) land in checkpoints/runs: keep them.
        save_trained(net, tokenizer, out, info, extra_files=[work / "train_log.json", work / "checkpoints" / "runs"])
        shutil.rmtree(work, ignore_errors=True)
    return info


def choose_learning_rate(method: str, candidates, data, *, model: str = DEFAULT_MODEL,
                         settings: TrainSettings | None = None, lora: AdapterOptions | None = None,
                         tokenizer=None, work: str | os.PathLike = "runs/.choose",
                         resume: bool = True, metric: str = "accuracy", extend: bool = True) -> Selection:
    """The learning rate of `candidates` that gives `method` the best `metric` (one of
    `settings.SELECT_METRICS`: accuracy, macro_f1, ... pearson) on the `validation` split
    of `data` (trained on its `train` split; `eval` is not read).
    `data` may be tokenized already; see `loralab.split_validation` to make the split.

    Each candidate trains a fresh model with `settings` (seed included); head-tuning
    computes the frozen encoder's features once for all candidates. Ties go to the
    candidate listed first. With `extend`, a best candidate at the grid's smallest or
    largest rate gets one more candidate a step past it (the grid's own step); where that
    one is best again, the selection says the best may lie beyond (`at_edge`).

    Each finished candidate's score is kept in `work/candidates.json`, tagged with a hash of
    everything it depends on (method, model, settings, LoRA options, the two splits): with
    `resume`, a choice interrupted by a kill trains only the candidates it had not finished.
    `work` is removed once the choice is made.

    Returns:
        The `Selection`: the chosen `learning_rate`, `validation_accuracy` and `history`
        per candidate, and the sizes of the splits used.
    """
    import torch

    from .data import class_names_of, data_digest

    settings = settings or TrainSettings()
    lora = (lora or default_options(method)) if method in ADAPTERS else None
    tokenizer = tokenizer or load_tokenizer(model)
    data = DatasetDict(train=data["train"], eval=data["validation"])
    if "input_ids" not in data["train"].column_names:
        data = tokenize(data, tokenizer, settings.max_length)
    work = Path(work)
    progress = work / "candidates.json"
    tag = fingerprint(method, str(model), asdict(settings.replace(quiet=False, learning_rate=1.0)),
                      asdict(lora) if lora else None, data_digest(data, ("train", "eval")))
    saved = read_json(progress) if resume else None
    done = saved["candidates"] if isinstance(saved, dict) and saved.get("key") == tag else {}
    if not resume:
        shutil.rmtree(work, ignore_errors=True)
    scores, histories, features = {}, {}, None

    def score(lr: float) -> None:
        nonlocal features
        if repr(lr) in done:
            scores[lr], histories[lr] = done[repr(lr)]["scores"], done[repr(lr)]["history"]
            logger.info("%s, learning rate %g: validation %s %s (evaluated before)", method, lr, metric,
                        scores[lr].get(metric))
            return
        trial = settings.replace(learning_rate=lr)
        if method == "head":
            torch.manual_seed(trial.seed)
            net = prepare_model("head", model, pooling=trial.pooling, labels=class_names_of(data["train"]))
            if features is None:
                features = head_features(net, data, trial, tokenizer)
            result = train_head(net, data, trial, work / "model", tokenizer, features=features)
        else:
            result = train(method, work / "model", model, settings=trial, tokenized=data, lora=lora, lock=False).result
        scores[lr] = {name: result.metrics.score(name) for name in SCORES}
        histories[lr] = result.history
        shutil.rmtree(work / "model", ignore_errors=True)
        logger.info("%s, learning rate %g: validation %s %s", method, lr, metric, scores[lr].get(metric))
        done[repr(lr)] = {"scores": scores[lr], "history": histories[lr]}
        write_json(progress, {"key": tag, "candidates": done})

    candidates = list(candidates)
    for lr in candidates:
        score(lr)
    def by_metric(lr: float) -> float:
        value = scores[lr].get(metric)
        if value is None:
            raise LoralabError(f"select.metric {metric!r} has no value for this task (f1_positive needs two classes; "
                               "pearson and spearman a regression task, the others classes).")
        return value

    best = max(candidates, key=by_metric)  # max keeps the first of equal scores
    beyond = _beyond_edge(candidates, best) if extend else None
    if beyond is not None:  # the best at the grid's edge: one more step past it, so the choice is not the grid's
        logger.info("%s: the best learning rate %g is at the edge of %s; trying %g too", method, best,
                    ", ".join(f"{lr:g}" for lr in candidates), beyond)
        score(beyond)
        candidates.append(beyond)
        best = max(candidates, key=by_metric)
    shutil.rmtree(work, ignore_errors=True)
    return Selection(method=method, learning_rate=best, train_rows=len(data["train"]),
                     validation_rows=len(data["eval"]), epochs=settings.epochs, pooling=settings.pooling,
                     validation_accuracy={repr(lr): scores[lr].get("accuracy") for lr in candidates},
                     validation_macro_f1={repr(lr): scores[lr].get("macro_f1") for lr in candidates},
                     validation_scores={name: {repr(lr): scores[lr].get(name) for lr in candidates}
                                        for name in SCORES if name not in ("accuracy", "macro_f1")},
                     history={repr(lr): histories[lr] for lr in candidates}, rank=lora.rank if lora else None,
                     metric=metric, beyond_grid=beyond, at_edge=beyond is not None and best == beyond)


def _beyond_edge(grid: list[float], best: float) -> float | None:
    """One step past the grid's edge where `best` lies on it (the step of its two outermost
    candidates, rounded to 3 digits); None inside the grid or for a grid of one."""
    ordered = sorted(set(grid))
    if len(ordered) < 2:
        return None
    if best == ordered[-1]:
        return float(f"{best * ordered[-1] / ordered[-2]:.3g}")
    if best == ordered[0]:
        return float(f"{best * ordered[0] / ordered[1]:.3g}")
    return None


def evaluate(model_dir: str | os.PathLike, data=None, settings: TrainSettings | None = None, *,
             eval_files=None, options=None, limit: int = 0) -> Metrics:
    """The `Metrics` of a saved model or adapter on an eval split: accuracy, macro-F1, each
    class's scores and the confusion matrix (a regression model: Pearson, Spearman, MSE).

    Args:
        data: a DatasetDict whose `eval` split is scored (default: `load_data()`'s), or
        eval_files: files or globs read as the eval split alone, their labels numbered among
            the model's own classes (`options`: columns; `limit`: a seeded subset of rows).
            No training split is read.
    """
    from .data import DataOptions, class_names_of, limit_data, load_data, load_split

    settings = settings or TrainSettings()
    net, tokenizer = load_trained(model_dir)
    if eval_files is not None:
        options = options or DataOptions()
        if class_names(net) == list(REGRESSION_LABELS) and options.task != REGRESSION:
            options = dataclasses.replace(options, task=REGRESSION)  # a regression model reads its targets as numbers
        evals = load_split(eval_files, options, names=class_names(net))
        data = limit_data(DatasetDict(eval=evals), eval=limit)
    data = data if data is not None else load_data()
    refuse_other_classes(model_dir, "model", class_names(net), class_names_of(data["eval"]), "the data")
    check_max_length(net, tokenizer, settings, str(model_dir))
    evals = tokenize(DatasetDict(eval=data["eval"]), tokenizer, settings.max_length)["eval"]  # eval only
    return evaluate_metrics(net, evals, tokenizer, settings, names=class_names(net))


def lowrank(finetuned, headtuned, pretrained=DEFAULT_MODEL, *, out: str | os.PathLike = "runs/lowrank",
            data=None, tokenized=None, tokenizer=None, settings: TrainSettings | None = None,
            ranks: list[int] | None = None, sweep_points: int = 0, targets=None,
            lora_dirs: tuple = (), head_score: float | None = None, metric: str = "accuracy",
) -> tuple[list[Row], LowrankSummary]:
    """The low-rank study: both approximated-model sweeps, the spectrum of dW and, for
    each LoRA adapter given, its subspace similarity to dW.

    Args:
        finetuned, headtuned: saved model folders (or models).
        pretrained: the base model both started from.
        out: folder for `lowrank.json` and `spectrum.json` (the report, or `loralab lowrank`, plots it).
        ranks: the sweep's ranks (default: full rank halving down to 1).
        sweep_points: keep only this many ranks, spread out (0 keeps all).
        lora_dirs: LoRA adapters trained from `pretrained`, compared with dW.
        metric: the score the sweeps are compared with head-tuning on (accuracy; a regression
            task's pearson; any of `metrics.SCORES` but mse).
        head_score: the head-tuned model's eval `metric` where it is known (`loralab run`
            passes its head-tuning run's, so the sweeps are compared with the figure the
            report shows); None evaluates the model.

    Returns:
        (rows, summary): a `Row` per approach and rank (`method` approx1/approx2, `rank`,
        `trainable_params`, its eval scores) and the `LowrankSummary` written to `lowrank.json`.
    """
    import numpy as np

    from .data import load_data
    from .lowrank import LowRankStudy, halving_ranks, lowest_rank_above

    settings = settings or TrainSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or load_tokenizer(pretrained)
    if tokenized is None:
        tokenized = tokenize(data if data is not None else load_data(), tokenizer, settings.max_length)
    head_model = headtuned if isinstance(headtuned, nn.Module) else load_model(headtuned)
    study = LowRankStudy(head_model, finetuned, pretrained, targets)
    ranks = sorted(set(ranks), reverse=True) if ranks else halving_ranks(study.full_rank)
    if sweep_points and sweep_points < len(ranks):
        picks = np.linspace(0, len(ranks) - 1, sweep_points).round().astype(int)
        ranks = [ranks[i] for i in sorted(set(picks))]

    def metrics_of(net) -> Metrics:
        return evaluate_metrics(net, tokenized["eval"], tokenizer, settings)

    head_score = metrics_of(head_model).score(metric) if head_score is None else head_score
    head_params = num_trainable_parameters(freeze_all_but_head(copy.deepcopy(head_model)))
    rows = []
    summary = LowrankSummary(headtuned_score=head_score, ranks=ranks, full_rank=study.full_rank,
                             lowest_rank_above_head={}, metric=metric)
    for approach in (1, 2):
        start = time.perf_counter()
        sweep = study.sweep(approach, ranks, metrics_of, progress=not settings.quiet)
        summary.sweep_seconds[approach] = time.perf_counter() - start
        summary.lowest_rank_above_head[approach] = lowest_rank_above(sweep, head_score, metric)
        for point in sweep:
            r = point.rank
            # What storing this model's change costs: rank-r factors of every target layer
            # (never more than the matrix itself) plus the head. Nothing is trained: its
            # training time and memory are those of full fine-tuning and head-tuning.
            params = head_params + sum(min(r * (m.in_features + m.out_features), m.in_features * m.out_features)
                                       for m in study.tuned.values())
            rows.append(Row(method=f"approx{approach}", rank=r, trainable_params=params, **point.eval_scores()))
    spectrum = study.spectrum()
    write_json(out / "spectrum.json", {name: asdict(layer) for name, layer in spectrum.items()})
    summary.spectrum = {name: {"rank_50": layer.rank_50, "rank_90": layer.rank_90, "rank_99": layer.rank_99,
                               "frobenius_norm": layer.frobenius_norm} for name, layer in spectrum.items()}
    if lora_dirs:
        summary.lora_similarity = {
            str(d): study.lora_similarity(load_adapter(copy.deepcopy(pretrained) if isinstance(pretrained, nn.Module)
                                                       else pretrained, d)) for d in lora_dirs}
    write_json(out / "lowrank.json", {"rows": [r.to_json() for r in rows], **summary.to_json()})
    return rows, summary
