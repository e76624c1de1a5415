"""One typed configuration under the whole tool: every option of `loralab run` (and of the
commands that share its tables) is one field of a frozen dataclass, with one default and one
docstring (`opt`), checked in one place (`validate`), read from TOML and written back.

    Config                      model, out, seed, seeds, profile, precision, device, ...
      .data     DataConfig      the files, their columns, the task, limits, the validation split
      .train    TrainSettings   how every method trains (its seed, precision and device are Config's)
      .resources ResourcesConfig  what a run asks a Ray cluster for
      .methods  MethodsConfig   which methods the study runs, at which ranks
      .lora / .vera / .ia3 / .head  each method's own table
      .select   SelectConfig    the learning rates tried on the validation split
      .search   SearchConfig    each method's recipe searched there (Optuna)
      .serve    ServeConfig     `loralab serve`: address, batching, request limits

`load_config` resolves defaults < a suite's [run] table < a TOML file < a profile
(`profiles.toml`: [tuned], [quick]) < flags. `defaults.toml` is written from these fields
(`defaults_toml`; a test keeps the packaged file equal to it), and the CLI's help for the
flags that set them is their docstrings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import typing
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import LoralabError
from .methods import ADAPTERS, LORA_FAMILY
from .settings import (
    AT_LEAST_0,
    CLASSIFICATION,
    COUNT,
    DEVICES,
    ENERGY,
    FRACTION,
    INITS,
    MIXINGS,
    PORT,
    POSITIVE,
    POSITIVE_INT,
    PRECISIONS,
    PROFILES,
    REGRESSION,
    SEED,
    SELECT_METRICS,
    SHARE,
    TASKS,
    IA3Options,
    LoraOptions,
    TrainSettings,
    VeraOptions,
    check_fields,
    default_metric,
    metric_task,
    opt,
)

logger = logging.getLogger("loralab")

EXECUTORS = ("local", "ray")  # where a study's runs run: processes on this machine, or a Ray cluster
VARIANTS = tuple(m for m in ADAPTERS if m != "lora")  # methods.variants: the adapter methods a study may add
# The fields of [train] that the top level owns (one seed, precision and device for every table).
TOP_LEVEL_TRAIN = ("seed", "precision", "device", "quiet")


class Checked:
    """A table whose fields are checked against their ranges and choices (`opt`) as it is
    built: a value out of them never gets past `from_dict`."""

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class DataConfig(Checked):
    """[data]: which files are read, and how."""

    dir: str = opt("", 'folder with train.csv and eval.csv ("" = $LORALAB_DATA, then ~/.cache/loralab/imdb-lab, '
                       "then a download)")
    train: tuple[str, ...] = opt((), "training files or globs (CSV, TSV, JSONL, Parquet), overriding DIR/train.csv")
    eval: tuple[str, ...] = opt((), "evaluation files or globs, overriding DIR/eval.csv")
    text_column: str = opt("review", "the column with each text")
    text_pair_column: str = opt("", 'sentence pairs: the column with each pair\'s second text ("" = single texts)')
    label_column: str = opt("label", "the column with the label, or a regression task's number")
    task: str = opt(CLASSIFICATION, "classification (a class per row) or regression (a number per row: a "
                                    "one-output head, mean-squared-error loss, Pearson / Spearman / MSE)",
                    choices=TASKS)
    metric: str = opt("", 'the score the report leads with and validation chooses on ("" = accuracy, or pearson '
                          "for regression; or macro_f1, matthews, f1_positive, spearman)")
    labels: tuple[str, ...] = opt((), "the classes in order ([] = from the training data: 0/1 and the like are "
                                      "negative/positive, integers by value, other names alphabetically)")
    drop_invalid: bool = opt(False, "skip rows with empty text instead of failing")
    limit_train: int = opt(0, "use only N training rows, a seeded random subset (0 = all)", within=COUNT)
    limit_eval: int = opt(0, "use only N eval rows, a seeded random subset (0 = all)", within=COUNT)
    validation: float = opt(0.0, "the fraction of train held out to choose settings on, stratified (0 = none)",
                            within=FRACTION)
    split_seed: int = opt(0, "the validation split's seed (the same split for every training seed)", within=SEED)


# What a trained model remembers of its data (loralab.json's "data"): `evaluate` and
# `predict` read files by these unless their flags say otherwise.
REMEMBERED_COLUMNS = ("text_column", "text_pair_column", "label_column", "task")


@dataclass(frozen=True)
class ResourcesConfig(Checked):
    """[resources]: with executor = "ray", what each run asks the cluster for."""

    cpus: float = opt(1.0, "CPUs per run (torch uses as many threads)", within=POSITIVE)
    gpus: float = opt(0.0, "GPUs per run; a fraction (0.5) lets runs share a GPU", within=AT_LEAST_0)


@dataclass(frozen=True)
class MethodsConfig(Checked):
    """[methods]: what the study runs."""

    baselines: bool = opt(True, "TF-IDF + logistic regression and + multinomial naive Bayes (ridge for regression)")
    full: bool = opt(True, "full fine-tuning")
    head: bool = opt(True, "head-tuning")
    replace_test: bool = opt(True, "the lab's step 4 on the fine-tuned model")
    lowrank: bool = opt(True, "approximated models 1 and 2 and the spectrum of dW (needs full and head)")
    lora_ranks: tuple[int, ...] = opt((1, 2, 4, 6, 8, 16), "LoRA's ranks", within=POSITIVE_INT)
    lora_targets: tuple[str, ...] = opt(("",), 'the layers the LoRA family adapts, each its own rows: "" = '
                                               '[lora].targets (the query and value by default), "all-linear" = every '
                                               'linear layer ("lora-all-r8")', choices=("", "all-linear"))
    variants: tuple[str, ...] = opt((), 'more adapter methods, each at its own learning rate: "dora", "pissa" (at '
                                        'each of lora_ranks), "vera" (at [vera].rank), "ia3" (its one size)')
    sweep_ranks: tuple[int, ...] = opt((), "the approximated models' ranks ([] = full rank halving down to 1)",
                                       within=POSITIVE_INT)
    sweep_points: int = opt(0, "0 = every rank of the sweep; N = N of them, spread out", within=COUNT)
    extract: bool = opt(True, "adapters extracted from full fine-tuning (`loralab extract`), each evaluated")
    extract_targets: tuple[str, ...] = opt(("", "all-linear"), '"" = the architecture\'s query and value; '
                                                                '"all-linear" = every linear layer but the head')
    extract_ranks: tuple[int, ...] = opt((1, 4, 16, 64), "one rank for every layer", within=POSITIVE_INT)
    extract_energies: tuple[float, ...] = opt((0.5, 0.9, 0.99), "per layer, the smallest rank keeping this share "
                                                                "of ||dW||^2", within=ENERGY)


@dataclass(frozen=True)
class LoraConfig(Checked):
    """[lora]: LoRA's table (DoRA and PiSSA read it too); the rank comes from [methods]."""

    alpha_factor: float = opt(2.0, "alpha = alpha_factor * rank (the lab's rule of thumb)", within=POSITIVE)
    targets: str = opt("", '"" = the architecture\'s query and value; or "query,value,dense", "all-linear"')
    init: str = opt("normal", "how A starts: normal (the lab's) | kaiming (PEFT's) | gaussian",
                   choices=INITS)
    dropout: float = opt(0.0, "dropout on the adapters' input", within=FRACTION)
    rslora: bool = opt(False, "scale by alpha / sqrt(r) (rsLoRA) instead of alpha / r")
    learning_rate: float = opt(0.0, "LoRA's learning rate (0 = [train]'s)", within=AT_LEAST_0)
    lr_ratio: float = opt(1.0, "LoRA+: B's learning rate is lr_ratio times A's (1 = plain LoRA)",
                           within=POSITIVE)


