"""Nothing of the user's is ever deleted or overwritten (issue #42).

Every case runs through the CLI and checks the exit code 2, the message, and that the
user's files are byte-identical afterwards (content, mode, links). Each failed on 066c2f6:
there, the five deletions exited 0 with the user's files gone or replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import write_csv

TRAIN = ["--limit-train", 16, "--limit-eval", 8, "--epochs", 1, "--max-length", 32, "--quiet"]


def snapshot(root: Path) -> dict:
    """Every entry under `root` (itself included): bytes and mode of files, targets of links."""
    root = Path(root)
    if root.is_symlink() or root.is_file():
        return {".": (os.readlink(root),) if root.is_symlink() else (root.read_bytes(), root.stat().st_mode)}
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path))
        elif path.is_file():
            found[rel] = (path.read_bytes(), path.stat().st_mode)
        else:
            found[rel] = ("dir", path.stat().st_mode)
    return found


def users_folder(path: Path) -> Path:
    """A folder of the user's: a file and a sub-folder with a file."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir, synthetic_data):
    """A LoRA adapter trained by loralab on the tiny model."""
    from loralab.cli import main

    out = tmp_path_factory.mktemp("adapter") / "lora"
    assert main(["train", "--method", "lora", "--rank", "2", "--model", str(tiny_model_dir), "--out", str(out),
                 *map(str, TRAIN)]) == 0
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory, tiny_model_dir, synthetic_data):
    from loralab.cli import main

    out = tmp_path_factory.mktemp("full") / "full"
    assert main(["train", "--method", "full", "--model", str(tiny_model_dir), "--out", str(out),
                 *map(str, TRAIN)]) == 0
    return out


def refused(run_cli, *argv, says: str, keep=()):
    """Run the CLI; it must exit 2 with `says` in its one message and leave every path of
    `keep` byte-identical."""
    before = {str(p): snapshot(p) for p in keep}
    code, _, err = run_cli(*argv)
    assert code == 2, err
    assert err.startswith("loralab: error: ") and says in err and "Traceback" not in err, err
    for p in keep:
        assert snapshot(p) == before[str(p)], f"{p} changed"
    return err


# The five deletions of the issue, first.

def test_train_into_a_users_folder_or_file_is_refused(tmp_path, tiny_model_dir, run_cli, synthetic_data):
    mine = users_folder(tmp_path / "mine")
    refused(run_cli, "train", "--method", "lora", "--model", tiny_model_dir, "--out", mine, *TRAIN,
            says="is not empty (2 entries: notes.txt, sub) and was not written by loralab", keep=[mine])
    a_file = tmp_path / "notes.md"
    a_file.write_text("keep me")
    refused(run_cli, "train", "--method", "lora", "--model", tiny_model_dir, "--out", a_file, *TRAIN,
            says="is an existing file", keep=[a_file])


def test_export_merge_into_a_users_folder_or_file_is_refused(tmp_path, adapter, run_cli):
    mine = users_folder(tmp_path / "mine")
    refused(run_cli, "export", adapter, "--out", mine, "--merge", says="was not written by loralab",
            keep=[mine, adapter])
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"\x00\x01")
    refused(run_cli, "export", adapter, "--out", a_file, "--merge", says="is an existing file", keep=[a_file])


def test_train_out_onto_its_own_base_model_is_refused(tmp_path, tiny_model_dir, run_cli, synthetic_data):
    refused(run_cli, "train", "--method", "head", "--model", tiny_model_dir, "--out", tiny_model_dir, *TRAIN,
            says="it is the --model input", keep=[tiny_model_dir])
    refused(run_cli, "train", "--method", "head", "--model", tiny_model_dir, "--out", tiny_model_dir / "sub", *TRAIN,
            says="it lies inside the --model input", keep=[tiny_model_dir])


def test_export_onto_the_adapter_it_reads_is_refused(tmp_path, adapter, run_cli):
    refused(run_cli, "export", adapter, "--out", adapter, "--merge", says="it is the MODEL_DIR input", keep=[adapter])


def test_extract_never_writes_through_a_link_out_of_its_folder(tmp_path, full, tiny_model_dir, run_cli):
    outside = tmp_path / "outside.md"
    outside.write_text("the user's own file\n")
    out = tmp_path / "extracted"
    out.mkdir()
    (out / "README.md").symlink_to(outside)
    argv = ["extract", "--finetuned", full, "--base", tiny_model_dir, "--rank", 2, "--out", out, "--quiet"]
    refused(run_cli, *argv, says="was not written by loralab", keep=[out, outside])
    # Even told to write beside what is there, the link is the user's and is not replaced.
    refused(run_cli, *argv, "--overwrite", says="README.md is not loralab's and would be replaced",
            keep=[out, outside])


# Then every other command, the inputs, and what --overwrite does.

