"""The report as a document: its sections, sentences and tables, built from the
`Findings` (numbers only) by `document`, and rendered to Markdown and HTML by
`loralab.report.render`. Every table is a `Table`; every sentence states figures the
findings hold.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Union

from ..lowrank import LayerSpectrum
from ..methods import ADAPTERS, LORA_FAMILY, label, method, trained_method
from ..records import Environment, Selection
from ..settings import REGRESSION, SCORE_LABELS, SCORE_TABLE, metric_task
from .findings import Findings, Summary, _one
from .plots import short_layer_name

# The report's plots: file name -> title ({score}: the study's metric, "Accuracy" or "Pearson correlation").
PLOTS = {
    "accuracy_vs_params.png": "{score} against trainable parameters",
    "accuracy_vs_rank.png": "{score} against rank",
    "training_curves.png": "Training loss and eval {metric} per epoch",
    "spectrum.png": "Spectrum of the fine-tuning update dW",
    "cost.png": "Training time and peak memory",
    "confusion.png": "Confusion matrices of full fine-tuning and the best LoRA rank",
    "accuracy_vs_compute.png": "{score} against training compute",
}
OPTIONAL_PLOTS = ("accuracy_vs_compute.png",)  # listed only where made (runs that record their compute)


def plot_titles(metric: str = "accuracy") -> dict[str, str]:
    """The plots' titles for a study led by `metric`."""
    words = SCORE_LABELS[metric]
    return {name: title.format(score=words[0].upper() + words[1:], metric=words) for name, title in PLOTS.items()}


# ---------------------------------------------------------------------------------------
# The document's parts


