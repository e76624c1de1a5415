"""Bad input through the CLI: one clear message, exit code 2, no traceback."""

import os
import subprocess
import sys

import pytest

from conftest import needs_lab_data


def folder_with(tmp_path, train: bytes, eval_: bytes = b"review,label\nfine film,1\n"):
    (tmp_path / "train.csv").write_bytes(train)
    (tmp_path / "eval.csv").write_bytes(eval_)
    return tmp_path


BAD_INPUTS = {
    "missing file": (lambda p: ["--train", p / "nope.csv", "--eval", p / "nope.csv"], "Data file not found"),
    "misspelt column": (lambda p: ["--data", folder_with(p, b"text,label\nx,1\n")], "Columns found: 'text', 'label'"),
    "unseen label": (lambda p: ["--data", folder_with(p, b"review,label\nx,1\ny,0\n", b"review,label\nz,7\n")],
                     "eval.csv: row 1: label '7' in column 'label' is not one of the training data's labels"),
    "one class": (lambda p: ["--data", folder_with(p, b"review,label\nx,1\ny,1\n")],
                  "every row has the label 'positive'; a classifier needs at least two classes"),
    "empty text": (lambda p: ["--data", folder_with(p, b"review,label\nx,1\n  ,0\n")],
                   "rows 2. Fix them, or pass --drop-invalid"),
    "not utf-8": (lambda p: ["--data", folder_with(p, b"review,label\ncaf\xe9,1\n")], "line 2 is not valid UTF-8"),
    "empty file": (lambda p: ["--data", folder_with(p, b"")], "the file is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_message_and_exit_code(tmp_path, run_cli, case):
    make_args, expected = BAD_INPUTS[case]
    code, out, err = run_cli("data", *make_args(tmp_path))
    assert code == 2
    assert err.startswith("loralab: error: ") and expected in err
    assert "Traceback" not in err


def test_drop_invalid_and_overlap_warning(tmp_path, run_cli, caplog):
    folder = folder_with(tmp_path, b"review,label\nfine film,1\n  ,0\nbad,0\n")
    code, out, err = run_cli("data", "--data", folder, "--drop-invalid")
    assert code == 0 and "train: 2 rows (1 negative, 1 positive)" in out
    assert "dropped 1 row(s)" in caplog.text
    assert "1 eval row(s) also appear in the training data" in caplog.text


def test_real_process_exit_code_and_no_traceback(tmp_path):
    folder = folder_with(tmp_path, b"review,label\nx,maybe\n")  # one class
    proc = subprocess.run([sys.executable, "-m", "loralab.cli", "data", "--data", str(folder)],
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == 2
    assert "every row has the label 'maybe'" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "loralab.cli", "--debug", "data", "--data", str(folder)],
                          capture_output=True, text=True)
    assert "Traceback" in proc.stderr


@pytest.mark.slow  # processes of their own, started and signalled: the slow tier
def test_the_command_bounds_onednns_primitive_cache_unless_the_environment_sets_it(tmp_path):
    """oneDNN reads its cache capacity when it first runs: `main` sets it before any work
    (here a command that fails on its data), and keeps a value the user set."""
    folder = folder_with(tmp_path, b"review,label\nx,maybe\n")
    code = ("import os, sys; from loralab.cli import main; main(['data', '--data', sys.argv[1]]); "
            "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    for given, expected in ((None, "64"), ("512", "512")):
        extra = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": given} if given else {}
        proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                              env={**env, **extra})
        assert proc.stdout.strip().splitlines()[-1] == expected, proc.stderr[-2000:]


@needs_lab_data
def test_data_command_on_lab_sample(run_cli):
    code, out, _ = run_cli("data")
    assert code == 0
    assert "train: 2000 rows (960 negative, 1040 positive)" in out  # the lab sample's counts, as before
    assert "eval: 500 rows (263 negative, 237 positive)" in out


def test_version_and_debug_before_or_after_the_command(tmp_path, capsys):
    from importlib.metadata import version

    from loralab.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"loralab {version('loralab')}"
    args = ["--data", folder_with(tmp_path, b"review,label\nx,1\ny,1\n")]
    for argv in (["--debug", "data", *args], ["data", *args, "--debug"]):  # a traceback for --debug, wherever
        with pytest.raises(Exception, match="every row has the label 'positive'"):
            main([str(a) for a in argv])
    assert main(["data", *map(str, args)]) == 2  # without it: the message and exit code 2


def test_an_os_error_is_one_message_naming_the_file(tmp_path, run_cli):
    from test_report import hand_made

    study = hand_made(tmp_path)
    code, _, err = run_cli("report", study, "--report-dir", "/proc/loralab-cannot-write-here")
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("loralab: error: /proc/loralab-cannot-write-here") and err.count("\n") == 1, err


def test_predict_dash_reads_the_texts_from_stdin(tmp_path, tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "loralab.cli", "predict", str(tiny_model_dir), "-", "--quiet"],
                          input="a fine film\na dull film\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("negative", "positive") for line in lines)


@pytest.mark.parametrize("flags, says", [
    (["--max-length", "1024"], "--max-length 1024 is longer than"),
    (["--seed", "-1"], "argument --seed: must be at least 0 and at most 4294967295, got -1"),
])
def test_common_bad_values_are_one_message(tmp_path, tiny_model_dir, run_cli, synthetic_data, flags, says):
    code, _, err = run_cli("train", "--method", "head", "--model", tiny_model_dir, "--limit-train", 16,
                           "--limit-eval", 8, "--epochs", 1, "--out", tmp_path / "out", "--quiet", *flags)
    assert code == 2 and says in err and "Traceback" not in err, err
    if "--max-length" in flags:
        assert "(512 tokens); give --max-length 512 or less" in err
        code, _, err = run_cli("evaluate", tiny_model_dir, "--limit-eval", 8, "--max-length", 1024, "--quiet")
        assert code == 2 and "--max-length 1024 is longer than" in err, err


def test_evaluate_an_eval_file_alone_needs_no_training_split(tmp_path, tiny_model_dir, run_cli, monkeypatch):
    monkeypatch.setenv("LORALAB_DATA", str(tmp_path / "nowhere"))  # no lab sample, no download
    evals = tmp_path / "eval.csv"
    evals.write_text("review,label\na fine film,positive\na dull film,negative\nok,1\n")
    code, out, err = run_cli("evaluate", tiny_model_dir, "--eval", evals, "--max-length", 16, "--quiet")
    assert code == 0, err
    right = float(out.split()[-1]) * 3  # printed to 4 places: k of the 3 rows right
    assert abs(right - round(right)) < 1e-3 and "eval macro-F1" in out