def test_overwrite_keeps_the_users_files_and_replaces_only_loralabs(tmp_path, tiny_model_dir, run_cli,
                                                                    synthetic_data):
    mine = users_folder(tmp_path / "mine")
    theirs = snapshot(mine)
    argv = ["train", "--method", "lora", "--rank", 2, "--model", tiny_model_dir, "--out", mine, *TRAIN]
    code, _, err = run_cli(*argv, "--overwrite")
    assert code == 0, err
    after = snapshot(mine)
    assert all(after[name] == value for name, value in theirs.items())  # every file of theirs, unchanged
    assert (mine / "adapter_model.safetensors").exists()
    marker = json.loads((mine / ".loralab-output.json").read_text())
    assert marker["kind"] == "model" and "notes.txt" not in marker["files"]
    # The folder is loralab's now: training again needs no flag, and still keeps the user's files.
    (mine / "later.txt").write_text("added after training")
    code, _, err = run_cli(*argv)
    assert code == 0, err
    assert (mine / "later.txt").read_text() == "added after training"
    assert all(snapshot(mine)[name] == value for name, value in theirs.items())


def test_retraining_into_loralabs_own_folder_needs_no_flag(tmp_path, tiny_model_dir, run_cli, synthetic_data):
    out = tmp_path / "model"
    for _ in range(2):
        code, _, err = run_cli("train", "--method", "head", "--model", tiny_model_dir, "--out", out, *TRAIN)
        assert code == 0, err


def test_an_output_inside_the_data_or_holding_it_is_refused(tmp_path, tiny_model_dir, run_cli):
    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", ["review", "label"], [["good", 1], ["bad", 0]] * 8)
    write_csv(data / "eval.csv", ["review", "label"], [["good", 1], ["bad", 0]])
    refused(run_cli, "train", "--method", "head", "--model", tiny_model_dir, "--data", data, "--out", data / "m",
            *TRAIN, says="lies inside the --data input", keep=[data])
    refused(run_cli, "train", "--method", "head", "--model", tiny_model_dir, "--train", data / "train.csv",
            "--eval", data / "eval.csv", "--out", tmp_path, *TRAIN, says="holds the --train input", keep=[data])


def test_run_glue_report_lowrank_and_predict_refuse_the_users_files(tmp_path, tiny_model_dir, adapter, full,
                                                                    run_cli, tiny_study_config, synthetic_data):
    mine = users_folder(tmp_path / "mine")
    refused(run_cli, "run", "--config", tiny_study_config, "--out", mine, "--quiet",
            says="was not written by loralab", keep=[mine])
    suite = tmp_path / "suite.toml"
    suite.write_text(f'data_root = "{synthetic_data}"\n[tasks.t]\nname = "T"\ntrain = "train.csv"\n'
                     'eval = "eval.csv"\n')
    refused(run_cli, "glue", suite, "--out", mine, "--quiet", says="was not written by loralab", keep=[mine])
    from test_report import hand_made

    (tmp_path / "study").mkdir()
    study = hand_made(tmp_path / "study")
    refused(run_cli, "report", study, "--report-dir", mine, says="was not written by loralab", keep=[mine])
    (mine / "report.md").write_text("my own report")
    refused(run_cli, "report", study, "--report-dir", mine, "--overwrite",
            says="report.md is not loralab's and would be replaced", keep=[mine])
    refused(run_cli, "lowrank", "--finetuned", full, "--headtuned", full, "--pretrained", tiny_model_dir,
            "--out", mine, "--quiet", says="was not written by loralab", keep=[mine])
    preds = tmp_path / "preds.csv"
    preds.write_text("the user's predictions\n")
    refused(run_cli, "predict", adapter, "a fine film", "--output", preds, "--quiet", says="exists", keep=[preds])
    refused(run_cli, "predict", adapter, "a fine film", "--output", adapter / "p.csv", "--quiet",
            says="lies inside the MODEL_DIR input", keep=[adapter])
    code, _, err = run_cli("predict", adapter, "a fine film", "--output", preds, "--quiet", "--overwrite")
    assert code == 0 and preds.read_text().startswith("row,text,label"), err


def test_an_output_that_is_a_link_is_refused(tmp_path, tiny_model_dir, run_cli, synthetic_data):
    real = users_folder(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    refused(run_cli, "train", "--method", "head", "--model", tiny_model_dir, "--out", link, *TRAIN,
            says="is a symbolic link", keep=[link, real])


def test_full_fine_tuning_and_merged_exports_follow_the_umask(tmp_path, full, adapter, run_cli):
    old = os.umask(0o022)
    try:
        code, _, err = run_cli("export", adapter, "--out", tmp_path / "merged", "--merge")
        assert code == 0, err
    finally:
        os.umask(old)
    for folder in (full, tmp_path / "merged"):
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in folder.iterdir()}
        assert modes["model.safetensors"] == "0o644", modes
        assert set(modes.values()) == {"0o644"}, modes
