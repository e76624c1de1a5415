"""Every option checked, and the everyday path without friction (issue #42): numeric
options refused by name (never replaced by a default), labels that mix numbers and words,
predict's row per input line, a model that remembers its data columns, extract's base from
the fine-tune's record, and PEFT's own adapters loaded as PEFT loads them."""

from __future__ import annotations

import csv
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_csv

TRAIN = ["--limit-train", 16, "--limit-eval", 8, "--epochs", 1, "--max-length", 32, "--quiet"]


def parse_error(capsys, *argv) -> str:
    """The CLI's parser refuses argv: exit 2, one usage message, no traceback; its text."""
    from loralab.cli import main

    with pytest.raises(SystemExit) as caught:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in err, err
    return err


# (command's other arguments, flag, a value it refuses, what the message says)
TRAIN_ARGS = ["train", "--method", "lora", "--out", "nowhere"]
REFUSED = [
    (TRAIN_ARGS, "--rank", "0", "must be at least 1, got 0"),
    (TRAIN_ARGS, "--alpha", "0", "must be above 0, got 0"),
    (TRAIN_ARGS, "--alpha", "-4", "must be above 0, got -4"),
    (TRAIN_ARGS, "--alpha", "nan", "is not a finite number"),
    (TRAIN_ARGS, "--epochs", "0", "must be above 0"),
    (TRAIN_ARGS, "--learning-rate", "inf", "is not a finite number"),
    (TRAIN_ARGS, "--dropout", "1", "must be at least 0 and below 1, got 1"),
    (TRAIN_ARGS, "--lr-ratio", "-1", "must be above 0"),
    (TRAIN_ARGS, "--batch-size", "0", "must be at least 1"),
    (TRAIN_ARGS, "--micro-batch-size", "-2", "must be at least 0"),
    (TRAIN_ARGS, "--max-length", "1", "must be at least 2"),
    (TRAIN_ARGS, "--limit-train", "-1", "must be at least 0"),
    (TRAIN_ARGS, "--seed", str(2**32), "must be at least 0 and at most 4294967295"),
    (["extract", "--finetuned", "x", "--out", "y"], "--energy", "1.5", "must be above 0 and at most 1"),
    (["run"], "--jobs", "0", "must be at least 1"),
]


@pytest.mark.parametrize("before, flag, value, says", REFUSED, ids=[f"{f} {v}" for _, f, v, _ in REFUSED])
def test_a_numeric_option_out_of_range_is_refused_by_name(capsys, before, flag, value, says):
    err = parse_error(capsys, *before, flag, value)
    assert f"argument {flag}" in err and says in err, err


FLAGS = {  # flag -> (where its value lands, is it a whole number)
    "--rank": ("lora.rank", True), "--alpha": ("lora.alpha", False), "--epochs": ("train.epochs", False),
    "--learning-rate": ("train.learning_rate", False), "--dropout": ("lora.dropout", False),
    "--lr-ratio": ("lora.lr_ratio", False), "--batch-size": ("train.batch_size", True),
    "--max-length": ("train.max_length", True), "--limit-train": ("data.limit_train", True),
    "--seed": ("train.seed", True), "--save-steps": ("train.save_steps", True),
}
SPECIAL = ["0", "-0", "-1", "-3", "1e308", "-1e308", "nan", "inf", "-inf", str(2**40), "1e-320", "0.5", "3", "two"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(sorted(FLAGS)),
       value=st.one_of(st.sampled_from(SPECIAL), st.integers(-10**12, 10**12).map(str),
                       st.floats(allow_nan=True, allow_infinity=True).map(repr)))
def test_fuzz_numeric_options_are_taken_exactly_or_refused_by_name(capsys, flag, value):
    """A random value for a numeric option: refused by its flag (exit 2, no traceback), or
    taken as given into the settings the command trains with; never replaced by a default."""
    from loralab.cli import _adapter_options, build_parser, config_of
    from loralab.errors import LoralabError
    from loralab.settings import TrainSettings

    argv = ["train", "--method", "lora", "--out", "nowhere", flag, value]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 2 and f"argument {flag}" in err and "Traceback" not in err, err
        return
    try:
        config = config_of(args)
        options = _adapter_options(args, config)
        trained = TrainSettings.from_config(config, "lora")
    except LoralabError as err:  # a later check, by name (micro-batch against batch, say)
        assert flag.lstrip("-").replace("-", "_") in str(err) or flag in str(err), err
        return
    where, whole = FLAGS[flag]
    table, name = where.split(".")
    got = {"lora": lambda: getattr(options, name), "data": lambda: getattr(config.data, name),
           "train": lambda: getattr(trained, name)}[table]()
    wanted = int(value) if whole else float(value)
    assert got == wanted and (not isinstance(got, float) or math.isfinite(got)), (flag, value, got)


