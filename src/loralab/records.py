"""What a study produces, as types: run names, result rows, each run's record and their
JSON form. The study writes these, the report, the API and the CLI read them; a field
renamed here fails loudly everywhere instead of printing "missing".

On disk a run's folder holds `result.json` (a `RunRecord`) and the study's folder
`results.json` (a list of `Row`s).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import LoralabError
from .methods import METHODS

logger = logging.getLogger("loralab")

# ---------------------------------------------------------------------------------------
# Run names: every folder name of a study is made here.

RESULT_NAME = "result.json"  # a run's record, in its folder: the mark that the run finished
REPLACE_TEST = "replace-test"
LOWRANK = "lowrank"
SIMILARITY = "similarity"
EXTRACT = "extract"
SELECT_PREFIX = "select-"
SEARCH_PREFIX = "search-"
ANALYSES = (REPLACE_TEST, LOWRANK, SIMILARITY, EXTRACT)  # runs that train nothing


def seed_suffix(seed: int, several_seeds: bool) -> str:
    """``-seedN`` when a study runs several seeds, else nothing (one seed keeps plain names)."""
    return f"-seed{seed}" if several_seeds else ""


def method_run(method: str, rank: int | None = None, suffix: str = "") -> str:
    """The folder of a baseline or training run: ``full``, ``tfidf-lr``, ``lora-r6-seed1``."""
    return METHODS[method].run(rank, suffix)


def select_run(method: str) -> str:
    """The folder of the run that chooses `method`'s learning rate on the validation split."""
    return SELECT_PREFIX + method


def search_run(method: str) -> str:
    """The folder of the run that searches `method`'s recipe on the validation split."""
    return SEARCH_PREFIX + method


WORKER_PREFIX = "trials-"  # `search.workers`: the runs that train a search's trials beside its own


def search_worker_run(method: str, worker: int) -> str:
    """The folder of worker `worker` (2, 3, ...) of `method`'s recipe search."""
    return f"{WORKER_PREFIX}{method}-{worker}"


# ---------------------------------------------------------------------------------------
# Records