@dataclass(frozen=True)
class VeraConfig(Checked):
    """[vera]: VeRA's table: random A, B frozen and shared by every layer; each layer trains a
    vector d (r) and b (out)."""

    rank: int = opt(VeraOptions.rank, "r, the shared matrices' inner dimension", within=POSITIVE_INT)
    targets: str = opt("", '"" = the architecture\'s query and value')
    dropout: float = opt(VeraOptions.dropout, "dropout on the adapters' input", within=FRACTION)
    d_initial: float = opt(VeraOptions.d_initial, "where d starts (b starts at zero); the paper's and PEFT's default")
    projection_seed: int = opt(VeraOptions.projection_seed, "the seed of the shared A and B (PEFT's "
                                                            "projection_prng_key)", within=SEED)
    learning_rate: float = opt(0.0, "VeRA's learning rate (0 = [train]'s); VeRA wants ~10x LoRA's",
                                within=AT_LEAST_0)


@dataclass(frozen=True)
class IA3Config(Checked):
    """[ia3]: IA3's table: a vector per layer rescaling keys, values and feed-forward activations."""

    targets: str = opt("", '"" = the architecture\'s keys, values and feed-forward second layers')
    feedforward: str = opt("", "with targets: those of them whose input is rescaled")
    learning_rate: float = opt(0.0, "IA3's learning rate (0 = [train]'s)", within=AT_LEAST_0)


