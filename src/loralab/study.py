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
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from .config import to_toml
from .errors import LoralabError
from .fileio import write_json, write_text
from .records import (
    LOWRANK,
    REPLACE_TEST,
    RESULT_NAME,
    SIMILARITY,
    Environment,
    ReplaceTest,
    Row,
    RunRecord,
    fingerprint,
    method_run,
    read_record,
    seed_suffix,
    select_run,
)
from .settings import LoraOptions, TrainSettings

logger = logging.getLogger("loralab")



# ---------------------------------------------------------------------------------------
# Context: data and tokenizers, loaded once per process


class Context:
    """What the runs of a study share, loaded lazily: the data (from the [data] table),
    tokenizers and tokenized splits. Runs read their settings from their inputs, never
    from here: the data is identified in their inputs by its digest."""

    def __init__(self, data_options: dict, out: str | os.PathLike, quiet: bool = False):
        self.data_options = data_options
        self.out = Path(out)
        self.quiet = quiet
        self._data = None
        self._tokenizers: dict[str, object] = {}
        self._tokenized: dict[tuple, object] = {}

    @property
    def data(self):
        """train (as trained), eval and, with `data.validation`, a validation split."""
        if self._data is None:
            from .data import load_configured

            self._data = load_configured(self.data_options)
        return self._data

    @property
    def data_key(self) -> str:
        """A hash of every split: a run that trains or evaluates is redone when it changes."""
        from .data import data_digest

        return data_digest(self.data, sorted(self.data))

    @property
    def choice_key(self) -> str:
        """A hash of the splits that choices are made on (train and validation, never eval)."""
        from .data import data_digest

        return data_digest(self.data, [s for s in ("train", "validation") if s in self.data])

    def tokenizer(self, model: str):
        if model not in self._tokenizers:
            from .models import load_tokenizer

            self._tokenizers[model] = load_tokenizer(model)
        return self._tokenizers[model]

    def tokenized(self, model: str, max_length: int):
        if (model, max_length) not in self._tokenized:
            from .training import tokenize

            self._tokenized[model, max_length] = tokenize(self.data, self.tokenizer(model), max_length)
        return self._tokenized[model, max_length]


# ---------------------------------------------------------------------------------------
# What each run reads: one frozen value per run, whose fingerprint is the run's key


@dataclass(frozen=True)
class Ref:
    """A run whose result another run reads: its folder and its key."""

    name: str
    key: str


@dataclass(frozen=True)
class BaselineInputs:
    method: str  # tfidf-lr or tfidf-nb
    data: str    # digest of the splits
    seed: int


@dataclass(frozen=True)
class SelectInputs:
    method: str
    model: str
    data: str                     # digest of train and validation: eval chooses nothing
    settings: TrainSettings       # each candidate's (its learning rate replaced)
    lora: LoraOptions | None
    candidates: tuple[float, ...]
    limit_train: int              # each candidate trains on this many rows (0: all)


@dataclass(frozen=True)
class TrainInputs:
    method: str
    model: str
    data: str
    settings: TrainSettings
    lora: LoraOptions | None = None
    learning_rate_from: Ref | None = None  # the select-* run whose choice replaces the learning rate


@dataclass(frozen=True)
class ReplaceInputs:
    full: Ref
    model: str
    data: str
    settings: TrainSettings  # inference batches, precision, device, max length; the clones' seed


@dataclass(frozen=True)
class LowrankInputs:
    full: Ref
    head: Ref
    model: str
    data: str
    settings: TrainSettings
    targets: str | None
    ranks: tuple[int, ...]  # () = full rank halving down to 1
    points: int


@dataclass(frozen=True)
class SimilarityInputs:
    full: Ref
    loras: tuple[tuple[int, Ref], ...]  # (rank, adapter run)
    model: str
    targets: str | None


