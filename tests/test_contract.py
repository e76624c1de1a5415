"""One place for each kind of knowledge: defaults, flags, settings, layers; and the small
contract points that used to fail quietly."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from loralab.config import defaults, load_config
from loralab.errors import LoralabError
from loralab.settings import IA3Options, LoraOptions, TrainSettings, VeraOptions


def test_settings_defaults_are_those_of_the_configuration_and_defaults_toml_is_written_from_it():
    from importlib import resources

    from loralab.config import Config, defaults_toml, field_doc, read_toml, to_dict

    config = Config()
    assert TrainSettings() == TrainSettings.from_config(config)
    assert {f.name for f in dataclasses.fields(TrainSettings)} == set(defaults()["train"]) | {
        "seed", "precision", "device", "quiet"}
    lora = LoraOptions()
    assert LoraOptions.from_config(config, lora.rank) == lora.replace(alpha=config.lora.alpha_factor * lora.rank)
    assert VeraOptions.from_config(config) == VeraOptions() and IA3Options.from_config(config) == IA3Options()
    for options, table in ((VeraOptions, "vera"), (IA3Options, "ia3")):  # each table: the fields and a rate
        assert {f.name for f in dataclasses.fields(options)} | {"learning_rate"} == set(defaults()[table])
    packaged = resources.files("loralab").joinpath("defaults.toml")
    assert packaged.read_text() == defaults_toml(), "defaults.toml: run loralab.config.defaults_toml() to rewrite it"
    assert read_toml(Path(str(packaged)), "defaults") == to_dict(config)

    def leaves(table, prefix=""):
        for key, value in table.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]

    undocumented = [key for key in leaves(to_dict(config)) if not field_doc(key)]
    assert not undocumented, f"fields without a docstring: {undocumented}"


def test_no_flag_has_a_default_of_its_own():
    """Every default a flag stands for comes from defaults.toml: a flag not given is None."""
    from loralab.cli import FLAG_KEYS, build_parser

    parser = build_parser()
    for argv in (["run"], ["train", "--method", "lora", "--out", "x"], ["evaluate", "m"], ["predict", "m", "t"],
                 ["lowrank", "--finetuned", "a", "--headtuned", "b"], ["data"]):
        args = parser.parse_args(argv)
        given = {name: getattr(args, name) for name in FLAG_KEYS if getattr(args, name, None) is not None}
        assert given == {}, (argv, given)


def test_a_flag_takes_exactly_the_values_its_field_takes(tmp_path):
    """One rule per option: a flag that sets a field parses with the field's range (`opt`'s
    `within`) and offers its choices, so the file and the command line refuse the same
    values with the same words."""
    import argparse

    from loralab.cli import FLAG_KEYS, build_parser
    from loralab.config import config_field

    checked = 0
    for sub in (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)):
        for command, subparser in sub.choices.items():
            for action in subparser._actions:
                if action.dest not in FLAG_KEYS or action.nargs == 0:
                    continue
                meta = config_field(FLAG_KEYS[action.dest]).metadata
                if "within" in meta:
                    assert getattr(action.type, "within", action.type) is meta["within"], \
                        (command, action.option_strings)
                    checked += 1
                if "choices" in meta:
                    assert tuple(action.choices) == tuple(meta["choices"]), (command, action.option_strings)
                    checked += 1
    assert checked > 40
    path = tmp_path / "c.toml"
    for key, flag, value in (("train.epochs", "--epochs", "0"), ("lora.dropout", "--dropout", "1"),
                             ("data.limit_train", "--limit-train", "-1")):
        table, field = key.split(".")
        path.write_text(f"[{table}]\n{field} = {value}\n")
        with pytest.raises(LoralabError) as from_file:
            load_config(path)
        with pytest.raises(argparse.ArgumentTypeError) as from_flag:
            config_field(key).metadata["within"](value)
        assert str(from_flag.value) in str(from_file.value), (key, flag)


def test_model_flag_overrides_a_config_files_model_even_when_it_names_the_default(tmp_path):
    from loralab.cli import build_parser, config_of

    path = tmp_path / "c.toml"
    path.write_text('model = "some/other-model"\n')
    args = build_parser().parse_args(["run", "--config", str(path), "--model", "minilm"])
    assert config_of(args).model == "minilm"
    assert config_of(build_parser().parse_args(["run", "--config", str(path)])).model == "some/other-model"


def test_quick_applies_its_tables_over_the_profile_and_flags_over_it():
    lab, quick = load_config(None), load_config(None, quick=True)
    assert (quick.data.limit_train, quick.train.max_length, quick.train.pooling) == (256, 128, "mean")
    assert quick.lora.init == "kaiming" and quick.methods.lora_ranks == (2, 6)
    rates = {m: TrainSettings.from_config(quick, m).learning_rate for m in ("full", "head", "lora")}
    assert rates == {"full": quick.train.learning_rate, "head": quick.head.learning_rate,
                     "lora": quick.lora.learning_rate}
    assert rates["head"] != rates["full"]  # a head alone wants a larger rate
    assert TrainSettings.from_config(quick, "head", learning_rate=0.5).learning_rate == 0.5  # changes given win
    assert {TrainSettings.from_config(lab, m).learning_rate for m in ("full", "head", "lora")} == {5e-5}
    assert load_config(None, quick=True, **{"train.max_length": 64}).train.max_length == 64
    tuned_quick = load_config(None, quick=True, profile="tuned")
    assert tuned_quick.select.enabled and tuned_quick.data.limit_train == 256


def test_the_metrics_a_choice_may_use_are_the_scores_a_run_records():
    from loralab.metrics import LEAD_SCORES, SCORES
    from loralab.settings import SCORE_LABELS, SELECT_METRICS

    assert SELECT_METRICS == LEAD_SCORES and set(SCORE_LABELS) == set(SCORES)


def test_unknown_settings_are_refused_not_dropped():
    with pytest.raises(LoralabError, match="no setting 'epoch'"):
        TrainSettings().replace(epoch=2)
    with pytest.raises(LoralabError, match="no setting 'ranks'"):
        LoraOptions().replace(ranks=4)
    with pytest.raises(LoralabError, match="config: train.pooling must be one of cls, mean"):
        load_config(None, **{"train.pooling": "max"})


def test_wrapping_a_lora_layer_again_says_so():
    from loralab.lora import LoRA

    with pytest.raises(TypeError, match="already has a LoRA adapter"):
        LoRA(LoRA(torch.nn.Linear(4, 4), rank=2))


@pytest.mark.parametrize("targets, says", [(None, "on the query and value layers"),
                                           ("all-linear", "on every linear layer but the head"),
                                           ("query,key,value", "on the layers matching 'query,key,value'")])
def test_model_card_names_the_layers_the_adapter_wraps(targets, says):
    from loralab.export import model_card

    card = model_card({"method": "lora", "rank": 4, "alpha": 8, "targets": targets}, "base", merged=False,
                      adapter=True)
    assert f"LoRA (rank 4, alpha 8) {says}" in card


@pytest.mark.parametrize("method, says", [("vera", "VeRA (rank 256: frozen random matrices shared by every layer"),
                                         ("ia3", "IA3 (trained vectors rescaling the keys, the values")])
def test_model_card_says_what_vera_and_ia3_train(method, says):
    from loralab.export import model_card

    card = model_card({"method": method, "rank": 256 if method == "vera" else None}, "base", merged=True,
                      adapter=False)
    assert says in card


def test_lab_functions_leave_no_temporary_folder(tmp_path, tiny_model_dir, synthetic_data_dir, monkeypatch):
    import tempfile

    from loralab.data import limit_data, load_data
    from loralab.lab import make_headtuned_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = limit_data(load_data(synthetic_data_dir), 16, 8)
    make_headtuned_model(str(tiny_model_dir), data, TrainSettings(epochs=1, max_length=16, quiet=True))
    assert list(tmp_path.iterdir()) == []


# The layers, lowest first: a module may import from its own layer and the ones below, in
# its body or inside a function alike (a function's import is an import all the same). The
# core and training stay flat files (where a reader starts, as in litgpt and torchtune's
# `modules/peft/`); data, the study, the report and the lab are sub-packages. The records a
# study writes sit below everything that writes or reads them; the training API (api, serve)
# below the report and the study, which both read its results; the two executors of a
# study in one module (`study.executors`), the Ray one (`study.cluster`) importing it.
LAYERS = {
    "base": {"version", "errors", "fileio", "outputs", "locks", "settings", "config", "methods", "arch", "logs"},
    "core": {"lora", "vectors", "surgery", "adapters", "lowrank", "extraction", "pooling", "models"},
    "records": {"records"},
    "training": {"data", "data.files", "data.splits", "data.imdb", "training", "head", "inference", "metrics",
                 "fastdropout", "measure", "baselines"},
    "api": {"api", "predict", "export", "search"},
    "serve": {"serve", "serve.mixed", "serve.app", "serve.replicas"},
    "report": {"report", "report.findings", "report.document", "report.render", "report.plots", "report.suite"},
    "study": {"study", "study.plan", "study.tasks", "study.executors", "study.runner",
              "study.suite", "study.cluster"},
    "lab": {"lab", "lab.functions", "lab.checks"},
    "cli": {"cli", "__init__"},
}


HEAVY = ("<matplotlib", "<transformers.trainer", "<transformers.Trainer")  # never in the core


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """The loralab modules `path` imports (dotted, relative to the package), and its
    third-party imports as "<module.name>"."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            prefix = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                found.add(prefix)
            else:
                found |= {f"{prefix}.{alias.name}".lstrip(".") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loralab."):
            found.add(node.module.split(".", 1)[1])
        elif isinstance(node, ast.ImportFrom):  # third-party: "<module.name>"
            found |= {f"<{node.module}.{alias.name}>" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {f"<{alias.name}>" for alias in node.names}
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Each loralab module of `package` (a folder) -> the loralab modules it imports, at
    its top or inside a function, and its third-party imports as "<module.name>"."""
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        graph[module] = set()
        for m in _imports(path, module):
            if not m.startswith("<") and m not in files and m.rsplit(".", 1)[0] in files:
                m = m.rsplit(".", 1)[0]  # `from .x import name` where name is no module
            graph[module].add(m)
    return graph


def layer_problems(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, every module the layers do not name, every heavy
    import of the base and core, and every cycle between modules (a package's __init__
    importing its own modules aside)."""
    rank = {module: i for i, layer in enumerate(LAYERS.values()) for module in layer}
    problems = [f"{m}: not in LAYERS" for m in sorted(set(graph) ^ set(rank))]
    for module, imports in sorted(graph.items()):
        for m in sorted(i for i in imports if not i.startswith("<")):
            if m not in rank:
                problems.append(f"{module} imports {m}, which the layers do not name")
            elif module in rank and rank[m] > rank[module]:
                problems.append(f"{module} ({list(LAYERS)[rank[module]]}) imports {m} ({list(LAYERS)[rank[m]]})")
        if rank.get(module, 99) <= rank["lora"]:  # the base and the core: no Trainer, no plotting
            problems += [f"{module} imports {m}" for m in sorted(imports) if m.startswith(HEAVY)]

    def children(module: str) -> set[str]:  # a package's __init__ gathers its modules: not a cycle
        return {m for m in graph.get(module, ()) if m in graph and m != module and not m.startswith(module + ".")}

    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            problems.append("cycle: " + " -> ".join(path[path.index(module):] + [module]))
            return
        if module in done:
            return
        path.append(module)
        for m in sorted(children(module)):
            visit(m)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    return problems


def test_dependencies_run_one_way_with_no_cycle():
    assert layer_problems(import_graph(ROOT / "src" / "loralab")) == []


def test_the_guard_sees_an_upward_import_inside_a_function(tmp_path):
    """The guard itself: a core module that imports the CLI inside a function, and a cycle
    made the same way, are both found."""
    import shutil

    package = tmp_path / "loralab"
    shutil.copytree(ROOT / "src" / "loralab", package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(package / "lora.py", "a") as fh:
        fh.write("\n\ndef _planted():\n    from .cli import main\n\n    return main\n")
    with open(package / "records.py", "a") as fh:
        fh.write("\n\ndef _planted():\n    from .study import runner\n\n    return runner\n")
    problems = layer_problems(import_graph(package))
    assert "lora (core) imports cli (cli)" in problems, problems
    assert "records (records) imports study (study)" in problems, problems
    with open(package / "methods.py", "a") as fh:  # methods <- settings; settings -> methods: a cycle
        fh.write("\n\ndef _planted():\n    from . import settings\n\n    return settings\n")
    assert any(p.startswith("cycle:") and "methods" in p and "settings" in p
               for p in layer_problems(import_graph(package)))


def test_quick_says_which_settings_of_a_config_file_it_replaces(tmp_path, caplog):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nepochs = 5\nmax_length = 128\n[data]\nlimit_train = 1000\n")
    with caplog.at_level("WARNING", logger="loralab"):
        config = load_config(path, quick=True)
    assert config.train.epochs == 1  # --quick wins, as documented, and says so
    assert f"--quick replaces what {path} set: " in caplog.text
    assert "train.epochs = 5 -> 1" in caplog.text and "data.limit_train = 1000 -> 256" in caplog.text
    assert "max_length" not in caplog.text  # the file's value equals --quick's: nothing replaced
    caplog.clear()
    path.write_text("[train]\nepochs = 5\n[quick.train]\nepochs = 5\n")  # kept under --quick by its own table
    with caplog.at_level("WARNING", logger="loralab"):
        assert load_config(path, quick=True).train.epochs == 5
    assert "replaces" not in caplog.text
