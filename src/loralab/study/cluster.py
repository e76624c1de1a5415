"""`loralab run --executor ray`: the study's runs spread over a Ray cluster.

The plan stays the one source of truth (`loralab.study.plan`): its runs, the runs each one
reads (`Run.after`) and their keys. The driver sends a run to Ray once the runs it reads
are finished; Ray places it on a node with the CPUs and GPUs it asks for (`[resources]`),
in a fresh worker process (one run per process, as the local executor's isolation). The
run writes its `result.json` into the output folder, which every node must see at the same
path (a shared filesystem: NFS, a cluster's home directories); the driver checks that each
node does before anything runs. A run whose node dies is retried by Ray on another node;
a run that fails is named with its node and its log (`RUN/run.log`); a driver killed and
started again skips every finished run by its key, as the local executor does.

    loralab run --executor ray                   # a Ray started on this machine
    loralab run --executor ray --address auto    # the cluster `ray start` runs here
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

from ..config import Config
from ..errors import LoralabError
from ..fileio import write_json
from ..records import RunRecord
from .plan import Run

logger = logging.getLogger("loralab")

INSTALL_HINT = "pip install 'loralab[ray]' (or pip install ray)"
NODE_NAME = "node.json"  # written into a run's folder when a node starts it: where it ran
LOG_NAME = "run.log"     # a run's messages on its node, kept beside its result
RETRIES = 2              # runs whose node died are started again this many times
WATCH_SECONDS = 2.0      # how often the driver looks for runs that started on a node


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise LoralabError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}.") from err
    return ray


@contextlib.contextmanager
def connected(address: str | None, quiet: bool = False):
    """Ray, connected to the cluster at `address` (``auto``: the one `ray start` runs on this
    machine; None or "": a Ray started here for the study, stopped after it). A connection
    the caller made already is used and left open."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=not quiet,
                 logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise LoralabError(f"Cannot connect to a Ray cluster at {address!r}: {err}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def node_name() -> str:
    """This worker's node, as records name it: its IP address and Ray's node id."""
    import ray

    return f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()}"


def _sees(path: str) -> bool:
    return Path(path).exists()


