"""`loralab run`: the lab's whole study as one resumable job.

Runs, in order: the TF-IDF baselines, full fine-tuning, head-tuning, the lab's replace
test, the low-rank study (approximated models 1 and 2 swept over ranks, the spectrum of
dW), LoRA at several ranks, and the subspace similarity of each LoRA update to dW.

Each run lives in its own sub-folder of the output folder and is finished only when its
`result.json` exists (written atomically, last) with the fingerprint of the settings that
affect it. Running the same command again skips finished runs and redoes the others; a
changed setting invalidates only the runs it affects. `results.json` lists every
finished run and is rewritten after each one.

With `jobs` above 1, runs whose inputs are ready train side by side, each in a process of
its own: one small model leaves a GPU mostly idle, so several fill it. The runs and their
results are the same as one at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .config import fingerprint, inside, load_config, to_toml
from .errors import LoralabError
from .fileio import write_json, write_text

logger = logging.getLogger("loralab")

RESULT_NAME = "result.json"
PARTIAL_NAME = "partial.json"  # what an unfinished run keeps for its next try, tagged with its key


# ---------------------------------------------------------------------------------------
# Context: data, tokenizer and settings, built once per process


class Context:
    """What every run of a study needs, built lazily: data, tokenizer, settings."""

    def __init__(self, config: dict, quiet: bool = False):
        self.config = config
        self.quiet = quiet
        self.out = Path(config["out"])
        self._data = self._tokenized = self._tokenizer = None

    @property
    def data(self):
        """train (as trained), eval and, with `data.validation`, a validation split."""
        if self._data is None:
            from .data import DataOptions, limit_data, load_data, split_validation

            d = self.config["data"]
            options = DataOptions(d["text_column"], d["label_column"], d["drop_invalid"])
            data = load_data(d["dir"] or None, train=d["train"] or None, eval=d["eval"] or None,
                             options=options)
            data = limit_data(data, d["limit_train"], d["limit_eval"])
            if d["validation"]:
                data = split_validation(data, d["validation"], d["split_seed"])
            self._data = data
        return self._data

    def _digest(self, splits) -> str:
        digest = hashlib.sha256()
        for split in splits:
            digest.update(split.encode())
            for text, label in zip(self.data[split]["text"], self.data[split]["label"]):
                digest.update(text.encode())
                digest.update(bytes([label]))
        return digest.hexdigest()[:16]

    @property
    def data_key(self) -> str:
        """A hash of every split: a run that trains or evaluates is redone when it changes."""
        return self._digest(sorted(self.data))

    @property
    def choice_key(self) -> str:
        """A hash of the splits that choices are made on (train and validation, never eval)."""
        return self._digest([s for s in ("train", "validation") if s in self.data])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from .models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config["model"])
        return self._tokenizer

    @property
    def tokenized(self):
        if self._tokenized is None:
            from .training import tokenize

            self._tokenized = tokenize(self.data, self.tokenizer, self.config["train"]["max_length"])
        return self._tokenized

    def settings(self, **changes):
        from .training import TrainSettings

        c = self.config
        return TrainSettings(**c["train"], seed=c["seed"], precision=c["precision"], device=c["device"],
                             quiet=self.quiet).replace(**changes)


# ---------------------------------------------------------------------------------------
# The runs


@dataclass
class Run:
    """One step of the study: a folder, a fingerprint, and the function that does it."""

    name: str
    key: str
    task: str                        # a name in TASKS
    params: dict = field(default_factory=dict)
    isolate: bool = False            # train in a child process (honest peak memory)
    after: tuple[str, ...] = ()      # names of the runs whose results this one reads


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def row(method: str, rank=None, **values) -> dict:
    base = {"method": method, "rank": rank, "trainable_params": None, "eval_accuracy": None,
            "train_seconds": None, "peak_memory_mb": None, "history": []}
    base.update(values)
    return base


def task_baseline(ctx: Context, run_dir: Path, method: str, seed: int) -> dict:
    from .baselines import run_baseline
    from .measure import PeakMemory

    with PeakMemory() as mem:
        result = run_baseline(method, ctx.data["train"], ctx.data["eval"], seed=seed)
    return {"rows": [row(method, **result, peak_memory_mb=mem.peak_mb)]}


def chosen_learning_rate(ctx: Context, method: str) -> float | None:
    """The learning rate the `select-METHOD` run chose on the validation split (None
    when the study chooses nothing)."""
    if not ctx.config["select"]["enabled"]:
        return None
    import json

    path = ctx.out / f"select-{method}" / RESULT_NAME
    try:
        return json.loads(path.read_text("utf-8"))["selection"]["learning_rate"]
    except (OSError, ValueError, KeyError):
        raise LoralabError(f"{path}: the learning-rate choice for {method} is missing; run the study "
                           "again to redo it.") from None


def method_settings(ctx: Context, method: str, rank: int | None, seed: int,
                    learning_rate: float | None = None):
    """(TrainSettings, LoRA options) of one training run: the [train] settings, the
    learning rate given, chosen on the validation split, or LoRA's own, and the [lora] options."""
    lora = ctx.config["lora"]
    lr = learning_rate or chosen_learning_rate(ctx, method)
    options = {}
    if method == "lora":
        lr = lr or lora["learning_rate"] or None
        options = dict(rank=rank, alpha=lora["alpha_factor"] * rank, targets=lora["targets"] or None,
                       init=lora["init"], dropout=lora["dropout"], rslora=lora["rslora"],
                       lr_ratio=lora["lr_ratio"])
    settings = ctx.settings(seed=seed)
    return (settings.replace(learning_rate=lr) if lr else settings), options


