"""Faults and bad input: killed writers and trainers, NaN, unsafe or damaged files, fuzzed data."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loralab.data import load_file
from loralab.errors import DataError, LoralabError, ModelLoadError
from loralab.models import load_model


def train_cmd(model_dir, out, *extra):
    return [sys.executable, "-m", "loralab.cli", "train", "--method", "lora", "--rank", "2", "--model", str(model_dir),
            "--limit-train", "64", "--limit-eval", "32", "--epochs", "3", "--max-length", "64", "--lr", "5e-3",
            "--save-steps", "4", "--out", str(out), "--quiet", *extra]


# Runs `python -m loralab.cli ...` with Trainer._save_checkpoint wrapped to SIGKILL the process once the
# checkpoint of the given step is written: a kill at a known point, not a race against the trainer.
KILL_AFTER_CHECKPOINT = """
import os, runpy, signal, sys
import transformers

save = transformers.Trainer._save_checkpoint

def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if self.state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)

transformers.Trainer._save_checkpoint = save_then_die
sys.argv = sys.argv[2:]  # drop "-m loralab.cli" as python -m would
runpy.run_module("loralab.cli", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_train_resume_after_sigkill_matches_uninterrupted(tmp_path, tiny_model_dir, synthetic_data):
    subprocess.run(train_cmd(tiny_model_dir, tmp_path / "whole"), check=True, capture_output=True)
    whole = json.loads((tmp_path / "whole" / "loralab.json").read_text())

    # SIGKILLed by its own hand right after the mid-epoch checkpoint of step 12 (of 8-step epochs) is on disk:
    # polling for that checkpoint from here lost the race in CI, as the next save (step 16) rotates it away in
    # a few milliseconds. At an epoch's end the checkpoint can hold the state from before that epoch's evaluation,
    # and a resume from it then lacks that epoch's row in the history: a known gap, not what this test is about;
    # test_chaos kills at random moments.
    out = tmp_path / "killed"
    killer = tmp_path / "killed_after_checkpoint_12.py"
    killer.write_text(KILL_AFTER_CHECKPOINT.format(step=12))
    proc = subprocess.run([sys.executable, str(killer), *train_cmd(tiny_model_dir, out)[1:]], capture_output=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (tmp_path / ".killed.work" / "checkpoints" / "checkpoint-12" / "trainer_state.json").exists()
    assert not out.exists()  # nothing that looks finished
    subprocess.run(train_cmd(tiny_model_dir, out, "--resume"), check=True, capture_output=True)
    resumed = json.loads((out / "loralab.json").read_text())
    assert abs(resumed["eval_accuracy"] - whole["eval_accuracy"]) <= 0.002
    assert len(resumed["history"]) == len(whole["history"]) == 3
    for a, b in zip(resumed["history"], whole["history"]):  # the same curve, up to bf16 round-off
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], abs=0.01)
    log = json.loads((out / "train_log.json").read_text())
    losses = [e for e in log if "loss" in e]
    steps = [e["step"] for e in losses if "step" in e] or [round(e["epoch"] * 8) for e in losses]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # continuous, nothing repeated
    # The same batches and dropout masks after the resume, so the same training losses
    # (an epoch's batch order once came from the global generator and changed on resume).
    whole_losses = [e["loss"] for e in json.loads((tmp_path / "whole" / "train_log.json").read_text()) if "loss" in e]
    assert [e["loss"] for e in losses] == pytest.approx(whole_losses, abs=1e-4)