@dataclass(frozen=True)
class Run:
    """One step of the study: a folder, what it reads (`inputs`) and the task that does it.

    Its key is the fingerprint of its task and inputs, so nothing it reads can be left out
    of the key; the runs it waits for are the `Ref`s among its inputs."""

    name: str
    task: str      # a name in TASKS
    inputs: object
    isolate: bool = False  # train in a child process (honest peak memory)

    @property
    def key(self) -> str:
        return fingerprint(self.task, asdict(self.inputs))

    @property
    def after(self) -> tuple[str, ...]:
        """Names of the runs whose results this one reads."""
        refs = []
        for f in fields(self.inputs):
            value = getattr(self.inputs, f.name)
            for item in (value if isinstance(value, tuple) else (value,)):
                item = item[1] if isinstance(item, tuple) else item
                if isinstance(item, Ref):
                    refs.append(item.name)
        return tuple(refs)

    def ref(self) -> Ref:
        return Ref(self.name, self.key)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _settings(ctx: Context, inputs) -> TrainSettings:
    return inputs.settings.replace(quiet=ctx.quiet)  # quiet changes no result: it is not in the key


def task_baseline(ctx: Context, run_dir: Path, inputs: BaselineInputs) -> dict:
    from .baselines import run_baseline
    from .measure import PeakMemory

    with PeakMemory() as mem:
        result = run_baseline(inputs.method, ctx.data["train"], ctx.data["eval"], seed=inputs.seed)
    return {"rows": [Row(inputs.method, **result, peak_memory_mb=mem.peak_mb)]}


def chosen_learning_rate(ctx: Context, ref: Ref) -> float:
    """The learning rate the `ref` run (select-*) chose on the validation split."""
    record = read_record(ctx.out / ref.name / RESULT_NAME)
    if record is None or record.key != ref.key or record.selection is None:
        raise LoralabError(f"{ctx.out / ref.name / RESULT_NAME}: the learning-rate choice is missing; run the "
                           "study again to redo it.")
    return record.selection.learning_rate


def task_train(ctx: Context, run_dir: Path, inputs: TrainInputs) -> dict:
    from .api import train

    settings = _settings(ctx, inputs)
    if inputs.learning_rate_from:
        settings = settings.replace(learning_rate=chosen_learning_rate(ctx, inputs.learning_rate_from))
    info = train(method=inputs.method, out=run_dir / "model", model=inputs.model, settings=settings,
                 tokenized=ctx.tokenized(inputs.model, settings.max_length), lora=inputs.lora)
    row = Row(inputs.method, inputs.lora.rank if inputs.lora else None,
              **{k: info[k] for k in ("trainable_params", "eval_accuracy", "train_seconds", "peak_memory_mb",
                                      "history", "precision", "learning_rate", "pooling")},
              chosen_on="validation" if inputs.learning_rate_from else None)
    if multiprocessing.parent_process() is not None:  # a child of its own: the process peak is this run's
        row.peak_memory_mb = max(row.peak_memory_mb, peak_rss_mb())
    return {"rows": [row]}


def task_select(ctx: Context, run_dir: Path, inputs: SelectInputs) -> dict:
    """Choose a method's learning rate on the validation split (see `choose_learning_rate`).
    Its candidates' scratch lives beside the run folder, so a killed choice resumes."""
    import datasets

    from .api import choose_learning_rate

    settings = _settings(ctx, inputs)
    tokenized = ctx.tokenized(inputs.model, settings.max_length)
    data = datasets.DatasetDict(train=tokenized["train"], validation=tokenized["validation"])
    if inputs.limit_train and inputs.limit_train < len(data["train"]):
        data["train"] = data["train"].shuffle(seed=0).select(range(inputs.limit_train))
    selection = choose_learning_rate(inputs.method, inputs.candidates, data, model=inputs.model, settings=settings,
                                     lora=inputs.lora, tokenizer=ctx.tokenizer(inputs.model),
                                     work=ctx.out / f".{run_dir.name}.candidates", resume=True)
    return {"selection": selection}


