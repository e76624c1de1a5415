"""`loralab run` end to end on a tiny model: every method, resumable, deterministic."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import count_fraction
from loralab.config import load_config
from loralab.errors import LoralabError
from loralab.study import run_study
from loralab.study.executors import cpu_name

pytestmark = pytest.mark.usefixtures("synthetic_data")  # no test here measures accuracy on IMDB
METHODS = {"tfidf-lr", "tfidf-nb", "full", "head", "approx1", "approx2", "lora", "extract", "extract-all"}


def accuracies(rows):
    """(method, rank, accuracy) of typed rows or of results.json's dicts."""
    return [(r["method"], r["rank"], r["eval_accuracy"]) if isinstance(r, dict) else (r.method, r.rank, r.eval_accuracy)
            for r in rows]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir, synthetic_data):
    from conftest import TINY_STUDY

    folder = tmp_path_factory.mktemp("study")
    config_file = folder / "tiny.toml"
    config_file.write_text(TINY_STUDY.format(model=tiny_model_dir))
    config = load_config(config_file, out=str(folder / "out"))
    rows = run_study(config, quiet=True).rows
    return config, rows, folder / "out"


def test_a_studys_models_remember_their_data_columns(finished):
    # As `loralab train`'s do: predict, evaluate and serve read their files (and pairs) so.
    _, _, out = finished
    info = json.loads((out / "lora-r2" / "model" / "loralab.json").read_text())
    assert info["data"] == {"text_column": "review", "text_pair_column": "", "label_column": "label",
                            "task": "classification"}


def test_every_method_is_in_results(finished):
    config, rows, out = finished
    assert {r.method for r in rows} == METHODS
    saved = json.loads((out / "results.json").read_text())
    assert accuracies(saved) == accuracies(rows)
    for r in saved:
        assert set(r) >= {"method", "rank", "trainable_params", "eval_accuracy", "train_seconds",
                          "peak_memory_mb", "history", "seed"}
        count_fraction(r["eval_accuracy"], 48)  # k of the 48 eval rows right, for every method
        if r["history"]:  # a trained model: its figure is its last evaluation's
            assert r["eval_accuracy"] == r["history"][-1]["eval_accuracy"]
    lora = next(r for r in saved if r["method"] == "lora")
    assert lora["rank"] == 2 and len(lora["history"]) == 1 and lora["peak_memory_mb"] > 0
    assert (out / "config.toml").exists() and (out / "environment.json").exists()
    assert (out / "lora-r2" / "model" / "adapter_model.safetensors").exists()
    assert (out / "lowrank" / "spectrum.json").exists()  # the data; the report plots it (no plots in the API)
    head = next(r for r in saved if r["method"] == "head")  # the sweeps are compared with the head row's figure
    assert json.loads((out / "lowrank" / "result.json").read_text())["lowrank"]["headtuned_score"] == \
        head["eval_accuracy"]
    assert json.loads((out / "full" / "result.json").read_text())["device"] == cpu_name()  # what it ran on


def test_extract_step_saves_and_evaluates_each_adapter(finished):
    from loralab import load_adapter
    from loralab.records import read_record

    _, rows, out = finished
    record = read_record(out / "extract" / "result.json")
    sizes = [(e.method, e.rank, e.energy) for e in record.extracted]
    assert sizes == [(m, r, e) for m in ("extract", "extract-all") for r, e in ((1, None), (4, None), (None, 0.9))]
    assert [(r.method, r.rank, r.energy) for r in rows if r.method.startswith("extract")] == sizes
    for e in record.extracted:
        folder = out / "extract" / e.folder
        assert e.file_bytes == (folder / "adapter_model.safetensors").stat().st_size
        assert 0 < e.kept_share <= 1 and e.ranks[0] <= e.ranks[1]
        assert (folder / "README.md").exists()
    model = load_adapter(None, out / "extract" / "extract-all-r4")
    assert len([m for m in model.modules() if type(m).__name__ == "LoRA"]) == 2 * 6  # 2 layers x 6 linear


def test_replace_test_restores_predictions(finished):
    _, rows, out = finished
    result = json.loads((out / "replace-test" / "result.json").read_text())["replace_test"]
    assert result["restored_logits_identical"] and result["restored_score"] == result["original_score"]
    # The saved model, evaluated again, agrees with the Trainer's evaluation after training:
    # both evaluate the same length-sorted batches.
    assert result["original_score"] == next(r.eval_accuracy for r in rows if r.method == "full")
    assert result["random_clones_score"] <= max(result["chance_score"], result["original_score"])
    assert result["metric"] == "accuracy"
    assert abs(result["random_clones_score"] - 0.5) <= 0.2  # near chance on 48 reviews