def task_train(ctx: Context, run_dir: Path, method: str, seed: int, rank: int | None = None) -> dict:
    from .api import train

    settings, options = method_settings(ctx, method, rank, seed)
    info = train(method=method, out=run_dir / "model", model=ctx.config["model"], settings=settings,
                 tokenized=ctx.tokenized, **options)
    keep = ("trainable_params", "eval_accuracy", "train_seconds", "peak_memory_mb", "history", "precision",
            "learning_rate", "pooling")
    result = row(method, rank, **{k: info[k] for k in keep})
    result["chosen_on"] = "validation" if ctx.config["select"]["enabled"] else None
    if multiprocessing.parent_process() is not None:  # a child of its own: the process peak is this run's
        result["peak_memory_mb"] = max(result["peak_memory_mb"], peak_rss_mb())
    return {"rows": [result]}


def task_select(ctx: Context, run_dir: Path, method: str, seed: int) -> dict:
    """Choose `method`'s learning rate on the validation split (see `choose_learning_rate`)."""
    import datasets

    from .api import choose_learning_rate

    sel = ctx.config["select"]
    data = datasets.DatasetDict(train=ctx.tokenized["train"], validation=ctx.tokenized["validation"])
    if sel["limit_train"] and sel["limit_train"] < len(data["train"]):
        data["train"] = data["train"].shuffle(seed=0).select(range(sel["limit_train"]))
    rank = sel["lora_rank"] if method == "lora" else None
    settings, options = method_settings(ctx, method, rank, seed, learning_rate=sel[method][0])
    if sel["epochs"]:
        settings = settings.replace(epochs=sel["epochs"])
    # Each candidate's score is saved as it finishes: a killed study redoes only the candidate it was in.
    partial = read_partial(run_dir)
    done = partial.setdefault("candidates", {})

    def save(lr, accuracy, history):
        done[repr(lr)] = {"validation_accuracy": accuracy, "history": history}
        write_json(run_dir / PARTIAL_NAME, partial)

    selection = choose_learning_rate(method, sel[method], data, model=ctx.config["model"], settings=settings,
                                     tokenizer=ctx.tokenizer, work=run_dir / "candidates", done=done,
                                     on_candidate=save, **options)
    return {"rows": [], "selection": {"rank": rank, **selection}}