def test_a_rank_above_the_layers_size_and_flags_a_method_does_not_take_are_refused(tmp_path, tiny_model_dir,
                                                                                  run_cli, synthetic_data):
    code, _, err = run_cli("train", "--method", "lora", "--rank", 100000, "--model", tiny_model_dir,
                           "--out", tmp_path / "big", *TRAIN)
    assert code == 2 and "rank 100000 is larger than the smallest dimension" in err and "from 1 to 32" in err, err
    assert not (tmp_path / "big").exists()
    for method, flag in (("head", "--rank"), ("full", "--alpha"), ("ia3", "--rank"), ("vera", "--alpha")):
        code, _, err = run_cli("train", "--method", method, flag, 4, "--model", tiny_model_dir,
                               "--out", tmp_path / method, *TRAIN)
        assert code == 2 and f"--method {method} takes no {flag}" in err, err


@pytest.mark.parametrize("labels, says", [
    (["0", "1", "pos", "1.5"], "label 1.5 in column 'label' is not a class label"),
    (["0", "1", "2", "good"], "the label 'good' in column 'label' is a word where other rows hold numbers (0, 1, 2)"),
    (["1", "2", "3", "pos"], "the label 'pos' in column 'label' is a word where other rows hold numbers"),
])
def test_a_label_column_mixing_numbers_and_words_is_refused(tmp_path, run_cli, labels, says):
    rows = [[f"text {i}", labels[i % len(labels)]] for i in range(16)]
    write_csv(tmp_path / "train.csv", ["review", "label"], rows)
    write_csv(tmp_path / "eval.csv", ["review", "label"], rows[:4])
    code, _, err = run_cli("data", "--data", tmp_path)
    assert code == 2 and says in err and "train.csv: row" in err, err
    if "1.5" not in labels:  # naming the classes says how to read them
        names = ",".join(sorted(set(labels)))
        code, out, err = run_cli("data", "--data", tmp_path, "--labels", names)
        assert code == 0, err


@pytest.fixture(scope="module")
def mood_model(tmp_path_factory, tiny_model_dir):
    """A head-tuned tiny model trained on a file whose columns are not review/label."""
    from loralab.cli import main

    root = tmp_path_factory.mktemp("mood")
    rows = [[f"what a {w} day {i}", "good" if i % 2 else "bad"] for i, w in enumerate(["fine", "dull"] * 12)]
    write_csv(root / "mood.csv", ["utterance", "mood"], rows)
    out = root / "model"
    assert main(["train", "--method", "head", "--model", str(tiny_model_dir), "--train", str(root / "mood.csv"),
                 "--eval", str(root / "mood.csv"), "--text-column", "utterance", "--label-column", "mood",
                 "--epochs", "1", "--max-length", "32", "--quiet", "--out", str(out)]) == 0
    return out, root / "mood.csv"


def test_a_model_remembers_its_columns_for_evaluate_and_predict(mood_model, run_cli, tmp_path):
    model, data = mood_model
    assert json.loads((model / "loralab.json").read_text())["data"] == {
        "text_column": "utterance", "text_pair_column": "", "label_column": "mood", "task": "classification"}
    code, out, err = run_cli("evaluate", model, "--eval", data, "--quiet")
    assert code == 0 and "eval accuracy" in out, err
    code, out, err = run_cli("predict", model, "--input", data, "--quiet")
    assert code == 0 and "accuracy:" in out, err  # the mood column scored
    truth = tmp_path / "truth.csv"
    write_csv(truth, ["gold"], [["good" if i % 2 else "bad"] for i in range(24)])
    code, out, err = run_cli("predict", model, "--input", data, "--score-against", truth, "--label-column", "gold",
                             "--quiet")
    assert code == 0 and "accuracy:" in out, err