@dataclass(frozen=True)
class HeadConfig(Checked):
    """[head]: head-tuning's table."""

    learning_rate: float = opt(0.0, "head-tuning's learning rate (0 = [train]'s); a head alone on a frozen model "
                                    "wants ~20x full fine-tuning's", within=AT_LEAST_0)


@dataclass(frozen=True)
class SelectConfig(Checked):
    """[select]: learning rates chosen on the validation split (needs data.validation > 0)."""

    enabled: bool = opt(False, "choose each method's learning rate on the validation split")
    epochs: float = opt(0.0, "each candidate trains this many epochs (0 = as long as the final run)",
                          within=AT_LEAST_0)
    limit_train: int = opt(0, "each candidate trains on this many rows of train (0 = all)", within=COUNT)
    full: tuple[float, ...] = opt((2e-5, 5e-5, 1e-4), "full fine-tuning's candidates", within=POSITIVE)
    head: tuple[float, ...] = opt((3e-4, 1e-3, 3e-3, 1e-2), "head-tuning's candidates", within=POSITIVE)
    lora: tuple[float, ...] = opt((3e-4, 1e-3, 3e-3), "LoRA's candidates (DoRA's and PiSSA's too)", within=POSITIVE)
    vera: tuple[float, ...] = opt((3e-3, 1e-2, 3e-2), "VeRA's candidates (vectors want larger steps)", within=POSITIVE)
    ia3: tuple[float, ...] = opt((1e-3, 3e-3, 1e-2), "IA3's candidates", within=POSITIVE)
    lora_rank: int = opt(6, "LoRA's learning rate is chosen at this rank and used at every rank",
                         within=POSITIVE_INT)
    metric: str = opt("", 'what validation chooses on ("" = data.metric)')


@dataclass(frozen=True)
class SearchSpace(Checked):
    """[search.METHOD]: one method's recipe search: its trial budget and the ranges its
    trials sample (Optuna's TPE sampler)."""

    trials: int = opt(8, "trials, each a training run scored on the validation split after every epoch",
                      within=POSITIVE_INT)
    lr_min: float = opt(1e-5, "the smallest learning rate (sampled on a log scale)", within=POSITIVE)
    lr_max: float = opt(2e-4, "the largest learning rate", within=POSITIVE)
    min_epochs: int = opt(2, "the shortest schedule (epochs) a trial trains", within=POSITIVE_INT)
    max_epochs: int = opt(6, "the longest schedule; each trial keeps its best epoch on validation",
                          within=POSITIVE_INT)
    warmup_ratios: tuple[float, ...] = opt((0.0, 0.06), "the warm-up shares tried (the LoRA paper's 0.06)",
                                           within=SHARE)
    weight_decays: tuple[float, ...] = opt((0.0, 0.01), "AdamW's weight decays tried", within=AT_LEAST_0)