def task_replace(ctx: Context, run_dir: Path, inputs: ReplaceInputs) -> dict:
    """The lab's step 4 on a freshly loaded fine-tuned model: random clones of the query and
    value layers give near-chance accuracy, the originals restore the predictions exactly."""
    import torch

    from .models import load_model
    from .surgery import clone_linear, extract, replace
    from .training import predict_logits

    settings = _settings(ctx, inputs)
    model = load_model(ctx.out / inputs.full.name / "model")
    tokenizer = ctx.tokenizer(inputs.model)
    evals = ctx.tokenized(inputs.model, settings.max_length)["eval"]
    labels = np.asarray(evals["label"])
    original = predict_logits(model, evals, tokenizer, settings, "Replace test: original")
    layers = extract(model)
    torch.manual_seed(settings.seed)
    replace(model, {name: clone_linear(layer) for name, layer in layers.items()})
    scrambled = predict_logits(model, evals, tokenizer, settings, "Replace test: random clones")
    replace(model, layers)
    restored = predict_logits(model, evals, tokenizer, settings, "Replace test: restored")
    acc = lambda logits: float((logits.argmax(-1) == labels).mean())  # noqa: E731
    return {"replace_test": ReplaceTest(
        layers=len(layers), parameters=sum(p.numel() for layer in layers.values() for p in layer.parameters()),
        original_accuracy=acc(original), random_clones_accuracy=acc(scrambled), restored_accuracy=acc(restored),
        restored_predictions_identical=bool((original.argmax(-1) == restored.argmax(-1)).all()),
        restored_logits_identical=bool(np.array_equal(original, restored)),
        majority_class_accuracy=float(np.bincount(labels).max() / len(labels)))}


def task_lowrank(ctx: Context, run_dir: Path, inputs: LowrankInputs) -> dict:
    from .api import lowrank

    settings = _settings(ctx, inputs)
    head = read_record(ctx.out / inputs.head.name / RESULT_NAME)  # finished before this run (`after`)
    rows, summary = lowrank(ctx.out / inputs.full.name / "model", ctx.out / inputs.head.name / "model",
                            inputs.model, out=run_dir, tokenized=ctx.tokenized(inputs.model, settings.max_length),
                            tokenizer=ctx.tokenizer(inputs.model), settings=settings,
                            ranks=list(inputs.ranks) or None, sweep_points=inputs.points, targets=inputs.targets,
                            head_accuracy=head.rows[0].eval_accuracy)
    return {"rows": rows, "lowrank": summary}


def task_similarity(ctx: Context, run_dir: Path, inputs: SimilarityInputs) -> dict:
    from .adapters import load_adapter
    from .lowrank import LowRankStudy
    from .models import load_model

    pretrained = load_model(inputs.model)
    study = LowRankStudy(pretrained, load_model(ctx.out / inputs.full.name / "model"), pretrained,
                         targets=inputs.targets)
    sims = {str(rank): study.lora_similarity(load_adapter(load_model(inputs.model), ctx.out / ref.name / "model"))
            for rank, ref in inputs.loras}
    return {"similarity": sims}


TASKS: dict[str, Callable] = {"baseline": task_baseline, "select": task_select, "train": task_train,
                              "replace": task_replace, "lowrank": task_lowrank, "similarity": task_similarity}


# ---------------------------------------------------------------------------------------
# Planning and executing


def seeds_of(config: dict) -> list[int]:
    return list(config["seeds"]) or [config["seed"]]