def test_killed_writer_leaves_old_file_or_none(tmp_path):
    target = tmp_path / "results.json"
    target.write_text('{"old": true}')
    script = ("import sys; from loralab.fileio import write_json; "
              "write_json(sys.argv[1], {'rows': ['x' * 1000] * 200000}); print('done')")
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".results.json.*.tmp")):
        assert time.time() < deadline and proc.poll() is None, "the writer finished before it could be killed"
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    assert json.loads(target.read_text()) == {"old": True}


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, tiny_model_dir, synthetic_data):
    from loralab.data import limit_data, load_data
    from loralab.models import load_tokenizer
    from loralab.training import TrainSettings, tokenize, train_with_trainer

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenized = tokenize(limit_data(load_data(), 64, 16), tokenizer, 32)
    model = load_model(tiny_model_dir)
    calls = []

    def poison(module, inputs, output):  # from the 6th training step on, the logits are NaN
        if module.training:
            calls.append(1)
            if len(calls) >= 6:
                return output * float("nan")

    model.classifier.register_forward_hook(poison)
    settings = TrainSettings(epochs=2, save_steps=2, max_length=32, quiet=True)
    with pytest.raises(LoralabError) as err:
        train_with_trainer(model, tokenized, settings, tmp_path, tokenizer=tokenizer)
    message = str(err.value)
    assert "the loss became nan at step 6" in message.lower()
    assert "checkpoint-4" in message and (tmp_path / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists()
    assert not (tmp_path / "checkpoints" / "checkpoint-6").exists()


def test_merge_refuses_non_finite():
    from loralab import LoRA

    lora = LoRA(torch.nn.Linear(4, 4), rank=2)
    with torch.no_grad():
        lora.A[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        lora.merge()


def test_pickle_only_model_folder_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    with pytest.raises(ModelLoadError, match="never from pickle"):
        load_model(folder)


def test_truncated_model_weights_give_clear_error(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupted"):
        load_model(folder)


def test_remote_code_is_never_trusted(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    model = load_model(folder)  # loads the built-in BERT class; evil.py never runs
    assert type(model).__name__ == "BertForSequenceClassification"


def _remote_code_folders(tmp_path, tiny_model_dir):
    """A LoRA adapter folder and a model folder whose tokenizer_config.json maps AutoTokenizer
    to custom code (and names no tokenizer_class) that would write a marker file."""
    import shutil

    from loralab import inject_lora, load_model, load_tokenizer, save_adapter

    marker = tmp_path / "remote-code-ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertTokenizerFast as Evil\n"
    adapter = tmp_path / "adapter"
    save_adapter(inject_lora(load_model(tiny_model_dir), 2), adapter)
    load_tokenizer(tiny_model_dir).save_pretrained(adapter)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for folder in (adapter, model):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("tokenizer_class", None)
        config["auto_map"] = {"AutoTokenizer": [None, "evil.Evil"]}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        (folder / "evil.py").write_text(code)
    return marker, adapter, model


@pytest.mark.slow  # a whole study: the fast tier keeps under 3 minutes (#43)
def test_remote_code_in_a_tokenizer_never_runs_even_with_a_yes_at_a_terminal(tmp_path, tiny_model_dir):
    """`loralab predict` on a folder whose tokenizer asks for custom code, run with a terminal
    attached that answers "y" to any question: the code never runs (transformers asked "Do
    you wish to run the custom code? [y/N]" and ran it on a "y"), and the answer is a
    prediction from the built-in tokenizer or loralab's own error, never a traceback."""
    import pty
    import select

    marker, adapter, model = _remote_code_folders(tmp_path, tiny_model_dir)
    for folder in (adapter, model):
        pid, fd = pty.fork()
        if pid == 0:  # the child: the CLI with the pty as its terminal
            os.execv(sys.executable, [sys.executable, "-m", "loralab.cli", "predict", str(folder), "a fine film",
                                      "--quiet"])
        output, deadline = b"", time.time() + 120
        while time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if b"[y/N]" in chunk or b"custom code" in chunk:
                os.write(fd, b"y\n")  # what a user who trusts the prompt types
        _, status = os.waitpid(pid, 0)
        text = output.decode(errors="replace")
        assert not marker.exists(), f"{folder.name}: the folder's code ran:\n{text}"
        assert "Traceback" not in text, text
        code = os.waitstatus_to_exitcode(status)
        assert code in (0, 2), text
        if code == 2:
            assert "loralab: error:" in text and str(folder) in text and "custom code" in text, text


# ---------------------------------------------------------------------------------------
# Fuzzing the data loader

def _is_number(text: str) -> bool:
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


# A review that reads as a number is refused by design (a CSV reader makes it one:
# test_data.py::test_a_numeric_review_is_said_not_to_be_text), so the texts are not numbers.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=200).filter(
    lambda t: not _is_number(t))
LABEL = st.sampled_from(["0", "1", "pos", "neg", "positive", "negative", "true", "false", "", "maybe", "2"])


def _write_csv(path, rows, sep):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=sep)
        writer.writerow(["review", "label"])
        writer.writerows(rows)


def _expect(rows):
    """What loading must give, by the documented rule: binary spellings are 0 negative and
    1 positive, integers are numbered by value, other strings alphabetically; a column that
    mixes numbers with words (other than 0 and 1 with the binary words) is refused."""
    binary = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1, "false": 0, "true": 1}
    raw = [label.strip() for _, label in rows]
    if any(not label for label in raw) or any(not text.strip() for text, _ in rows):
        return None
    numbers = {label for label in raw if label.lstrip("-").isdigit()}
    words = {label for label in raw if label not in numbers and label.lower() not in binary}
    binary_words = {label for label in raw if label not in numbers and label.lower() in binary}
    if numbers and (words or (binary_words and numbers - {"0", "1"})):
        return None
    if all(label.lower() in binary for label in raw):
        labels = [binary[label.lower()] for label in raw]
    elif all(label.lstrip("-").isdigit() for label in raw):
        order = sorted({int(label) for label in raw})
        labels = [order.index(int(label)) for label in raw]
    else:
        order = sorted(set(raw))
        labels = [order.index(label) for label in raw]
    return [text for text, _ in rows], labels


@settings(max_examples=60, deadline=20000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(TEXT, LABEL), min_size=1, max_size=8), fmt=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_fuzz_structured_rows_load_exactly_or_fail_cleanly(tmp_path, rows, fmt):
    path = tmp_path / f"fuzz.{fmt}"
    if fmt == "jsonl":
        lines = (json.dumps({"review": t, "label": label}) + "\n" for t, label in rows)
        path.write_text("".join(lines), encoding="utf-8")
    else:
        _write_csv(path, rows, "," if fmt == "csv" else "\t")
    expected = _expect(rows)
    try:
        ds = load_file(path)
    except DataError as err:  # loralab's own error, with a message: only for rows the rules refuse
        assert expected is None, f"valid rows were refused: {err}"
        assert str(path) in str(err)
        return
    assert expected is not None, "bad rows were accepted"
    texts = list(ds["text"])
    if fmt != "jsonl":  # a CSV reader may normalise line endings inside quoted fields
        texts = [t.replace("\r\n", "\n") for t in texts]
        expected = ([t.replace("\r\n", "\n").replace("\r", "\n") for t in expected[0]], expected[1])
        texts = [t.replace("\r", "\n") for t in texts]
    assert (texts, list(ds["label"])) == expected


@settings(max_examples=60, deadline=20000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=400), fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
       prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"review,label\r\n", b"review\tlabel\n"]))