@dataclass(frozen=True)
class SearchConfig(Checked):
    """[search]: each method's recipe searched on the validation split (needs data.validation
    > 0), by Optuna: a TPE sampler, a pruner that stops trials whose validation score trails,
    and its SQLite storage in the study folder (search.db), so a killed search resumes with
    every finished trial kept and `optuna-dashboard sqlite:///OUT/search.db` opens it."""

    enabled: bool = opt(False, "search each method's recipe (replaces [select])")
    metric: str = opt("", 'what validation chooses on ("" = data.metric)')
    limit_train: int = opt(0, "each trial trains on this many rows of train (0 = all)", within=COUNT)
    pruner: str = opt("median", "median (stop a trial whose score trails the median of earlier trials at the same "
                                "epoch) | none", choices=("median", "none"))
    startup_trials: int = opt(3, "trials sampled at random before TPE models the scores, and before any is pruned",
                              within=COUNT)
    warmup_epochs: int = opt(3, "epochs every trial trains before the pruner may stop it (one epoch's score "
                                "tells recipes apart by noise: on CoLA most score 0)", within=COUNT)
    lora_rank: int = opt(8, "the LoRA family's recipe is searched at this rank and used at every rank",
                         within=POSITIVE_INT)
    workers: int = opt(1, "runs that train a method's trials side by side, sharing its Optuna study (with "
                          "--executor ray, on the cluster's nodes; locally, with --jobs)", within=POSITIVE_INT)
    full: SearchSpace = opt(SearchSpace(), "[search.full]")
    head: SearchSpace = opt(SearchSpace(trials=6, lr_min=3e-4, lr_max=3e-2, min_epochs=2, max_epochs=10),
                            "[search.head]")
    lora: SearchSpace = opt(SearchSpace(trials=12, lr_min=1e-4, lr_max=5e-3, min_epochs=4, max_epochs=20),
                            "[search.lora]: LoRA's, DoRA's and PiSSA's")
    vera: SearchSpace = opt(SearchSpace(trials=10, lr_min=1e-3, lr_max=5e-2, min_epochs=4, max_epochs=20),
                            "[search.vera]")
    ia3: SearchSpace = opt(SearchSpace(trials=10, lr_min=1e-3, lr_max=5e-2, min_epochs=4, max_epochs=20),
                           "[search.ia3]")


@dataclass(frozen=True)
class ServeConfig(Checked):
    """[serve]: `loralab serve`, many adapters on one base model behind one HTTP server (the
    model, precision, device and longest input are the top level's and [train]'s)."""

    host: str = opt("127.0.0.1", "the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network)")
    port: int = opt(8000, "the port to listen on", within=PORT)
    max_batch: int = opt(32, "rows per forward pass: requests that arrive together, for any adapters, share it",
                         within=POSITIVE_INT)
    max_wait_ms: float = opt(2.0, "how long a request waits for others to fill its batch, in milliseconds",
                             within=AT_LEAST_0)
    max_texts: int = opt(256, "the most texts (or pairs) one request may hold", within=POSITIVE_INT)
    max_chars: int = opt(100_000, "the longest text one request may hold, in characters", within=POSITIVE_INT)
    mixing: str = opt("auto", "how a mixed batch adds each row's own update: gather (each row's A and B gathered "
                              "from stacks: 1.7x segments with 100 adapters on a CPU, benchmarks/serve.py) | segments "
                              "(each adapter's own layers on its rows) | auto (gather)", choices=MIXINGS)
    drain_seconds: float = opt(30.0, "on SIGTERM, how long the requests in flight have to finish", within=POSITIVE)
    replicas: int = opt(0, "serve as this many replicas on Ray Serve, on the cluster at `address` (0 = one "
                           "server in this process)", within=COUNT)
    adapters_per_replica: int = opt(16, "replicas: the adapters a replica holds at once, the least recently used "
                                        "dropped first (Ray Serve's multiplexing routes to a replica holding one)",
                                    within=POSITIVE_INT)
    replica_cpus: float = opt(1.0, "replicas: the CPUs each asks the cluster for (torch uses as many threads)",
                              within=POSITIVE)


