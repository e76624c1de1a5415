"""`loralab run`: the lab's whole study as one resumable job.

Runs, in order: the TF-IDF baselines, full fine-tuning, head-tuning, the lab's replace
test, the low-rank study (approximated models 1 and 2 swept over ranks, the spectrum of
dW), LoRA at several ranks, and the subspace similarity of each LoRA update to dW.

Each run lives in its own sub-folder of the output folder and is finished only when its
`result.json` exists (written atomically, last) with its key: the fingerprint of the
frozen value that holds everything the run reads (`Run.inputs`). Running the same command
again skips finished runs and redoes the others; a changed setting invalidates only the
runs that read it. `results.json` lists every
finished run and is rewritten after each one.

With `jobs` above 1, runs whose inputs are ready train side by side, each in a process of
its own: one small model leaves a GPU mostly idle, so several fill it. The runs and their
results are the same as one at a time.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field

from ..config import Config, to_toml
from ..errors import LoralabError
from ..fileio import write_json, write_text
from ..records import DataSummary, Environment, Row, RunRecord
from ..settings import REGRESSION, SCORE_LABELS, SCORE_TABLE, metric_task
from .executors import Processes, device_name, read_result, run_one, schedule, warm_up_processes
from .plan import Context, Run, plan, resolved_precision, seeds_of  # noqa: F401 - Context and plan are the study's API too

logger = logging.getLogger("loralab")


def collect(ctx: Context, runs: list[Run]) -> list[Row]:
    rows = []
    for run in runs:
        record = read_result(ctx.out / run.name, run.key)
        if record:
            rows.extend(record.rows)
    return rows


def write_results(ctx: Context, runs: list[Run]) -> list[Row]:
    rows = collect(ctx, runs)
    write_json(ctx.out / "results.json", [r.to_json() for r in rows])
    return rows


def environment(config: Config, ctx: Context, seconds: float | None, skipped: int = 0,
                runs: list[Run] = ()) -> Environment:
    """What the study ran on and with; `seconds` None while it runs (it is written at its start
    and again at its end)."""
    import torch
    import transformers

    from ..data import class_counts, class_names_of
    from ..version import __version__

    d = config.data
    return Environment(
        model=config.model,
        data=DataSummary(train_rows=len(ctx.data["train"]), eval_rows=len(ctx.data["eval"]),
                         validation_rows=len(ctx.data["validation"]) if "validation" in ctx.data else 0,
                         source=d.dir or os.environ.get("LORALAB_DATA") or "cache or download",
                         train_files=d.train, eval_files=d.eval),
        loralab=__version__, torch=torch.__version__, transformers=transformers.__version__,
        python=platform.python_version(), device=device_name(config.device),
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        precision=resolved_precision(config), seed=config.seed,
        seeds=seeds_of(config), profile=config.profile, pooling=config.train.pooling,
        total_seconds=seconds, skipped_runs=skipped, labels=class_names_of(ctx.data["train"]),
        class_counts={split: class_counts(ctx.data[split]) for split in ctx.data},
        task=d.task, metric=config.metric, executor=config.executor,
        nodes={run.name: record.node for run in runs
               if (record := read_result(ctx.out / run.name, run.key)) is not None and record.node})


@dataclass
class StudyResult:
    """What `run_study` did: the rows of `results.json`, the runs it planned, which of them
    it skipped (finished earlier with the same inputs) and, in order, when each of the
    others started and finished (``("start" | "done", name)``)."""

    rows: list[Row]
    runs: list[Run]
    skipped: list[str]
    events: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ran(self) -> list[str]:
        return [name for what, name in self.events if what == "done"]


class _Progress:
    """The study's log lines and its events, in one place for both executors."""

    def __init__(self, runs: list[Run], result: StudyResult, metric: str = "accuracy"):
        self.index = {run.name: i + 1 for i, run in enumerate(runs)}
        self.total, self.result, self.metric = len(runs), result, metric

    def start(self, run: Run, state: str = "running") -> None:
        self.result.events.append(("start", run.name))
        logger.info("[%d/%d] %s: %s", self.index[run.name], self.total, run.name, state)

    def done(self, run: Run, record: RunRecord) -> None:
        self.result.events.append(("done", run.name))
        scores = [r.score(self.metric) for r in record.rows if r.score(self.metric) is not None]
        logger.info("[%d/%d] %s: done in %.0f s%s%s", self.index[run.name], self.total, run.name, record.seconds,
                    f" on {record.node}" if record.node else "",
                    f", eval {SCORE_LABELS[self.metric]} {max(scores):.4f}" if scores else "")


