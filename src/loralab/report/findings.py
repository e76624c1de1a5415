"""The findings of a study: every number its report states, computed from the files of
the output folder (`build`) and typed. The document (`loralab.report.document`) turns them
into sections, sentences and tables; a run that is missing is said to be missing, never
estimated.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..config import MethodsConfig, load_config
from ..errors import LoralabError
from ..lowrank import LayerSpectrum, read_spectrum
from ..methods import label, method
from ..records import (
    ANALYSES,
    EXTRACT,
    LOWRANK,
    REPLACE_TEST,
    RESULT_NAME,
    SEARCH_PREFIX,
    SELECT_PREFIX,
    SIMILARITY,
    WORKER_PREFIX,
    DataSummary,
    Environment,
    Extracted,
    LowrankSummary,
    ReplaceTest,
    Row,
    RunRecord,
    Search,
    Selection,
    load_json,
    read_rows,
)
from ..settings import BINARY_NAMES, CLASSIFICATION, REGRESSION, SCORE_LABELS


@dataclass
class Summary:
    """One method at one rank, over its seeds: the median of the study's `metric` (`score`)
    with its min-max, every other score's median, the median time and memory, and the run
    closest to the median (whose history is shown)."""

    row: Row
    metric: str                       # the score the study leads with (accuracy, pearson, ...)
    score: float | None               # its median over seeds
    score_min: float | None = None
    score_max: float | None = None
    seeds: int = 1
    train_seconds: float | None = None
    peak_memory_mb: float | None = None
    medians: dict[str, float] = field(default_factory=dict)  # every score recorded -> its median over seeds
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # ... -> (min, max), several seeds

    def median(self, name: str) -> float | None:
        """The median over seeds of the score `name` (None where no run recorded it)."""
        return self.medians.get(name)

    @property
    def eval_accuracy(self) -> float | None:
        return self.medians.get("accuracy")

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
        name = label(self.method)
        return f"{name} {self.size}" if self.size else name


def aggregate(rows: list[Row], metric: str = "accuracy") -> list[Summary]:
    """One summary per method and rank (or energy), in the order the rows first name them,
    led by `metric`; the run shown is the one closest to its median."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.method, r.rank, r.energy), []).append(r)
    out = []
    for runs in groups.values():
        def values(name):
            return [v for r in runs if (v := r.score(name)) is not None]

        def median_of(key):
            found = [getattr(r, key) for r in runs if getattr(r, key) is not None]
            return statistics.median(found) if found else None

        medians = {name: statistics.median(v) for name in SCORE_LABELS if (v := values(name))}
        ranges = {name: (min(v), max(v)) for name in SCORE_LABELS if len(v := values(name)) > 1}
        mid = medians.get(metric)
        middle = runs[0] if mid is None else min(
            runs, key=lambda r: abs(r.score(metric) - mid) if r.score(metric) is not None else math.inf)
        low, high = ranges.get(metric, (None, None))
        out.append(Summary(middle, metric, mid, low, high, len(runs), median_of("train_seconds"),
                           median_of("peak_memory_mb"), medians, ranges))
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
    head_points_below_full: float | None  # (full - head) eval score (the study's metric), in points
    sweeps: dict[int, list[Summary]]       # approach (1, 2) -> its sweep, as run
    lowest_rank_above_head: dict[int, int | None]  # per approach whose sweep finished
    baselines: list[Summary]
    best_transformer: Summary | None
    selections: list[Selection]
    replace_test: ReplaceTest | None
    lowrank: LowrankSummary | None
    similarity: dict[str, dict[str, float]] | None
    spectrum: dict[str, LayerSpectrum] | None
    times: list[RunTime]
    busy_seconds: float | None
    environment: Environment | None
    labels: list[str]                      # the classes, in order
    majority_class: tuple[str, float] | None  # the eval split's largest class and its share (what always
                                           # predicting it scores)
    best_lora: Summary | None              # the LoRA rank with the best eval score
    extracted: list[Extracted]             # adapters extracted from full fine-tuning (the first seed's)
    metric: str = "accuracy"               # the score the study leads with (`data.metric`)
    task_kind: str = CLASSIFICATION        # classification or regression
    searches: list[Search] = field(default_factory=list)  # each method's recipe, searched on validation
    steps: MethodsConfig | None = None  # what the study set out to run (its config.toml's [methods]; None: unknown)

    @property
    def metric_label(self) -> str:
        """The lead score in words: "accuracy", "Pearson correlation", ..."""
        return SCORE_LABELS[self.metric]

    @property
    def regression(self) -> bool:
        return self.task_kind == REGRESSION

    @property
    def seeds(self) -> int:
        return max((s.seeds for s in self.summaries), default=1)

    @property
    def sentiment(self) -> bool:
        """The lab's task, IMDB sentiment (its data folder, not files of a task of one's own:
        SST-2's classes have the same names), whose report speaks of reviews."""
        files = self.environment.data.train_files if self.environment else None
        return tuple(self.labels) == BINARY_NAMES and not files

    @property
    def unit(self) -> str:
        return "reviews" if self.sentiment else "rows"

    @property
    def task(self) -> str:
        if self.regression:
            return f"{data_name(self.environment)} (regression: a score per row)"
        if self.sentiment:
            return "IMDB sentiment classification"
        return f"{data_name(self.environment)} ({len(self.labels)} classes: {', '.join(self.labels)})"