@dataclass
class Table:
    """A table: a header, rows of cells (strings), and each column's alignment ("l" or "r";
    empty: the renderer's default)."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    align: str = ""

    def __post_init__(self):
        if self.align and len(self.align) != len(self.header):
            raise ValueError(f"align {self.align!r} does not give each of {len(self.header)} columns")

    def add(self, row: list[str]) -> None:
        if len(row) != len(self.header):
            raise ValueError(f"a row of {len(row)} cells under {len(self.header)} columns: {row}")
        self.rows.append(list(row))


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Image:
    """A plot: its title and file, or no file where the runs it needs are missing."""

    title: str
    file: str | None


Block = Union[str, Bullets, Table, Image]  # a str is a paragraph


@dataclass
class Section:
    title: str | None
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    sections: list[Section]


def table(header: list[str], rows, align: str = "") -> Table:
    """A `Table` of `rows` (each checked against the header)."""
    out = Table(list(header), align=align)
    for row in rows:
        out.add(row)
    return out


# ---------------------------------------------------------------------------------------
# Formatting


def pct(part, whole) -> str:
    """`part` as a share of `whole`; "-" where that means nothing (a whole of 0 or below, such
    as a correlation that is negative)."""
    if part is None or whole is None or whole <= 0:
        return "-"
    return f"{100 * part / whole:.2f}%"


def fmt(value, spec: str = ",", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


# ---------------------------------------------------------------------------------------
# Tables


def results_table(summaries: list[Summary], metric: str = "accuracy") -> Table:
    """The results table of the summaries (see `aggregate`): the study's `metric` first,
    with its min-max over seeds and its share of full fine-tuning's; then macro-F1 (with
    its spread), cost, and the other scores the runs recorded (Matthews correlation, the
    positive class's F1; a regression task's Spearman correlation and MSE)."""
    full = _one(summaries, "full")
    full_params = full.trainable_params if full else None
    full_score = full.score if full else None
    spread = any(s.seeds > 1 for s in summaries)
    median = " (median)" if spread else ""
    words = SCORE_LABELS[metric]
    lead = "accuracy" if metric == "accuracy" else words
    second = "macro_f1" if metric != "macro_f1" and any(s.median("macro_f1") is not None for s in summaries) else None
    header = ["Method", "Trainable parameters", "% of full", f"Eval {lead}{median}",
              *(["Min-max over seeds"] if spread else []), f"% of full {lead}",
              *([f"Eval macro-F1{median}", *(["Min-max over seeds"] if spread else [])] if second else []),
              "Training time (s)", "Peak memory (MB)"]
    gpu = any(s.row.peak_gpu_memory_mb is not None for s in summaries)  # trained on a GPU: its memory apart
    header += ["Peak GPU memory (MB)"] if gpu else []
    # The task's other scores, where the runs recorded them (studies before loralab 0.2 recorded two).
    short = {name: s.column for name, s in SCORE_TABLE.items()}
    extra = [name for name in short if name not in (metric, second)
             and any(s.median(name) is not None for s in summaries)]
    header += [f"Eval {short[name]}{median}" for name in extra]

    def range_of(s: Summary, name: str) -> list[str]:
        if not spread:
            return []
        if s.seeds <= 1:
            return ["one run"]
        low_high = s.ranges.get(name)
        return [f"{low_high[0]:.4f}-{low_high[1]:.4f}" + (f" ({s.seeds} seeds)" if name == metric else "")
                if low_high else "-"]

    rows = []
    for s in summaries:
        rows.append([s.label, fmt(s.trainable_params), pct(s.trainable_params, full_params),
                     fmt(s.score, ".4f"), *range_of(s, metric), pct(s.score, full_score),
                     *([fmt(s.median(second), ".4f"), *range_of(s, second)] if second else []),
                     fmt(s.train_seconds, ",.1f"), fmt(s.peak_memory_mb, ",.0f"),
                     *([fmt(s.row.peak_gpu_memory_mb, ",.0f")] if gpu else []),
                     *(fmt(s.median(name), ".4f") for name in extra)])
    return table(header, rows)


def per_class_table(f: Findings) -> Table | None:
    trained = [s for s in f.summaries if s.row.per_class]
    if not trained:
        return None
    return table(["method", *f.labels],
                 ([s.label, *(fmt(s.row.per_class.get(name, {}).get("f1"), ".3f") for name in f.labels)]
                  for s in trained), "l" + "r" * len(f.labels))


def extraction_table(f: Findings) -> Table:
    runs = {(r.method, r.rank, r.energy): r for r in f.runs if method(r.method).kind == "extracted"}
    second = "spearman" if f.regression else "macro_f1"
    rows = []
    for e in f.extracted:
        row = runs.get((e.method, e.rank, e.energy))
        rows.append([e.targets, f"r = {e.rank}" if e.rank else f"energy {e.energy:g}", f"{e.ranks[0]}-{e.ranks[1]}",
                     f"{e.parameters:,}", f"{e.file_bytes / 1024:,.0f}", f"{100 * e.kept_share:.1f}%",
                     f"{e.seconds:.1f}", fmt(row and row.score(f.metric), ".4f"),
                     fmt(row and row.score(second), ".4f")])
    return table(["targets", "size", "ranks given", "parameters", "file (KB)", "‖dW‖² kept", "extraction (s)",
                  f"eval {f.metric_label}", f"eval {SCORE_LABELS[second]}"], rows, "lllrrrrrr")


def spectrum_table(spectrum: dict[str, LayerSpectrum]) -> Table:
    return table(["layer", "shape", "rank for 50%", "90%", "99% of ‖dW‖²"],
                 ([short_layer_name(n), "x".join(map(str, s.shape)), str(s.rank_50), str(s.rank_90), str(s.rank_99)]
                  for n, s in spectrum.items()), "llrrr")


def similarity_table(similarity: dict[str, dict[str, float]]) -> Table:
    rows = []
    for rank, sims in similarity.items():
        values = list(sims.values())
        rows.append([rank, f"{sum(values) / len(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}"])
    return table(["rank", "mean similarity", "min", "max"], rows, "rrrr")


def time_table(f: Findings) -> Table:
    if len({t.device for t in f.times}) > 1:  # a study resumed on another machine: say which run ran where
        return table(["run", "wall time (s)", "device"],
                     ([t.name, f"{t.seconds:,.0f}", t.device or "not recorded"] for t in f.times), "lrl")
    return table(["run", "wall time (s)"], ([t.name, f"{t.seconds:,.0f}"] for t in f.times), "lr")


def memory_table(summaries: list[Summary]) -> Table | None:
    """Each trained run's resident memory after each epoch's evaluation, its change from the
    first epoch to the last, and its peak (from the run's `memory` record); None when no run
    recorded it."""
    trained = [s for s in summaries if s.row.memory]
    if not trained:
        return None
    epochs = max(len(s.row.memory) for s in trained)
    rows = []
    for s in trained:
        rss = [m.get("rss_mb") for m in s.row.memory]
        first, last = rss[0], rss[-1]
        change = f"{100 * (last / first - 1):+.0f}%" if first and last and len(rss) > 1 else "-"
        cells = [fmt(v, ",.0f") for v in rss] + ["-"] * (epochs - len(rss))
        peak = max((m["peak_rss_mb"] for m in s.row.memory if m.get("peak_rss_mb")), default=None)
        rows.append([s.label, *cells, change, fmt(peak, ",.0f")])
    return table(["method", *(f"after epoch {e}" for e in range(1, epochs + 1)), "last against first", "peak"],
                 rows, "l" + "r" * (epochs + 2))


# ---------------------------------------------------------------------------------------
# Sentences


def selection_lines(selections: list[Selection], unit: str = "reviews") -> list[str]:
    """What the validation split chose, one sentence per method."""
    out = []
    for sel in selections:
        scores = {"accuracy": sel.validation_accuracy, "macro_f1": sel.validation_macro_f1}.get(sel.metric) or \
            sel.validation_scores.get(sel.metric, {})
        tried = ", ".join(f"{float(lr):g}: {acc:.4f}" for lr, acc in scores.items())
        rank = "" if not sel.rank else f" (at r = {sel.rank}, used at every rank)" if sel.method in LORA_FAMILY \
            else f" (at r = {sel.rank})"  # VeRA runs at its one rank
        out.append(f"{label(sel.method)}{rank}: learning rate {sel.learning_rate:g}, "
                   f"chosen on the validation split ({sel.validation_rows} {unit} held out of train, "
                   f"{sel.train_rows} trained on, {sel.epochs:g} epochs, {sel.pooling} pooling); "
                   f"validation {sel.metric.replace('_', '-')} per learning rate: {tried}."
                   + (f" The best of the grid lay at its edge, so {sel.beyond_grid:g} was tried one step past it"
                      + ("; it was best again, so the best rate may lie further out." if sel.at_edge else ".")
                      if sel.beyond_grid is not None else ""))
    return out


def search_blocks(f: Findings) -> list:
    """Each method's searched recipe, what its search tried and what it cost."""
    rows, edges = [], []
    for s in f.searches:
        at = f" (r = {s.rank})" if s.rank else ""
        rows.append([f"{label(s.method)}{at}", f"{len(s.trials)} ({s.pruned} pruned)", f"{s.learning_rate:.3g}",
                     f"{s.epochs}", f"{s.best_epoch}", f"{s.warmup_ratio:g}", f"{s.weight_decay:g}",
                     f"{s.score:.4f}", f"{s.seconds:,.0f}", f"{s.token_passes / 1e6:,.1f}"])
        edges += [f"{label(s.method)}: {edge}; the best may lie beyond it." for edge in s.at_edge]
    first = f.searches[0]
    pruner = ("a median pruner stops a trial whose validation score after an epoch trails the median of earlier "
              "trials there" if first.pruner == "median" else "no pruner")
    blocks = [
        "Each method's learning rate (log scale), schedule length, warm-up and weight decay were searched by "
        f"Optuna (TPE sampler; {pruner}), training on {first.train_rows} {f.unit} and scoring "
        f"{SCORE_LABELS[first.metric]} on the {first.validation_rows} held out of train; the eval split was not "
        "used to choose anything. A method's runs train the best trial's recipe and stop at its best epoch on "
        "validation. Compute is training tokens (no padding) times the epochs trained, in millions: it does not "
        "depend on the machine. The trials are in `search.db` (`optuna-dashboard sqlite:///search.db`).",
        Table(["method", "trials", "learning rate", "schedule (epochs)", "best epoch", "warm-up", "weight decay",
               f"validation {SCORE_LABELS[first.metric]}", "search s", "search compute (M token-passes)"],
              rows, "lrrrrrrrrr")]
    if edges:
        blocks.append(Bullets(edges))
    return blocks


def answers(f: Findings) -> list[str]:
    """The lab's questions, answered in sentences from the findings."""
    out = []
    full, head, what = f.full, f.head, f.metric_label
    if full and head and full.score is not None and head.score is not None:
        loss = f.head_points_below_full
        out.append(f"Head-tuning trains {head.trainable_params:,} parameters "
                   f"({pct(head.trainable_params, full.trainable_params)} of full fine-tuning) and "
                   f"reaches {head.score:.4f} eval {what}, {abs(loss):.1f} points "
                   f"{'below' if loss >= 0 else 'above'} full fine-tuning ({full.score:.4f}).")
    else:
        out.append(f"Head-tuning against full fine-tuning: {_missing(full=full, head=head)}.")

    sweeps_planned = f.steps is None or f.steps.lowrank or bool(f.sweeps)
    if not sweeps_planned:
        out.append("The approximated models' rank sweeps were not part of this study (methods.lowrank = false).")
    for approach in (1, 2) if sweeps_planned else ():
        name = f"approximated model {approach}"
        sweep = f.sweeps.get(approach)
        if not sweep or not f.lowrank:
            out.append(f"The lowest rank at which {name} beats head-tuning: the sweep is missing.")
            continue
        lowest = f.lowest_rank_above_head[approach]
        ranks = ", ".join(str(s.rank) for s in sweep)
        if lowest is None:
            out.append(f"No rank of {name} (ranks {ranks}) beats the head-tuned model's {what} "
                       f"({f.lowrank.headtuned_score:.4f}).")
        else:
            score = next(s.score for s in sweep if s.rank == lowest)
            out.append(f"The lowest rank at which {name} still beats the head-tuned model's {what} "
                       f"({f.lowrank.headtuned_score:.4f}) is r = {lowest} ({score:.4f}); ranks tried: {ranks}.")

    lora6 = f.lora6
    if lora6 and full and lora6.score is not None and full.score is not None:
        out.append(f"LoRA with r = 6 trains {lora6.trainable_params:,} parameters, "
                   f"{pct(lora6.trainable_params, full.trainable_params)} of full fine-tuning's "
                   f"{full.trainable_params:,}, and reaches {lora6.score:.4f} eval {what}, "
                   f"{pct(lora6.score, full.score)} of full fine-tuning's "
                   f"{full.score:.4f}.")
    elif lora6 is None and f.steps is not None and 6 not in f.steps.lora_ranks and f.best_lora and full \
            and f.best_lora.score is not None and full.score is not None:
        best = f.best_lora
        out.append(f"LoRA r = 6 was not part of this study (methods.lora_ranks = {list(f.steps.lora_ranks)}); its "
                   f"best LoRA, r = {best.rank}, trains {best.trainable_params:,} parameters and reaches "
                   f"{best.score:.4f} eval {what}, {pct(best.score, full.score)} of full fine-tuning's "
                   f"{full.score:.4f}.")
    else:
        out.append(f"LoRA r = 6 against full fine-tuning: {_missing(**{'LoRA r=6': lora6, 'full': full})}.")

    if f.baselines:
        parts = [f"{b.label} reaches {b.score:.4f} eval {what} in {b.train_seconds:.2f} s" for b in f.baselines]
        sentence = "; ".join(parts) + "."
        best = f.best_transformer
        if best and best.train_seconds:
            sentence += (f" The best Transformer model, {best.label}, reaches {best.score:.4f} "
                         f"({(best.score - max(b.score for b in f.baselines)) * 100:+.1f} "
                         f"points against the better baseline) after {best.train_seconds:,.0f} s of training, "
                         f"{best.train_seconds / max(b.train_seconds for b in f.baselines):,.0f} times longer.")
        out.append(sentence)
    else:
        out.append("TF-IDF baselines: missing.")
    trained = [s for s in f.summaries if s.method in ("full", "head", "lora") and s.eval_accuracy is not None]
    if trained and f.majority_class:
        name, share = f.majority_class
        below = [s.label for s in trained if s.eval_accuracy <= share]
        low = min(trained, key=lambda s: s.eval_accuracy)
        out.append(f"Every trained Transformer model is above the majority class ({name}, {share:.4f}); the lowest, "
                   f"{low.label}, reaches {low.eval_accuracy:.4f}." if not below else
                   f"At or below the majority class ({name}, {share:.4f}), so no better than always predicting "
                   f"it: {', '.join(below)}.")
    return out


def extraction_lines(f: Findings) -> list[str]:
    """What extraction gives against trained LoRA and full fine-tuning, from the numbers."""
    extracted = [s for s in f.summaries if method(s.method).kind == "extracted"]
    if not extracted or not f.full:
        return []
    extracted = [s for s in extracted if s.score is not None]
    if not extracted or f.full.score is None:
        return []
    out, full = [], f.full.score
    near = [s for s in extracted if s.score >= full - 0.01]
    if near:
        best = min(near, key=lambda s: s.trainable_params)
        out.append(f"The smallest extracted adapter within 1 point of full fine-tuning's {f.metric_label} ({full:.4f}) "
                   f"is {best.label}: {best.trainable_params:,} parameters "
                   f"({pct(best.trainable_params, f.full.trainable_params)} of the model), {best.score:.4f}.")
    else:
        top = max(extracted, key=lambda s: s.score)
        out.append(f"No extracted adapter comes within 1 point of full fine-tuning's {f.metric_label} ({full:.4f}); "
                   f"the best, {top.label} ({top.trainable_params:,} parameters), reaches {top.score:.4f}.")
    pairs = [(e, t) for e in extracted if e.method == "extract" and e.rank is not None
             for t in [_one(f.summaries, "lora", e.rank)] if t and t.score is not None]
    if pairs:
        diffs = [100 * (t.score - e.score) for e, t in pairs]
        wins = sum(d > 0 for d in diffs)
        detail = "; ".join(f"r = {e.rank}: trained {t.score:.4f} ({t.trainable_params:,} parameters), "
                           f"extracted {e.score:.4f} ({e.trainable_params:,})" for e, t in pairs)
        verdict = ("trained LoRA is the better adapter" if wins > len(pairs) / 2 else
                   "the extracted adapter is the better one" if wins < len(pairs) / 2 else "neither is better")
        out.append(f"At equal size (the same rank on the query and value layers), {verdict}: trained LoRA scores "
                   f"higher at {wins} of {len(pairs)} ranks, by {statistics.mean(diffs):+.1f} points on average "
                   f"({detail}).")
    return out


def variant_comparison(f: Findings) -> tuple[Table, list[str]] | None:
    """LoRA and its variants (DoRA, PiSSA) rank by rank: a table of their scores (median and
    min-max over seeds, trainable parameters), and per rank which is best and whether its lead
    exceeds the seeds' spread (its lowest run above every other method's highest)."""
    methods = [m for m in LORA_FAMILY if any(s.method == m for s in f.summaries)]
    if len(methods) < 2:
        return None
    ranks = sorted({s.rank for s in f.summaries if s.method in methods and s.rank is not None})
    rows, lines = [], []
    for rank in ranks:
        found = {m: s for m in methods if (s := _one(f.summaries, m, rank)) is not None and s.score is not None}
        cells = []
        for m in methods:
            s = found.get(m)
            spread = f" [{s.score_min:.4f}, {s.score_max:.4f}]" if s and s.score_min is not None else ""
            cells.append(f"{s.score:.4f}{spread} ({s.trainable_params:,})" if s else "-")
        rows.append([str(rank), *cells])
        if len(found) < 2:
            continue
        best = max(found.values(), key=lambda s: s.score)
        others = [s for s in found.values() if s is not best]
        lines.append(f"r = {rank}: {label(best.method)} is best ({best.score:.4f} eval {f.metric_label}, "
                     f"{best.trainable_params:,} parameters), {_lead(best, others)}.")
    header = ["rank", *(f"{label(m)} {f.metric_label} (parameters)" for m in methods)]
    return table(header, rows, "r" + "l" * len(methods)), lines


def _lead(best: Summary, others: list[Summary]) -> str:
    """Whether `best`'s lead over `others` exceeds the seeds' spread (its lowest run above
    every other's highest), in words."""
    if not (best.seeds > 1 and all(s.seeds > 1 for s in others)):
        single = [_named(s) for s in (best, *others) if s.seeds <= 1]
        return ("one run each" if len(single) == 1 + len(others) else f"one run of {', '.join(single)}") + \
            ", so no spread to judge the difference by"
    low = best.score_min if best.score_min is not None else best.score
    close = [s for s in others if low <= (s.score_max if s.score_max is not None else s.score)]
    if not close:
        return "its lowest seed above every other method's highest"
    return "within the seeds' spread of " + ", ".join(_named(s) for s in close)  # those it is not clear of


def _named(s: Summary) -> str:
    return label(s.method) + (f" r = {s.rank}" if s.rank is not None else "")


def budget_comparison(f: Findings) -> tuple[Table, list[str]] | None:
    """Every adapter method's runs (LoRA and its variants at each rank, VeRA, IA3) by their
    trainable parameters, and at each budget where the best method changes, which is best among
    those within it and whether its lead over the runner-up exceeds the seeds' spread."""
    runs = sorted((s for s in f.summaries if trained_method(s.method) in ADAPTERS and s.score is not None),
                  key=lambda s: (s.trainable_params, s.method))
    if len({s.method for s in runs}) < 2 or not any(s.method not in LORA_FAMILY for s in runs):
        return None
    rows, lines, best = [], [], None
    for i, s in enumerate(runs):
        spread = f" [{s.score_min:.4f}, {s.score_max:.4f}]" if s.score_min is not None else ""
        rows.append([_named(s), f"{s.trainable_params:,}", f"{s.score:.4f}{spread}"])
        if best is not None and s.score <= best.score:
            continue
        best = s
        within = [t for t in runs[:i + 1] if t is not s]
        runner_up = max(within, key=lambda t: t.score) if within else None
        lead = f", {_lead(s, [runner_up])}" if runner_up else ""
        lines.append(f"Up to {s.trainable_params:,} trainable parameters: {_named(s)} is best "
                     f"({s.score:.4f} eval {f.metric_label}){lead}.")
    return table(["method", "trainable parameters", f"{f.metric_label} [min, max]"], rows, "lrl"), lines


def _missing(**runs) -> str:
    absent = [name for name, run in runs.items() if run is None]
    return f"missing ({', '.join(absent)} not run)"


def footer(env: Environment | None, unit: str = "reviews") -> list[str]:
    if not env:
        return ["Environment: environment.json is missing."]
    d = env.data
    files = ", ".join(d.train_files or []) or d.source or "?"
    total = (f"Total time of the last `loralab run`: {env.total_seconds:,.0f} s" if env.total_seconds is not None
             else "The last `loralab run` had not finished when this was written: the runs above are those it had done")
    return [f"Model: {env.model}",
            f"Data: {files} ({d.train_rows} training, {d.eval_rows} eval {unit}"
            + (f", {d.validation_rows} validation {unit} held out of train)" if d.validation_rows else ")"),
            f"loralab {env.loralab}, torch {env.torch}, transformers {env.transformers}, Python {env.python}",
            f"Device: {env.device}, {env.threads} threads, precision {env.precision}, "
            f"seeds {', '.join(map(str, env.seeds or [env.seed]))}, profile {env.profile}, pooling {env.pooling}",
            total + (f" (it skipped {n} runs finished by an earlier one)" if (n := env.skipped_runs) else "")]


# ---------------------------------------------------------------------------------------
# The document


def document(f: Findings, plots: dict[str, bool]) -> Document:
    """The report of the findings `f`; `plots` says which plot files were made."""
    what = f.metric_label
    intro = Section(None, [f"{what[0].upper() + what[1:]} against trainable parameters on {f.task}. Every figure "
                           "below is computed from `results.json`."])
    questions = Section("The lab's questions", [Bullets(answers(f))])
    if f.seeds > 1:
        questions.blocks.append(f"Methods run with several seeds (up to {f.seeds}) are shown by their median eval "
                                f"{what}, with the min-max spread in the table; every run is in results.json.")
    sections = [intro, questions]
    if f.selections:
        sections.append(Section("Choices made on the validation split", [
            "The eval split was not used to choose anything; it only measures the final runs.",
            Bullets(selection_lines(f.selections, f.unit))]))
    if f.searches:
        sections.append(Section("Recipes searched on the validation split", search_blocks(f)))
    results = Section("Results", [results_table(f.summaries, f.metric)])
    if any(method(s.method).kind == "approximation" for s in f.summaries):
        results.blocks.append("Approximated models train nothing: their parameter count is what storing their change "
                              "costs (rank-r factors of each query/value layer plus the head); their training cost is "
                              "that of full fine-tuning plus head-tuning.")
    if not f.regression:
        results.blocks.append("Macro-F1 is the unweighted mean of the classes' F1.")
    else:
        results.blocks.append("Pearson and Spearman correlation of the predicted score with the true one on the eval "
                              "split (1 is perfect, 0 what a constant prediction scores); MSE, its mean squared error.")
    if f.majority_class:
        name, share = f.majority_class
        results.blocks.append(f"Always predicting the eval split's largest class ({name}) would score {share:.4f} "
                              "accuracy.")
    sections.append(results)
    if (per_class := per_class_table(f)) is not None:
        sections.append(Section("F1 per class", [
            "Of each trained model (the run closest to the median where several seeds ran), on the eval split.",
            per_class]))
    if f.replace_test:
        t = f.replace_test
        chance = "a constant prediction" if metric_task(t.metric) == REGRESSION else "majority class"
        sections.append(Section("The replace test", [
            f"Replacing the {t.layers} query and value layers ({t.parameters:,} parameters) of the "
            f"fine-tuned model with random clones takes its {SCORE_LABELS[t.metric]} from {t.original_score:.4f} to "
            f"{t.random_clones_score:.4f} ({chance}: {t.chance_score:.4f}); putting "
            f"the originals back gives {t.restored_score:.4f}, with "
            f"{'identical' if t.restored_logits_identical else 'different'} logits."]))
    if (variants := variant_comparison(f)) is not None:
        compared, lines = variants
        sections.append(Section("LoRA and its variants at each rank", [
            "LoRA, DoRA (a magnitude per output row) and PiSSA (started from W0's principal singular directions) "
            "at the same ranks, each at the learning rate chosen for it; median and [min, max] over seeds.",
            Bullets(lines), compared]))
    if (budgets := budget_comparison(f)) is not None:
        compared, lines = budgets
        sections.append(Section("Which adapter at which budget", [
            "Every adapter method by its trainable parameters (the head's included): LoRA and its variants at "
            "each rank, VeRA (two vectors per layer around shared frozen random matrices) and IA3 (a vector per "
            "layer rescaling keys, values and feed-forward activations), each at the learning rate chosen for "
            "it; median and [min, max] over seeds. At each budget where the best method changes:",
            Bullets(lines), compared]))
    if f.extracted:
        sections.append(Section("Adapters extracted from full fine-tuning", [
            "`loralab extract`: each layer's fine-tuning update dW factored by truncated SVD into a LoRA "
            "adapter (alpha = rank), with the change of its bias, the head and the changed layer norms saved "
            "whole; sized by one rank for every layer or by the share of each layer's ‖dW‖² to keep. "
            "Extracted from the first seed's full fine-tuning.",
            Bullets(extraction_lines(f)), extraction_table(f)]))
    if f.spectrum:
        sections.append(Section("Is the fine-tuning update low-rank?", [spectrum_table(f.spectrum)]))
    if f.similarity:
        sections.append(Section("LoRA against the fine-tuning update", [
            "Subspace similarity (Hu et al. 2021, section 7) between the top-r output directions of each "
            "LoRA update and of dW: 1 means the same subspace, r/d is what random directions give.",
            similarity_table(f.similarity)]))
    if f.times:
        total = sum(t.seconds for t in f.times)
        busy = f.busy_seconds
        overlap = (f" Some ran side by side (`--jobs`): the study was busy for {busy:,.0f} s "
                   f"({_duration(busy)}) of wall time." if busy is not None and busy < total - 1 else "")
        sections.append(Section("Time per run", [
            "Wall time of each run: loading, training and evaluation. A run finished by an earlier, "
            f"interrupted `loralab run` keeps the time it took then. In all: {total:,.0f} s "
            f"({_duration(total)}).{overlap}", time_table(f)]))
    if (memory := memory_table(f.summaries)) is not None:
        sections.append(Section("Memory over the epochs", [
            "Resident memory (MB) of each trained run's process after each epoch's evaluation, and its "
            "peak (the run closest to the median where several seeds ran). Memory that climbs from "
            "epoch to epoch is memory kept per step.", memory]))
    sections.append(Section("Plots", [Image(title, name if plots.get(name) else None)
                                      for name, title in plot_titles(f.metric).items()
                                      if plots.get(name) or name not in OPTIONAL_PLOTS]))
    sections.append(Section("Environment", [Bullets(footer(f.environment, f.unit))]))
    return Document("loralab study report", sections)
