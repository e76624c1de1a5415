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

import datetime as dt
import logging
import multiprocessing
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Protocol

from ..errors import LoralabError
from ..fileio import write_json, write_text
from ..settings import REGRESSION, SCORE_LABELS, metric_task, study_metric
from .config import to_toml
from .plan import Context, Run, plan, resolved_precision, seeds_of  # noqa: F401 - Context and plan are the study's API too
from .records import RESULT_NAME, DataSummary, Environment, Row, RunRecord, read_record
from .tasks import TASKS

logger = logging.getLogger("loralab")


def read_result(run_dir: Path, key: str) -> RunRecord | None:
    """The run's record if it finished with these inputs, else None."""
    record = read_record(run_dir / RESULT_NAME)
    return record if record is not None and record.key == key else None


def _child(data_options: dict, out: str, quiet: bool, run: Run, threads: int = 0,
           environ: dict | None = None) -> None:
    """Entry point of a child process: do one run and write its result (with `threads`
    CPU threads for torch, when several children share the machine). `environ` is the
    parent's environment when the run started: a fork server's children would otherwise
    see the environment of the moment the server started."""
    from ..logs import once_from_environ, setup_logging

    _die_with_parent()
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    setup_logging(quiet)
    once_from_environ()
    if threads:
        import torch

        torch.set_num_threads(threads)
    _execute(Context(data_options, out, quiet), run)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its parent dies (a killed `loralab run`
    must not leave a training process behind that later writes a result)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _execute(ctx: Context, run: Run, node: str | None = None) -> RunRecord:
    import torch

    run_dir = ctx.out / run.name
    torch.manual_seed(run.inputs.seed)
    start = time.perf_counter()
    output = TASKS[run.task](ctx, run_dir, run.inputs)
    record = RunRecord.of(output, name=run.name, key=run.key, seconds=time.perf_counter() - start,
                          finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          device=device_name(run.inputs.device), node=node)
    for row in record.rows:
        row.seed = run.inputs.seed if row.seed is None else row.seed
        row.run = run.name
    write_json(run_dir / RESULT_NAME, record.to_json())  # the completion marker: written last, atomically
    return record


def prepare_run_dir(run_dir: Path) -> None:
    """Start `run_dir` clean for a run: an unfinished or outdated one is removed."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)


# What a fork server imports once for all the runs it starts (a missing one is skipped).
PRELOAD = ["torch", "transformers", "transformers.trainer", "transformers.models.bert.modeling_bert",
           "datasets", "loralab.study", "loralab.training", "loralab.api"]


def _fork_server() -> bool:
    # Linux only: on macOS, forking after system frameworks are loaded is not safe.
    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


def process_context():
    """How runs get a process of their own: on Linux, forked from a fork server. The server
    imports torch and transformers once and never runs them, so each run starts in a
    fraction of a second instead of the ~5 s of imports that a fresh ("spawn") process
    pays, and inherits no thread pool or CUDA state. Elsewhere, spawn.
    """
    if not _fork_server():  # pragma: no cover - not Linux
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def warm_up_processes() -> None:
    """Start the fork server now, so its imports overlap the parent's first runs."""
    if _fork_server():
        from multiprocessing import forkserver

        process_context()
        forkserver.ensure_running()


def start_child(ctx: Context, run: Run, threads: int = 0):
    """Start `run` in a process of its own (after clearing its folder)."""
    from ..logs import active_once

    prepare_run_dir(ctx.out / run.name)
    once = active_once()  # what the study has warned about, the child does not say again
    environ = {**os.environ, **(once.environ() if once else {})}
    proc = process_context().Process(
        target=_child, args=(ctx.data_options, str(ctx.out), ctx.quiet, run, threads, environ),
        name=f"loralab-{run.name}")
    proc.start()
    return proc


def child_result(ctx: Context, run: Run, proc) -> RunRecord:
    """The record a finished child wrote, or a LoralabError saying that it failed."""
    record = read_result(ctx.out / run.name, run.key)
    if proc.exitcode != 0 or record is None:
        raise LoralabError(f"The run {run.name!r} failed (exit code {proc.exitcode}); its messages are "
                           f"above. Finished runs are kept; run the same command again to retry.")
    return record


def run_one(ctx: Context, run: Run) -> RunRecord:
    if not run.isolate:
        prepare_run_dir(ctx.out / run.name)
        return _execute(ctx, run)
    proc = start_child(ctx, run)
    try:
        proc.join()
    except KeyboardInterrupt:
        proc.terminate()
        proc.join()
        raise
    return child_result(ctx, run, proc)


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


def device_name(device: str) -> str:
    """What a run ran on, in words: the GPU's name, or "cpu" (a resumed study may mix them)."""
    import torch

    from ..models import pick_device

    picked = pick_device(device)
    return torch.cuda.get_device_name(picked) if picked.type == "cuda" else "cpu"