def test_predict_keeps_a_row_per_input_line_with_its_number_and_text(mood_model, tmp_path, monkeypatch, capsys):
    import io

    from loralab.cli import main

    model, _ = mood_model
    lines = "a fine day\n\n   \nthe last one\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["predict", str(model), "-", "--quiet"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 4 and shown[1].startswith("-\tempty text") and shown[2].startswith("-\tempty text")
    out = tmp_path / "preds.csv"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    old = __import__("os").umask(0o022)
    try:
        assert main(["predict", str(model), "-", "--quiet", "--output", str(out)]) == 0
    finally:
        __import__("os").umask(old)
    rows = list(csv.DictReader(out.open()))
    assert [r["row"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["text"] for r in rows] == ["a fine day", "", "   ", "the last one"]
    assert rows[1]["label"] == "" and rows[1]["error"] and rows[0]["label"] in ("good", "bad")
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_extract_takes_its_base_from_the_fine_tunes_record(tmp_path, tiny_model_dir, run_cli, synthetic_data):
    full = tmp_path / "full"
    code, _, err = run_cli("train", "--method", "full", "--model", tiny_model_dir, "--out", full, *TRAIN)
    assert code == 0, err
    code, out, err = run_cli("extract", "--finetuned", full, "--rank", 2, "--out", tmp_path / "x", "--quiet")
    assert code == 0 and (tmp_path / "x" / "adapter_model.safetensors").exists(), err


PEFT_STYLES = {"task_type": {"task_type": "SEQ_CLS"}, "modules_to_save": {"modules_to_save": ["classifier"]},
               "neither": {}}


@pytest.mark.parametrize("style", sorted(PEFT_STYLES))
@pytest.mark.parametrize("method", ["lora", "dora", "vera", "ia3"])
def test_peft_adapters_load_with_the_logits_peft_gives(tmp_path, tiny_model_dir, method, style):
    """An adapter made as PEFT's documentation shows for a classifier loads, the modules it
    does not save (BERT's pooler) taken from the base model as PEFT takes them."""
    import torch
    from peft import IA3Config, LoraConfig, PeftModel, VeraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import loralab

    kw = PEFT_STYLES[style]
    config = {"lora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], **kw),
              "dora": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], use_dora=True, **kw),
              "vera": lambda: VeraConfig(r=8, target_modules=["query", "value"], **kw),
              "ia3": lambda: IA3Config(target_modules=["key", "value", "output.dense"],
                                       feedforward_modules=["output.dense"], **kw)}[method]()
    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), config)
    with torch.no_grad():  # every trained tensor away from its start, so each one counts
        for _, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    reference = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir),
                                          tmp_path / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tokenizer(["a fine film", "a dull and boring story"], padding=True, return_tensors="pt")
    ours = loralab.load_adapter(str(tiny_model_dir), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=1e-5)


def test_a_warning_is_said_once_per_study_and_names_its_task(caplog, monkeypatch):
    import logging

    from loralab.logs import once_from_environ, warnings_once

    log = logging.getLogger("loralab")
    with warnings_once("RTE") as once:
        for _ in range(5):
            log.warning("3 eval row(s) also appear in the training data")
        log.warning("another thing")
        environ = once.environ()
    assert [r.getMessage() for r in caplog.records] == ["RTE: 3 eval row(s) also appear in the training data",
                                                        "RTE: another thing"]
    caplog.clear()
    for key, value in environ.items():  # a run's child process goes on with what its study said
        monkeypatch.setenv(key, value)
    once_from_environ()
    try:
        log.warning("another thing")
        log.warning("new in the child")
    finally:
        for f in list(log.filters):
            log.removeFilter(f)
    assert [r.getMessage() for r in caplog.records] == ["RTE: new in the child"]


@pytest.mark.slow
def test_a_study_with_duplicate_rows_warns_once(tmp_path, tiny_study_config):
    """Every run of a study loads the data (in processes of their own too): the warning about
    rows in both splits used to come once per run."""
    import os
    import subprocess
    import sys

    rows = [[f"the film was {'fine' if i % 2 else 'dull'} {i}", i % 2] for i in range(64)]
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", ["review", "label"], rows)
    write_csv(tmp_path / "data" / "eval.csv", ["review", "label"], rows[:48])
    proc = subprocess.run([sys.executable, "-m", "loralab.cli", "run", "--config", str(tiny_study_config),
                           "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--quiet"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("also appear in the training data") == 1, proc.stderr


def test_glue_takes_the_data_limits_and_says_what_quick_replaces_once(tmp_path, synthetic_data, caplog):
    from loralab.cli import build_parser, glue_configs

    suite = tmp_path / "suite.toml"
    tasks = "".join(f'[tasks.t{i}]\nname = "T{i}"\ntrain = "train.csv"\neval = "eval.csv"\n' for i in range(5))
    suite.write_text(f'data_root = "{synthetic_data}"\n[run.data]\nlimit_train = 500\n{tasks}')
    args = build_parser().parse_args(["glue", str(suite), "--limit-eval", "12", "--out", str(tmp_path / "o")])
    _, configs = glue_configs(args)
    assert {c.data.limit_eval for c in configs.values()} == {12}
    assert {c.data.limit_train for c in configs.values()} == {500}
    args = build_parser().parse_args(["glue", str(suite), "--quick", "--out", str(tmp_path / "o")])
    glue_configs(args)
    said = [r.getMessage() for r in caplog.records if "replaces what" in r.getMessage()]
    assert len(said) == 1 and "data.limit_train = 500" in said[0], said


def test_training_progress_shows_each_evaluation_as_a_line_not_raw_dicts(tmp_path, tiny_model_dir, run_cli,
                                                                          synthetic_data):
    code, out, err = run_cli("train", "--method", "head", "--model", tiny_model_dir, "--epochs", 2,
                             "--limit-train", 16, "--limit-eval", 8, "--max-length", 32, "--out", tmp_path / "m")
    assert code == 0, err
    shown = out + err
    assert "{'loss'" not in shown and "{'eval_loss'" not in shown, shown
    assert "epoch 1: eval loss" in shown and "eval accuracy" in shown, shown