def plan(config: dict, ctx: Context) -> list[Run]:
    """Every run of the study, in order, each with the inputs it reads.

    With `select.enabled`, `select-full`, `select-head` and `select-lora` come first and the
    runs that use their choice read them. With `seeds`, each method runs once per seed
    (folders end in `-seedN`); the replace test, low-rank study and similarity use the first.
    """
    c, m, sel = config, config["methods"], config["select"]
    isolate = c["isolate"] and int(os.environ.get("WORLD_SIZE", "1")) == 1
    seeds = seeds_of(c)
    model, base = c["model"], TrainSettings.from_config(c)
    lora_lr = {"learning_rate": c["lora"]["learning_rate"]} if c["lora"]["learning_rate"] else {}
    targets = c["lora"]["targets"] or None
    runs: list[Run] = []
    chosen: dict[str, Ref] = {}  # method -> the run that chooses its learning rate
    if sel["enabled"]:
        wanted = {"full": m["full"], "head": m["head"], "lora": bool(m["lora_ranks"])}
        for method in (name for name, on in wanted.items() if on):
            settings = base.replace(seed=seeds[0], learning_rate=sel[method][0],
                                    **({"epochs": sel["epochs"]} if sel["epochs"] else {}))
            lora = LoraOptions.from_config(c, sel["lora_rank"]) if method == "lora" else None
            run = Run(select_run(method), "select", SelectInputs(method, model, ctx.choice_key, settings, lora,
                                                                 tuple(sel[method]), sel["limit_train"]), isolate)
            runs.append(run)
            chosen[method] = run.ref()
    for seed in seeds:
        sfx = seed_suffix(seed, bool(c["seeds"]))
        settings = base.replace(seed=seed)
        if m["baselines"]:
            for method in ("tfidf-lr", "tfidf-nb"):
                runs.append(Run(method_run(method, suffix=sfx), "baseline", BaselineInputs(method, ctx.data_key, seed)))
        trained: dict[str, Ref] = {}
        for method in ("full", "head"):
            if m[method]:
                run = Run(method_run(method, suffix=sfx), "train",
                          TrainInputs(method, model, ctx.data_key, settings, None, chosen.get(method)), isolate)
                runs.append(run)
                trained[method] = run.ref()
        first = seed == seeds[0]
        if first and m["replace_test"] and "full" in trained:
            runs.append(Run(REPLACE_TEST, "replace", ReplaceInputs(trained["full"], model, ctx.data_key, settings)))
        if first and m["lowrank"]:
            runs.append(Run(LOWRANK, "lowrank", LowrankInputs(trained["full"], trained["head"], model, ctx.data_key,
                                                              settings, targets, tuple(m["sweep_ranks"]),
                                                              m["sweep_points"])))
        loras = []
        for rank in m["lora_ranks"]:
            run = Run(method_run("lora", rank, sfx), "train",
                      TrainInputs("lora", model, ctx.data_key, settings.replace(**lora_lr),
                                  LoraOptions.from_config(c, rank), chosen.get("lora")), isolate)
            runs.append(run)
            loras.append((rank, run.ref()))
        if first and loras and "full" in trained:
            runs.append(Run(SIMILARITY, "similarity", SimilarityInputs(trained["full"], tuple(loras), model, targets)))
    return runs


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
    from .logs import setup_logging

    _die_with_parent()
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    setup_logging(quiet)
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