def task_replace(ctx: Context, run_dir: Path, seed: int, full: str = "full") -> dict:
    """The lab's step 4 on a freshly loaded fine-tuned model: random clones of the query and
    value layers give near-chance accuracy, the originals restore the predictions exactly."""
    import torch

    from .models import load_model
    from .surgery import clone_linear, extract, replace
    from .training import predict_logits

    model = load_model(ctx.out / full / "model")
    settings = ctx.settings(seed=seed)
    evals = ctx.tokenized["eval"]
    labels = np.asarray(evals["label"])
    original = predict_logits(model, evals, ctx.tokenizer, settings, "Replace test: original")
    layers = extract(model)
    torch.manual_seed(seed)
    replace(model, {name: clone_linear(layer) for name, layer in layers.items()})
    scrambled = predict_logits(model, evals, ctx.tokenizer, settings, "Replace test: random clones")
    replace(model, layers)
    restored = predict_logits(model, evals, ctx.tokenizer, settings, "Replace test: restored")
    acc = lambda logits: float((logits.argmax(-1) == labels).mean())  # noqa: E731
    summary = {"layers": len(layers),
               "parameters": sum(p.numel() for layer in layers.values() for p in layer.parameters()),
               "original_accuracy": acc(original), "random_clones_accuracy": acc(scrambled),
               "restored_accuracy": acc(restored),
               "restored_predictions_identical": bool((original.argmax(-1) == restored.argmax(-1)).all()),
               "restored_logits_identical": bool(np.array_equal(original, restored)),
               "majority_class_accuracy": float(max(labels.mean(), 1 - labels.mean()))}
    return {"rows": [], "replace_test": summary}


def task_lowrank(ctx: Context, run_dir: Path, seed: int, full: str = "full", head: str = "head") -> dict:
    from .api import lowrank

    m = ctx.config["methods"]
    head_row = _read_json(ctx.out / head / RESULT_NAME)["rows"][0]  # finished before this run (`after`)
    rows, summary = lowrank(ctx.out / full / "model", ctx.out / head / "model", ctx.config["model"],
                            out=run_dir, tokenized=ctx.tokenized, tokenizer=ctx.tokenizer,
                            settings=ctx.settings(seed=seed), ranks=m["sweep_ranks"] or None,
                            sweep_points=m["sweep_points"], targets=ctx.config["lora"]["targets"] or None,
                            head_accuracy=head_row["eval_accuracy"])
    return {"rows": [row(**r) for r in rows], "lowrank": summary}


def task_similarity(ctx: Context, run_dir: Path, seed: int, ranks: list[int], full: str = "full",
                    suffix: str = "") -> dict:
    from .adapters import load_adapter
    from .lowrank import LowRankStudy
    from .models import load_model

    pretrained = load_model(ctx.config["model"])
    study = LowRankStudy(pretrained, load_model(ctx.out / full / "model"), pretrained,
                         targets=ctx.config["lora"]["targets"] or None)
    sims = {}
    for rank in ranks:
        adapter = ctx.out / f"lora-r{rank}{suffix}" / "model"
        sims[str(rank)] = study.lora_similarity(load_adapter(load_model(ctx.config["model"]), adapter))
    return {"rows": [], "similarity": sims}


TASKS: dict[str, Callable] = {"baseline": task_baseline, "select": task_select, "train": task_train,
                              "replace": task_replace, "lowrank": task_lowrank, "similarity": task_similarity}


# ---------------------------------------------------------------------------------------
# Planning and executing


def seeds_of(config: dict) -> list[int]:
    return list(config["seeds"]) or [config["seed"]]