def _from_dict(cls, data: dict, where: str):
    """`cls(**data)`, refusing keys `cls` does not know (a renamed field must not vanish)."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise LoralabError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} for {cls.__name__}.")
    return cls(**data)


@dataclass
class Row:
    """One trained or evaluated model: a line of `results.json` and of the report's table."""

    method: str                           # tfidf-lr, tfidf-nb, full, head, approx1, approx2, lora,
                                          # extract (query, value), extract-all (all linear layers)
    rank: int | None = None               # LoRA, approximation or extraction rank
    trainable_params: int | None = None   # approximations: what storing their change costs
    eval_accuracy: float | None = None
    eval_macro_f1: float | None = None    # the unweighted mean of the classes' F1
    train_seconds: float | None = None    # None where nothing was trained
    peak_memory_mb: float | None = None   # peak resident (host) memory of the process that trained it
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, eval_loss, eval_accuracy
    seed: int | None = None
    precision: str | None = None          # bf16 or fp32
    run: str | None = None                # the run folder
    learning_rate: float | None = None
    pooling: str | None = None            # cls or mean
    chosen_on: str | None = None          # "validation" where the learning rate was chosen there
    per_class: dict[str, dict] | None = None  # trained models: class -> precision, recall, f1, support
    confusion: list[list[int]] | None = None   # trained models: true class x predicted class, counts
    energy: float | None = None           # extracted adapters sized by energy: the share of ||dW||^2 kept
    memory: list[dict] = field(default_factory=list)  # per epoch: resident MB after training, after eval, peak
    peak_gpu_memory_mb: float | None = None  # trained on a GPU: the most memory allocated on it
    eval_matthews: float | None = None    # Matthews correlation
    eval_f1_positive: float | None = None  # binary tasks: F1 of the positive (second) class
    eval_pearson: float | None = None     # regression: Pearson correlation with the target
    eval_spearman: float | None = None    # regression: Spearman correlation
    eval_mse: float | None = None         # regression: mean squared error
    token_passes: int | None = None       # training compute: training tokens (no padding) x epochs (head: x 1)
    recipe: dict | None = None            # a searched recipe: learning_rate, epochs, best_epoch, warmup_ratio,
                                          # weight_decay, and the search run it came from (`search`)

    def score(self, metric: str) -> float | None:
        """Its eval score `metric` (one of `metrics.SCORES`): ``row.score("pearson")``."""
        return getattr(self, f"eval_{metric}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "results.json") -> "Row":
        return _from_dict(cls, data, where)


@dataclass
class Selection:
    """A learning rate chosen on the validation split (a `select-*` run)."""

    method: str
    learning_rate: float
    train_rows: int
    validation_rows: int
    epochs: float
    pooling: str
    validation_accuracy: dict[str, float]  # repr(lr) -> accuracy, in the order tried
    validation_macro_f1: dict[str, float] = field(default_factory=dict)
    history: dict[str, list] = field(default_factory=dict)
    rank: int | None = None  # LoRA's (DoRA's, PiSSA's) rate is chosen at this rank and used at every rank; VeRA's own
    chosen_on: str = "validation"
    metric: str = "accuracy"  # what the choice maximised: accuracy or macro_f1
    validation_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # other scores: name -> lr -> value
    beyond_grid: float | None = None  # the best was at the grid's edge: this rate, one step past it, was tried
    at_edge: bool = False     # ... and was best again: the best rate may lie further out


@dataclass
class Trial:
    """One trial of a recipe search: what it sampled and how it scored on validation."""

    number: int
    state: str                 # complete or pruned (a diverged trial is pruned)
    params: dict               # learning_rate, epochs, warmup_ratio, weight_decay
    scores: list[float]        # the validation score after each epoch trained
    best_epoch: int | None     # the epoch of the best of them (1-based)
    seconds: float             # its training and evaluation
    token_passes: int          # training tokens (no padding) x epochs trained (head-tuning: x 1)
    diverged: bool = False     # the loss became NaN or infinite


@dataclass
class Search:
    """A method's recipe, searched on the validation split (a `search-*` run, `loralab.search`)."""

    method: str
    metric: str                # what the search maximised (the best epoch's validation score)
    learning_rate: float
    epochs: int                # the chosen schedule's length
    best_epoch: int            # its best epoch on validation: the method's runs stop there
    warmup_ratio: float
    weight_decay: float
    score: float               # the best trial's validation score at its best epoch
    trials: list[Trial]
    budget: int                # trials asked for (complete + pruned)
    train_rows: int
    validation_rows: int
    seconds: float             # every trial's training and evaluation, this process's and earlier ones'
    token_passes: int          # every trial's training compute
    storage: str               # the Optuna storage, relative to the study folder, and the study in it
    study_name: str
    rank: int | None = None    # the LoRA family's recipe is searched at this rank
    at_edge: list[str] = field(default_factory=list)  # chosen values at the edge of their range
    pruner: str = "median"     # median, or none

    @property
    def pruned(self) -> int:
        return sum(t.state == "pruned" for t in self.trials)

    @classmethod
    def from_json(cls, data: dict, where: str = "search") -> "Search":
        data = dict(data, trials=[_from_dict(Trial, t, where) for t in data.get("trials", [])])
        return _from_dict(cls, data, where)


@dataclass
class ReplaceTest:
    """The lab's step 4 on the fine-tuned model, scored by the study's `metric`."""

    layers: int
    parameters: int
    original_score: float
    random_clones_score: float
    restored_score: float
    restored_predictions_identical: bool
    restored_logits_identical: bool
    chance_score: float       # what knowing nothing scores: the majority class's accuracy; a constant's 0 correlation
    metric: str = "accuracy"

    @classmethod
    def from_json(cls, data: dict, where: str = "replace-test") -> "ReplaceTest":
        return _from_dict(cls, _renamed(data, REPLACE_RENAMED), where)


# Fields loralab 0.2 renamed when a study's metric stopped being accuracy alone: old records read as new.
REPLACE_RENAMED = {"original_accuracy": "original_score", "random_clones_accuracy": "random_clones_score",
                   "restored_accuracy": "restored_score", "majority_class_accuracy": "chance_score"}
LOWRANK_RENAMED = {"headtuned_accuracy": "headtuned_score"}


def _renamed(data: dict, names: dict[str, str]) -> dict:
    return {names.get(key, key): value for key, value in data.items()}


@dataclass
class LowrankSummary:
    """The low-rank study: both sweeps against head-tuning on the study's `metric`, and the
    spectrum of dW."""

    headtuned_score: float
    ranks: list[int]
    full_rank: int
    lowest_rank_above_head: dict[int, int | None]  # approach (1, 2) -> lowest rank, None if no rank beats it
    sweep_seconds: dict[int, float] = field(default_factory=dict)
    spectrum: dict[str, dict] = field(default_factory=dict)  # layer -> rank_50, rank_90, rank_99, frobenius_norm
    lora_similarity: dict[str, dict[str, float]] = field(default_factory=dict)
    metric: str = "accuracy"

    def to_json(self) -> dict:
        data = asdict(self)
        for key in ("lowest_rank_above_head", "sweep_seconds"):  # JSON keys are strings
            data[key] = {str(k): v for k, v in data[key].items()}
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "lowrank") -> "LowrankSummary":
        data = _renamed(data, LOWRANK_RENAMED)
        for key in ("lowest_rank_above_head", "sweep_seconds"):
            data[key] = {int(k): v for k, v in data.get(key, {}).items()}
        return _from_dict(cls, data, where)