def check_storage(ray, out: Path) -> list[str]:
    """The alive nodes (by `node_name`), each having shown that it sees `out` at the same path.

    Raises:
        LoralabError: naming each node that does not see the folder.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = out / f".ray-check-{uuid.uuid4().hex}"
    token.write_text("loralab")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        probe = ray.remote(num_cpus=0)(_sees)
        refs = {f"{n['NodeManagerAddress']} {n['NodeID']}":
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(token)) for n in nodes}
        seen = dict(zip(refs, ray.get(list(refs.values()), timeout=120)))
    finally:
        token.unlink(missing_ok=True)
    blind = [name for name, ok in seen.items() if not ok]
    if blind:
        raise LoralabError(f"Ray node(s) {', '.join(blind)} cannot see the output folder {out}: every node needs it "
                           "at the same path (a shared filesystem such as NFS). Give --out such a path.")
    return list(seen)


def _task(data_options: dict, out: str, quiet: bool, run: Run, threads: int) -> str:
    """On a node: do one run in this fresh worker process, its messages into RUN/run.log;
    returns the node's name."""
    import torch

    from ..logs import setup_logging
    from .executors import execute, prepare_run_dir
    from .plan import Context

    node = node_name()
    run_dir = Path(out) / run.name
    prepare_run_dir(run_dir)  # a retried run starts clean
    write_json(run_dir / NODE_NAME, {"node": node, "pid": os.getpid(), "started": time.time()})
    torch.set_num_threads(threads)
    with open(run_dir / LOG_NAME, "w", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        setup_logging(quiet)
        own = logging.getLogger("loralab")
        handler, propagate = logging.StreamHandler(log), own.propagate
        own.addHandler(handler)
        own.propagate = False  # once, into the log: not also through the worker's root handlers
        try:
            execute(Context(data_options, out, quiet), run, node=node)
        except BaseException:
            traceback.print_exc(file=log)
            raise
        finally:
            own.removeHandler(handler)
            own.propagate = propagate
    return node


def run_on_ray(ctx, runs: list[Run], todo: list[Run], config: Config, on_start: Callable[[Run, str], None],
               on_done: Callable[[Run, RunRecord], None], read: Callable[[Run], RunRecord | None],
               quiet: bool = False) -> None:
    """Do the runs in `todo` on the Ray cluster `config.address` names, each once the runs
    it reads are finished, each asking for `[resources]`. A failed run stops new starts; the
    runs in progress finish and a LoralabError names each failure's node and log."""
    from .executors import schedule

    with connected(config.address, quiet) as ray:
        nodes = check_storage(ray, ctx.out)
        logger.info("Ray: %d node(s) see %s: %s", len(nodes), ctx.out, ", ".join(nodes))
        failed = schedule(runs, todo, RayTasks(ray, ctx, config.resources, on_start, read, quiet), on_done)
    if failed:
        raise LoralabError(f"{len(failed)} run(s) failed: {', '.join(failed)}; their nodes and logs are named "
                           "above. Finished runs are kept; run the same command again to retry.")


class RayTasks:
    """`executors.schedule`'s executor on Ray: each run a task asking for `[resources]`, sent
    as soon as it is ready (Ray queues what does not fit yet), in a fresh worker process."""

    capacity = None

    def __init__(self, ray, ctx, resources, on_start: Callable[[Run, str], None],
                 read: Callable[[Run], RunRecord | None], quiet: bool):
        self.ray, self.ctx, self.on_start, self.read, self.quiet = ray, ctx, on_start, read, quiet
        self.task = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_calls=1,
                               max_retries=RETRIES, retry_exceptions=False)(_task)
        self.threads = max(1, int(resources.cpus))
        self.runs: dict = {}               # handle -> its run
        self.placed: dict[str, str] = {}   # run -> the node it was last seen starting on
        self.sent: dict[str, float] = {}   # run -> when it was sent (an older node.json is a killed driver's)

    def start(self, run: Run):
        self.on_start(run, "sent to Ray")
        self.sent[run.name] = time.time()
        ref = self.task.remote(self.ctx.data_options, str(self.ctx.out), self.quiet, run, self.threads)
        self.runs[ref] = run
        return ref

    def wait(self, handles: list) -> list:
        done, _ = self.ray.wait(handles, num_returns=1, timeout=WATCH_SECONDS)
        _say_where(self.ctx.out, [self.runs[ref] for ref in handles], self.sent, self.placed)
        return done

    def finish(self, run: Run, handle) -> RunRecord:
        self.runs.pop(handle)
        try:
            self.ray.get(handle)
            record = self.read(run)
            if record is None:
                raise LoralabError("it wrote no result")
        except Exception as err:  # RayTaskError, a lost node past its retries, no result
            raise LoralabError(failure(self.ctx.out / run.name, run.name, err)) from err
        return record

    def stop(self, handles: list) -> None:
        for ref in handles:
            self.ray.cancel(ref, force=True)


def _started(run_dir: Path) -> dict | None:
    """A run's RUN/node.json (`node`, `pid`, `started`), or None where no node has written it
    (yet, or whole)."""
    import json

    try:
        started = json.loads((run_dir / NODE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return started if isinstance(started, dict) and {"node", "started"} <= set(started) else None


def _say_where(out: Path, running, sent: dict[str, float], placed: dict[str, str]) -> None:
    """Log each run in progress that has started on a node since last looked (its
    RUN/node.json, written after it was sent), again where a retry moved it."""
    for run in running:
        started = _started(out / run.name)
        if started is None or started["started"] < sent[run.name] - 1:
            continue  # queued, or left by an earlier driver's attempt
        node = started["node"]
        if placed.get(run.name) != node:
            placed[run.name] = node
            logger.info("%s: running on %s", run.name, node)


def failure(run_dir: Path, name: str, err: Exception) -> str:
    """A failed run in words: its node (from RUN/node.json), its log and the error's last line."""
    started = _started(run_dir)
    node = started["node"] if started else "a node that did not start it"
    last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    return f"The run {name!r} failed on {node}: {last} (its log: {run_dir / LOG_NAME})."
