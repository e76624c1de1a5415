"""The methods a study compares, in one table: the name results.json stores, the label
tables and plots print, the plot colour, the run folder's prefix, and what the method
trains and how a model card says it. Plots, the report, the plan, the CLI and `export`'s
model card read it; adding a method is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One method of the study."""

    name: str    # `Row.method` in results.json
    label: str   # in tables, sentences and plot legends
    color: str   # in plots
    prefix: str  # run folders start with it: ``lora`` -> ``lora-r6``, ``full`` -> ``full-seed1``
    kind: str    # baseline (no Transformer), trained, approximation (of a fine-tune), extracted
    trains: str  # what it trains, in words
    card: str = ""  # how a model card says it was made: a template of {rank}, {alpha}, {layers} ("" = label)
    base: str = ""  # a row of another method on other layers ("lora-all": LoRA on every linear layer)

    def made_by(self, rank: int | None = None, alpha: float | None = None, layers: str = "") -> str:
        """The model card's words for a model this method made ("LoRA (rank 8, alpha 16) on
        the query and value layers")."""
        return (self.card or self.label).format(rank=rank, alpha=alpha, layers=layers, rank2=2 * (rank or 0))

    @property
    def transformer(self) -> bool:
        """A Transformer model (not a TF-IDF baseline)."""
        return self.kind != "baseline"

    def run(self, rank: int | None = None, suffix: str = "") -> str:
        """The folder of one of its runs: ``full``, ``tfidf-lr``, ``lora-r6-seed1``."""
        return (f"{self.prefix}-r{rank}" if self.name in RANKED else self.prefix) + suffix


LORA_FAMILY = ("lora", "dora", "pissa")  # low-rank adapters at LoRA's ranks, set up by LoRA's options
ADAPTERS = LORA_FAMILY + ("vera", "ia3")  # methods that train adapters, saved in PEFT's layout
ALL_LINEAR = {m: f"{m}-all" for m in LORA_FAMILY}  # the LoRA family on every linear layer: rows of their own
RANKED = ("lora", "dora", "pissa", "vera", *ALL_LINEAR.values())  # adapters with a rank, in their run folders' names

METHODS: dict[str, Method] = {m.name: m for m in (
    Method("tfidf-lr", "TF-IDF + logistic regression", "#8c564b", "tfidf-lr", "baseline",
           "a logistic regression on TF-IDF features"),
    Method("tfidf-nb", "TF-IDF + naive Bayes", "#e377c2", "tfidf-nb", "baseline",
           "a multinomial naive Bayes on TF-IDF features"),
    Method("tfidf-ridge", "TF-IDF + ridge regression", "#bcbd22", "tfidf-ridge", "baseline",
           "a ridge regression on TF-IDF features (regression tasks)"),
    Method("full", "Full fine-tuning", "#d62728", "full", "trained", "every parameter", "full fine-tuning"),
    Method("head", "Head-tuning", "#7f7f7f", "head", "trained", "the classification head on a frozen encoder",
           "head-tuning (only the classification head trained)"),
    Method("approx1", "Approximated model 1", "#1f77b4", "lowrank", "approximation",
           "nothing: rank-r SVD of the fine-tuned query/value weights on the head-tuned model"),
    Method("approx2", "Approximated model 2", "#17becf", "lowrank", "approximation",
           "nothing: pretrained weights plus the rank-r SVD of the fine-tuning update"),
    Method("dora", "DoRA", "#98df8a", "dora", "trained",
           "low-rank adapters, a magnitude per output row (weight-decomposed LoRA) and the head",
           "DoRA, weight-decomposed LoRA (rank {rank}, alpha {alpha}) on {layers}"),
    Method("pissa", "PiSSA", "#bcbd22", "pissa", "trained",
           "low-rank adapters started from W0's principal singular directions, and the head",
           "PiSSA (rank {rank}, alpha {alpha}) on {layers}, saved as a rank-{rank2} LoRA adapter of the unchanged "
           "base model"),
    Method("vera", "VeRA", "#aec7e8", "vera", "trained",
           "two scaling vectors per layer around frozen random matrices shared by every layer, and the head",
           "VeRA (rank {rank}: frozen random matrices shared by every layer, trained scaling vectors) on {layers}"),
    Method("ia3", "IA3", "#ffbb78", "ia3", "trained",
           "a vector per layer rescaling keys, values and feed-forward activations, and the head",
           "IA3 (trained vectors rescaling the keys, the values and the feed-forward activations)"),
    Method("lora", "LoRA", "#2ca02c", "lora", "trained", "low-rank adapters and the head",
           "LoRA (rank {rank}, alpha {alpha}) on {layers}"),
    Method("lora-all", "LoRA (all linear)", "#006d2c", "lora-all", "trained",
           "low-rank adapters on every linear layer but the head, and the head", base="lora"),
    Method("dora-all", "DoRA (all linear)", "#41ab5d", "dora-all", "trained",
           "DoRA's adapters on every linear layer but the head, and the head", base="dora"),
    Method("pissa-all", "PiSSA (all linear)", "#8c8c00", "pissa-all", "trained",
           "PiSSA's adapters on every linear layer but the head, and the head", base="pissa"),
    Method("extract", "Extracted LoRA (query, value)", "#ff7f0e", "extract", "extracted",
           "nothing: the truncated SVD of full fine-tuning's query/value updates"),
    Method("extract-all", "Extracted LoRA (all linear)", "#9467bd", "extract", "extracted",
           "nothing: the truncated SVD of full fine-tuning's update of every linear layer"),
)}

TRAINED = tuple(name for name, m in METHODS.items() if m.kind == "trained" and not m.base)  # full, head, .., lora
BASELINES = tuple(name for name, m in METHODS.items() if m.kind == "baseline")
TASK_BASELINES = {"classification": ("tfidf-lr", "tfidf-nb"), "regression": ("tfidf-ridge",)}  # a study's, by task


def method(name: str) -> Method:
    """The table's entry for `name`; a method the table does not know gets its name as label."""
    return METHODS.get(name) or Method(name, name, "grey", name, "trained", "")


def label(name: str) -> str:
    return method(name).label


def row_method(method: str, targets: str | None) -> str:
    """The row a `method` run on `targets` is: the LoRA family on every linear layer is a
    method of its own ("lora-all"), at its own trainable-parameter count."""
    return ALL_LINEAR[method] if targets == "all-linear" and method in ALL_LINEAR else method


def trained_method(name: str) -> str:
    """The method a row's runs train: "lora" for "lora-all"."""
    return method(name).base or name


def table_of(method: str) -> str:
    """The configuration table a method reads (its learning rate, its [select] grid): LoRA's
    for DoRA and PiSSA, its own for the others."""
    method = trained_method(method)
    return "lora" if method in LORA_FAMILY else method