def _execute(ctx: Context, run: Run) -> RunRecord:
    import torch

    run_dir = ctx.out / run.name
    settings = getattr(run.inputs, "settings", None)
    seed = settings.seed if settings else getattr(run.inputs, "seed", 0)
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = TASKS[run.task](ctx, run_dir, run.inputs)
    record = RunRecord(name=run.name, key=run.key, seconds=time.perf_counter() - start,
                       finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       device=device_name(settings.device if settings else "cpu"), **out)
    for row in record.rows:
        row.seed = seed if row.seed is None else row.seed
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
    prepare_run_dir(ctx.out / run.name)
    proc = process_context().Process(
        target=_child, args=(ctx.data_options, str(ctx.out), ctx.quiet, run, threads, dict(os.environ)),
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

    from .models import pick_device

    picked = pick_device(device)
    return torch.cuda.get_device_name(picked) if picked.type == "cuda" else "cpu"


def environment(config: dict, ctx: Context, seconds: float, skipped: int = 0) -> Environment:
    import torch
    import transformers

    from . import __version__
    from .models import pick_device
    from .training import resolve_precision

    settings = TrainSettings.from_config(config)
    d = config["data"]
    return Environment(
        model=config["model"],
        data={"train_rows": len(ctx.data["train"]), "eval_rows": len(ctx.data["eval"]),
              "validation_rows": len(ctx.data["validation"]) if "validation" in ctx.data else 0,
              "source": d["dir"] or os.environ.get("LORALAB_DATA") or "cache or download",
              "train_files": d["train"], "eval_files": d["eval"]},
        loralab=__version__, torch=torch.__version__, transformers=transformers.__version__,
        python=platform.python_version(), device=device_name(config["device"]),
        cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
        precision=resolve_precision(settings, pick_device(config["device"])), seed=config["seed"],
        seeds=seeds_of(config), profile=config["profile"], pooling=config["train"]["pooling"],
        total_seconds=seconds, skipped_runs=skipped)


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

    def __init__(self, runs: list[Run], result: StudyResult):
        self.index = {run.name: i + 1 for i, run in enumerate(runs)}
        self.total, self.result = len(runs), result

    def start(self, run: Run) -> None:
        self.result.events.append(("start", run.name))
        logger.info("[%d/%d] %s: running", self.index[run.name], self.total, run.name)

    def done(self, run: Run, record: RunRecord) -> None:
        self.result.events.append(("done", run.name))
        accs = [r.eval_accuracy for r in record.rows if r.eval_accuracy is not None]
        logger.info("[%d/%d] %s: done in %.0f s%s", self.index[run.name], self.total, run.name, record.seconds,
                    f", eval accuracy {max(accs):.4f}" if accs else "")


def run_parallel(ctx: Context, runs: list[Run], todo: list[Run], jobs: int, progress: _Progress) -> None:
    """Do the runs in `todo`, up to `jobs` at a time, each in a process of its own,
    starting each once the runs it reads (`Run.after`) are finished.

    A failed run stops new starts; the runs in progress finish (their work is kept) and a
    LoralabError names the failures.
    """
    from multiprocessing.connection import wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    finished = {run.name for run in runs if run not in todo}
    waiting, running, failed = list(todo), {}, []
    try:
        while waiting or running:
            ready = [run for run in waiting if set(run.after) <= finished] if not failed else []
            for run in ready[:jobs - len(running)]:
                waiting.remove(run)
                progress.start(run)
                running[run.name] = (run, start_child(ctx, run, threads))
            if not running:
                break  # what is left waits on a run that failed
            sentinels = {proc.sentinel: name for name, (_, proc) in running.items()}
            for sentinel in wait(list(sentinels)):
                run, proc = running.pop(sentinels[sentinel])
                proc.join()
                try:
                    record = child_result(ctx, run, proc)
                except LoralabError as err:
                    logger.error("%s", err)
                    failed.append(run.name)
                    continue
                finished.add(run.name)
                progress.done(run, record)
                write_results(ctx, runs)
    except KeyboardInterrupt:
        for _, proc in running.values():
            proc.terminate()
            proc.join()
        raise
    if waiting and not failed:  # pragma: no cover - plan() names only runs it makes
        raise LoralabError(f"runs wait on runs that are not in the study: {[run.name for run in waiting]}")
    if failed:
        raise LoralabError(f"{len(failed)} run(s) failed: {', '.join(failed)}; their messages are above. "
                           "Finished runs are kept; run the same command again to retry.")


def run_study(config: dict, quiet: bool = False) -> StudyResult:
    """Run (or resume) the whole study of a resolved configuration (`load_config`)."""
    ctx = Context(config["data"], config["out"], quiet)
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_text(ctx.out / "config.toml", to_toml(config))
    start = time.perf_counter()
    runs = plan(config, ctx)
    result = StudyResult(rows=[], runs=runs, skipped=[])
    progress = _Progress(runs, result)
    todo = []
    for run in runs:
        if read_result(ctx.out / run.name, run.key):
            logger.info("[%d/%d] %s: finished earlier, skipped", progress.index[run.name], len(runs), run.name)
            result.skipped.append(run.name)
        else:
            todo.append(run)
    if any(run.isolate for run in todo) or (todo and config["jobs"] > 1):
        warm_up_processes()
    if config["jobs"] > 1:
        run_parallel(ctx, runs, todo, config["jobs"], progress)
    else:
        for run in todo:
            progress.start(run)
            progress.done(run, run_one(ctx, run))
            write_results(ctx, runs)
    result.rows = write_results(ctx, runs)
    env = environment(config, ctx, time.perf_counter() - start, len(result.skipped))
    write_json(ctx.out / "environment.json", env.to_json())
    return result


def summary_table(rows: list[Row]) -> str:
    """The results as a plain-text table, for the terminal."""
    lines = [f"{'method':<10} {'rank':>5} {'trainable':>12} {'accuracy':>9} {'train s':>9} {'peak MB':>9}"]
    for r in rows:
        rank = r.rank if r.rank is not None else ""
        secs = f"{r.train_seconds:.1f}" if r.train_seconds is not None else "-"
        mem = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "-"
        lines.append(f"{r.method:<10} {rank:>5} {r.trainable_params or 0:>12,} "
                     f"{r.eval_accuracy:>9.4f} {secs:>9} {mem:>9}")
    return "\n".join(lines)