def _one(summaries: list[Summary], method: str, rank=None) -> Summary | None:
    return next((s for s in summaries if s.method == method and (rank is None or s.rank == rank)), None)


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
        chose = name.startswith((SELECT_PREFIX, SEARCH_PREFIX, WORKER_PREFIX))  # runs that choose, not rows
        if (name in names or chose) and (record := _record(path)):
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


def data_name(env: Environment | None) -> str:
    """What the study's data is called: its training file's folder (``sst5``), else its name."""
    d = env.data if env else DataSummary()
    first = (d.train_files or [d.source or "the data"])[0]
    path = Path(first)
    return path.parent.name or path.stem if path.suffix else path.name or str(first)


def majority_class(env: Environment | None, labels: list[str]) -> tuple[str, float] | None:
    counts = env.class_counts.get("eval") if env else None
    if not counts or not sum(counts):
        return None
    top = max(range(len(counts)), key=counts.__getitem__)
    return labels[top], counts[top] / sum(counts)


def build(out_dir: str | os.PathLike, metric: str | None = None) -> Findings:
    """The findings of the study in `out_dir`, from its files, led by `metric` (default: the
    one environment.json names; a study stopped before writing it, by what its rows hold)."""
    out_dir = Path(out_dir)
    runs = read_rows(out_dir / "results.json")
    if runs is None:
        raise LoralabError(f"{out_dir}: no results.json; run `loralab run --out {out_dir}` first.")
    env_json = load_json(out_dir / "environment.json")
    env = Environment.from_json(env_json, str(out_dir / "environment.json")) if env_json is not None else None
    regression = env.task == REGRESSION if env else any(r.eval_pearson is not None for r in runs)
    metric = metric or (env.metric if env else "pearson" if regression else "accuracy")
    summaries = aggregate(runs, metric)
    full, head = _one(summaries, "full"), _one(summaries, "head")
    records = {name: _record(out_dir / name / RESULT_NAME) for name in ANALYSES}
    lowrank = records[LOWRANK].lowrank if records[LOWRANK] else None
    sweeps = {a: [s for s in summaries if s.method == f"approx{a}"] for a in (1, 2)}
    sweeps = {a: sweep for a, sweep in sweeps.items() if sweep}
    selections = [record.selection for p in sorted(out_dir.glob(SELECT_PREFIX + "*/" + RESULT_NAME))
                  if (record := _record(p)) and record.selection]
    searches = [record.search for p in sorted(out_dir.glob(SEARCH_PREFIX + "*/" + RESULT_NAME))
                if (record := _record(p)) and record.search]
    baselines = [s for s in summaries if not method(s.method).transformer]
    times = run_times(out_dir, runs)
    labels = list((env.labels if env else None) or BINARY_NAMES)
    spectrum_json = load_json(out_dir / LOWRANK / "spectrum.json")
    return Findings(
        runs=runs, summaries=summaries, full=full, head=head, lora6=_one(summaries, "lora", 6),
        head_points_below_full=(full.score - head.score) * 100
        if full and head and full.score is not None and head.score is not None else None,
        sweeps=sweeps,
        lowest_rank_above_head={a: lowrank.lowest_rank_above_head.get(a) for a in sweeps} if lowrank else {},
        baselines=baselines,
        best_transformer=max((s for s in summaries if method(s.method).transformer and s.score is not None),
                             key=lambda s: s.score, default=None) if baselines else None,
        selections=selections,
        replace_test=records[REPLACE_TEST].replace_test if records[REPLACE_TEST] else None,
        lowrank=lowrank,
        similarity=records[SIMILARITY].similarity if records[SIMILARITY] else None,
        spectrum=read_spectrum(spectrum_json) if spectrum_json is not None else None,
        times=times, busy_seconds=busy_seconds(times), environment=env, labels=labels,
        majority_class=majority_class(env, labels),
        best_lora=max((s for s in summaries if s.method == "lora" and s.score is not None), key=lambda s: s.score,
                      default=None),
        extracted=(records[EXTRACT].extracted or []) if records[EXTRACT] else [],
        metric=metric, task_kind=REGRESSION if regression else CLASSIFICATION, searches=searches,
        steps=planned_steps(out_dir))


def planned_steps(out_dir: Path) -> MethodsConfig | None:
    """The [methods] table of the study's own config.toml: which of the lab's steps it set
    out to run, so a step it left out (a GLUE task's low-rank sweeps) is said to be left out,
    not missing. None where the file is absent or unreadable (a study of another version)."""
    path = out_dir / "config.toml"
    if not path.is_file():
        return None
    try:
        return load_config(path).methods
    except LoralabError:
        return None