@dataclass
class Extracted:
    """An adapter the `extract` step took from full fine-tuning (see `loralab.extraction`)."""

    method: str              # extract or extract-all
    targets: str             # the layers adapted: "query,value" or "all-linear"
    rank: int | None         # one rank for every layer, or
    energy: float | None     # each layer's smallest rank keeping this share of its ||dW||^2
    ranks: list[int]         # the smallest and largest rank given to a layer
    parameters: int          # low-rank factors, biases, head and layer norms
    file_bytes: int          # adapter_model.safetensors
    kept_share: float        # of the fine-tune's ||dW||^2 outside the head
    seconds: float           # the extraction (SVDs and building the model), not its evaluation
    folder: str              # within the run folder


@dataclass
class RunOutput:
    """What a task computed (`loralab.study.tasks`): the parts of its `RunRecord` that are
    results, each typed; the runner adds the run's name, key, time and device."""

    rows: list[Row] = field(default_factory=list)
    selection: Selection | None = None
    replace_test: ReplaceTest | None = None
    lowrank: LowrankSummary | None = None
    similarity: dict[str, dict[str, float]] | None = None  # LoRA rank -> layer -> similarity to dW
    extracted: list[Extracted] | None = None
    search: Search | None = None


@dataclass(kw_only=True)
class RunRecord(RunOutput):
    """A finished run: its `result.json`, written last and atomically (the completion mark):
    what its task computed (`RunOutput`) and when, where and from what inputs."""

    name: str
    key: str                     # fingerprint of the run's inputs: a different key means redo
    seconds: float               # wall time: loading, training, evaluation
    finished: str                # ISO time
    device: str                  # what it ran on: the GPU's name, or "cpu (MODEL, BF16 PATH)" (older records: "cpu")
    node: str | None = None      # the Ray node that ran it (its IP and node id); None: this machine

    @classmethod
    def of(cls, output: RunOutput, *, name: str, key: str, seconds: float, finished: str,
           device: str, node: str | None = None) -> "RunRecord":
        """The record of a run that computed `output`."""
        return cls(name=name, key=key, seconds=seconds, finished=finished, device=device, node=node,
                   **{f.name: getattr(output, f.name) for f in fields(RunOutput)})

    def to_json(self) -> dict:
        own = [f.name for f in fields(self) if f.name not in RunOutput.__dataclass_fields__]
        data = {name: getattr(self, name) for name in own + list(RunOutput.__dataclass_fields__)}
        data["rows"] = [r.to_json() for r in self.rows]
        for name in ("selection", "replace_test", "search"):
            data[name] = asdict(data[name]) if data[name] is not None else None
        data["lowrank"] = self.lowrank.to_json() if self.lowrank else None
        data["extracted"] = [asdict(e) for e in self.extracted] if self.extracted is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict, where: str = "result.json") -> "RunRecord":
        data = dict(data)
        data["rows"] = [Row.from_json(r, where) for r in data.get("rows", [])]
        if data.get("selection") is not None:
            data["selection"] = _from_dict(Selection, data["selection"], where)
        if data.get("search") is not None:
            data["search"] = Search.from_json(data["search"], where)
        if data.get("replace_test") is not None:
            data["replace_test"] = ReplaceTest.from_json(data["replace_test"], where)
        if data.get("lowrank") is not None:
            data["lowrank"] = LowrankSummary.from_json(data["lowrank"], where)
        if data.get("extracted") is not None:
            data["extracted"] = [_from_dict(Extracted, e, where) for e in data["extracted"]]
        return _from_dict(cls, data, where)


