"""Where a study's runs are done: the executors that `schedule` drives, each run's own
work (`execute`), and the processes runs get. `Processes` runs them on this machine, `jobs`
at a time; `cluster.RayTasks` on a Ray cluster. Both start each run once the runs it reads
are finished, and both leave its record (`result.json`) in the output folder.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Hashable, Protocol

from ..errors import LoralabError
from ..fileio import write_json
from ..records import RESULT_NAME, RunRecord, read_record
from .plan import Context, Run
from .tasks import RUN_TASKS

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
    execute(Context(data_options, out, quiet), run)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its parent dies (a killed `loralab run`
    must not leave a training process behind that later writes a result)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def execute(ctx: Context, run: Run, node: str | None = None) -> RunRecord:
    import torch

    run_dir = ctx.out / run.name
    torch.manual_seed(run.inputs.seed)
    start = time.perf_counter()
    output = RUN_TASKS[run.task](ctx, run_dir, run.inputs)
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
        return execute(ctx, run)
    proc = start_child(ctx, run)
    try:
        proc.join()
    except KeyboardInterrupt:
        proc.terminate()
        proc.join()
        raise
    return child_result(ctx, run, proc)


def device_name(device: str) -> str:
    """What a run ran on, in words: the GPU's name, or the CPU's (`cpu_name`); a study
    resumed in another session, or spread over a cluster, may mix them, and its report
    says which run ran where."""
    import torch

    from ..models import pick_device

    picked = pick_device(device)
    return torch.cuda.get_device_name(picked) if picked.type == "cuda" else cpu_name()


def cpu_name() -> str:
    """"cpu (MODEL, PATH)": the processor's model (from /proc/cpuinfo where there is one) and
    its bfloat16 path (`inference.cpu_bf16_path`: AMX bf16, AVX-512 bf16, or no bf16: float32).
    A CPU's timings mean little without it: the same run is 2-3x slower without bf16."""
    import platform

    from ..inference import cpu_bf16_path

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            first = f.read().split("\n\n", 1)[0]  # the first processor's block
        info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())}
    except OSError:
        info = {}
    model = " ".join(info.get("model name", platform.processor() or platform.machine()).split())
    return f"cpu ({model}, {cpu_bf16_path() or 'no bf16'})"


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

    def __init__(self, ctx: Context, jobs: int, on_start: Callable[[Run], None]):
        self.ctx, self.capacity, self.on_start = ctx, jobs, on_start
        self.threads = max(1, (os.cpu_count() or 1) // jobs)

    def start(self, run: Run):
        self.on_start(run)
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
