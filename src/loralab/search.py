"""A method's training recipe searched on the validation split, by Optuna.

Each trial trains the method on `train` with a sampled learning rate (log scale), schedule
length, warm-up and weight decay, and is scored on `validation` after every epoch; the
trial's score is its best epoch's. Optuna's TPE sampler proposes the trials, a median
pruner stops a trial whose score after an epoch trails the median of earlier trials at that
epoch, and a trial whose loss becomes NaN or infinite counts as pruned. The trials live in
an SQLite file (`storage`): a search killed mid-trial resumes with every finished trial
kept, and the trial it was in is tried again with the same values. `optuna-dashboard
sqlite:///PATH` opens the file.

The recipe kept is the best trial's: its learning rate, warm-up, weight decay and schedule
length, and the epoch of that schedule where validation peaked (`best_epoch`), where the
method's training runs stop (`loralab.training.stop_after_epoch`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

from .config import SearchSpace
from .errors import LoralabError
from .records import Search, Trial
from .settings import AdapterOptions, TrainSettings

logger = logging.getLogger("loralab")

PARAMS = ("learning_rate", "epochs", "warmup_ratio", "weight_decay")
HEARTBEAT_SECONDS = 60  # a trial's process records in the storage that it is alive this often (Optuna's heartbeat)
STALE_SECONDS = 900     # a running trial silent this long was left by a process that is gone, on any host


def token_count(dataset) -> int:
    """The tokens (no padding) of a tokenized split: a pass over it costs this many token-passes."""
    return int(sum(len(ids) for ids in dataset["input_ids"]))


def token_passes(method: str, tokens: int, epochs: int) -> int:
    """A training run's compute in token-passes: its training tokens times the epochs it
    trained; head-tuning passes the encoder over them once (it trains the head on the
    features), whatever its epochs."""
    return tokens * (min(epochs, 1) if method == "head" else epochs)


def _owner() -> str:
    """This process, as a trial records who trains it: host, boot and process id."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}|{boot}|{os.getpid()}"


OWNER = _owner()


def _running_elsewhere(trial) -> bool:
    """Whether a RUNNING trial is being trained by another live process (a worker of the same
    search, `search.workers`), not left RUNNING by one that was killed. A trial of this host is
    alive while its process is; one of another host is, until its heartbeat is `STALE_SECONDS`
    old (`_fail_stale` fails it then); one that names no owner yet was asked for within the
    last minute (its owner is about to say so)."""
    owner = trial.user_attrs.get("owner")
    if owner is None:
        start = trial.datetime_start
        return start is not None and (datetime.datetime.now() - start).total_seconds() < 60
    host, boot, pid = owner.split("|")
    if owner == OWNER:
        return False  # this process is not training it: it was left by an earlier search here
    if host != socket.gethostname():
        return True
    if boot != OWNER.split("|")[1]:
        return False  # the machine has restarted since
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def _pruning_callback(trial, metric: str, scores: list[float]):
    """A `TrainerCallback` that reports each epoch's validation `metric` to `trial` and ends
    training where the pruner says so (`should_prune`)."""
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        pruned = False  # the pruner ended the trial

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None:
                return
            scores.append(float(value))
            trial.report(float(value), len(scores))
            if state.epoch < args.num_train_epochs - 1e-6 and trial.should_prune():  # a finished one is scored
                self.pruned = True
                control.should_training_stop = True

    return Report()


def _edges(space: SearchSpace, chosen: dict) -> list[str]:
    """The chosen values that lie at the edge of their range, in words (a learning rate within
    a tenth of its log-range of either end; a best epoch at the end of the longest schedule):
    the best may lie beyond, and the report says so."""
    import math

    out = []
    span = math.log(space.lr_max / space.lr_min) if space.lr_max > space.lr_min else 0
    if span and math.log(chosen["learning_rate"] / space.lr_min) < 0.1 * span:
        out.append(f"the learning rate ({chosen['learning_rate']:.3g}) lies at the low end of its range")
    if span and math.log(space.lr_max / chosen["learning_rate"]) < 0.1 * span:
        out.append(f"the learning rate ({chosen['learning_rate']:.3g}) lies at the high end of its range")
    if space.max_epochs > space.min_epochs:
        if chosen["best_epoch"] >= space.max_epochs:
            out.append(f"the best epoch is the last of the longest schedule ({space.max_epochs} epochs): still "
                       "improving")
    return out