def test_same_seed_same_accuracies_and_rerun_skips(finished, tmp_path):
    config, rows, out = finished
    again = run_study(config.replace(out=str(tmp_path / "again")), quiet=True)
    assert accuracies(again.rows) == accuracies(rows)
    resumed = run_study(config, quiet=True)
    assert accuracies(resumed.rows) == accuracies(rows)
    assert len(resumed.skipped) == 9 and resumed.ran == []


def test_a_damaged_record_is_redone_with_a_warning_naming_it(finished, tmp_path, caplog):
    config, rows, out = finished
    shutil.copytree(out, tmp_path / "out")
    damaged = tmp_path / "out" / "tfidf-lr" / "result.json"
    damaged.write_text('{"name": "tfidf-lr", "rows": [')  # what a disk error or an editor could leave
    with caplog.at_level("WARNING", logger="loralab"):
        result = run_study(config.replace(out=str(tmp_path / "out")), quiet=True)
    assert result.ran == ["tfidf-lr"]
    assert f"{damaged}: the run's record cannot be read" in caplog.text and "done again" in caplog.text
    assert accuracies(result.rows) == accuracies(rows)


@pytest.mark.parametrize("setting, value, redone", [
    ("lora.init", "kaiming", {"lora-r2", "similarity"}),
    # the low-rank study and similarity read the targets too (the low-rank key once left them out)
    ("lora.targets", "query,value,key", {"lora-r2", "lowrank", "similarity"}),
])
def test_changed_setting_redoes_exactly_the_runs_that_read_it(finished, tmp_path, setting, value, redone):
    config, rows, out = finished
    shutil.copytree(out, tmp_path / "out")  # the finished study, changed on a copy
    changed = config.replace(out=str(tmp_path / "out"), **{setting: value})
    assert set(run_study(changed, quiet=True).ran) == redone


TRANSFORMER_RUNS = {"full", "head", "replace-test", "lowrank", "extract", "lora-r2", "similarity"}
EVERY_RUN = TRANSFORMER_RUNS | {"tfidf-lr", "tfidf-nb"}


@pytest.mark.parametrize("setting, value, redone", [
    ("seed", 1, EVERY_RUN),
    ("model", "other-model", TRANSFORMER_RUNS),
    ("device", "cpu", TRANSFORMER_RUNS),
    ("data.limit_eval", 40, EVERY_RUN),
    ("train.max_length", 32, TRANSFORMER_RUNS),
    ("train.eval_batch_size", 4, TRANSFORMER_RUNS),
    ("train.learning_rate", 2e-3, TRANSFORMER_RUNS),
    ("train.pooling", "mean", TRANSFORMER_RUNS),
    ("lora.targets", "query,value,key", {"lora-r2", "lowrank", "similarity"}),
    ("lora.init", "kaiming", {"lora-r2", "similarity"}),
    ("lora.alpha_factor", 1.0, {"lora-r2", "similarity"}),
    ("lora.rslora", True, {"lora-r2", "similarity"}),
    ("lora.learning_rate", 3e-3, {"lora-r2", "similarity"}),
    ("head.learning_rate", 1e-2, {"head", "lowrank"}),
    ("methods.sweep_points", 2, {"lowrank"}),
    ("methods.sweep_ranks", [4, 1], {"lowrank"}),
    ("methods.lora_ranks", [2, 4], {"lora-r4"}),  # a new run; similarity reads both
    ("methods.extract_ranks", [2], {"extract"}),
    ("methods.extract_energies", [0.5], {"extract"}),
    ("methods.extract_targets", ["all-linear"], {"extract"}),
    ("jobs", 2, set()),
    ("isolate", False, set()),
])
def test_each_setting_changes_the_keys_of_exactly_the_runs_that_read_it(tiny_study_config, setting, value, redone):
    before, after = run_keys(tiny_study_config), run_keys(tiny_study_config, **{setting: value})
    changed = {name for name, key in after.items() if before.get(name) != key}
    if setting == "methods.lora_ranks":
        redone = redone | {"similarity"}
    assert changed == redone


