"""A suite: the study (`loralab run`) over several tasks in one resumable command, each task
a sub-study in its own folder, then one combined report (`loralab.report.suite`).

A suite is a TOML file (`examples/glue.toml` holds GLUE's five small tasks)::

    name = "GLUE"
    data_root = "$LORALAB_GLUE_DATA"   # where the tasks' file paths start; --data-root wins

    [run]                  # settings of every task's study: any table of `loralab run`'s config
    [run.methods]
    lora_ranks = [1, 2, 4, 8, 16]

    [tasks.stsb]           # a task: keys of the [data] table (paths relative to data_root)
    name = "STS-B"         # its column's name
    also = ["spearman"]    # other scores to show beside the table
    train = "stsb/train.csv"
    eval = "stsb/dev.csv"
    text_column = "sentence1"
    text_pair_column = "sentence2"
    label_column = "score"
    task = "regression"
    metric = "pearson"

    [[references]]         # published figures printed beside the table, as they were published
    name = "RoBERTa-base, full fine-tuning (Hu et al. 2021, Table 2)"
    parameters = "125 M"
    scores = { stsb = 91.2 }

Each task's study reads: defaults < the suite's [run] < `--config` file < profile < --quick
< flags < the task's own [data] keys, and runs in `OUT/TASK` with every feature of
`loralab run` (profiles, seeds, jobs, resuming from finished runs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import LoralabError
from ..settings import SCORE_LABELS

logger = logging.getLogger("loralab")

SUITE_KEYS = ("name", "data_root", "run", "tasks", "references")
TASK_ONLY_KEYS = ("name", "also")   # a task's keys besides those of the [data] table
PATH_KEYS = ("train", "eval")


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite: its folder name (`key`), the name its column shows, and the
    [data] settings of its study (file paths already resolved)."""

    key: str
    name: str
    data: dict
    also: tuple[str, ...] = ()  # other scores the combined report shows (MRPC's f1_positive, STS-B's spearman)


@dataclass(frozen=True)
class Reference:
    """Published figures (in percent, as papers print them) shown beside the suite's table."""

    name: str
    parameters: str
    scores: dict[str, float]


@dataclass
class Suite:
    """A suite file, read and checked."""

    name: str
    path: Path
    tasks: list[SuiteTask]
    run: dict = field(default_factory=dict)   # settings of every task's study
    references: list[Reference] = field(default_factory=list)


def _resolve_root(given: str | None, in_file: str | None, suite_path: Path) -> Path:
    """Where the tasks' relative paths start: `given` (--data-root, relative to the working
    folder); else the file's `data_root` with environment variables expanded (an unset one
    is an error naming it; a literal relative path starts at the suite file's folder); else
    the suite file's folder."""
    if given:
        return Path(given).expanduser()
    if not in_file:
        return suite_path.parent
    expanded = os.path.expandvars(os.path.expanduser(in_file))
    if "$" in expanded:
        raise LoralabError(f"{suite_path}: data_root = {in_file!r} names an environment variable that is not set; "
                           "set it, or pass --data-root DIR.")
    path = Path(expanded)
    return path if path.is_absolute() or expanded != in_file else suite_path.parent / path


