"""The report of a study: tables, plots and the lab's questions answered from
`results.json`, as `report.md`, a self-contained `report.html` and PNG files.

Every number and sentence is computed from the files of the output folder; a run that is
missing is said to be missing, never estimated.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import LoralabError
from .fileio import write_text
from .plots import (
    LABELS,
    plot_accuracy_vs_params,
    plot_accuracy_vs_rank,
    plot_confusion,
    plot_cost,
    plot_spectrum,
    plot_training_curves,
    short_layer_name,
)
from .records import (
    ANALYSES,
    EXTRACT,
    LOWRANK,
    REPLACE_TEST,
    RESULT_NAME,
    SELECT_PREFIX,
    SIMILARITY,
    Extracted,
    LowrankSummary,
    ReplaceTest,
    Row,
    RunRecord,
    Selection,
    load_json,
    read_rows,
)
from .settings import BINARY_NAMES

PLOTS = {
    "accuracy_vs_params.png": "Accuracy against trainable parameters",
    "accuracy_vs_rank.png": "Accuracy against rank",
    "training_curves.png": "Training loss and eval accuracy per epoch",
    "spectrum.png": "Spectrum of the fine-tuning update dW",
    "cost.png": "Training time and peak memory",
    "confusion.png": "Confusion matrices of full fine-tuning and the best LoRA rank",
}
@dataclass
class Summary:
    """One method at one rank, over its seeds: the median accuracy, time and memory, the
    accuracy's min-max, and the run closest to the median (whose history is shown)."""

    row: Row
    eval_accuracy: float | None
    accuracy_min: float | None = None
    accuracy_max: float | None = None
    seeds: int = 1
    train_seconds: float | None = None
    peak_memory_mb: float | None = None
    macro_f1: float | None = None       # median over seeds
    macro_f1_min: float | None = None
    macro_f1_max: float | None = None

    @property
    def method(self) -> str:
        return self.row.method

    @property
    def rank(self) -> int | None:
        return self.row.rank

    @property
    def energy(self) -> float | None:
        return self.row.energy

    @property
    def size(self) -> str:
        """``r=4``, ``e=0.9`` (an extracted adapter sized by energy) or nothing."""
        return f"r={self.rank}" if self.rank is not None else f"e={self.energy:g}" if self.energy is not None else ""

    @property
    def trainable_params(self) -> int | None:
        return self.row.trainable_params

    @property
    def history(self) -> list[dict]:
        return self.row.history

    @property
    def label(self) -> str:
        name = LABELS.get(self.method, self.method)
        return f"{name} {self.size}" if self.size else name