def environment(config: dict, ctx: Context, seconds: float, skipped: int = 0, runs: list[Run] = ()) -> Environment:
    import torch
    import transformers

    from ..data import class_counts, class_names_of
    from ..version import __version__

    d = config["data"]
    return Environment(
        model=config["model"],
        data=DataSummary(train_rows=len(ctx.data["train"]), eval_rows=len(ctx.data["eval"]),
                         validation_rows=len(ctx.data["validation"]) if "validation" in ctx.data else 0,
                         source=d["dir"] or os.environ.get("LORALAB_DATA") or "cache or download",
                         train_files=d["train"], eval_files=d["eval"]),
        loralab=__version__, torch=torch.__version__, transformers=transformers.__version__,
        python=platform.python_version(), device=device_name(config["device"]),
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        precision=resolved_precision(config), seed=config["seed"],
        seeds=seeds_of(config), profile=config["profile"], pooling=config["train"]["pooling"],
        total_seconds=seconds, skipped_runs=skipped, labels=class_names_of(ctx.data["train"]),
        class_counts={split: class_counts(ctx.data[split]) for split in ctx.data},
        task=d["task"], metric=study_metric(config), executor=config["executor"],
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


class Executor(Protocol):
    """Where the runs of a study are done, as `schedule` drives it: local processes
    (`Processes`) or a Ray cluster (`cluster.RayTasks`)."""

    capacity: int | None  # runs in progress at most; None: every ready run is handed over (it queues them)

    def start(self, run: Run) -> Hashable:
        """Start `run`; a handle to wait on."""

    def wait(self, handles: list) -> list:
        """Those of `handles` whose runs ended (none where it stopped waiting first)."""

    def finish(self, run: Run, handle) -> RunRecord:
        """The record an ended run wrote; a LoralabError that says how it failed."""

    def stop(self, handles: list) -> None:
        """Stop the runs in progress (at a KeyboardInterrupt)."""


def schedule(runs: list[Run], todo: list[Run], executor: Executor, on_done: Callable[[Run, RunRecord], None]
             ) -> list[str]:
    """Do the runs in `todo` with `executor`, starting each once the runs it reads
    (`Run.after`) are finished; returns the names of those that failed. A failed run stops
    new starts; the runs in progress finish (their work is kept)."""
    finished = {run.name for run in runs if run not in todo}
    waiting, running, failed = list(todo), {}, []
    try:
        while waiting or running:
            ready = [run for run in waiting if set(run.after) <= finished] if not failed else []
            room = len(ready) if executor.capacity is None else max(0, executor.capacity - len(running))
            for run in ready[:room]:
                waiting.remove(run)
                running[executor.start(run)] = run
            if not running:
                break  # what is left waits on a run that failed
            for handle in executor.wait(list(running)):
                run = running.pop(handle)
                try:
                    record = executor.finish(run, handle)
                except LoralabError as err:
                    logger.error("%s", err)
                    failed.append(run.name)
                    continue
                finished.add(run.name)
                on_done(run, record)
    except KeyboardInterrupt:
        executor.stop(list(running))
        raise
    if waiting and not failed:  # pragma: no cover - plan() names only runs it makes
        raise LoralabError(f"runs wait on runs that are not in the study: {[run.name for run in waiting]}")
    return failed


class Processes:
    """Runs side by side on this machine, `jobs` at a time, each in a process of its own
    with its share of the CPU threads."""

    def __init__(self, ctx: Context, jobs: int, progress: _Progress):
        self.ctx, self.capacity, self.progress = ctx, jobs, progress
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def start(self, run: Run):
        self.progress.start(run)
        return start_child(self.ctx, run, self.threads)

    def wait(self, handles: list) -> list:
        from multiprocessing.connection import wait

        by_sentinel = {proc.sentinel: proc for proc in handles}
        return [by_sentinel[sentinel] for sentinel in wait(list(by_sentinel))]

    def finish(self, run: Run, handle) -> RunRecord:
        handle.join()
        return child_result(self.ctx, run, handle)

    def stop(self, handles: list) -> None:
        for proc in handles:
            proc.terminate()
            proc.join()


# What a study writes at its folder's top level besides its runs' folders.
STUDY_FILES = ("config.toml", "results.json", "environment.json")


def run_study(config: dict, quiet: bool = False, overwrite: bool = False, name: str = "") -> StudyResult:
    """Run (or resume) the whole study of a resolved configuration (`load_config`), holding
    its output folder's lock (`loralab.locks`): a second study on the folder stops at once.

    The folder is a new one or a study's (`loralab.outputs.check_output`); `overwrite` lets
    it be a folder of the user's, none of whose entries is written over. It may not be,
    hold or lie inside the model or the data. Each warning is said once (by the runs in
    their own processes too), after `name` where given (a suite's task)."""
    from ..locks import output_lock
    from ..logs import warnings_once
    from ..outputs import check_output, data_inputs, model_input

    check_output(config["out"], "study", overwrite=overwrite,
                 inputs=[model_input(config["model"]), *data_inputs(config["data"])])
    with output_lock(config["out"]), warnings_once(name):
        return _run_study(config, quiet)


def _run_study(config: dict, quiet: bool) -> StudyResult:
    from ..outputs import claim_folder

    ctx = Context(config["data"], config["out"], quiet)
    start = time.perf_counter()
    runs = plan(config, ctx)
    claim_folder(ctx.out, "study", [*STUDY_FILES, *(run.name for run in runs)])  # before anything is written
    write_text(ctx.out / "config.toml", to_toml(config))
    result = StudyResult(rows=[], runs=runs, skipped=[])
    progress = _Progress(runs, result, study_metric(config))
    todo = []
    for run in runs:
        if read_result(ctx.out / run.name, run.key):
            logger.info("[%d/%d] %s: finished earlier, skipped", progress.index[run.name], len(runs), run.name)
            result.skipped.append(run.name)
        else:
            todo.append(run)

    def done(run: Run, record: RunRecord) -> None:
        progress.done(run, record)
        write_results(ctx, runs)

    if config["executor"] == "ray":
        from .cluster import run_on_ray

        run_on_ray(ctx, runs, todo, config, progress.start, done,
                   lambda run: read_result(ctx.out / run.name, run.key), quiet)
    else:
        if any(run.isolate for run in todo) or (todo and config["jobs"] > 1):
            warm_up_processes()
        if config["jobs"] > 1:
            failed = schedule(runs, todo, Processes(ctx, config["jobs"], progress), done)
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
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "matthews": "Matthews", "f1_positive": "F1 pos",
             "pearson": "Pearson", "spearman": "Spearman"}
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
