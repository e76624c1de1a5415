"""The combined report of a suite (`loralab glue`): one table shaped like the LoRA paper's
Table 2 (rows: methods with their trainable parameters; columns: each task's own metric,
median and min-max over seeds, in percent; an average), the published references beside
it, each task's score-against-parameters plot, and the suite's `results.json`. Every figure
comes from the tasks' own study folders; a task not run yet is said to be missing."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoralabError
from ..fileio import write_json, write_text
from ..methods import label, method
from ..settings import SCORE_LABELS, SCORE_TABLE, default_metric
from .document import Bullets, Document, Image, Section, Table, table
from .findings import Findings, Summary, build
from .render import markdown, markdown_table, to_html

# The TF-IDF baseline of a classification task (logistic regression) and of a regression
# task (ridge regression) share a row: the linear model on TF-IDF features.
ROW_OF = {"tfidf-ridge": "tfidf-lr"}
ROW_LABELS = {"tfidf-lr": "TF-IDF + linear model (logistic; ridge for regression)"}
SHORT = {name: s.suite for name, s in SCORE_TABLE.items()}


@dataclass
class TaskResult:
    """One task's study as the suite's table reads it (None where it has not run)."""

    key: str
    name: str
    metric: str
    findings: Findings | None


def _row_key(s: Summary) -> tuple:
    return ROW_OF.get(s.method, s.method), s.rank, s.energy


def _row_label(key: tuple, s: Summary) -> str:
    method, rank, energy = key
    name = ROW_LABELS.get(method) or label(method)
    size = f"r={rank}" if rank is not None else f"e={energy:g}" if energy is not None else ""
    return f"{name} {size}".strip()


def _parameters(values: list[int]) -> str:
    """Trainable parameters as papers print them: 22.7 M, 0.30 M; a range where tasks differ."""
    def one(p: int) -> str:
        return f"{p / 1e6:.3g} M" if p >= 1e5 else f"{p:,}"

    low, high = min(values), max(values)
    return one(low) if one(low) == one(high) else f"{one(low)}-{one(high)}"


def _cell(s: Summary | None) -> str:
    if s is None or s.score is None:
        return "-"
    if s.seeds > 1 and s.score_min is not None:
        return f"{100 * s.score:.1f} [{100 * s.score_min:.1f}, {100 * s.score_max:.1f}]"
    return f"{100 * s.score:.1f}"


def task_results(suite, out: Path) -> list[TaskResult]:
    """Each task's findings from `out/TASK` (None for a task whose study has not finished a run)."""
    results = []
    for task in suite.tasks:
        folder = out / task.key
        metric = task.data.get("metric") or default_metric(task.data.get("task") or "classification")
        findings = build(folder, metric) if (folder / "results.json").exists() else None
        results.append(TaskResult(task.key, task.name, metric, findings))
    return results


def suite_table(tasks: list[TaskResult]) -> Table:
    """Rows: each method (and rank) any task ran, with its trainable parameters; columns:
    each task's own metric in percent (median, and min-max over seeds), and the average of
    the medians where every task has one."""
    order: dict[tuple, str] = {}
    cells: dict[tuple, dict[str, Summary]] = {}
    params: dict[tuple, list[int]] = {}
    for t in tasks:
        for s in t.findings.summaries if t.findings else []:
            key = _row_key(s)
            order.setdefault(key, _row_label(key, s))
            cells.setdefault(key, {})[t.key] = s
            if s.trainable_params:
                params.setdefault(key, []).append(s.trainable_params)
    header = ["Method", "Trainable parameters", *(f"{t.name} ({SHORT[t.metric]})" for t in tasks), "Avg."]
    rows = []
    for key, name in order.items():
        found = [cells[key].get(t.key) for t in tasks]
        scores = [s.score for s in found if s is not None and s.score is not None]
        average = f"{100 * statistics.mean(scores):.1f}" if len(scores) == len(tasks) else "-"
        rows.append([name, _parameters(params[key]) if key in params else "-", *map(_cell, found), average])
    return table(header, rows, "lr" + "r" * (len(tasks) + 1))


def _full_score(t: TaskResult, seed: int | None) -> float | None:
    """Full fine-tuning's score on task `t`: of the run with `seed`, or (None) its median."""
    if seed is not None:
        return next((r.score(t.metric) for r in t.findings.runs if r.method == "full" and r.seed == seed), None)
    return next((s.score for s in t.findings.summaries if s.method == "full"), None)