@dataclass(frozen=True)
class Config(Checked):
    """The whole configuration of `loralab run` (and `loralab glue`'s per task)."""

    model: str = opt("minilm", '"minilm" (the packaged all-MiniLM-L6-v2), a local folder, or a Hub id')
    out: str = opt("runs/lab", "the output folder, one sub-folder per run")
    seed: int = opt(0, "seeds weights of new layers, dropout, data order and the TF-IDF solvers", within=SEED)
    seeds: tuple[int, ...] = opt((), "e.g. [0, 1, 2]: every method once per seed, the report shows the median and "
                                     "spread ([] = seed alone)", within=SEED)
    profile: str = opt("lab", "lab (these defaults) | tuned (learning rates chosen from a grid on a validation "
                              "split) | searched (each method's recipe searched there): profiles.toml's table on top",
                       choices=PROFILES)
    precision: str = opt("auto", "auto (bf16 where the hardware has it) | bf16 | fp32", choices=PRECISIONS)
    device: str = opt("auto", "auto | cpu | cuda", choices=DEVICES)
    isolate: bool = opt(True, "train each model in its own process (honest peak memory per run)")
    jobs: int = opt(1, "runs at a time, each in its own process, once the runs they read are done",
                    within=POSITIVE_INT)
    report_dir: str = opt("", 'where the report goes, relative to out ("" = out itself); never outside it')
    executor: str = opt("local", "local (processes on this machine) | ray (the runs spread over a Ray cluster)",
                         choices=EXECUTORS)
    address: str = opt("", 'executor = "ray": the cluster to join ("auto" or HOST:PORT; "" = a Ray started here)')
    data: DataConfig = opt(DataConfig(), "[data]")
    train: TrainSettings = opt(TrainSettings(), "[train]: shared by full fine-tuning, head-tuning and the adapters")
    resources: ResourcesConfig = opt(ResourcesConfig(), "[resources]")
    methods: MethodsConfig = opt(MethodsConfig(), "[methods]")
    lora: LoraConfig = opt(LoraConfig(), "[lora]")
    vera: VeraConfig = opt(VeraConfig(), "[vera]")
    ia3: IA3Config = opt(IA3Config(), "[ia3]")
    head: HeadConfig = opt(HeadConfig(), "[head]")
    select: SelectConfig = opt(SelectConfig(), "[select]")
    search: SearchConfig = opt(SearchConfig(), "[search]")
    serve: ServeConfig = opt(ServeConfig(), "[serve]")

    @property
    def metric(self) -> str:
        """The score the study leads with: `data.metric`, or its task's default."""
        return self.data.metric or default_metric(self.data.task or CLASSIFICATION)

    @property
    def search_metric(self) -> str:
        """The score a recipe search maximises: `search.metric`, else the study's."""
        return self.search.metric or self.metric

    @property
    def select_metric(self) -> str:
        """The score validation chooses learning rates on: `select.metric`, else the study's."""
        return self.select.metric or self.metric

    def to_dict(self) -> dict:
        return to_dict(self)

    def replace(self, **changes) -> "Config":
        """A copy with `changes`, dotted for tables (``**{"train.epochs": 1.0}``), checked as a
        file's settings are."""
        merged = to_dict(self)
        for key, value in changes.items():
            merged = _merge(merged, _nested(key, value), "replace")
        return from_dict(merged)


# ---------------------------------------------------------------------------------------
# Dictionaries, TOML and the tree


def _table_fields(cls) -> list[dataclasses.Field]:
    """The fields a table of `cls` has in TOML ([train] leaves the top level's to it)."""
    return [f for f in fields(cls) if not (cls is TrainSettings and f.name in TOP_LEVEL_TRAIN)]


def to_dict(value) -> dict:
    """A configuration (or one of its tables) as TOML's tables and lists."""
    out = {}
    for f in _table_fields(type(value)):
        item = getattr(value, f.name)
        out[f.name] = to_dict(item) if dataclasses.is_dataclass(item) else list(item) if isinstance(item, tuple) \
            else item
    return out