def test_fuzz_random_bytes_never_raw_traceback(tmp_path, raw, fmt, prefix):
    path = tmp_path / f"bytes.{fmt}"
    path.write_bytes(prefix + raw)
    try:
        load_file(path)
    except DataError:
        pass


def test_bom_crlf_and_huge_field(tmp_path):
    huge = "word " * 200_000
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfreview,label\r\n" + f'"{huge}",pos\r\n"line one\r\nline two",0\r\n'.encode())
    ds = load_file(path)
    assert ds["label"] == [1, 0] and ds["text"][0] == huge and "line two" in ds["text"][1]


def test_na_like_reviews_are_kept(tmp_path):
    path = tmp_path / "na.csv"
    path.write_text("review,label\nNA,1\nnull,0\nNone,1\n")
    assert list(load_file(path)["text"]) == ["NA", "null", "None"]


# ---------------------------------------------------------------------------------------
# Resources

BOUNDED = """
import json, resource, sys, numpy as np
from loralab.data import load_file
from loralab.models import load_tokenizer
from loralab.training import tokenize
import datasets
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds = datasets.DatasetDict({"train": load_file(sys.argv[1])})
tokenized = tokenize(ds, load_tokenizer(sys.argv[2]), 128)
print(json.dumps({"rows": len(tokenized["train"]),
                  "growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


@pytest.mark.slow
def test_100k_reviews_load_and_tokenize_in_bounded_memory(tmp_path, tiny_model_dir):
    import random

    random.seed(0)
    words = ["good", "bad", "film", "plot", "acting", "boring", "great", "the", "a", "was"]
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("review,label\n")
        for i in range(100_000):
            fh.write(" ".join(random.choices(words, k=60)) + f",{i % 2}\n")
    size_mb = path.stat().st_size / 2**20
    proc = subprocess.run([sys.executable, "-c", BOUNDED, str(path), str(tiny_model_dir)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 100_000
    # The bound: the data are kept in Arrow; Python-side copies of the text column may
    # add a few times the file size, never more than 1 GB for this 33 MB file.
    assert result["growth_mb"] < 1024, (result, size_mb)


def test_seed_changes_results_and_is_recorded(tmp_path, tiny_model_dir, run_cli, synthetic_data):
    infos = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"seed{seed}-{len(infos)}"
        code, _, err = run_cli("train", "--method", "lora", "--rank", "2", "--model", tiny_model_dir, "--limit-train",
                               "32", "--limit-eval", "32", "--epochs", "1", "--max-length", "32", "--lr", "1e-2",
                               "--seed", seed, "--out", out, "--quiet")
        assert code == 0, err
        infos[out.name] = json.loads((out / "loralab.json").read_text())
    first, again, other = infos.values()
    assert first["seed"] == 0 and other["seed"] == 1
    assert first["history"] == again["history"]          # same seed: identical
    assert first["history"] != other["history"]          # another seed: different


@pytest.mark.slow
def test_predict_streams_100k_reviews_in_bounded_memory(tmp_path, tiny_model_dir, synthetic_data):
    from loralab.cli import main

    model = tmp_path / "head"
    assert main(["train", "--method", "head", "--model", str(tiny_model_dir), "--limit-train", "16",
                 "--limit-eval", "8", "--epochs", "1", "--max-length", "32", "--out", str(model), "--quiet"]) == 0
    path = tmp_path / "big.csv"
    with open(path, "w") as fh:
        fh.write("id,review\n")
        for i in range(100_000):
            fh.write(f"{i},{'a fine film ' if i % 2 else 'a dull film '}{i}\n")
    script = ("import json, resource, sys; from loralab.predict import predict; "
              "from loralab.training import TrainSettings; "
              "r = predict(sys.argv[1], input=sys.argv[2], output=sys.argv[3], "
              "settings=TrainSettings(max_length=16, eval_batch_size=256), progress=False); "
              "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
              "print(json.dumps({'n': len(r.labels), 'peak_mb': peak}))")
    proc = subprocess.run([sys.executable, "-c", script, str(model), str(path), str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 100_000
    assert sum(1 for _ in open(tmp_path / "out.jsonl")) == 100_000
    # Bound: chunks of 4,096 reviews are tokenized at a time; the process (torch included)
    # stays under 1.5 GB for 100,000 reviews.
    assert result["peak_mb"] < 1536, result