def plan(ctx: Context) -> list[Run]:
    """Every run of the study, in order, each with the fingerprint of what it depends on.

    With `select.enabled`, `select-full`, `select-head` and `select-lora` come first and the
    runs that use their choice depend on them. With `seeds`, each method runs once per seed
    (folders end in `-seedN`); the replace test, low-rank study and similarity use the first.
    """
    c, m, sel = ctx.config, ctx.config["methods"], ctx.config["select"]
    isolate = c["isolate"] and int(os.environ.get("WORLD_SIZE", "1")) == 1
    seeds = seeds_of(c)
    runs: list[Run] = []
    chosen = {}  # method -> key of the run that chooses its learning rate
    if sel["enabled"]:
        wanted = {"full": m["full"], "head": m["head"], "lora": bool(m["lora_ranks"])}
        for method in ("full", "head", "lora"):
            if wanted[method]:
                chosen[method] = fingerprint("select", method, c["model"], ctx.choice_key, seeds[0], c["precision"],
                                             c["device"], c["train"], sel, c["lora"] if method == "lora" else None)
                runs.append(Run(f"select-{method}", chosen[method], "select", {"method": method, "seed": seeds[0]},
                                isolate))
    for seed in seeds:
        sfx = f"-seed{seed}" if c["seeds"] else ""
        common = (c["model"], ctx.data_key, seed, c["precision"], c["device"], c["train"])
        if m["baselines"]:
            for method in ("tfidf-lr", "tfidf-nb"):
                runs.append(Run(method + sfx, fingerprint(method, ctx.data_key, seed), "baseline",
                                {"method": method, "seed": seed}))
        keys = {}
        for method in ("full", "head"):
            if m[method]:
                keys[method] = fingerprint(method, common, chosen.get(method))
                runs.append(Run(method + sfx, keys[method], "train", {"method": method, "seed": seed}, isolate,
                                _selection(chosen, method)))
        first = seed == seeds[0]
        names = {"full": "full" + sfx, "head": "head" + sfx}
        if first and m["replace_test"] and "full" in keys:
            runs.append(Run("replace-test", fingerprint("replace", keys["full"]), "replace",
                            {"seed": seed, "full": names["full"]}, after=(names["full"],)))
        if first and m["lowrank"]:
            sweep = (m["sweep_ranks"], m["sweep_points"])
            runs.append(Run("lowrank", fingerprint("lowrank", keys["full"], keys["head"], sweep), "lowrank",
                            {"seed": seed, **names}, after=(names["full"], names["head"])))
        lora_keys, lora_names = [], []
        for rank in m["lora_ranks"]:
            key = fingerprint("lora", rank, common, c["lora"], chosen.get("lora"))
            lora_keys.append(key)
            lora_names.append(f"lora-r{rank}{sfx}")
            runs.append(Run(lora_names[-1], key, "train", {"method": "lora", "rank": rank, "seed": seed},
                            isolate, _selection(chosen, "lora")))
        if first and m["lora_ranks"] and "full" in keys:
            runs.append(Run("similarity", fingerprint("similarity", keys["full"], lora_keys), "similarity",
                            {"seed": seed, "ranks": list(m["lora_ranks"]), "full": names["full"], "suffix": sfx},
                            after=(names["full"], *lora_names)))
    return runs


def _selection(chosen: dict, method: str) -> tuple[str, ...]:
    """The run that chooses `method`'s learning rate, if the study chooses one."""
    return (f"select-{method}",) if method in chosen else ()


def _read_json(path: Path):
    """The JSON in `path`, or None where it is missing or unreadable (an interrupted write)."""
    import json

    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def read_result(run_dir: Path, key: str) -> dict | None:
    """The run's result if it finished with these settings, else None."""
    result = _read_json(run_dir / RESULT_NAME)
    return result if result is not None and result.get("key") == key else None