def from_dict(table: dict, cls=Config, where: str = ""):
    """The typed configuration of resolved tables (every key known and of its type: `_merge`
    checked them against `to_dict(Config())`); a table whose own checks fail (TrainSettings'
    ranges) is a `LoralabError` naming the setting ("config: train.pooling must be ...")."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in _table_fields(cls):
        if f.name not in table:
            continue
        item = table[f.name]
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = from_dict(item, kind, f"{where}{f.name}.")
        else:
            values[f.name] = tuple(item) if isinstance(item, list) else item
    try:
        built = cls(**values)
    except LoralabError as err:
        raise LoralabError(f"config: {where}{err}") from err
    if cls is Config:  # one seed, precision and device for every table (TrainSettings checks them)
        try:
            built = dataclasses.replace(built, train=dataclasses.replace(
                built.train, seed=built.seed, precision=built.precision, device=built.device))
        except LoralabError as err:
            raise LoralabError(f"config: {err}") from err
    return built


def _nested(key: str, value) -> dict:
    parts = key.split(".")
    out: dict = value
    for part in reversed(parts):
        out = {part: out}
    return out


def defaults() -> dict:
    """The defaults as tables (`to_dict(Config())`)."""
    return to_dict(Config())


def profiles() -> dict:
    """The profiles' tables: [tuned] (`--profile tuned`) and [quick] (`--quick`)."""
    return tomllib.loads(resources.files("loralab").joinpath("profiles.toml").read_text("utf-8"))