def gap_table(tasks: list[TaskResult]) -> Table | None:
    """Each row of the results table against full fine-tuning, in points: its median minus
    full fine-tuning's on each task (an adapter extracted from a fine-tune: its score minus
    that fine-tune's, the same seed), the mean of those gaps, and on how many tasks the row
    comes within 1 point of full fine-tuning or above it. None where no task has full
    fine-tuning."""
    done = [t for t in tasks if t.findings and _full_score(t, None) is not None]
    if not done:
        return None
    order: dict[tuple, str] = {}
    gaps: dict[tuple, dict[str, float]] = {}
    for t in done:
        for s in t.findings.summaries:
            key = _row_key(s)
            if s.method == "full" or s.score is None:
                continue
            derived = method(s.method).kind in ("approximation", "extracted")  # made from one fine-tune
            source = s.row.seed if derived and s.seeds == 1 else None
            if (full := _full_score(t, source)) is not None:
                order.setdefault(key, _row_label(key, s))
                gaps.setdefault(key, {})[t.key] = 100 * (s.score - full)
    rows = []
    for key, name in order.items():
        found = [gaps[key].get(t.key) for t in done]
        given = [g for g in found if g is not None]
        mean = f"{statistics.mean(given):+.1f}" if len(given) == len(done) else "-"
        rows.append([name, *(f"{g:+.1f}" if g is not None else "-" for g in found), mean,
                     f"{sum(g > -1 for g in given)} of {len(done)}"])
    return table(["Method", *(t.name for t in done), "Mean", "Within 1 point"], rows,
                 "l" + "r" * (len(done) + 2))


def also_table(tasks: list[TaskResult], also: dict[str, list[str]]) -> Table | None:
    """The tasks' other scores (`also` per task: MRPC's F1, STS-B's Spearman), median in percent."""
    columns = [(t, name) for t in tasks for name in also.get(t.key, []) if t.findings]
    if not columns:
        return None
    order: dict[tuple, str] = {}
    found: dict[tuple, dict[tuple, float | None]] = {}
    for t, name in columns:
        for s in t.findings.summaries:
            key = _row_key(s)
            order.setdefault(key, _row_label(key, s))
            found.setdefault(key, {})[t.key, name] = s.median(name)
    rows = [[label_, *(f"{100 * v:.1f}" if (v := found[key].get((t.key, name))) is not None else "-"
                       for t, name in columns)] for key, label_ in order.items()]
    return table(["Method", *(f"{t.name} ({SHORT[name]})" for t, name in columns)], rows,
                 "l" + "r" * len(columns))


def reference_table(suite, tasks: list[TaskResult]) -> Table | None:
    if not suite.references:
        return None
    rows = []
    for ref in suite.references:
        given = [ref.scores.get(t.key) for t in tasks]
        average = f"{statistics.mean(given):.1f}" if all(v is not None for v in given) else "-"
        rows.append([ref.name, ref.parameters or "-", *(f"{v:.1f}" if v is not None else "-" for v in given),
                     average])
    return table(["Published (other models and sizes)", "Parameters", *(t.name for t in tasks), "Avg."], rows,
                 "lr" + "r" * (len(tasks) + 1))


def cost_table(tasks: list[TaskResult]) -> Table | None:
    """What each method's recipe search cost on each task (seconds, and millions of
    token-passes: a figure that does not depend on the machine), with the totals, and each
    task's run time in all; None where no task searched."""
    done = [t for t in tasks if t.findings and t.findings.searches]
    if not done:
        return None
    found = {(s.method, s.rank) for t in done for s in t.findings.searches}
    rows = []
    for key in sorted(found, key=lambda k: (k[0], k[1] or 0)):
        per_task = [next((x for x in t.findings.searches if (x.method, x.rank) == key), None) for t in done]
        cells = [f"{x.seconds:,.0f} s ({x.token_passes / 1e6:,.1f})" if x else "-" for x in per_task]
        total = sum(x.seconds for x in per_task if x)
        passes = sum(x.token_passes for x in per_task if x)
        rows.append([f"Search: {label(key[0])}", *cells, f"{total:,.0f} s ({passes / 1e6:,.1f})"])
    busy = [_busy(t.findings) for t in done]
    rows.append(["Every run of the task (searches included)", *(f"{b / 3600:.1f} h" for b in busy),
                 f"{sum(busy) / 3600:.1f} h"])
    return table(["", *(t.name for t in done), "All"], rows, "l" + "r" * (len(done) + 1))


def _devices(f: Findings) -> list[str]:
    """What a task's runs ran on (several where it was resumed on another machine)."""
    return sorted({x.device for x in f.times if x.device}) or [f.environment.device if f.environment else "?"]


def _busy(f: Findings) -> float:
    return f.busy_seconds if f.busy_seconds is not None else sum(x.seconds for x in f.times)