def _child(config: dict, quiet: bool, run: Run, run_dir: str, threads: int = 0,
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
    _execute(Context(config, quiet), run, Path(run_dir))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when its parent dies (a killed `loralab run`
    must not leave a training process behind that later writes a result)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _execute(ctx: Context, run: Run, run_dir: Path) -> dict:
    import torch

    seed = run.params.get("seed", ctx.config["seed"])
    torch.manual_seed(seed)
    start = time.perf_counter()
    result = TASKS[run.task](ctx, run_dir, **run.params)
    result.update(name=run.name, key=run.key, seconds=time.perf_counter() - start,
                  finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  device=device_name(ctx.config["device"]))
    for r in result["rows"]:
        r.setdefault("seed", seed)
        r["run"] = run.name
    write_json(run_dir / RESULT_NAME, result)  # the completion marker: written last, atomically
    (run_dir / PARTIAL_NAME).unlink(missing_ok=True)
    return result


def read_partial(run_dir: Path) -> dict:
    """What an unfinished try of the run in `run_dir` kept (see `prepare_run_dir`), or {}."""
    partial = _read_json(run_dir / PARTIAL_NAME)
    return partial if isinstance(partial, dict) else {}


def prepare_run_dir(run_dir: Path, key: str) -> None:
    """Start `run_dir` clean for a run (an unfinished or outdated one is removed), keeping
    only the partial work of an unfinished try with the same settings (`key`)."""
    partial = read_partial(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    write_json(run_dir / PARTIAL_NAME, partial if partial.get("key") == key else {"key": key})


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
    run_dir = ctx.out / run.name
    prepare_run_dir(run_dir, run.key)
    proc = process_context().Process(
        target=_child, args=(ctx.config, ctx.quiet, run, str(run_dir), threads, dict(os.environ)),
        name=f"loralab-{run.name}")
    proc.start()
    return proc


def child_result(ctx: Context, run: Run, proc) -> dict:
    """The result a finished child wrote, or a LoralabError saying that it failed."""
    result = read_result(ctx.out / run.name, run.key)
    if proc.exitcode != 0 or result is None:
        raise LoralabError(f"The run {run.name!r} failed (exit code {proc.exitcode}); its messages are "
                           f"above. Finished runs are kept; run the same command again to retry.")
    return result


def run_one(ctx: Context, run: Run) -> dict:
    if not run.isolate:
        run_dir = ctx.out / run.name
        prepare_run_dir(run_dir, run.key)
        return _execute(ctx, run, run_dir)
    proc = start_child(ctx, run)
    try:
        proc.join()
    except KeyboardInterrupt:
        proc.terminate()
        proc.join()
        raise
    return child_result(ctx, run, proc)


def collect(ctx: Context, runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        result = read_result(ctx.out / run.name, run.key)
        if result:
            rows.extend(result["rows"])
    return rows


def device_name(device: str) -> str:
    """What a run ran on, in words: the GPU's name, or "cpu" (a resumed study may mix them)."""
    import torch

    from .models import pick_device

    picked = pick_device(device)
    return torch.cuda.get_device_name(picked) if picked.type == "cuda" else "cpu"


def environment(ctx: Context, seconds: float, skipped: int = 0) -> dict:
    import torch
    import transformers

    from . import __version__
    from .models import pick_device
    from .training import resolve_precision

    device = pick_device(ctx.config["device"])
    d = ctx.config["data"]
    return {
        "model": ctx.config["model"],
        "data": {"train_rows": len(ctx.data["train"]), "eval_rows": len(ctx.data["eval"]),
                 "validation_rows": len(ctx.data["validation"]) if "validation" in ctx.data else 0,
                 "source": d["dir"] or os.environ.get("LORALAB_DATA") or "cache or download",
                 "train_files": d["train"], "eval_files": d["eval"]},
        "loralab": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device_name(ctx.config["device"]),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "precision": resolve_precision(ctx.settings(), device), "seed": ctx.config["seed"],
        "seeds": seeds_of(ctx.config), "profile": ctx.config["profile"],
        "pooling": ctx.config["train"]["pooling"],
        "total_seconds": seconds, "skipped_runs": skipped,
    }


def _log_done(i: int, total: int, run: Run, result: dict) -> None:
    accs = [r["eval_accuracy"] for r in result["rows"] if r["eval_accuracy"] is not None]
    logger.info("[%d/%d] %s: done in %.0f s%s", i, total, run.name, result["seconds"],
                f", eval accuracy {max(accs):.4f}" if accs else "")


def run_parallel(ctx: Context, runs: list[Run], todo: list[int], jobs: int) -> None:
    """Do the runs numbered `todo` (indices into `runs`), up to `jobs` at a time, each in a
    process of its own, starting each once the runs it reads (`Run.after`) are finished.

    A failed run stops new starts; the runs in progress finish (their work is kept) and a
    LoralabError names the failures.
    """
    from multiprocessing.connection import wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    finished = {run.name for i, run in enumerate(runs) if i not in todo}
    waiting, running, failed = list(todo), {}, []
    try:
        while waiting or running:
            ready = [i for i in waiting if set(runs[i].after) <= finished] if not failed else []
            for i in ready[:jobs - len(running)]:
                waiting.remove(i)
                logger.info("[%d/%d] %s: running", i + 1, len(runs), runs[i].name)
                running[i] = start_child(ctx, runs[i], threads)
            if not running:
                break  # what is left waits on a run that failed
            sentinels = {proc.sentinel: i for i, proc in running.items()}
            for sentinel in wait(list(sentinels)):
                i = sentinels[sentinel]
                proc = running.pop(i)
                proc.join()
                try:
                    result = child_result(ctx, runs[i], proc)
                except LoralabError as err:
                    logger.error("%s", err)
                    failed.append(runs[i].name)
                    continue
                finished.add(runs[i].name)
                _log_done(i + 1, len(runs), runs[i], result)
                write_json(ctx.out / "results.json", collect(ctx, runs))
    except KeyboardInterrupt:
        for proc in running.values():
            proc.terminate()
            proc.join()
        raise
    if waiting and not failed:  # pragma: no cover - plan() names only runs it makes
        raise LoralabError(f"runs wait on runs that are not in the study: {[runs[i].name for i in waiting]}")
    if failed:
        raise LoralabError(f"{len(failed)} run(s) failed: {', '.join(failed)}; their messages are above. "
                           "Finished runs are kept; run the same command again to retry.")


def run_study(config: dict, quiet: bool = False) -> list[dict]:
    """Run (or resume) the whole study; returns the rows of `results.json`."""
    ctx = Context(config, quiet)
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_text(ctx.out / "config.toml", to_toml(config))
    start = time.perf_counter()
    runs = plan(ctx)
    todo = []
    for i, run in enumerate(runs):
        if read_result(ctx.out / run.name, run.key):
            logger.info("[%d/%d] %s: finished earlier, skipped", i + 1, len(runs), run.name)
        else:
            todo.append(i)
    skipped = len(runs) - len(todo)
    if any(runs[i].isolate for i in todo) or (todo and config["jobs"] > 1):
        warm_up_processes()
    if config["jobs"] > 1:
        run_parallel(ctx, runs, todo, config["jobs"])
    else:
        for i in todo:
            logger.info("[%d/%d] %s: running", i + 1, len(runs), runs[i].name)
            result = run_one(ctx, runs[i])
            _log_done(i + 1, len(runs), runs[i], result)
            write_json(ctx.out / "results.json", collect(ctx, runs))
    rows = collect(ctx, runs)
    write_json(ctx.out / "results.json", rows)
    write_json(ctx.out / "environment.json", environment(ctx, time.perf_counter() - start, skipped))
    return rows


def config_from_args(args) -> dict:
    flags = {"model": args.model if args.model != "minilm" else None, "out": args.out, "seed": args.seed,
             "precision": args.precision, "device": args.device,
             "data.dir": args.data, "data.train": args.train, "data.eval": args.eval,
             "data.text_column": args.text_column, "data.label_column": args.label_column,
             "data.drop_invalid": args.drop_invalid or None,
             "data.limit_train": args.limit_train, "data.limit_eval": args.limit_eval,
             "seeds": args.seeds, "train.pooling": args.pooling, "jobs": args.jobs}
    return load_config(args.config, quick=args.quick, profile=args.profile, **flags)


def main_run(args) -> None:
    from .report import write_report

    config = config_from_args(args)
    rows = run_study(config, quiet=args.quiet)
    report = write_report(config["out"], inside(config["out"], config["report_dir"], "report_dir"))
    print(summary_table(rows))
    print(f"\nResults: {Path(config['out']) / 'results.json'}\nReport: {report} and report.html")


def summary_table(rows: list[dict]) -> str:
    lines = [f"{'method':<10} {'rank':>5} {'trainable':>12} {'accuracy':>9} {'train s':>9} {'peak MB':>9}"]
    for r in rows:
        rank = r["rank"] if r["rank"] is not None else ""
        secs = f"{r['train_seconds']:.1f}" if r["train_seconds"] is not None else "-"
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
        lines.append(f"{r['method']:<10} {rank:>5} {r['trainable_params'] or 0:>12,} "
                     f"{r['eval_accuracy']:>9.4f} {secs:>9} {mem:>9}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `loralab run`")