def run_keys(config_path, **overrides) -> dict[str, str]:
    from loralab.study import Context, plan

    config = load_config(config_path, **overrides)
    return {run.name: run.key for run in plan(config, Context(config.data, config.out))}


def test_precision_is_keyed_as_runs_compute_in_it(tiny_study_config, monkeypatch):
    """"auto" is keyed as the precision it resolves to here: a study resumed on a machine with
    native bf16 redoes the runs that one without it computed in fp32 (`--precision fp32`
    keeps them)."""
    from loralab import inference

    fp32, bf16 = run_keys(tiny_study_config, precision="fp32"), run_keys(tiny_study_config, precision="bf16")
    assert {name for name in fp32 if fp32[name] != bf16[name]} == TRANSFORMER_RUNS
    for native, same in ((True, bf16), (False, fp32)):
        monkeypatch.setattr(inference, "bf16_supported", lambda device, native=native: native)
        assert run_keys(tiny_study_config, precision="auto") == same


def test_unknown_setting_is_an_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    with pytest.raises(LoralabError, match="unknown setting 'train.epoch'"):
        load_config(bad)


@pytest.mark.parametrize("path", ["../elsewhere", "/tmp/elsewhere", "report/../../x"])
def test_config_paths_cannot_escape_the_output_folder(tmp_path, path):
    bad = tmp_path / "escape.toml"
    bad.write_text(f'report_dir = "{path}"\n')
    with pytest.raises(LoralabError, match="must be a path inside the output folder"):
        load_config(bad)
    assert load_config(None, report_dir="report").report_dir == "report"


@pytest.mark.slow
def test_sigkill_during_lora_then_resume(tmp_path, tiny_study_config, finished):
    _, rows, _ = finished
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "loralab.cli", "run", "--config", str(tiny_study_config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "lora-r2").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before LoRA started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "lora-r2" / "result.json").exists()
    assert (out / "full" / "result.json").exists()
    env = json.loads((out / "environment.json").read_text())  # written at the start: a stopped study's report
    assert env["total_seconds"] is None and env["labels"] and env["data"]["train_rows"]  # names its own data
    before = {p: p.stat().st_mtime for p in out.glob("*/result.json")}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for path, mtime in before.items():
        assert path.stat().st_mtime == mtime, f"{path.parent.name} was redone"
    assert json.loads((out / "environment.json").read_text())["total_seconds"] > 0  # and again at the end
    resumed = json.loads((out / "results.json").read_text())
    for (m1, r1, a1), (m2, r2, a2) in zip(accuracies(resumed), accuracies(rows)):
        assert (m1, r1) == (m2, r2) and abs(a1 - a2) <= 0.002


@pytest.mark.slow  # a whole study (several processes): the fast tier keeps under 3 minutes
def test_jobs_run_side_by_side_after_what_they_read_with_the_same_results(finished, tmp_path):
    config, rows, _ = finished
    parallel = run_study(config.replace(out=str(tmp_path / "parallel"), jobs=3), quiet=True)
    assert accuracies(parallel.rows) == accuracies(rows)
    events = [(name, what) for what, name in parallel.events]
    started = [name for name, what in events if what == "start"]
    assert sorted(started) == sorted(parallel.ran)
    assert len(set(started)) == len(started) == 9  # every run of the tiny study, once
    at_once, most, done = 0, 0, []
    for name, what in events:
        at_once += 1 if what == "start" else -1
        most = max(most, at_once)
        if what == "done":
            done.append(name)
        else:  # a run starts only once the runs whose results it reads are finished
            needs = {"replace-test": {"full"}, "lowrank": {"full", "head"}, "similarity": {"full", "lora-r2"},
                     "extract": {"full"}}
            assert needs.get(name, set()) <= set(done), f"{name} started before {needs[name] - set(done)}"
    assert most == 3
    with pytest.raises(LoralabError, match="jobs must be at least 1"):
        load_config(None, jobs=0)


def test_jobs_a_failed_run_stops_new_starts_and_keeps_finished_work(finished, tmp_path):
    config, _, _ = finished
    broken = config.replace(out=str(tmp_path / "broken"), jobs=2, **{"lora.targets": "no_such_layer"})
    # No layer matches: lora-r2 and lowrank fail, whichever comes first; once one has, nothing new starts.
    with pytest.raises(LoralabError, match=r"run\(s\) failed: .*(lora-r2|lowrank)"):
        run_study(broken, quiet=True)
    out = tmp_path / "broken"
    # full starts before either can fail (lowrank reads it; lora-r2 comes after it in the plan)
    assert (out / "full" / "result.json").exists() and (out / "tfidf-lr" / "result.json").exists()
    assert not (out / "lora-r2" / "result.json").exists() and not (out / "lowrank" / "result.json").exists()
    assert not (out / "similarity").exists()  # it reads lora-r2: never started


