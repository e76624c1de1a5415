"""The configuration of `loralab run`: defaults from `defaults.toml`, a user's TOML file
and flags on top, validated, and written back as TOML beside the results."""

from __future__ import annotations

import copy
import json
import logging
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import LoralabError
from ..methods import ADAPTERS, LORA_FAMILY
from ..settings import (
    DEVICES,
    INITS,
    POOLINGS,
    PRECISIONS,
    PROFILES,
    SELECT_METRICS,
    TASKS,
    IA3Options,
    LoraOptions,
    TrainSettings,
    VeraOptions,
    metric_task,
    study_metric,
)

logger = logging.getLogger("loralab")

EXECUTORS = ("local", "ray")  # where a study's runs run: processes on this machine, or a Ray cluster
VARIANTS = tuple(m for m in ADAPTERS if m != "lora")  # methods.variants: the adapter methods a study may add


def defaults() -> dict:
    text = resources.files("loralab").joinpath("defaults.toml").read_text("utf-8")
    return tomllib.loads(text)


def read_toml(path: Path, what: str) -> dict:
    """A TOML file's tables; a missing file or invalid TOML is a `LoralabError` naming it."""
    try:
        return tomllib.loads(Path(path).read_text("utf-8"))
    except FileNotFoundError as err:
        raise LoralabError(f"{what} not found: {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise LoralabError(f"{path}: not valid TOML ({err}).") from err


def _merge(base: dict, override: dict, where: str, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{path}{key}"
        if key not in base:
            raise LoralabError(f"{where}: unknown setting {dotted!r}. Known: "
                               f"{', '.join(sorted(path + k for k in base))}.")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise LoralabError(f"{where}: {dotted!r} must be a table.")
            out[key] = _merge(base[key], value, where, dotted + ".")
        else:
            expected = type(base[key])
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise LoralabError(f"{where}: {dotted!r} must be {expected.__name__}, got {value!r}.")
            out[key] = value
    return out


def load_config(path: str | Path | None = None, *, quick: bool = False, profile: str | None = None,
                base: dict | None = None, **flags) -> dict:
    """Resolve the run configuration: defaults < `base` < TOML file < profile < --quick < flags.

    Args:
        path: a TOML file with the settings to change.
        base: settings under the file's (a suite's [run] table), checked as a file's are.
        quick: apply the [quick] table.
        profile: ``"lab"`` (the defaults) or ``"tuned"`` (apply the [tuned] table); None
            keeps the file's `profile` setting.
        **flags: settings from the command line, dotted for tables (None means not given).
    """
    config, user = defaults(), {}
    if base:
        config = _merge(config, base, "the suite's [run] table")
        user = copy.deepcopy(base)  # what a profile or --quick replaces of it is said too
    if path:
        path = Path(path)
        mine = read_toml(path, "Config file")
        config = _merge(config, mine, str(path))
        user = _overlay(user, mine)
    path = path or ("the suite's [run] table" if base else None)
    config["profile"] = profile or config["profile"]
    if config["profile"] not in PROFILES:
        raise LoralabError(f"config: profile must be one of {', '.join(PROFILES)}, not {config['profile']!r}.")
    if config["profile"] == "tuned":
        _say_what_is_replaced(user, config["tuned"], path, "the tuned profile", "tuned")
        config = _merge(config, config["tuned"], "the tuned profile ([tuned] table)")
    if quick:
        _say_what_is_replaced(user, config["quick"], path, "--quick", "quick")
        config = _merge(config, config["quick"], "the quick setting ([quick] table)")
    for key, value in flags.items():
        if value is None:
            continue
        if "." in key:
            table, name = key.split(".", 1)
            config = _merge(config, {table: {name: value}}, "command line")
        else:
            config = _merge(config, {key: value}, "command line")
    validate(config)
    return config


def _overlay(base: dict, top: dict) -> dict:
    """`top`'s values over `base`'s, table by table."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = _overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _leaves(table: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _say_what_is_replaced(user: dict, layer: dict, path, what: str, table: str) -> None:
    """Warn where `layer` (a profile's or --quick's table) replaces values the user's file
    set, naming each: a file's setting must not vanish without a word."""
    mine = _leaves({k: v for k, v in user.items() if k not in ("quick", "tuned")})
    replaced = [f"{key} = {mine[key]!r} -> {value!r}" for key, value in _leaves(layer).items()
                if key in mine and mine[key] != value]
    if replaced:
        logger.warning("%s replaces what %s set: %s. To keep a value under %s, set it in the file's [%s] table "
                       "too.", what, path, "; ".join(replaced), what, table)


def inside(base: str | Path, relative: str, key: str) -> Path:
    """`base / relative`, refusing a path that would leave `base` (absolute, or with '..')."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise LoralabError(f"config: {key} = {relative!r} must be a path inside the output folder "
                           "(relative, without '..').")
    return Path(base) / rel


def validate(config: dict) -> None:
    inside(config["out"], config["report_dir"], "report_dir")
    m, t = config["methods"], config["train"]
    if any(r < 1 for r in m["lora_ranks"]) or any(r < 1 for r in m["sweep_ranks"]):
        raise LoralabError("config: ranks must be positive integers.")
    if not set(m["variants"]) <= set(VARIANTS) or len(set(m["variants"])) != len(m["variants"]):
        raise LoralabError(f"config: methods.variants may list {', '.join(map(repr, VARIANTS))} once each, "
                           f"not {m['variants']!r}.")
    if set(m["variants"]) & set(LORA_FAMILY) and not m["lora_ranks"]:
        raise LoralabError("config: methods.variants' dora and pissa train at methods.lora_ranks; list at least "
                           "one rank.")
    if m["lowrank"] and not (m["full"] and m["head"]):
        raise LoralabError("config: methods.lowrank needs methods.full and methods.head.")
    if m["extract"]:  # it extracts from full fine-tuning, and is left out where that is
        if any(r < 1 for r in m["extract_ranks"]) or any(not 0 < e <= 1 for e in m["extract_energies"]):
            raise LoralabError("config: methods.extract_ranks must be positive integers and "
                               "methods.extract_energies fractions in (0, 1].")
        if not set(m["extract_targets"]) <= {"", "all-linear"}:
            raise LoralabError(f"config: methods.extract_targets may hold \"\" (query and value) and "
                               f"\"all-linear\", not {m['extract_targets']!r}; `loralab extract` takes any.")
    for name, value, choices in (("precision", config["precision"], PRECISIONS),
                                 ("device", config["device"], DEVICES), ("train.pooling", t["pooling"], POOLINGS),
                                 ("lora.init", config["lora"]["init"], INITS)):
        if value not in choices:
            raise LoralabError(f"config: {name} must be one of {', '.join(choices)}, not {value!r}.")
    try:  # the typed settings check the rest of their tables
        TrainSettings.from_config(config)
        LoraOptions.from_config(config, rank=1)
        VeraOptions.from_config(config)
        IA3Options.from_config(config)
    except LoralabError as err:
        raise LoralabError(f"config: {err}") from err
    if any(s < 0 for s in config["seeds"]) or len(set(config["seeds"])) != len(config["seeds"]):
        raise LoralabError(f"config: seeds must be distinct non-negative integers, got {config['seeds']}.")
    if not 0 <= config["data"]["validation"] < 1:
        raise LoralabError("config: data.validation must be a fraction in [0, 1).")
    if config["jobs"] < 1:
        raise LoralabError(f"config: jobs must be at least 1, got {config['jobs']}.")
    if config["executor"] not in EXECUTORS:
        raise LoralabError(f"config: executor must be one of {', '.join(EXECUTORS)}, not {config['executor']!r}.")
    res = config["resources"]
    if not (res["cpus"] > 0 and res["gpus"] >= 0):
        raise LoralabError(f"config: resources.cpus must be positive and resources.gpus at least 0, got {res}.")
    data = config["data"]
    if data["task"] not in TASKS:
        raise LoralabError(f"config: data.task must be one of {', '.join(TASKS)}, not {data['task']!r}.")
    for key, metric in (("data.metric", data["metric"]), ("select.metric", config["select"]["metric"])):
        _check_metric(key, metric, data["task"])
    if data["task"] == "regression":
        if data["labels"]:
            raise LoralabError("config: data.labels names classes; a regression task (data.task) has none.")
        if config["train"]["class_weights"] != "none":
            raise LoralabError("config: train.class_weights weighs classes; a regression task (data.task) has "
                               "none, so it must be \"none\".")
    sel = config["select"]
    if sel["enabled"]:
        if not config["data"]["validation"]:
            raise LoralabError("config: select.enabled chooses learning rates on a validation split; "
                               "set data.validation (for example 0.1).")
        for method in ("full", "head", "lora", "vera", "ia3"):
            if not sel[method] or any(lr <= 0 for lr in sel[method]):
                raise LoralabError(f"config: select.{method} must list positive learning rates.")


def _check_metric(key: str, metric: str, task: str) -> None:
    """A metric a study may lead with or choose on ("" = the task's own), and one its task records."""
    if not metric:
        return
    if metric not in SELECT_METRICS:
        raise LoralabError(f"config: {key} must be one of {', '.join(SELECT_METRICS)} (or \"\" for the task's "
                           f"own), not {metric!r}.")
    if metric_task(metric) != task:
        raise LoralabError(f"config: {key} = {metric!r} is a {metric_task(metric)} score, but data.task is {task!r}.")


def select_metric(config: dict) -> str:
    """The score validation chooses learning rates on: `select.metric`, else the study's."""
    return config["select"]["metric"] or study_metric(config)


def to_toml(config: dict) -> str:
    """Write a config (tables of scalars and lists) as TOML."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    def table(items: dict, name: str) -> list[str]:
        lines = [f"{k} = {value(v)}" for k, v in items.items() if not isinstance(v, dict)]
        if name:
            lines = ["", f"[{name}]"] + lines
        for key, sub in items.items():
            if isinstance(sub, dict):
                lines += table(sub, f"{name}.{key}" if name else key)
        return lines

    return "\n".join(table(config, "")) + "\n"