def load_suite(path: str | os.PathLike, data_root: str | os.PathLike | None = None,
               only: list[str] | None = None) -> Suite:
    """Read a suite file: its tasks' files resolved against `data_root` (the file's own
    `data_root` when None), every key checked (`only`: keep these tasks, in the file's order).

    Raises:
        LoralabError: naming the file and the key for an unknown key, a task without files,
            a task's file that does not exist, or a data setting `loralab run` does not know.
    """
    from dataclasses import fields

    from ..config import DataConfig, read_toml

    path = Path(path)
    table = read_toml(path, "Suite file")
    unknown = sorted(set(table) - set(SUITE_KEYS))
    if unknown:
        raise LoralabError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; a suite has "
                           f"{', '.join(SUITE_KEYS)}.")
    tasks_table = table.get("tasks") or {}
    if not isinstance(tasks_table, dict) or not tasks_table:
        raise LoralabError(f"{path}: no [tasks.NAME] table; a suite names at least one task.")
    root = _resolve_root(str(data_root) if data_root else None, table.get("data_root"), path)
    known = {f.name for f in fields(DataConfig)}
    tasks = []
    for key, entry in tasks_table.items():
        if not isinstance(entry, dict):
            raise LoralabError(f"{path}: tasks.{key} must be a table.")
        bad = sorted(set(entry) - known - set(TASK_ONLY_KEYS))
        if bad:
            raise LoralabError(f"{path}: tasks.{key} has unknown key(s) {', '.join(map(repr, bad))}; a task takes "
                               f"name and the keys of loralab run's [data] table ({', '.join(sorted(known))}).")
        data = {k: v for k, v in entry.items() if k not in TASK_ONLY_KEYS}
        for name in PATH_KEYS:
            files = data.get(name)
            if not files:
                raise LoralabError(f"{path}: tasks.{key} names no {name} file.")
            files = [files] if isinstance(files, str) else list(files)
            data[name] = [str(root / f) for f in files]
            missing = [f for f in data[name] if not any(c in f for c in "*?[") and not Path(f).exists()]
            if missing:
                raise LoralabError(f"{path}: tasks.{key}.{name}: {missing[0]} does not exist (data_root is {root}; "
                                   "give --data-root DIR).")
        also = tuple(entry.get("also", ()))
        if not set(also) <= set(SCORE_LABELS):
            raise LoralabError(f"{path}: tasks.{key}.also names scores among {', '.join(SCORE_LABELS)}, "
                               f"not {list(also)!r}.")
        tasks.append(SuiteTask(key, str(entry.get("name", key)), data, also))
    if only:
        missing = sorted(set(only) - {t.key for t in tasks})
        if missing:
            raise LoralabError(f"{path}: no task {', '.join(map(repr, missing))}; its tasks are "
                               f"{', '.join(t.key for t in tasks)}.")
        tasks = [t for t in tasks if t.key in only]
    references = []
    for i, ref in enumerate(table.get("references") or []):
        if not isinstance(ref, dict) or not isinstance(ref.get("scores"), dict) or "name" not in ref:
            raise LoralabError(f"{path}: references[{i}] needs a name and a scores table (task -> figure).")
        references.append(Reference(str(ref["name"]), str(ref.get("parameters", "")),
                                    {k: float(v) for k, v in ref["scores"].items()}))
    run = table.get("run") or {}
    if not isinstance(run, dict):
        raise LoralabError(f"{path}: [run] must be a table of loralab run settings.")
    return Suite(str(table.get("name") or path.stem), path, tasks, run, references)


def task_configs(suite: Suite, out: str | os.PathLike, config_file: str | os.PathLike | None = None, *,
                 quick: bool = False, profile: str | None = None, **flags) -> dict[str, Config]:
    """Each task's resolved study configuration (`load_config`), its output in `out/TASK`."""
    from ..config import load_config
    from ..logs import warnings_once

    configs = {}
    with warnings_once():  # what --quick or a profile replaces of the suite's settings: said once, not per task
        for task in suite.tasks:
            task_flags = {**flags, **{f"data.{k}": v for k, v in task.data.items()},
                          "out": str(Path(out) / task.key)}
            try:
                configs[task.key] = load_config(config_file, quick=quick, profile=profile, base=suite.run,
                                                **task_flags)
            except LoralabError as err:
                raise LoralabError(f"{suite.path}: task {task.key}: {err}") from err
    return configs


def run_suite(suite: Suite, configs: dict[str, Config], out: str | os.PathLike, quiet: bool = False,
              only: list[str] | None = None, overwrite: bool = False) -> Path:
    """Run (or resume) every task's study in turn (`only`: these tasks' alone), each with its
    report, then write the suite's combined report over every task with results in `out` (and,
    without `only`, every other task, as not run yet), so a task run by an earlier call keeps its
    column; returns its path. The suite's folder is
    locked throughout."""
    from ..locks import output_lock
    from ..models import local_folder
    from ..outputs import check_output, claim_folder, data_inputs
    from ..report import write_report
    from ..report.render import REPORT_FILES
    from ..report.suite import write_suite_report
    from .runner import run_study

    unknown = sorted(set(only or ()) - {t.key for t in suite.tasks})
    if unknown:
        raise LoralabError(f"{suite.path}: no task {', '.join(map(repr, unknown))}; its tasks are "
                           f"{', '.join(t.key for t in suite.tasks)}.")
    out = Path(out)
    chosen = [t for t in suite.tasks if not only or t.key in only]
    check_output(out, "suite", overwrite=overwrite, inputs=[("the suite file", suite.path)])
    for task in chosen:  # every task's folder checked before the first trains
        check_output(configs[task.key].out, "study", overwrite=overwrite,
                     inputs=[("--model", local_folder(configs[task.key].model)),
                             *data_inputs(configs[task.key].data)])
    with output_lock(out):
        claim_folder(out, "suite", [t.key for t in suite.tasks] + list(REPORT_FILES) + ["results.json"])
        for i, task in enumerate(chosen, start=1):
            logger.info("Task %d of %d: %s", i, len(chosen), task.name)
            run_study(configs[task.key], quiet=quiet, overwrite=overwrite, name=task.name)
            write_report(configs[task.key].out)
        return write_suite_report(suite, out, only)