# What a study writes at its folder's top level besides its runs' folders.
STUDY_FILES = ("config.toml", "results.json", "environment.json", "search.db", "search.db.lock")  # recipe searches


def run_study(config: Config, quiet: bool = False, overwrite: bool = False, name: str = "") -> StudyResult:
    """Run (or resume) the whole study of a resolved configuration (`load_config`), holding
    its output folder's lock (`loralab.locks`): a second study on the folder stops at once.

    The folder is a new one or a study's (`loralab.outputs.check_output`); `overwrite` lets
    it be a folder of the user's, none of whose entries is written over. It may not be,
    hold or lie inside the model or the data. Each warning is said once (by the runs in
    their own processes too), after `name` where given (a suite's task)."""
    from ..locks import output_lock
    from ..logs import warnings_once
    from ..models import local_folder
    from ..outputs import check_output, data_inputs

    check_output(config.out, "study", overwrite=overwrite,
                 inputs=[("--model", local_folder(config.model)), *data_inputs(config.data)])
    with output_lock(config.out), warnings_once(name):
        return _run_study(config, quiet)


def _run_study(config: Config, quiet: bool) -> StudyResult:
    from ..outputs import claim_folder

    ctx = Context(config.data, config.out, quiet)
    start = time.perf_counter()
    runs = plan(config, ctx)
    claim_folder(ctx.out, "study", [*STUDY_FILES, *(run.name for run in runs)])  # before anything is written
    write_text(ctx.out / "config.toml", to_toml(config))
    result = StudyResult(rows=[], runs=runs, skipped=[])
    progress = _Progress(runs, result, config.metric)
    todo = []
    for run in runs:
        if read_result(ctx.out / run.name, run.key):
            logger.info("[%d/%d] %s: finished earlier, skipped", progress.index[run.name], len(runs), run.name)
            result.skipped.append(run.name)
        else:
            todo.append(run)

    # Written now and again at the end: a study stopped part-way is still reported as its own
    # data, labels and metric (not as the lab's IMDB task).
    write_json(ctx.out / "environment.json", environment(config, ctx, None, len(result.skipped), runs).to_json())

    def done(run: Run, record: RunRecord) -> None:
        progress.done(run, record)
        write_results(ctx, runs)

    if config.executor == "ray":
        from .cluster import run_on_ray

        run_on_ray(ctx, runs, todo, config, progress.start, done,
                   lambda run: read_result(ctx.out / run.name, run.key), quiet)
    else:
        if any(run.isolate for run in todo) or (todo and config.jobs > 1):
            warm_up_processes()
        if config.jobs > 1:
            failed = schedule(runs, todo, Processes(ctx, config.jobs, progress.start), done)
            if failed:
                raise LoralabError(f"{len(failed)} run(s) failed: {', '.join(failed)}; their messages are above. "
                                   "Finished runs are kept; run the same command again to retry.")
        else:
            for run in todo:
                progress.start(run)
                done(run, run_one(ctx, run))
    result.rows = write_results(ctx, runs)
    env = environment(config, ctx, time.perf_counter() - start, len(result.skipped), runs)
    write_json(ctx.out / "environment.json", env.to_json())
    return result


def summary_table(rows: list[Row], metric: str = "accuracy") -> str:
    """The results as a plain-text table, for the terminal: the study's `metric` and a
    second score (macro-F1; a regression task's Spearman correlation)."""
    second = "spearman" if metric_task(metric) == REGRESSION else "macro_f1"
    second = "pearson" if metric == "spearman" else second
    names = {name: s.terminal for name, s in SCORE_TABLE.items()}
    lines = [f"{'method':<11} {'rank':>6} {'trainable':>12} {names[metric]:>9} {names[second]:>9} {'train s':>9} "
             f"{'peak MB':>9}"]

    def cell(value) -> str:
        return f"{value:.4f}" if value is not None else "-"

    for r in rows:
        rank = r.rank if r.rank is not None else f"e{r.energy:g}" if r.energy is not None else ""
        secs = f"{r.train_seconds:.1f}" if r.train_seconds is not None else "-"
        mem = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "-"
        lines.append(f"{r.method:<11} {rank:>6} {r.trainable_params or 0:>12,} "
                     f"{cell(r.score(metric)):>9} {cell(r.score(second)):>9} {secs:>9} {mem:>9}")
    return "\n".join(lines)