def suite_document(suite, tasks: list[TaskResult], out: Path, left_out: list[str] = ()) -> Document:
    """The combined report of `tasks`; `left_out` names the suite's tasks it leaves out."""
    done = [t for t in tasks if t.findings]
    missing = [t.name for t in tasks if not t.findings]
    env = next((t.findings.environment for t in done if t.findings.environment), None)
    metrics = "; ".join(f"{t.name}: {SCORE_LABELS[t.metric]}" for t in tasks)
    intro = [f"The study of `loralab run` on each task of the suite {suite.name!r} ({len(tasks)} tasks), "
             f"from the tasks' own folders under `{out}`. Each cell is the task's own metric on its eval split, "
             "in percent: the median over seeds, with [min, max] where several seeds ran. "
             f"Metrics: {metrics}. Avg. is the mean of a row's medians, where every task has one."]
    if missing:
        intro.append(f"Not run yet: {', '.join(missing)} (their cells are '-'); run the same command to resume.")
    if left_out:
        intro.append(f"The suite's other tasks ({', '.join(left_out)}) have no results here and were not asked for "
                     "(`--tasks`): they are left out of the table and its average.")
    sections = [Section(None, intro), Section("Results", [suite_table(tasks)])]
    also = {task.key: list(task.also) for task in suite.tasks}
    optional = [  # (title, what it shows, the table, or None where the tasks have nothing for it)
        ("Other scores", "The tasks' other standard scores (median over seeds, percent).", also_table(tasks, also)),
        ("Against full fine-tuning",
         "Each row's median minus full fine-tuning's on the same task, in points of the task's metric (an adapter "
         "extracted from a fine-tune: minus that fine-tune, the same seed); Mean is the mean of the gaps, and the "
         "last column counts the tasks where the row is within 1 point of full fine-tuning or above it.",
         gap_table(tasks)),
        ("Published figures, for reference",
         "As published, on the same tasks' dev sets but with other models, sizes and recipes (and, where the "
         "suite's notes say so, other splits): a yardstick, not a comparison of equals.",
         reference_table(suite, tasks)),
        ("What the searches cost",
         "Each method's recipe search on each task: its trials' seconds on this machine and, in brackets, their "
         "compute in millions of token-passes (training tokens times the epochs trained), which does not depend "
         "on the machine; then each task's runs in all, wall time of the runs as they ran (side by side with "
         "`--jobs`, counted once).", cost_table(tasks)),
    ]
    sections += [Section(title, [text, found]) for title, text, found in optional if found is not None]
    sections.append(Section("Score against trainable parameters, per task", [
        Image(f"{t.name}: {SCORE_LABELS[t.metric]} against trainable parameters",
              f"{t.key}/accuracy_vs_params.png" if (out / t.key / "accuracy_vs_params.png").exists() else None)
        for t in tasks]))
    lines = []
    for t in done:
        f = t.findings
        busy = _busy(f)
        d = f.environment.data if f.environment else None
        rows = f"{d.train_rows} training, {d.eval_rows} eval" if d else "?"
        lines.append(f"{t.name}: {len(f.runs)} results ({rows} rows), {busy / 3600:.1f} h of runs on "
                     f"{' and '.join(_devices(f))}; report: [{t.key}/report.md]({t.key}/report.md)")
    if env:
        devices = sorted({d for t in done for d in _devices(t.findings)})
        lines.append(f"Model {env.model}; device {', '.join(devices)}, {env.threads} threads, "
                     f"precision {env.precision}, "
                     f"seeds {', '.join(map(str, env.seeds or [env.seed]))}, profile {env.profile}; "
                     f"loralab {env.loralab}, torch {env.torch}, transformers {env.transformers}")
    sections.append(Section("Tasks and environment", [Bullets(lines)]))
    return Document(f"loralab suite report: {suite.name}", sections)


def suite_results(suite, tasks: list[TaskResult]) -> dict:
    """The suite's results.json: each task's metric and rows, and the references."""
    return {"suite": suite.name,
            "tasks": {t.key: {"name": t.name, "metric": t.metric,
                              "task": t.findings.task_kind if t.findings else None,
                              "rows": [r.to_json() for r in t.findings.runs] if t.findings else None}
                      for t in tasks},
            "references": [{"name": r.name, "parameters": r.parameters, "scores": r.scores}
                           for r in suite.references]}


def _shown(suite, out: Path, only: list[str] | None) -> tuple[list[TaskResult], list[str]]:
    """(the tasks a report shows, the names of those it says were left out)."""
    tasks = task_results(suite, out)
    if not any(t.findings for t in tasks):
        raise LoralabError(f"{out}: no task of the suite has results yet; run `loralab glue` first.")
    shown = [t for t in tasks if not only or t.key in only or t.findings]
    return shown, [t.name for t in tasks if only and t.key not in only and not t.findings]


def results_table(suite, out: str | os.PathLike, only: list[str] | None = None) -> str:
    """The suite's results table (the report's), as Markdown: what `loralab glue` prints."""
    return markdown_table(suite_table(_shown(suite, Path(out), only)[0]))


def write_suite_report(suite, out: str | os.PathLike, only: list[str] | None = None) -> Path:
    """Write the suite's report.md, report.html and results.json into `out`, beside the
    tasks' folders whose plots it shows; returns report.md's path. Every task of the suite is
    in it, or with `only` (a run of some of its tasks), those and any others with results in
    `out`: two tasks compared on their own are not shown as three unfinished ones."""
    out = Path(out)
    shown, left_out = _shown(suite, out, only)
    text = markdown(suite_document(suite, shown, out, left_out))
    write_text(out / "report.md", text)
    write_text(out / "report.html", to_html(text, out))
    write_json(out / "results.json", suite_results(suite, shown))
    return out / "report.md"