def aggregate(rows: list[Row]) -> list[Summary]:
    """One summary per method and rank (or energy), in the order the rows first name them."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, r.rank, r.energy), []).append(r)
    out = []
    for runs in groups.values():
        accs = [r.eval_accuracy for r in runs if r.eval_accuracy is not None]
        if len(runs) == 1 or not accs:
            first = runs[0]
            out.append(Summary(first, first.eval_accuracy, seeds=len(runs), train_seconds=first.train_seconds,
                               peak_memory_mb=first.peak_memory_mb, macro_f1=first.eval_macro_f1))
            continue
        mid = statistics.median(accs)
        middle = min(runs, key=lambda r: abs((r.eval_accuracy if r.eval_accuracy is not None else 9) - mid))

        def median_of(key):
            values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
            return statistics.median(values) if values else None

        f1s = [r.eval_macro_f1 for r in runs if r.eval_macro_f1 is not None]
        out.append(Summary(middle, mid, min(accs), max(accs), len(runs), median_of("train_seconds"),
                           median_of("peak_memory_mb"), median_of("eval_macro_f1"),
                           min(f1s, default=None), max(f1s, default=None)))
    return out


class RunTime(NamedTuple):
    """How long a finished run took, when it finished and on what."""

    name: str
    seconds: float
    finished: str  # ISO time, "" where unknown
    device: str    # "" where unknown


@dataclass
class Findings:
    """Everything the report says, as numbers: computed from a study's folder by `build`,
    rendered to Markdown, HTML and plots by `write_report`."""

    runs: list[Row]                  # every row of results.json
    summaries: list[Summary]         # one per method and rank (medians over seeds)
    full: Summary | None
    head: Summary | None
    lora6: Summary | None
    head_points_below_full: float | None  # (full - head) eval accuracy, in points
    sweeps: dict[int, list[Summary]]       # approach (1, 2) -> its sweep, as run
    lowest_rank_above_head: dict[int, int | None]  # per approach whose sweep finished
    baselines: list[Summary]
    best_transformer: Summary | None
    selections: list[Selection]
    replace_test: ReplaceTest | None
    lowrank: LowrankSummary | None
    similarity: dict[str, dict[str, float]] | None
    spectrum: dict | None
    times: list[RunTime]
    busy_seconds: float | None
    environment: dict | None
    labels: list[str]                      # the classes, in order
    majority_class: tuple[str, float] | None  # the eval split's largest class and its share (what always
                                           # predicting it scores)
    best_lora: Summary | None              # the LoRA rank with the best eval accuracy
    extracted: list[Extracted]             # adapters extracted from full fine-tuning (the first seed's)

    @property
    def seeds(self) -> int:
        return max((s.seeds for s in self.summaries), default=1)

    @property
    def sentiment(self) -> bool:
        """The binary sentiment task (IMDB's), whose report speaks of reviews."""
        return tuple(self.labels) == BINARY_NAMES

    @property
    def unit(self) -> str:
        return "reviews" if self.sentiment else "rows"

    @property
    def task(self) -> str:
        if self.sentiment:
            return "IMDB sentiment classification"
        return f"{data_name(self.environment)} ({len(self.labels)} classes: {', '.join(self.labels)})"


def _one(summaries: list[Summary], method: str, rank=None) -> Summary | None:
    return next((s for s in summaries if s.method == method and (rank is None or s.rank == rank)), None)


def pct(part, whole) -> str:
    if part is None or not whole:
        return "-"
    return f"{100 * part / whole:.2f}%"


def fmt(value, spec: str = ",", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _record(path: Path) -> RunRecord | None:
    data = load_json(path)
    return RunRecord.from_json(data, str(path)) if data is not None else None


def run_times(out_dir: Path, runs: list[Row]) -> list[RunTime]:
    """Each finished run of this study, in the order they finished, from the run folders'
    result.json (folders of runs no longer in results.json are left out)."""
    names = {r.run for r in runs} | set(ANALYSES)
    found = []
    for path in out_dir.glob("*/" + RESULT_NAME):
        name = path.parent.name
        if (name in names or name.startswith(SELECT_PREFIX)) and (record := _record(path)):
            found.append(RunTime(name, record.seconds, record.finished or "", record.device or ""))
    return sorted(found, key=lambda t: (t.finished, t.name))


def busy_seconds(times: list[RunTime]) -> float | None:
    """Wall time during which at least one run was going: the union of the runs' intervals
    (runs side by side under `--jobs` overlap, so their times add up to more). None when a
    run's finishing time is unknown."""
    import datetime as dt

    if not times or any(not t.finished for t in times):
        return None
    spans = sorted((end - t.seconds, end) for t in times for end in [dt.datetime.fromisoformat(t.finished).timestamp()])
    busy, (start, stop) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > stop:
            busy, start, stop = busy + stop - start, a, b
        else:
            stop = max(stop, b)
    return busy + stop - start


def data_name(env: dict | None) -> str:
    """What the study's data is called: its training file's folder (``sst5``), else its name."""
    d = (env or {}).get("data", {})
    first = (d.get("train_files") or [d.get("source") or "the data"])[0]
    path = Path(first)
    return path.parent.name or path.stem if path.suffix else path.name or str(first)


def majority_class(env: dict | None, labels: list[str]) -> tuple[str, float] | None:
    counts = ((env or {}).get("class_counts") or {}).get("eval")
    if not counts or not sum(counts):
        return None
    top = max(range(len(counts)), key=counts.__getitem__)
    return labels[top], counts[top] / sum(counts)


def build(out_dir: str | os.PathLike) -> Findings:
    """The findings of the study in `out_dir`, from its files."""
    out_dir = Path(out_dir)
    runs = read_rows(out_dir / "results.json")
    if runs is None:
        raise LoralabError(f"{out_dir}: no results.json; run `loralab run --out {out_dir}` first.")
    summaries = aggregate(runs)
    full, head = _one(summaries, "full"), _one(summaries, "head")
    records = {name: _record(out_dir / name / RESULT_NAME) for name in ANALYSES}
    lowrank = records[LOWRANK].lowrank if records[LOWRANK] else None
    sweeps = {a: [s for s in summaries if s.method == f"approx{a}"] for a in (1, 2)}
    sweeps = {a: sweep for a, sweep in sweeps.items() if sweep}
    selections = [record.selection for p in sorted(out_dir.glob(SELECT_PREFIX + "*/" + RESULT_NAME))
                  if (record := _record(p)) and record.selection]
    baselines = [s for s in summaries if s.method.startswith("tfidf")]
    times = run_times(out_dir, runs)
    env = load_json(out_dir / "environment.json")
    labels = list((env or {}).get("labels") or BINARY_NAMES)
    return Findings(
        runs=runs, summaries=summaries, full=full, head=head, lora6=_one(summaries, "lora", 6),
        head_points_below_full=(full.eval_accuracy - head.eval_accuracy) * 100 if full and head else None,
        sweeps=sweeps,
        lowest_rank_above_head={a: lowrank.lowest_rank_above_head.get(a) for a in sweeps} if lowrank else {},
        baselines=baselines,
        best_transformer=max((s for s in summaries if not s.method.startswith("tfidf")),
                             key=lambda s: s.eval_accuracy, default=None) if baselines else None,
        selections=selections,
        replace_test=records[REPLACE_TEST].replace_test if records[REPLACE_TEST] else None,
        lowrank=lowrank,
        similarity=records[SIMILARITY].similarity if records[SIMILARITY] else None,
        spectrum=load_json(out_dir / LOWRANK / "spectrum.json"),
        times=times, busy_seconds=busy_seconds(times), environment=env, labels=labels,
        majority_class=majority_class(env, labels),
        best_lora=max((s for s in summaries if s.method == "lora"), key=lambda s: s.eval_accuracy, default=None),
        extracted=(records[EXTRACT].extracted or []) if records[EXTRACT] else [])


# ---------------------------------------------------------------------------------------
# Tables and sentences


def results_table(summaries: list[Summary]) -> list[list[str]]:
    """The results table of the summaries (see `aggregate`)."""
    full = _one(summaries, "full")
    full_params = full.trainable_params if full else None
    full_acc = full.eval_accuracy if full else None
    spread = any(s.seeds > 1 for s in summaries)
    table = [["Method", "Trainable parameters", "% of full",
              "Eval accuracy (median)" if spread else "Eval accuracy", *(["Min-max over seeds"] if spread else []),
              "% of full accuracy", "Eval macro-F1 (median)" if spread else "Eval macro-F1",
              *(["Min-max over seeds"] if spread else []), "Training time (s)", "Peak memory (MB)"]]
    for s in summaries:
        acc_spread, f1_spread = [], []
        if spread:
            several = s.seeds > 1
            acc_spread = [f"{s.accuracy_min:.4f}-{s.accuracy_max:.4f} ({s.seeds} seeds)" if several else "one run"]
            f1_spread = [f"{s.macro_f1_min:.4f}-{s.macro_f1_max:.4f}" if several and s.macro_f1_min is not None
                         else "one run" if not several else "-"]
        table.append([s.label, fmt(s.trainable_params), pct(s.trainable_params, full_params),
                      fmt(s.eval_accuracy, ".4f"), *acc_spread, pct(s.eval_accuracy, full_acc),
                      fmt(s.macro_f1, ".4f"), *f1_spread, fmt(s.train_seconds, ",.1f"), fmt(s.peak_memory_mb, ",.0f")])
    return table


def selection_lines(selections: list[Selection], unit: str = "reviews") -> list[str]:
    """What the validation split chose, one sentence per method."""
    out = []
    for sel in selections:
        scores = sel.validation_macro_f1 if sel.metric == "macro_f1" else sel.validation_accuracy
        tried = ", ".join(f"{float(lr):g}: {acc:.4f}" for lr, acc in scores.items())
        rank = f" (at r = {sel.rank}, used at every rank)" if sel.rank else ""
        out.append(f"{LABELS.get(sel.method, sel.method)}{rank}: learning rate {sel.learning_rate:g}, "
                   f"chosen on the validation split ({sel.validation_rows} {unit} held out of train, "
                   f"{sel.train_rows} trained on, {sel.epochs:g} epochs, {sel.pooling} pooling); "
                   f"validation {sel.metric.replace('_', '-')} per learning rate: {tried}.")
    return out


def answers(f: Findings) -> list[str]:
    """The lab's questions, answered in sentences from the findings."""
    out = []
    full, head = f.full, f.head
    if full and head:
        loss = f.head_points_below_full
        out.append(f"Head-tuning trains {head.trainable_params:,} parameters "
                   f"({pct(head.trainable_params, full.trainable_params)} of full fine-tuning) and "
                   f"reaches {head.eval_accuracy:.4f} eval accuracy, {abs(loss):.1f} points "
                   f"{'below' if loss >= 0 else 'above'} full fine-tuning ({full.eval_accuracy:.4f}).")
    else:
        out.append(f"Head-tuning against full fine-tuning: {_missing(full=full, head=head)}.")

    for approach in (1, 2):
        name = f"approximated model {approach}"
        sweep = f.sweeps.get(approach)
        if not sweep or not f.lowrank:
            out.append(f"The lowest rank at which {name} beats head-tuning: the sweep is missing.")
            continue
        lowest = f.lowest_rank_above_head[approach]
        ranks = ", ".join(str(s.rank) for s in sweep)
        if lowest is None:
            out.append(f"No rank of {name} (ranks {ranks}) beats the head-tuned model "
                       f"({f.lowrank.headtuned_accuracy:.4f}).")
        else:
            acc = next(s.eval_accuracy for s in sweep if s.rank == lowest)
            out.append(f"The lowest rank at which {name} still beats the head-tuned model "
                       f"({f.lowrank.headtuned_accuracy:.4f}) is r = {lowest} ({acc:.4f}); ranks tried: {ranks}.")

    lora6 = f.lora6
    if lora6 and full:
        out.append(f"LoRA with r = 6 trains {lora6.trainable_params:,} parameters, "
                   f"{pct(lora6.trainable_params, full.trainable_params)} of full fine-tuning's "
                   f"{full.trainable_params:,}, and reaches {lora6.eval_accuracy:.4f} eval accuracy, "
                   f"{pct(lora6.eval_accuracy, full.eval_accuracy)} of full fine-tuning's "
                   f"{full.eval_accuracy:.4f}.")
    else:
        out.append(f"LoRA r = 6 against full fine-tuning: {_missing(**{'LoRA r=6': lora6, 'full': full})}.")

    if f.baselines:
        parts = [f"{b.label} reaches {b.eval_accuracy:.4f} in {b.train_seconds:.2f} s" for b in f.baselines]
        sentence = "; ".join(parts) + "."
        best = f.best_transformer
        if best and best.train_seconds:
            sentence += (f" The best Transformer model, {best.label}, reaches {best.eval_accuracy:.4f} "
                         f"({(best.eval_accuracy - max(b.eval_accuracy for b in f.baselines)) * 100:+.1f} "
                         f"points against the better baseline) after {best.train_seconds:,.0f} s of training, "
                         f"{best.train_seconds / max(b.train_seconds for b in f.baselines):,.0f} times longer.")
        out.append(sentence)
    else:
        out.append("TF-IDF baselines: missing.")
    trained = [s for s in f.summaries if s.method in ("full", "head", "lora")]
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
    extracted = [s for s in f.summaries if s.method.startswith("extract")]
    if not extracted or not f.full:
        return []
    out = []
    near = [s for s in extracted if s.eval_accuracy >= f.full.eval_accuracy - 0.01]
    if near:
        best = min(near, key=lambda s: s.trainable_params)
        out.append(f"The smallest extracted adapter within 1 point of full fine-tuning ({f.full.eval_accuracy:.4f}) "
                   f"is {best.label}: {best.trainable_params:,} parameters "
                   f"({pct(best.trainable_params, f.full.trainable_params)} of the model), {best.eval_accuracy:.4f}.")
    else:
        top = max(extracted, key=lambda s: s.eval_accuracy)
        out.append(f"No extracted adapter comes within 1 point of full fine-tuning ({f.full.eval_accuracy:.4f}); "
                   f"the best, {top.label} ({top.trainable_params:,} parameters), reaches {top.eval_accuracy:.4f}.")
    pairs = [(e, t) for e in extracted if e.method == "extract" and e.rank is not None
             for t in [_one(f.summaries, "lora", e.rank)] if t]
    if pairs:
        diffs = [100 * (t.eval_accuracy - e.eval_accuracy) for e, t in pairs]
        wins = sum(d > 0 for d in diffs)
        detail = "; ".join(f"r = {e.rank}: trained {t.eval_accuracy:.4f} ({t.trainable_params:,} parameters), "
                           f"extracted {e.eval_accuracy:.4f} ({e.trainable_params:,})" for e, t in pairs)
        verdict = ("trained LoRA is the better adapter" if wins > len(pairs) / 2 else
                   "the extracted adapter is the better one" if wins < len(pairs) / 2 else "neither is better")
        out.append(f"At equal size (the same rank on the query and value layers), {verdict}: trained LoRA is more "
                   f"accurate at {wins} of {len(pairs)} ranks, by {statistics.mean(diffs):+.1f} points on average "
                   f"({detail}).")
    return out


def memory_lines(summaries: list[Summary]) -> list[str]:
    """A table of each trained run's resident memory after each epoch's evaluation, its change
    from the first epoch to the last, and its peak (from the run's `memory` record); none
    when no run recorded it."""
    trained = [s for s in summaries if s.row.memory]
    if not trained:
        return []
    epochs = max(len(s.row.memory) for s in trained)
    lines = ["| method | " + " | ".join(f"after epoch {e}" for e in range(1, epochs + 1))
             + " | last against first | peak |", "|---|" + "---:|" * (epochs + 2)]
    for s in trained:
        rss = [m.get("rss_mb") for m in s.row.memory]
        first, last = rss[0], rss[-1]
        change = f"{100 * (last / first - 1):+.0f}%" if first and last and len(rss) > 1 else "-"
        cells = [fmt(v, ",.0f") for v in rss] + ["-"] * (epochs - len(rss))
        peak = max((m["peak_rss_mb"] for m in s.row.memory if m.get("peak_rss_mb")), default=None)
        lines.append(f"| {s.label} | " + " | ".join(cells) + f" | {change} | {fmt(peak, ',.0f')} |")
    return lines


def _missing(**runs) -> str:
    absent = [name for name, run in runs.items() if run is None]
    return f"missing ({', '.join(absent)} not run)"


# ---------------------------------------------------------------------------------------
# Documents


def _md_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def footer(env: dict | None, unit: str = "reviews") -> list[str]:
    if not env:
        return ["Environment: environment.json is missing."]
    d = env.get("data", {})
    files = ", ".join(d.get("train_files") or []) or d.get("source", "?")
    return [f"Model: {env.get('model')}",
            f"Data: {files} ({d.get('train_rows')} training, {d.get('eval_rows')} eval {unit}"
            + (f", {d['validation_rows']} validation {unit} held out of train)" if d.get("validation_rows") else ")"),
            f"loralab {env.get('loralab')}, torch {env.get('torch')}, transformers {env.get('transformers')}, "
            f"Python {env.get('python')}",
            f"Device: {env.get('device')} ({env.get('threads')} threads), precision {env.get('precision')}, "
            f"seeds {', '.join(map(str, env.get('seeds') or [env.get('seed')]))}, "
            f"profile {env.get('profile', 'lab')}, pooling {env.get('pooling', 'cls')}",
            f"Total time of the last `loralab run`: {fmt(env.get('total_seconds'), ',.0f')} s"
            + (f" (it skipped {n} runs finished by an earlier one)" if (n := env.get("skipped_runs")) else "")]


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def write_report(out_dir: str | os.PathLike, report_dir: str | os.PathLike | None = None) -> Path:
    """Write report.md, report.html and the PNG plots for the study in `out_dir`."""
    out_dir = Path(out_dir)
    report_dir = Path(report_dir or out_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    f = build(out_dir)
    made = {
        "accuracy_vs_params.png": plot_accuracy_vs_params(f.summaries, report_dir / "accuracy_vs_params.png"),
        "accuracy_vs_rank.png": plot_accuracy_vs_rank(f.summaries, report_dir / "accuracy_vs_rank.png"),
        "training_curves.png": plot_training_curves(f.summaries, report_dir / "training_curves.png"),
        "cost.png": plot_cost(f.summaries, report_dir / "cost.png"),
        "confusion.png": plot_confusion([s for s in (f.full, f.best_lora) if s and s.row.confusion], f.labels,
                                        report_dir / "confusion.png"),
    }
    if f.spectrum:
        plot_spectrum(f.spectrum, report_dir / "spectrum.png", "Fine-tuning update dW per layer")
    made["spectrum.png"] = bool(f.spectrum)

    md = ["# loralab study report", "",
          f"Accuracy against trainable parameters on {f.task}. Every figure "
          "below is computed from `results.json`.", "", "## The lab's questions", ""]
    md += [f"- {a}" for a in answers(f)]
    if f.seeds > 1:
        md += ["", f"Methods run with several seeds (up to {f.seeds}) are shown by their median eval accuracy, "
               "with the min-max spread in the table; every run is in results.json."]
    if f.selections:
        md += ["", "## Choices made on the validation split", "",
               "The eval split was not used to choose anything; it only measures the final runs.", ""]
        md += [f"- {line}" for line in selection_lines(f.selections, f.unit)]
    approximated = any(s.method.startswith("approx") for s in f.summaries)
    md += ["", "## Results", "", _md_table(results_table(f.summaries)), "",
           *(["Approximated models train nothing: their parameter count is what storing their change "
              "costs (rank-r factors of each query/value layer plus the head); their training cost is "
              "that of full fine-tuning plus head-tuning."] if approximated else []),
           "Macro-F1 is the unweighted mean of the classes' F1.", ""]
    if f.majority_class:
        name, share = f.majority_class
        md += [f"Always predicting the eval split's largest class ({name}) would score {share:.4f} accuracy.", ""]
    per_class = [s for s in f.summaries if s.row.per_class]
    if per_class:
        md += ["## F1 per class", "", "Of each trained model (the run closest to the median where several seeds "
               "ran), on the eval split.", "",
               "| method | " + " | ".join(f.labels) + " |", "|---|" + "---:|" * len(f.labels)]
        md += [f"| {s.label} | " + " | ".join(fmt(s.row.per_class.get(name, {}).get("f1"), ".3f") for name in f.labels)
               + " |" for s in per_class]
        md += [""]
    if f.replace_test:
        t = f.replace_test
        md += ["## The replace test", "",
               f"Replacing the {t.layers} query and value layers ({t.parameters:,} parameters) of the "
               f"fine-tuned model with random clones takes its accuracy from {t.original_accuracy:.4f} to "
               f"{t.random_clones_accuracy:.4f} (majority class: {t.majority_class_accuracy:.4f}); putting "
               f"the originals back gives {t.restored_accuracy:.4f}, with "
               f"{'identical' if t.restored_logits_identical else 'different'} logits.", ""]
    if f.extracted:
        md += ["## Adapters extracted from full fine-tuning", "",
               "`loralab extract`: each layer's fine-tuning update dW factored by truncated SVD into a LoRA "
               "adapter (alpha = rank), with the change of its bias, the head and the changed layer norms saved "
               "whole; sized by one rank for every layer or by the share of each layer's ‖dW‖² to keep. "
               "Extracted from the first seed's full fine-tuning.", ""]
        md += [f"- {line}" for line in extraction_lines(f)] + [""]
        md += ["| targets | size | ranks given | parameters | file (KB) | ‖dW‖² kept | extraction (s) "
               "| eval accuracy | eval macro-F1 |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        rows = {(r.method, r.rank, r.energy): r for r in f.runs if r.method.startswith("extract")}
        for e in f.extracted:
            row = rows.get((e.method, e.rank, e.energy))
            md.append(f"| {e.targets} | {f'r = {e.rank}' if e.rank else f'energy {e.energy:g}'} | "
                      f"{e.ranks[0]}-{e.ranks[1]} | {e.parameters:,} | {e.file_bytes / 1024:,.0f} | "
                      f"{100 * e.kept_share:.1f}% | {e.seconds:.1f} | {fmt(row and row.eval_accuracy, '.4f')} | "
                      f"{fmt(row and row.eval_macro_f1, '.4f')} |")
        md += [""]
    if f.spectrum:
        md += ["## Is the fine-tuning update low-rank?", "",
               "| layer | shape | rank for 50% | 90% | 99% of ‖dW‖² |", "|---|---|---:|---:|---:|"]
        md += [f"| {short_layer_name(n)} | {'x'.join(map(str, s['shape']))} | {s['rank_50']} | {s['rank_90']} "
               f"| {s['rank_99']} |" for n, s in f.spectrum.items()]
        md += [""]
    if f.similarity:
        md += ["## LoRA against the fine-tuning update", "",
               "Subspace similarity (Hu et al. 2021, section 7) between the top-r output directions of each "
               "LoRA update and of dW: 1 means the same subspace, r/d is what random directions give.", "",
               "| rank | mean similarity | min | max |", "|---:|---:|---:|---:|"]
        for rank, sims in f.similarity.items():
            values = list(sims.values())
            md.append(f"| {rank} | {sum(values) / len(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
        md += [""]
    if f.times:
        total = sum(t.seconds for t in f.times)
        busy = f.busy_seconds
        overlap = (f" Some ran side by side (`--jobs`): the study was busy for {busy:,.0f} s "
                   f"({_duration(busy)}) of wall time." if busy is not None and busy < total - 1 else "")
        md += ["## Time per run", "",
               "Wall time of each run: loading, training and evaluation. A run finished by an earlier, "
               f"interrupted `loralab run` keeps the time it took then. In all: {total:,.0f} s "
               f"({_duration(total)}).{overlap}", ""]
        if len({t.device for t in f.times}) > 1:  # a study resumed on another machine: say which run ran where
            md += ["| run | wall time (s) | device |", "|---|---:|---|"]
            md += [f"| {t.name} | {t.seconds:,.0f} | {t.device or 'not recorded'} |" for t in f.times]
        else:
            md += ["| run | wall time (s) |", "|---|---:|"]
            md += [f"| {t.name} | {t.seconds:,.0f} |" for t in f.times]
        md += [""]
    memory = memory_lines(f.summaries)
    if memory:
        md += ["## Memory over the epochs", "",
               "Resident memory (MB) of each trained run's process after each epoch's evaluation, and its "
               "peak (the run closest to the median where several seeds ran). Memory that climbs from "
               "epoch to epoch is memory kept per step.", "", *memory, ""]
    md += ["## Plots", ""]
    for name, title in PLOTS.items():
        md.append(f"![{title}]({name})" if made.get(name) else f"{title}: no data (the runs it needs are missing).")
        md.append("")
    md += ["## Environment", ""] + [f"- {line}" for line in footer(f.environment, f.unit)] + [""]
    text = "\n".join(md)
    write_text(report_dir / "report.md", text)
    write_text(report_dir / "report.html", to_html(text, report_dir))
    return report_dir / "report.md"


def to_html(markdown: str, folder: Path) -> str:
    """A small Markdown-to-HTML conversion for the report's own subset (headings, lists,
    tables, images), with every image embedded as a data URI: no network, one file."""
    body, table, in_list = [], [], False

    def inline(text: str) -> str:
        text = html.escape(text)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)

    def flush_table():
        if table:
            rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if not set(line) <= set("|-: ")]
            head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
            rest = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if in_list and not line.startswith("- "):
            body.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{inline(line[2:])}</li>")
        elif m := re.fullmatch(r"!\[(.*)\]\((.*)\)", line):
            data = base64.b64encode((folder / m.group(2)).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(m.group(1))}</figcaption></figure>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    if in_list:
        body.append("</ul>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "figure{margin:1.5em 0}figcaption{color:#555;font-size:90%}")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>loralab study report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
