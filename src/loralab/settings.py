"""Typed settings: how a model is trained (`TrainSettings`), how LoRA is set up
(`LoraOptions`), and the choices each option takes.

`TrainSettings` is the configuration's [train] table (`loralab.config.Config.train`), and
`from_config` is the one way to build each of them from a resolved configuration:
`loralab run`, `loralab train` and the Python API all go through it. No torch here: the
configuration is checked before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import LoralabError
from .methods import ADAPTERS, TRAINED, table_of

# The choices of every option that has a fixed set; argparse, the config check and the
# dataclasses below all read these.
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
POOLINGS = ("cls", "mean")
INITS = ("normal", "kaiming", "gaussian")
TRAIN_METHODS = tuple(reversed(TRAINED))  # lora, ia3, vera, pissa, dora, head, full: what `train` takes
PROFILES = ("lab", "tuned", "searched")
BINARY_NAMES = ("negative", "positive")  # the binary sentiment task's classes (IMDB's), 0 and 1
CLASS_WEIGHTS = ("none", "balanced")
# How a batch that mixes adapters computes each row's update (`loralab.serve.mixed`).
MIXINGS = ("auto", "segments", "gather")
# What a task predicts: classes, or a real-valued target (one output, mean-squared-error loss).
CLASSIFICATION, REGRESSION = "classification", "regression"
TASKS = (CLASSIFICATION, REGRESSION)
REGRESSION_LABELS = ("score",)  # a regression model's one output, by name (`config.id2label`)
# The scores a study may lead with and choose learning rates on (= metrics.LEAD_SCORES):
# classification's four, regression's two correlations.


@dataclass(frozen=True)
class Score:
    """One score a run records: its name (`eval_NAME` in the Trainer's logs and loralab.json),
    its words in sentences, in a report's column, in the terminal's table and in a suite's
    table, the task whose runs record it, and whether a study may lead with it and choose
    learning rates on it (every score but the mean squared error, the one lower-is-better)."""

    name: str
    words: str
    column: str
    terminal: str
    suite: str
    task: str
    lead: bool = True


# Every score, in the order reports list them: the one table the vocabularies below read.
SCORE_TABLE = {s.name: s for s in (
    Score("accuracy", "accuracy", "accuracy", "accuracy", "acc.", CLASSIFICATION),
    Score("macro_f1", "macro-F1", "macro-F1", "macro-F1", "macro-F1", CLASSIFICATION),
    Score("matthews", "Matthews correlation", "Matthews corr.", "Matthews", "Matthews", CLASSIFICATION),
    Score("f1_positive", "F1 (positive class)", "F1 (positive)", "F1 pos", "F1", CLASSIFICATION),
    Score("pearson", "Pearson correlation", "Pearson", "Pearson", "Pearson", REGRESSION),
    Score("spearman", "Spearman correlation", "Spearman", "Spearman", "Spearman", REGRESSION),
    Score("mse", "mean squared error", "MSE", "MSE", "MSE", REGRESSION, lead=False),
)}
SELECT_METRICS = tuple(name for name, s in SCORE_TABLE.items() if s.lead)  # what a study leads with, chooses on
SCORE_LABELS = {name: s.words for name, s in SCORE_TABLE.items()}  # each score in words


REGRESSION_SCORES = tuple(name for name, s in SCORE_TABLE.items() if s.task == REGRESSION)  # a regression run's


def metric_task(metric: str) -> str:
    """The task whose runs record `metric`: regression for its scores, else classification."""
    return REGRESSION if metric in REGRESSION_SCORES else CLASSIFICATION


def default_metric(task: str) -> str:
    """The score a task leads with unless told otherwise: accuracy, or Pearson correlation."""
    return "pearson" if task == REGRESSION else "accuracy"


# Inference batches, sorted by length. On a CPU 16 beats 64 (100 lab eval reviews: 3.8 s
# against 5.2 s; 500: 14.7 s against 17.9 s): smaller (batch, heads, seq, seq) attention
# tensors and less padding. A GPU prefers larger ones; pass them where it matters.
EVAL_BATCH_SIZE = 16


@dataclass(frozen=True)
class Within:
    """The values a number field takes: a finite `kind` (int or float) from `low` to `high`
    (an open end where `low_open` / `high_open`; None = unbounded). One rule, read by the
    configuration's check (`check_fields`) and by the CLI, whose flag parses with `parse`, so
    a bad value is refused by its name before anything runs, never replaced by a default."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    what: str = ""  # words after the range ("(0 = auto)")

    def problem(self, value, shown: str | None = None) -> str | None:
        """Why `value` (written `shown`) is out of range (None when it is in)."""
        shown = shown or (_number(value) if isinstance(value, (int, float)) else repr(value))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (self.kind is int and not isinstance(value, int)):
            return f"must be a {'whole ' if self.kind is int else ''}number, got {shown}"
        if not math.isfinite(value):
            return f"must be a finite number, got {shown}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if not (too_low or too_high):
            return None
        lo = "" if self.low is None else f"{'above' if self.low_open else 'at least'} {_number(self.low)}"
        hi = "" if self.high is None else f"{'below' if self.high_open else 'at most'} {_number(self.high)}"
        return f"must be {' and '.join(x for x in (lo, hi) if x)}{self.what}, got {shown}"

    def parse(self, text: str):
        """An argparse type: the value of a flag, or `ArgumentTypeError` saying why not."""
        import argparse

        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {'whole ' if self.kind is int else ''}number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        problem = self.problem(value, text)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    __call__ = parse  # a flag's argparse type


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


COUNT = Within(int, 0)                               # 0 and up: limits, save steps, "0 = auto" settings
POSITIVE_INT = Within(int, 1)                        # batch sizes, ranks, jobs
POSITIVE = Within(float, 0, low_open=True)           # epochs, learning rates, alpha, LoRA+'s ratio
AT_LEAST_0 = Within(float, 0)                        # weight decay, GPUs per run
FRACTION = Within(float, 0, 1, high_open=True)       # dropout, the validation split
SHARE = Within(float, 0, 1)                          # warm-up ratio
ENERGY = Within(float, 0, 1, low_open=True)          # a share of ||dW||^2 kept
SEED = Within(int, 0, 2**32 - 1)                     # what numpy, scikit-learn and the Trainer take
MAX_LENGTH = Within(int, 2)
PORT = Within(int, 1, 65535)


def opt(default, doc: str, *, within: Within | None = None, choices: tuple | None = None):
    """A configuration field: its one default, its one docstring (`loralab.config`) and the
    values it takes (`within` a range, or one of `choices`; for a list, each item), checked by
    `check_fields` and by the CLI's flag for it."""
    metadata = {"doc": doc} | ({"within": within} if within else {}) | ({"choices": choices} if choices else {})
    return dataclasses.field(default=default, metadata=metadata)


def field_problem(f: dataclasses.Field, value) -> str | None:
    """Why `value` is not one `f` takes (None when it is): its range or choices, item by item for a list."""
    within, choices = f.metadata.get("within"), f.metadata.get("choices")
    for item in value if isinstance(value, tuple) else (value,):
        if within is not None and (problem := within.problem(item)):
            return problem
        if choices is not None and item not in choices:
            return f"must be one of {', '.join(choices)}, got {item!r}"
    return None


def check_fields(obj) -> None:
    """Every field of a settings dataclass against its range or choices (`opt`): a
    `LoralabError` naming the first field out of them ("epochs must be above 0, got 0.")."""
    for f in dataclasses.fields(obj):
        problem = field_problem(f, getattr(obj, f.name))
        if problem:
            raise LoralabError(f"{f.name} {problem}.")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise LoralabError(f"{name} must be one of {', '.join(choices)}, got {value!r}.")


def _replace(obj, changes: dict):
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise LoralabError(f"{type(obj).__name__} has no setting {', '.join(map(repr, unknown))} "
                           f"(known: {', '.join(sorted(known))}).")
    return dataclasses.replace(obj, **changes)


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained and evaluated: the lab's defaults, and the [train] table of the
    configuration (`loralab.config.Config.train`, whose seed, precision and device are the
    top level's). Each field's docstring is its `opt`'s."""

    epochs: float = opt(3.0, "passes over the training data", within=POSITIVE)
    batch_size: int = opt(8, "training examples per optimizer step (per device)", within=POSITIVE_INT)
    micro_batch_size: int = opt(0, "examples per forward/backward pass, accumulated into each batch; 0 = auto: on "
                                   "a CPU each batch cut at its own length into passes of the memory of 1,024 tokens "
                                   "at 512 (faster and smaller), on a GPU the batch",
                                within=COUNT)
    learning_rate: float = opt(5e-5, "AdamW's peak learning rate (the Trainer's default)", within=POSITIVE)
    lr_scheduler: str = opt("linear", "a Trainer schedule; linear decays to zero")
    warmup_ratio: float = opt(0.0, "the fraction of steps with a linear warm-up", within=SHARE)
    weight_decay: float = opt(0.0, "AdamW's weight decay", within=AT_LEAST_0)
    logging_steps: int = opt(5, "a training-loss log line every this many steps", within=POSITIVE_INT)
    eval_batch_size: int = opt(EVAL_BATCH_SIZE, "inference batches, longest first; 16 beats 64 on a CPU",
                               within=POSITIVE_INT)
    max_length: int = opt(512, "the longest input in tokens; longer texts are cut", within=MAX_LENGTH)
    group_by_length: bool = opt(True, "batches of texts of similar length: less padding, same data each epoch")
    pad_to_multiple_of: int = opt(0, "batch lengths rounded up to multiples of this; 0 = auto (under 1/8 padding), "
                                     "1 = exact (loralab.inference.bucket_length)", within=COUNT)
    fast_dropout: bool = opt(True, "a cheaper dropout mask on CPUs (loralab.fastdropout); false = torch's")
    gradient_checkpointing: bool = opt(False, "recompute each layer in the backward pass: less memory, more time "
                                              "(1.75x for 4% of a LoRA run's peak on a CPU)")
    compile: bool = opt(False, "torch.compile training and evaluation (inductor; needs a C++ compiler on a CPU; "
                               "3x slower for a LoRA epoch there)")
    pooling: str = opt("cls", "what the head reads: cls (the first token, as the lab) | mean (the tokens' mean)",
                       choices=POOLINGS)
    save_steps: int = opt(0, "also checkpoint every N steps (0 = at the end of each epoch); --resume continues "
                             "from the last", within=COUNT)
    report_to: str = opt("none", "experiment trackers passed to the Trainer (tensorboard, ...); none writes nothing")
    class_weights: str = opt("none", "none | balanced: the loss weighs each class by n / (K n_class) of the data",
                              choices=CLASS_WEIGHTS)
    precision: str = opt("auto", "bf16 (autocast) | fp32 | auto (bf16 where the CPU or GPU computes it natively)",
                          choices=PRECISIONS)
    seed: int = opt(0, "seeds weights of new layers, dropout and data order", within=SEED)
    device: str = opt("auto", "auto | cpu | cuda", choices=DEVICES)
    quiet: bool = opt(False, "no progress bars (changes no result)")

    def __post_init__(self):
        check_fields(self)
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise LoralabError(f"micro_batch_size must divide batch_size ({self.batch_size}), "
                               f"got {self.micro_batch_size} (0 = auto).")

    def replace(self, **changes) -> "TrainSettings":
        """A copy with `changes`; an unknown name is an error, never silently dropped."""
        return _replace(self, changes)

    @classmethod
    def from_config(cls, config, method: str | None = None, **changes) -> "TrainSettings":
        """The settings of a resolved configuration (`loralab.config.load_config`): its
        [train] table with the top-level seed, precision and device; for `method`, its own
        table's learning rate where that sets one."""
        table = table_of(method) if method else None  # LoRA's variants read LoRA's table
        own_rate = getattr(config, table).learning_rate if table in ("head", "lora", "vera", "ia3") else 0.0
        settings = config.train.replace(seed=config.seed, precision=config.precision, device=config.device)
        return settings.replace(**{**({"learning_rate": own_rate} if own_rate else {}), **changes})


@dataclass(frozen=True)
class LoraOptions:
    """How LoRA adapters are set up and trained (`loralab.lora.LoRA`, `inject_lora`).

    Args:
        rank: r, the adapters' inner dimension.
        alpha: the scale's numerator; None is 2 * rank (the lab's rule of thumb).
        targets: names or suffixes (``"query,value,dense"``), ``"all-linear"``, or None
            for the architecture's query and value projections.
        init: how A starts: ``"normal"`` (the lab's), ``"kaiming"`` (PEFT's), ``"gaussian"``.
        dropout: dropout on the adapters' input.
        rslora: scale by alpha / sqrt(r) instead of alpha / r.
        lr_ratio: LoRA+: the B matrices learn this many times faster than the rest.
    """

    rank: int = 6
    alpha: float | None = None
    targets: str | None = None
    init: str = "normal"
    dropout: float = 0.0
    rslora: bool = False
    lr_ratio: float = 1.0

    def __post_init__(self):
        _check_choice("init", self.init, INITS)
        if self.rank < 1:
            raise LoralabError(f"rank must be at least 1, got {self.rank}.")
        if self.alpha is not None and not (0 < self.alpha < math.inf):
            raise LoralabError(f"alpha must be a positive finite number (or None: 2 * rank), got {self.alpha!r}.")
        if not (0 < self.lr_ratio < math.inf) or not 0 <= self.dropout < 1:
            raise LoralabError(f"lr_ratio must be a positive finite number and dropout in [0, 1), got "
                               f"{self.lr_ratio!r} and {self.dropout!r}.")

    def replace(self, **changes) -> "LoraOptions":
        return _replace(self, changes)

    @property
    def layer_options(self) -> dict:
        """Keyword arguments of `inject_lora` (everything but the optimiser's `lr_ratio`)."""
        return dict(alpha=self.alpha, targets=self.targets, init=self.init, dropout=self.dropout,
                    rslora=self.rslora)

    @classmethod
    def from_config(cls, config, rank: int, **changes) -> "LoraOptions":
        """The options of a resolved configuration's [lora] table at `rank`."""
        lora = config.lora
        return cls(rank=rank, alpha=lora.alpha_factor * rank, targets=lora.targets or None, init=lora.init,
                   dropout=lora.dropout, rslora=lora.rslora, lr_ratio=lora.lr_ratio).replace(**changes)


@dataclass(frozen=True)
class VeraOptions:
    """How VeRA adapters are set up (`loralab.vectors.VeRA`, `inject_vera`): the [vera] table.

    Args:
        rank: r, the shared random matrices' inner dimension; a layer trains out + r numbers.
        targets: as LoRA's (None: the architecture's query and value projections).
        dropout: dropout on the adapters' input.
        d_initial: where the vector d starts (b starts at zero).
        projection_seed: the seed the shared A and B are drawn from (PEFT's `projection_prng_key`).
    """

    rank: int = 256
    targets: str | None = None
    dropout: float = 0.0
    d_initial: float = 0.1
    projection_seed: int = 0

    def __post_init__(self):
        if self.rank < 1:
            raise LoralabError(f"VeRA's rank must be at least 1, got {self.rank}.")
        if not 0 <= self.dropout < 1:
            raise LoralabError(f"VeRA's dropout must be in [0, 1), got {self.dropout}.")

    def replace(self, **changes) -> "VeraOptions":
        return _replace(self, changes)

    @property
    def layer_options(self) -> dict:
        """Keyword arguments of `inject_vera` besides the rank."""
        return dict(targets=self.targets, seed=self.projection_seed, dropout=self.dropout, d_initial=self.d_initial)

    @classmethod
    def from_config(cls, config, rank: int | None = None, **changes) -> "VeraOptions":
        """The options of a resolved configuration's [vera] table (at `rank` where given)."""
        vera = config.vera
        return cls(rank=vera.rank if rank is None else rank, targets=vera.targets or None, dropout=vera.dropout,
                   d_initial=vera.d_initial, projection_seed=vera.projection_seed).replace(**changes)


@dataclass(frozen=True)
class IA3Options:
    """How IA3 adapters are set up (`loralab.vectors.IA3`, `inject_ia3`): the [ia3] table.

    Args:
        targets: the layers to rescale (None: the architecture's keys, values and
            feed-forward second layers, `loralab.arch`).
        feedforward: of `targets`, those whose input is rescaled rather than their output.
    """

    targets: str | None = None
    feedforward: str | None = None

    rank = None  # IA3 has no rank

    def replace(self, **changes) -> "IA3Options":
        return _replace(self, changes)

    @property
    def layer_options(self) -> dict:
        return dict(targets=self.targets, feedforward=self.feedforward)

    @classmethod
    def from_config(cls, config, rank: int | None = None, **changes) -> "IA3Options":
        ia3 = config.ia3
        return cls(targets=ia3.targets or None, feedforward=ia3.feedforward or None).replace(**changes)


AdapterOptions = LoraOptions | VeraOptions | IA3Options


# The options type of each method that trains adapters: LoRA's for its variants.
OPTIONS: dict[str, type] = {**{m: LoraOptions for m in ADAPTERS}, "vera": VeraOptions, "ia3": IA3Options}


def adapter_options(config, method: str, rank: int | None = None, **changes) -> AdapterOptions | None:
    """The options `method` trains with from a resolved configuration: LoRA's table at `rank`
    for LoRA and its variants, [vera] or [ia3]; None for a method without adapters."""
    kind = OPTIONS.get(method)
    return kind.from_config(config, rank, **changes) if kind else None


def default_options(method: str) -> AdapterOptions | None:
    """`method`'s adapter options at their defaults (None for full fine-tuning and head-tuning)."""
    kind = OPTIONS.get(method)
    return kind() if kind else None