def _sampler(optuna, seed: int, number: int, startup_trials: int, worker: str):
    """The TPE sampler that proposes trial `number`, seeded by the study's seed, that number
    and the `worker` asking (its scratch folder's name: workers sharing a study, each a run of
    its own, draw apart). A sampler seeded once per process would draw again, after a resume,
    the random startup trials it had already trained."""
    import zlib

    import numpy as np

    state = int(np.random.SeedSequence([seed, number, zlib.crc32(worker.encode())]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state, n_startup_trials=startup_trials)


def _open_study(optuna, storage: Path, name: str, pruner):
    """The Optuna study `name` in the SQLite file `storage`, made if missing (its sampler is
    set before each trial: `_sampler`). The searches of a
    study share the file and may start at the same moment (`--jobs`, a Ray cluster): the file's
    tables are made under a lock, or two processes would both make them; each connection waits
    up to a minute for another's write. A running trial's process records a heartbeat in it, so
    that a trial left running by a process that died, on this host or another (a search resumed
    on a new machine), is failed and asked again (`_fail_stale`)."""
    from filelock import FileLock

    with FileLock(f"{storage}.lock"), _heartbeats_quietly(optuna):
        rdb = optuna.storages.RDBStorage(f"sqlite:///{storage.resolve()}",
                                         engine_kwargs={"connect_args": {"timeout": 60}},
                                         heartbeat_interval=HEARTBEAT_SECONDS, grace_period=STALE_SECONDS,
                                         heartbeat_stale_trial_callback=_ask_again)
        return optuna.create_study(study_name=name, storage=rdb, load_if_exists=True, direction="maximize",
                                   pruner=pruner)


def _ask_again(study, trial) -> None:
    """A trial whose process died is asked again with the same values."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


@contextlib.contextmanager
def _heartbeats_quietly(optuna):
    """Optuna marks its heartbeats experimental and warns at each use: not the user's concern."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _fail_stale(optuna, study) -> None:
    """Fail (and ask again) every running trial whose heartbeat is `STALE_SECONDS` old."""
    with _heartbeats_quietly(optuna):
        optuna.storages.fail_stale_trials(study)


def search_recipe(method: str, data, *, model: str, settings: TrainSettings, space: SearchSpace,
                  storage: str | os.PathLike, study_name: str, work: str | os.PathLike,
                  lora: AdapterOptions | None = None, metric: str = "accuracy", tokenizer=None,
                  pruner: str = "median", startup_trials: int = 3, warmup_epochs: int = 1,
                  rank: int | None = None) -> Search:
    """Search `method`'s recipe on `data["validation"]`, training on `data["train"]` (both
    tokenized; `eval` is never read).

    Args:
        settings: everything a trial does not sample (batch size, precision, seed, ...).
        space: the trial budget and the ranges sampled (`config.SearchSpace`).
        storage: the SQLite file of Optuna's storage (made if missing; shared by the
            searches of a study, each its own `study_name`).
        study_name: the search's name in it: a changed setting must give a new name (the
            study uses its run's key), so trials of other settings are never reused.
        work: scratch for the trials' models, removed as each trial ends.
        metric: the validation score maximised (`settings.SELECT_METRICS`).
        pruner: "median" or "none"; `startup_trials` trials are sampled at random and never
            pruned, and no trial is pruned before `warmup_epochs` epochs.

    Returns:
        The `Search`: the best trial's recipe and best epoch, every trial, and the cost.
    """
    import datasets
    import optuna

    from .api import train
    from .methods import row_method
    from .models import load_tokenizer

    if "validation" not in data:
        raise LoralabError("A recipe search needs a validation split (data.validation > 0).")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    row = row_method(method, getattr(lora, "targets", None))  # the log names LoRA on every linear layer "lora-all"
    tokenizer = tokenizer or load_tokenizer(model)
    split = datasets.DatasetDict(train=data["train"], eval=data["validation"])
    tokens = token_count(split["train"])
    work = Path(work)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    chosen_pruner = (optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
                     if pruner == "median" else optuna.pruners.NopPruner())
    study = _open_study(optuna, Path(storage), study_name, chosen_pruner)
    for interrupted in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if _running_elsewhere(interrupted):  # another worker of this search (`search.workers`) trains it
            continue
        # The process that ran it was killed: the trial is failed and asked again with the same values.
        study._storage.set_trial_state_values(interrupted._trial_id, optuna.trial.TrialState.FAIL)
        _ask_again(study, interrupted)
        logger.info("%s: trial %d was interrupted; it runs again.", row, interrupted.number)

    current: list[int] = []  # the trial this process trains

    def objective(trial) -> float:
        current[:] = [trial._trial_id]
        trial.set_user_attr("owner", OWNER)
        s = settings.replace(
            learning_rate=trial.suggest_float("learning_rate", space.lr_min, space.lr_max, log=True),
            epochs=float(trial.suggest_int("epochs", space.min_epochs, space.max_epochs)),
            warmup_ratio=trial.suggest_categorical("warmup_ratio", list(space.warmup_ratios)),
            weight_decay=trial.suggest_categorical("weight_decay", list(space.weight_decays)))
        scores: list[float] = []
        report = _pruning_callback(trial, metric, scores)
        folder = work / f"trial-{trial.number}"
        started, diverged = time.perf_counter(), False
        try:
            train(method, folder, model, settings=s, tokenized=split, lora=lora, lock=False, callbacks=(report,))
        except LoralabError as err:  # the loss became NaN or infinite: this rate diverges
            if "Training stopped" not in str(err):
                raise
            diverged = True
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(folder.with_name(f".{folder.name}.work"), ignore_errors=True)
        best = max(range(len(scores)), key=lambda i: scores[i]) if scores else None
        trial.set_user_attr("scores", scores)
        trial.set_user_attr("best_epoch", None if best is None else best + 1)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        trial.set_user_attr("token_passes", token_passes(method, tokens, len(scores)))
        trial.set_user_attr("diverged", diverged)
        trial.set_user_attr("pid", os.getpid())  # which process trained it (a resumed search's are new)
        logger.info("%s trial %d: lr %.3g, %d epochs, warm-up %g, weight decay %g: validation %s %s%s", row,
                    trial.number, s.learning_rate, s.epochs, s.warmup_ratio, s.weight_decay, metric,
                    ", ".join(f"{x:.4f}" for x in scores) or "-",
                    " (diverged)" if diverged else " (pruned)" if report.pruned else "")
        if diverged or report.pruned or best is None:
            raise optuna.TrialPruned()
        return scores[best]

    def finished() -> list:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return study.get_trials(deepcopy=False, states=states)

    def started() -> int:  # trials done, and trials other workers of this search are training now
        _fail_stale(optuna, study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return len(finished()) + sum(_running_elsewhere(t) for t in running)

    while started() < space.trials:  # one at a time: workers sharing the study stop at its budget together
        study.sampler = _sampler(optuna, settings.seed, len(study.get_trials(deepcopy=False)), startup_trials,
                                 work.name)
        current.clear()
        try:
            study.optimize(objective, n_trials=1, catch=())
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            mine = study._storage.get_trial(current[0]) if current else None
            if mine is None or not any(t.user_attrs.get("retry_of") == mine.number
                                       for t in study.get_trials(deepcopy=False)):
                raise  # the trial's own error
            # Another worker failed it while this process was silent past STALE_SECONDS (a machine
            # suspended, a process stopped) and asked it again: its result here is dropped.
            logger.warning("%s: trial %d was taken for abandoned while this process was stopped (no heartbeat "
                           "for %d s); it is asked again.", row, mine.number, STALE_SECONDS)
    trials = [Trial(number=t.number, state="complete" if t.state == optuna.trial.TrialState.COMPLETE else "pruned",
                    params={k: t.params.get(k) for k in PARAMS}, scores=t.user_attrs.get("scores", []),
                    best_epoch=t.user_attrs.get("best_epoch"), seconds=t.user_attrs.get("seconds", 0.0),
                    token_passes=t.user_attrs.get("token_passes", 0), diverged=t.user_attrs.get("diverged", False))
              for t in finished()]
    complete = [t for t in trials if t.state == "complete"]
    if not complete:
        raise LoralabError(f"{method}: every trial of the recipe search was pruned or diverged ({len(trials)} "
                           f"trials); widen [search.{method}]'s ranges or lower its learning rates.")
    best = max(complete, key=lambda t: (t.scores[t.best_epoch - 1], -t.number))
    chosen = dict(best.params, best_epoch=best.best_epoch)
    shutil.rmtree(work, ignore_errors=True)
    return Search(method=method, metric=metric, learning_rate=chosen["learning_rate"], epochs=chosen["epochs"],
                  best_epoch=best.best_epoch, warmup_ratio=chosen["warmup_ratio"], weight_decay=chosen["weight_decay"],
                  score=best.scores[best.best_epoch - 1], trials=trials, budget=space.trials,
                  train_rows=len(split["train"]), validation_rows=len(split["eval"]),
                  seconds=sum(t.seconds for t in trials), token_passes=sum(t.token_passes for t in trials),
                  storage=Path(storage).name, study_name=study_name, rank=rank, at_edge=_edges(space, chosen),
                  pruner=pruner)


def train_configured(method: str, out: str | os.PathLike, config, *, lora: AdapterOptions | None = None,
                     learning_rate: float | None = None, quiet: bool = False, resume: bool = False,
                     overwrite: bool = False):
    """`loralab train`: one model trained as a resolved configuration (`loralab.config`) says:
    its data and settings, `method`'s own table's learning rate (or `learning_rate`) and,
    where `select.enabled` (the tuned profile), the rate chosen first on the validation split
    from `method`'s [select] grid, or where `search.enabled` (the searched profile) its recipe
    searched there (`search_recipe`; the split then left out of training). `out` is checked
    before any data is read (`outputs.check_output`, the data and model its inputs) and
    locked while it is written. The returned `TrainInfo` holds the `selection`, if any."""
    import contextlib

    from .api import choose_learning_rate, train
    from .config import REMEMBERED_COLUMNS
    from .data import load_configured
    from .locks import output_lock
    from .methods import table_of
    from .models import local_folder
    from .outputs import check_output, data_inputs
    from .training import is_main_process

    check_output(out, "model", overwrite=overwrite,
                 inputs=[("--model", local_folder(config.model)), *data_inputs(config.data)])
    settings = TrainSettings.from_config(config, method, quiet=quiet,
                                         **({"learning_rate": learning_rate} if learning_rate else {}))
    lock = output_lock(out) if is_main_process() else contextlib.nullcontext()  # torchrun: rank 0 writes
    with lock:  # the learning-rate choice's scratch and the result: one writer
        data, selection = load_configured(config.data), None
        if config.select.enabled:
            sel = config.select
            trial = settings.replace(epochs=sel.epochs) if sel.epochs else settings
            selection = choose_learning_rate(method, getattr(sel, table_of(method)), data, model=config.model,
                                             settings=trial, lora=lora, work=f"{out}.choose", resume=resume,
                                             metric=config.select_metric)
            settings = settings.replace(learning_rate=selection.learning_rate)
            del data["validation"]
        callbacks = ()
        if config.search.enabled:  # the searched profile: the recipe searched first, stopped at its best epoch
            settings, callbacks = _searched(method, data, config, settings, lora, out)
            del data["validation"]
        return train(method=method, out=out, model=config.model, data=data, settings=settings, lora=lora,
                     resume=resume, selection=selection, lock=False, overwrite=overwrite, callbacks=callbacks,
                     columns={key: getattr(config.data, key) for key in REMEMBERED_COLUMNS})


def _searched(method: str, data, config, settings: TrainSettings, lora, out) -> tuple:
    """`loralab train --profile searched`: `method`'s recipe searched on the validation split
    (`loralab.search`; its trials in `OUT.search.db` beside `out`, so a killed search resumes),
    as (the settings to train with, the callback that stops training at its best epoch)."""
    from dataclasses import asdict

    from .data import data_digest
    from .methods import table_of
    from .models import load_tokenizer
    from .records import fingerprint
    from .training import stop_after_epoch, tokenize

    tokenizer = load_tokenizer(config.model)
    tokenized = tokenize(data, tokenizer, settings.max_length)
    space, search = getattr(config.search, table_of(method)), config.search
    name = fingerprint(method, str(config.model), asdict(settings.replace(quiet=False)), asdict(lora) if lora else None,
                       asdict(space), search.pruner, search.startup_trials, search.warmup_epochs,
                       config.search_metric, data_digest(tokenized, ("train", "validation")))
    found = search_recipe(method, tokenized, model=config.model, settings=settings, space=space,
                          storage=Path(f"{out}.search.db"), study_name=f"{method}-{name}", work=f"{out}.trials",
                          lora=lora, metric=config.search_metric, tokenizer=tokenizer, pruner=search.pruner,
                          startup_trials=search.startup_trials, warmup_epochs=search.warmup_epochs,
                          rank=getattr(lora, "rank", None))
    logger.info("%s: recipe searched on the validation split (%d trials, %d pruned): learning rate %.3g, %d "
                "epochs stopped at %d, warm-up %g, weight decay %g: validation %s %.4f", method, len(found.trials),
                found.pruned, found.learning_rate, found.epochs, found.best_epoch, found.warmup_ratio,
                found.weight_decay, found.metric, found.score)
    settings = settings.replace(learning_rate=found.learning_rate, epochs=float(found.epochs),
                                warmup_ratio=found.warmup_ratio, weight_decay=found.weight_decay)
    return settings, (stop_after_epoch(found.best_epoch),)
