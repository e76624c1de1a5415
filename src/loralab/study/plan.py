"""The plan of a study: its runs, each with one frozen value holding everything it reads.

A run's key is the fingerprint of its task and inputs (`Run.key`), so no setting can be
left out of it by hand, and the runs it waits for are the `Ref`s among its inputs
(`Run.after`). `plan` makes every run of a resolved configuration, in order.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Union

from ..config import Config, SearchSpace
from ..methods import LORA_FAMILY, TASK_BASELINES, row_method, table_of
from ..records import (
    EXTRACT,
    LOWRANK,
    REPLACE_TEST,
    SIMILARITY,
    fingerprint,
    method_run,
    search_run,
    search_worker_run,
    seed_suffix,
    select_run,
)
from ..settings import TRAIN_METHODS, AdapterOptions, LoraOptions, TrainSettings, adapter_options

# ---------------------------------------------------------------------------------------
# Context: data and tokenizers, loaded once per process


class Context:
    """What the runs of a study share, loaded lazily: the data (from the [data] table),
    tokenizers and tokenized splits. Runs read their settings from their inputs, never
    from here: the data is identified in their inputs by its digest."""

    def __init__(self, data_options: dict, out: str | os.PathLike, quiet: bool = False):
        self.data_options = data_options
        self.out = Path(out)
        self.quiet = quiet
        self._data = None
        self._tokenizers: dict[str, object] = {}
        self._tokenized: dict[tuple, object] = {}

    @property
    def data(self):
        """train (as trained), eval and, with `data.validation`, a validation split."""
        if self._data is None:
            from ..data import load_configured

            self._data = load_configured(self.data_options)
        return self._data

    @cached_property  # plan() reads it for every run: hash the splits once
    def data_key(self) -> str:
        """A hash of every split: a run that trains or evaluates is redone when it changes."""
        from ..data import data_digest

        return data_digest(self.data, sorted(self.data))

    @cached_property
    def choice_key(self) -> str:
        """A hash of the splits that choices are made on (train and validation, never eval)."""
        from ..data import data_digest

        return data_digest(self.data, [s for s in ("train", "validation") if s in self.data])

    def tokenizer(self, model: str):
        if model not in self._tokenizers:
            from ..models import load_tokenizer

            self._tokenizers[model] = load_tokenizer(model)
        return self._tokenizers[model]

    def tokenized(self, model: str, max_length: int):
        if (model, max_length) not in self._tokenized:
            from ..training import tokenize

            self._tokenized[model, max_length] = tokenize(self.data, self.tokenizer(model), max_length)
        return self._tokenized[model, max_length]


# ---------------------------------------------------------------------------------------
# What each run reads: one frozen value per run, whose fingerprint is the run's key


@dataclass(frozen=True)
class Ref:
    """A run whose result another run reads: its folder and its key."""

    name: str
    key: str


class Inputs:
    """What a run reads; `seed` and `device` are what the runner seeds and names for it.
    Kinds that train or evaluate take both from their `settings` (`WithSettings`)."""

    seed: int = 0
    device: str = "cpu"


class WithSettings(Inputs):
    settings: TrainSettings

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def device(self) -> str:
        return self.settings.device


@dataclass(frozen=True)
class BaselineInputs(Inputs):
    method: str  # tfidf-lr, tfidf-nb or (regression) tfidf-ridge
    data: str    # digest of the splits
    seed: int = 0


@dataclass(frozen=True)
class SelectInputs(WithSettings):
    method: str
    model: str
    data: str                     # digest of train and validation: eval chooses nothing
    settings: TrainSettings       # each candidate's (its learning rate replaced)
    lora: AdapterOptions | None
    candidates: tuple[float, ...]
    limit_train: int              # each candidate trains on this many rows (0: all)
    metric: str = "accuracy"      # what the validation split chooses on


@dataclass(frozen=True)
class SearchInputs(WithSettings):
    method: str
    model: str
    data: str                     # digest of train and validation: eval chooses nothing
    settings: TrainSettings       # what the trials do not sample
    lora: AdapterOptions | None
    space: SearchSpace            # the trial budget and the ranges sampled
    limit_train: int              # each trial trains on this many rows (0: all)
    metric: str
    pruner: str
    startup_trials: int
    warmup_epochs: int


@dataclass(frozen=True)
class SearchWorkerInputs(SearchInputs):
    """A worker of a search (`search.workers` > 1): it trains trials of the same Optuna study
    as the search run, beside it (a class of its own: a search of one worker keeps its key)."""

    worker: int = 1


@dataclass(frozen=True)
class SearchOfWorkersInputs(SearchInputs):
    """The search run of a search with workers: it waits for them, trains any trial the budget
    still lacks, and records the recipe of every trial."""

    workers: tuple[Ref, ...] = ()


@dataclass(frozen=True)
class TrainInputs(WithSettings):
    method: str
    model: str
    data: str
    settings: TrainSettings
    lora: AdapterOptions | None = None
    learning_rate_from: Ref | None = None  # the select-* run whose learning rate, or search-* run whose recipe,
                                           # replaces the settings' (one field: the keys of older runs hold)


@dataclass(frozen=True)
class ReplaceInputs(WithSettings):
    full: Ref
    model: str
    data: str
    settings: TrainSettings  # inference batches, precision, device, max length; the clones' seed
    metric: str = "accuracy"  # what the test is scored by


@dataclass(frozen=True)
class LowrankInputs(WithSettings):
    full: Ref
    head: Ref
    model: str
    data: str
    settings: TrainSettings
    targets: str | None
    ranks: tuple[int, ...]  # () = full rank halving down to 1
    points: int
    metric: str = "accuracy"  # the sweeps are compared with head-tuning on it


@dataclass(frozen=True)
class SimilarityInputs(Inputs):
    full: Ref
    loras: tuple[tuple[int, Ref], ...]  # (rank, adapter run)
    model: str
    targets: str | None


@dataclass(frozen=True)
class ExtractInputs(WithSettings):
    full: Ref
    model: str
    data: str
    settings: TrainSettings            # inference batches, precision, device, max length
    targets: tuple[str, ...]           # "" (query and value) and/or "all-linear"
    ranks: tuple[int, ...]
    energies: tuple[float, ...]


RunInputs = Union[BaselineInputs, SelectInputs, SearchInputs, SearchWorkerInputs, SearchOfWorkersInputs, TrainInputs,
                  ReplaceInputs, LowrankInputs, SimilarityInputs, ExtractInputs]


@dataclass(frozen=True)
class Run:
    """One step of the study: a folder, what it reads (`inputs`) and the task that does it.

    Its key is the fingerprint of its task and inputs, so nothing it reads can be left out
    of the key; the runs it waits for are the `Ref`s among its inputs."""

    name: str
    task: str      # a name in tasks.RUN_TASKS
    inputs: RunInputs
    isolate: bool = False  # train in a child process (honest peak memory)

    @property
    def key(self) -> str:
        return fingerprint(self.task, asdict(self.inputs))

    @property
    def after(self) -> tuple[str, ...]:
        """Names of the runs whose results this one reads."""
        refs = []
        for f in fields(self.inputs):
            value = getattr(self.inputs, f.name)
            for item in (value if isinstance(value, tuple) else (value,)):
                item = item[1] if isinstance(item, tuple) else item
                if isinstance(item, Ref):
                    refs.append(item.name)
        return tuple(refs)

    def ref(self) -> Ref:
        return Ref(self.name, self.key)


def seeds_of(config: Config) -> list[int]:
    return list(config.seeds) or [config.seed]


def resolved_precision(config: Config) -> str:
    """`precision` as runs compute in it: "auto" becomes "bf16" or "fp32" for this machine,
    so a result computed in one precision is never reused where the other would be."""
    if config.precision != "auto":
        return config.precision
    from ..inference import resolve_precision
    from ..models import pick_device

    return resolve_precision(TrainSettings(), pick_device(config.device))


def plan(config: Config, ctx: Context) -> list[Run]:
    """Every run of the study, in order, each with the inputs it reads.

    With `select.enabled`, `select-full`, `select-head` and `select-lora` come first and the
    runs that use their choice read them; with `search.enabled`, `search-full`, ... likewise
    (each method's recipe, searched). With `seeds`, each method runs once per seed
    (folders end in `-seedN`); the replace test, low-rank study and similarity use the first.
    """
    c = config.replace(precision=resolved_precision(config))  # keys carry what runs compute in
    m, sel = c.methods, c.select
    isolate = c.isolate and int(os.environ.get("WORLD_SIZE", "1")) == 1
    seeds = seeds_of(c)
    model = c.model
    metric = c.metric

    targets = c.lora.targets or None
    runs: list[Run] = []
    chosen: dict[str, Ref] = {}  # row method ("lora", "lora-all") -> the run that chooses its rate (or recipe)
    wanted = {"full": m.full, "head": m.head, "lora": bool(m.lora_ranks), **{variant: True for variant in m.variants}}
    search = c.search
    if search.enabled:
        for method in (name for name, on in wanted.items() if on):
            family = method in LORA_FAMILY
            for target in (m.lora_targets if family else ("",)):  # each target its own recipe
                lora = adapter_options(c, method, search.lora_rank if family else None)
                lora = lora.replace(targets="all-linear") if target else lora
                inputs = SearchInputs(method, model, ctx.choice_key,
                                      TrainSettings.from_config(c, method, seed=seeds[0]), lora,
                                      getattr(search, table_of(method)), search.limit_train, c.search_metric,
                                      search.pruner, search.startup_trials, search.warmup_epochs)
                name = row_method(method, getattr(lora, "targets", None))
                if search.workers > 1:  # its trials trained by workers side by side, one study
                    workers = [Run(search_worker_run(name, w), "search", SearchWorkerInputs(**vars(inputs), worker=w),
                                   isolate) for w in range(1, search.workers + 1)]
                    runs += workers
                    inputs = SearchOfWorkersInputs(**vars(inputs), workers=tuple(w.ref() for w in workers))
                run = Run(search_run(name), "search", inputs, isolate)
                runs.append(run)
                chosen[name] = run.ref()
    if sel.enabled:
        for method in (name for name, on in wanted.items() if on):
            settings = TrainSettings.from_config(c, seed=seeds[0], learning_rate=getattr(sel, table_of(method))[0],
                                                 **({"epochs": sel.epochs} if sel.epochs else {}))
            lora = adapter_options(c, method, sel.lora_rank if method in LORA_FAMILY else None)
            inputs = SelectInputs(method, model, ctx.choice_key, settings, lora, tuple(getattr(sel, table_of(method))),
                                  sel.limit_train, c.select_metric)
            run = Run(select_run(method), "select", inputs, isolate)
            runs.append(run)
            chosen[method] = run.ref()
    for seed in seeds:
        sfx = seed_suffix(seed, bool(c.seeds))
        settings = {method: TrainSettings.from_config(c, method, seed=seed) for method in TRAIN_METHODS}
        if m.baselines:
            for method in TASK_BASELINES[c.data.task]:
                runs.append(Run(method_run(method, suffix=sfx), "baseline", BaselineInputs(method, ctx.data_key, seed)))
        trained: dict[str, Ref] = {}
        for method in ("full", "head"):
            if getattr(m, method):
                run = Run(method_run(method, suffix=sfx), "train",
                          TrainInputs(method, model, ctx.data_key, settings[method], None, chosen.get(method)),
                          isolate)
                runs.append(run)
                trained[method] = run.ref()
        first = seed == seeds[0]
        if first and m.replace_test and "full" in trained:
            runs.append(Run(REPLACE_TEST, "replace",
                            ReplaceInputs(trained["full"], model, ctx.data_key, settings["full"], metric)))
        if first and m.lowrank:
            runs.append(Run(LOWRANK, "lowrank", LowrankInputs(trained["full"], trained["head"], model, ctx.data_key,
                                                              settings["full"], targets, tuple(m.sweep_ranks),
                                                              m.sweep_points, metric)))
        if first and m.extract and "full" in trained:
            runs.append(Run(EXTRACT, "extract", ExtractInputs(trained["full"], model, ctx.data_key, settings["full"],
                                                              tuple(m.extract_targets), tuple(m.extract_ranks),
                                                              tuple(m.extract_energies))))
        loras = []
        for target in m.lora_targets:  # "" (lora.targets: query and value) and/or every linear layer
            for rank in m.lora_ranks:
                options = LoraOptions.from_config(c, rank)
                options = options.replace(targets="all-linear") if target else options
                for method in ("lora", *(v for v in m.variants if v in LORA_FAMILY)):  # each at its own rate
                    name = row_method(method, options.targets)
                    run = Run(method_run(name, rank, sfx), "train",
                              TrainInputs(method, model, ctx.data_key, settings[method], options,
                                          chosen.get(name if name in chosen else method)), isolate)
                    runs.append(run)
                    if method == "lora" and not target:
                        loras.append((rank, run.ref()))
        for method in (v for v in m.variants if v not in LORA_FAMILY):  # VeRA and IA3 at their own sizes
            options = adapter_options(c, method)
            runs.append(Run(method_run(method, options.rank, sfx), "train",
                            TrainInputs(method, model, ctx.data_key, settings[method], options, chosen.get(method)),
                            isolate))
        if first and loras and "full" in trained:
            runs.append(Run(SIMILARITY, "similarity", SimilarityInputs(trained["full"], tuple(loras), model, targets)))
    return runs