def read_toml(path: Path, what: str) -> dict:
    """A TOML file's tables; a missing file or invalid TOML is a `LoralabError` naming it."""
    try:
        return tomllib.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError as err:
        raise LoralabError(f"{what} not found: {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise LoralabError(f"{path}: not valid TOML ({err}).") from err


def _merge(base: dict, override: dict, where: str, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{path}{key}"
        if key not in base:
            raise LoralabError(f"{where}: unknown setting {dotted!r}. Known: "
                               f"{', '.join(sorted(path + k for k in base))}.")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise LoralabError(f"{where}: {dotted!r} must be a table.")
            out[key] = _merge(base[key], value, where, dotted + ".")
        else:
            expected = type(base[key])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise LoralabError(f"{where}: {dotted!r} must be {expected.__name__}, got {value!r}.")
            out[key] = value
    return out


PROFILE_TABLES = ("tuned", "searched", "quick")  # a file may change a profile's tables under these names


def load_config(path: str | Path | None = None, *, quick: bool = False, profile: str | None = None,
                base: dict | None = None, **flags) -> Config:
    """Resolve the run configuration: defaults < `base` < TOML file < profile < --quick < flags.

    Args:
        path: a TOML file with the settings to change (and, in [tuned] or [quick], what
            those profiles set).
        base: settings under the file's (a suite's [run] table), checked as a file's are.
        quick: apply the [quick] table.
        profile: ``"lab"`` (the defaults), ``"tuned"`` or ``"searched"`` (apply that table); None
            keeps the file's `profile` setting.
        **flags: settings from the command line, dotted for tables (None means not given).
    """
    tables, user, layers = defaults(), {}, profiles()
    for table, where in ((base, "the suite's [run] table"), (read_toml(Path(path), "Config file") if path else None,
                                                             str(path))):
        if not table:
            continue
        table = copy.deepcopy(table)
        for name in PROFILE_TABLES:  # a file's own [tuned] or [quick]: on top of the profile's
            if name in table:
                _merge(tables, table[name], f"{where} [{name}]")  # its keys checked
                layers[name] = _overlay(layers.get(name, {}), table.pop(name))
        tables = _merge(tables, table, where)
        user = _overlay(user, table)
    where = path or ("the suite's [run] table" if base else None)
    tables["profile"] = profile or tables["profile"]
    if tables["profile"] not in PROFILES:
        raise LoralabError(f"config: profile must be one of {', '.join(PROFILES)}, not {tables['profile']!r}.")
    if (name := tables["profile"]) != "lab":
        _say_what_is_replaced(user, layers[name], where, f"the {name} profile", name)
        tables = _merge(tables, layers[name], f"the {name} profile ([{name}] table)")
    if quick:
        _say_what_is_replaced(user, layers["quick"], where, "--quick", "quick")
        tables = _merge(tables, layers["quick"], "the quick setting ([quick] table)")
    for key, value in flags.items():
        if value is not None:
            tables = _merge(tables, _nested(key, value), "command line")
    resolved = from_dict(tables)
    validate(resolved)
    return resolved


def _overlay(base: dict, top: dict) -> dict:
    """`top`'s values over `base`'s, table by table."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _leaves(table: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _say_what_is_replaced(user: dict, layer: dict, path, what: str, table: str) -> None:
    """Warn where `layer` (a profile's or --quick's table) replaces values the user's file
    set, naming each: a file's setting must not vanish without a word."""
    mine = _leaves(user)
    replaced = [f"{key} = {mine[key]!r} -> {value!r}" for key, value in _leaves(layer).items()
                if key in mine and mine[key] != value]
    if replaced:
        logger.warning("%s replaces what %s set: %s. To keep a value under %s, set it in the file's [%s] table "
                       "too.", what, path, "; ".join(replaced), what, table)


def inside(base: str | Path, relative: str, key: str) -> Path:
    """`base / relative`, refusing a path that would leave `base` (absolute, or with '..')."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise LoralabError(f"config: {key} = {relative!r} must be a path inside the output folder "
                           "(relative, without '..').")
    return Path(base) / rel


# ---------------------------------------------------------------------------------------
# Validation, in one place


def validate(config: Config) -> None:
    """Every check of a resolved configuration that its fields' ranges and choices (`opt`,
    checked as each table is built) do not make: settings that need one another. A
    `LoralabError` names the setting."""
    inside(config.out, config.report_dir, "report_dir")
    m, data, sel = config.methods, config.data, config.select
    if not set(m.variants) <= set(VARIANTS) or len(set(m.variants)) != len(m.variants):
        raise LoralabError(f"config: methods.variants may list {', '.join(map(repr, VARIANTS))} once each, "
                           f"not {list(m.variants)!r}.")
    if set(m.variants) & set(LORA_FAMILY) and not m.lora_ranks:
        raise LoralabError("config: methods.variants' dora and pissa train at methods.lora_ranks; list at least "
                           "one rank.")
    if m.lowrank and not (m.full and m.head):
        raise LoralabError("config: methods.lowrank needs methods.full and methods.head.")
    if m.extract and not set(m.extract_targets) <= {"", "all-linear"}:
        raise LoralabError(f"config: methods.extract_targets may hold \"\" (query and value) and "
                           f"\"all-linear\", not {list(m.extract_targets)!r}; `loralab extract` takes any.")
    try:  # the typed settings check what needs more than one field of their tables
        TrainSettings.from_config(config)
        LoraOptions.from_config(config, rank=1)
        VeraOptions.from_config(config)
        IA3Options.from_config(config)
    except LoralabError as err:
        raise LoralabError(f"config: {err}") from err
    if len(set(config.seeds)) != len(config.seeds):
        raise LoralabError(f"config: seeds must be distinct, got {list(config.seeds)}.")
    for key, metric in (("data.metric", data.metric), ("select.metric", sel.metric)):
        _check_metric(key, metric, data.task)
    if data.task == REGRESSION:
        if data.labels:
            raise LoralabError("config: data.labels names classes; a regression task (data.task) has none.")
        if config.train.class_weights != "none":
            raise LoralabError("config: train.class_weights weighs classes; a regression task (data.task) has "
                               "none, so it must be \"none\".")
    search = config.search
    _check_metric("search.metric", search.metric, data.task)
    if search.enabled:
        if sel.enabled:
            raise LoralabError("config: search.enabled and select.enabled both choose learning rates; enable one.")
        if not data.validation:
            raise LoralabError("config: search.enabled searches recipes on a validation split; set data.validation "
                               "(for example 0.1).")
        for method in ("full", "head", "lora", "vera", "ia3"):
            space = getattr(search, method)
            if space.lr_min > space.lr_max or space.min_epochs > space.max_epochs:
                raise LoralabError(f"config: search.{method}: lr_min must be at most lr_max and min_epochs at most "
                                   f"max_epochs, got {space.lr_min:g}..{space.lr_max:g} and "
                                   f"{space.min_epochs}..{space.max_epochs}.")
            if not space.warmup_ratios or not space.weight_decays:
                raise LoralabError(f"config: search.{method}.warmup_ratios and weight_decays must list at least one "
                                   "value each.")
    if sel.enabled:
        if not data.validation:
            raise LoralabError("config: select.enabled chooses learning rates on a validation split; "
                               "set data.validation (for example 0.1).")
        for method in ("full", "head", "lora", "vera", "ia3"):
            if not getattr(sel, method):
                raise LoralabError(f"config: select.{method} must list at least one learning rate.")


def _check_metric(key: str, metric: str, task: str) -> None:
    """A metric a study may lead with or choose on ("" = the task's own), and one its task records."""
    if not metric:
        return
    if metric not in SELECT_METRICS:
        raise LoralabError(f"config: {key} must be one of {', '.join(SELECT_METRICS)} (or \"\" for the task's "
                           f"own), not {metric!r}.")
    if metric_task(metric) != task:
        raise LoralabError(f"config: {key} = {metric!r} is a {metric_task(metric)} score, but data.task is {task!r}.")


def to_toml(config: Config | dict, docs: bool = False) -> str:
    """A configuration as TOML; with `docs`, each field's docstring as a comment (the
    packaged defaults.toml)."""
    table = to_dict(config) if dataclasses.is_dataclass(config) else config
    def tables(kind, prefix: str = "") -> dict:  # "search.lora" -> SearchSpace
        out = {prefix.rstrip("."): kind}
        for name, sub in typing.get_type_hints(kind).items():
            if dataclasses.is_dataclass(sub):
                out |= tables(sub, f"{prefix}{name}.")
        return out

    kinds = tables(Config)

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def comment(name: str, key: str) -> str:
        kind = kinds.get(name)
        doc = next((f.metadata.get("doc", "") for f in fields(kind) if f.name == key), "") if kind else ""
        return f"  # {doc}" if docs and doc else ""

    def write(items: dict, name: str) -> list[str]:
        lines = [f"{k} = {value(v)}{comment(name, k)}" for k, v in items.items() if not isinstance(v, dict)]
        if name:
            lines = ["", f"[{name}]"] + lines
        for key, sub in items.items():
            if isinstance(sub, dict):
                lines += write(sub, f"{name}.{key}" if name else key)
        return lines

    return "\n".join(write(table, "")) + "\n"


DEFAULTS_HEADER = """\
# Every default of `loralab run`, written from loralab.config's fields (each field's docstring
# is its comment; tests/test_contract.py keeps this file equal to them). Override any of them
# with a TOML file of the same shape (`loralab run --config FILE`, only the keys you change)
# or with flags. `--profile tuned` and `--quick` apply the tables of profiles.toml on top.
"""


def defaults_toml() -> str:
    """The packaged defaults.toml, as the fields say it."""
    return DEFAULTS_HEADER + "\n" + to_toml(Config(), docs=True)


def config_field(dotted: str) -> dataclasses.Field:
    """A configuration field by its dotted name ("train.epochs"): its default, docstring,
    range and choices (`opt`)."""
    kind, *parts = Config, *dotted.split(".")
    for i, part in enumerate(parts):
        f = next((f for f in fields(kind) if f.name == part), None)
        if f is None:
            break
        if i == len(parts) - 1:
            return f
        kind = typing.get_type_hints(kind)[part]
        if not dataclasses.is_dataclass(kind):
            break
    raise KeyError(dotted)


def field_doc(dotted: str) -> str:
    """The docstring of a configuration field, by its dotted name ("train.epochs")."""
    return config_field(dotted).metadata.get("doc", "")