@dataclass
class DataSummary:
    """The data a study ran on (`Environment.data`)."""

    train_rows: int | None = None
    eval_rows: int | None = None
    validation_rows: int = 0
    source: str | None = None          # the data folder, $LORALAB_DATA, or "cache or download"
    train_files: list[str] | None = None
    eval_files: list[str] | None = None


@dataclass
class Environment:
    """`environment.json`: what the study ran with, for the report's footer. Fields an older
    loralab did not write read as None (or their defaults); unknown fields are refused."""

    model: str
    data: DataSummary = field(default_factory=DataSummary)
    loralab: str | None = None
    torch: str | None = None
    transformers: str | None = None
    python: str | None = None
    device: str | None = None
    cpu: str | None = None
    threads: int | None = None
    precision: str | None = None
    seed: int | None = None
    seeds: list[int] = field(default_factory=list)
    profile: str = "lab"
    pooling: str = "cls"
    total_seconds: float | None = None
    skipped_runs: int = 0
    labels: list[str] = field(default_factory=list)  # the classes, in order (a regression task: ["score"])
    class_counts: dict[str, list[int]] = field(default_factory=dict)  # split -> rows per class
    task: str = "classification"  # or "regression"
    metric: str = "accuracy"      # the score the study leads with and chose on (`data.metric`)
    executor: str = "local"       # local, or ray
    nodes: dict[str, str] = field(default_factory=dict)  # run -> the Ray node that ran it (`RunRecord.node`)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str = "environment.json") -> "Environment":
        if not isinstance(data, dict) or not isinstance(data.get("data", {}), dict):
            raise LoralabError(f"{where}: not an environment record (a JSON object with a 'data' object).")
        data = dict(data, data=_from_dict(DataSummary, data.get("data", {}), where))
        try:
            return _from_dict(cls, data, where)
        except TypeError as err:  # a required field missing
            raise LoralabError(f"{where}: {err}.") from err


# ---------------------------------------------------------------------------------------
# Files and keys


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able settings: a run is redone when its hash changes."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]



def read_json(path: Path):
    """The JSON in `path`, or None where it is missing or unreadable (an interrupted write)."""
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def read_record(path: Path) -> RunRecord | None:
    """The record in a `result.json`, or None where there is none.

    A record that cannot be read (a damaged file, or one an older loralab wrote with other
    fields) is treated as missing, so its run is done again, and a warning names the file
    and why: a finished run is never redone without a word."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
        if not isinstance(data, dict):
            raise LoralabError(f"a JSON object is expected, not a {type(data).__name__}")
        return RunRecord.from_json(data, str(path))
    except (OSError, ValueError, LoralabError, TypeError, KeyError) as err:
        logger.warning("%s: the run's record cannot be read (%s); the run is done again.", path,
                       str(err).splitlines()[0] if str(err) else type(err).__name__)
        return None


def load_json(path: Path):
    """The JSON in `path`; None where the file does not exist, a `LoralabError` where it is
    not valid JSON (the report reads finished results: a damaged one must not pass quietly)."""
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise LoralabError(f"{path}: not valid JSON ({err}).") from err


def read_rows(path: Path) -> list[Row] | None:
    """The rows of a `results.json`; None where it does not exist."""
    data = load_json(path)
    return None if data is None else [Row.from_json(r, str(path)) for r in data]