def _processes_in_session(sid: int) -> list[int]:
    """Live processes (not zombies) whose session is `sid` (fields of /proc/PID/stat)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.slow
def test_a_killed_run_leaves_no_process_behind(tmp_path, tiny_study_config):
    """Runs train in processes forked from a fork server: killing `loralab run` alone
    (SIGKILL, no clean-up) must still end the server and the run it started."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "loralab.cli", "run", "--config", str(tiny_study_config), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "full").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before full fine-tuning started"
            time.sleep(0.05)
        assert len(_processes_in_session(proc.pid)) >= 2  # the study and its runs
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while _processes_in_session(proc.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert _processes_in_session(proc.pid) == []  # nothing left that could write a result later
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_runs_see_the_environment_of_their_start_not_of_the_fork_server(tmp_path, tiny_model_dir):
    """The fork server is started once; a run started later must see the study's
    environment as it is then (here: where the data is)."""
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 16), ("eval", 8)):
        rows = "".join(f"{split} film {i} was {'fine' if i % 2 else 'dull'},{i % 2}\n" for i in range(n))
        (data / f"{split}.csv").write_text("review,label\n" + rows)
    script = f"""
import os, sys
from loralab.config import load_config
from loralab.study import run_study, warm_up_processes
os.environ["LORALAB_DATA"] = "{tmp_path / 'nowhere'}"
warm_up_processes()
os.environ["LORALAB_DATA"] = "{data}"
config = load_config(None, out="{tmp_path / 'out'}", model="{tiny_model_dir}",
                     **{{"train.epochs": 1, "train.max_length": 16, "methods.baselines": False,
                        "methods.head": False, "methods.replace_test": False, "methods.lowrank": False,
                        "methods.lora_ranks": []}})
print(run_study(config, quiet=True).rows[0].method)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    # With the server's environment the run would look for the data in "nowhere" and fail.
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "full"


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_stops_at_once_and_the_first_finishes(tmp_path, tiny_study_config,
                                                                                 finished):
    """Two `loralab run` on one output folder: the second stops at once (exit 2), naming the
    folder and the first's process; the first finishes every run with the same results as
    a run alone. A lock whose process was killed does not block the next run."""
    _, rows, _ = finished
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "loralab.cli", "run", "--config", str(tiny_study_config), "--out", str(out),
           "--quiet"]
    first = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        owner = tmp_path / ".shared.lock.owner"
        deadline = time.time() + 120
        while not owner.exists():
            assert first.poll() is None and time.time() < deadline, "the first run ended before it held the folder"
            time.sleep(0.05)
        start = time.time()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and time.time() - start < 60, second.stderr
        assert f"{out} is in use by another loralab process (process {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert accuracies(json.loads((out / "results.json").read_text())) == accuracies(rows)
    assert not owner.exists()

    # the holder killed: its lock goes with it, and the next run resumes at once
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from loralab.locks import output_lock\n"
                               "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


def test_train_on_a_folder_in_use_is_refused_by_name(tmp_path, tiny_model_dir, run_cli):
    from loralab.locks import output_lock

    out = tmp_path / "model"
    with output_lock(out):
        code, _, err = run_cli("train", "--method", "head", "--model", tiny_model_dir, "--epochs", 1,
                               "--max-length", 16, "--limit-train", 16, "--limit-eval", 8, "--out", out, "--quiet")
    assert code == 2 and f"{out} is in use by another loralab process (process {os.getpid()}" in err, err
    assert not out.exists()


def test_a_cpu_is_named_by_its_model_and_its_bf16_path():
    """A record's device says which CPU ran it: timings of a study resumed on another machine mean
    little without it (no bf16 is 2-3x slower)."""
    import re

    import torch

    from loralab.inference import bf16_supported

    name = cpu_name()
    model, path = re.fullmatch(r"cpu \((.+), (AMX bf16|AVX-512 bf16|no bf16)\)", name).groups()
    assert (path != "no bf16") == bf16_supported(torch.device("cpu"))  # the path precision = auto takes
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        assert model == (" ".join(found.group(1).split()) if found else model)

