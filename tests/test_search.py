"""The recipe search (#44, `loralab.search`): Optuna's TPE sampler and median pruner over a
method's learning rate, schedule, warm-up and weight decay on the validation split, its
trials in an SQLite file that a killed search resumes from, and the best epoch kept."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import write_synthetic_reviews

optuna = pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def splits(tmp_path_factory, tiny_model_dir):
    """Tokenized train (96 made-up reviews) and validation (64 others) splits."""
    import datasets

    from loralab.models import load_tokenizer
    from loralab.training import tokenize

    folder = write_synthetic_reviews(tmp_path_factory.mktemp("search-data"), n_train=96, n_eval=64)
    raw = datasets.DatasetDict(train=datasets.Dataset.from_csv(str(folder / "train.csv")),
                               validation=datasets.Dataset.from_csv(str(folder / "eval.csv")))
    return tokenize(raw.rename_column("review", "text"), load_tokenizer(str(tiny_model_dir)), 64)


def search(splits, tiny_model_dir, tmp_path, space, **options):
    from loralab.search import search_recipe
    from loralab.settings import TrainSettings

    settings = TrainSettings(batch_size=16, max_length=64, precision="fp32", quiet=True)
    return search_recipe("full", splits, model=str(tiny_model_dir), settings=settings, space=space,
                         storage=tmp_path / "search.db", study_name="full", work=tmp_path / "trials", **options)


def test_the_search_finds_the_rate_that_learns_and_keeps_its_best_epoch(splits, tiny_model_dir, tmp_path):
    """A planted best: on this data the tiny model learns only at rates near 1e-2; far smaller
    rates do not move it and far larger ones wreck it (chance, 0.5). The search must find the
    band, and the recipe's epoch is the first epoch of the best trial's peak, not its last."""
    from loralab.config import SearchSpace

    space = SearchSpace(trials=10, lr_min=3e-4, lr_max=3.0, min_epochs=3, max_epochs=4)
    found = search(splits, tiny_model_dir, tmp_path, space, pruner="none", startup_trials=4)
    by_rate = {t.params["learning_rate"]: max(t.scores) for t in found.trials}
    assert all(score <= 0.6 for lr, score in by_rate.items() if lr >= 0.3 or lr <= 1e-3), by_rate  # the plant
    assert 3e-3 <= found.learning_rate <= 0.1 and found.score >= 0.9, (found.learning_rate, by_rate)
    best = next(t for t in found.trials if t.params["learning_rate"] == found.learning_rate)
    assert found.best_epoch == best.scores.index(max(best.scores)) + 1 == best.best_epoch
    assert found.score == max(best.scores) and found.epochs == best.params["epochs"]
    assert len(found.trials) == 10 and found.pruned == 0
    tokens = sum(len(ids) for ids in splits["train"]["input_ids"])
    assert found.token_passes == tokens * sum(len(t.scores) for t in found.trials)
    assert not (tmp_path / "trials").exists()  # the trials' models are scratch
    stored = optuna.load_study(study_name="full", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert len(stored.trials) == 10 and stored.best_value == found.score


@pytest.mark.slow
def test_the_pruner_stops_trials_that_trail(splits, tiny_model_dir, tmp_path):
    from loralab.config import SearchSpace

    space = SearchSpace(trials=10, lr_min=8e-3, lr_max=0.06, min_epochs=4, max_epochs=6)
    found = search(splits, tiny_model_dir, tmp_path, space, pruner="median", startup_trials=2, warmup_epochs=1)
    pruned = [t for t in found.trials if t.state == "pruned"]
    assert found.pruned == len(pruned) >= 2, [(t.state, t.scores) for t in found.trials]
    assert all(len(t.scores) < t.params["epochs"] for t in pruned), [(t.scores, t.params) for t in pruned]
    assert all(len(t.scores) >= 2 for t in pruned), [t.scores for t in pruned]  # not before the warm-up epoch
    stored = optuna.load_study(study_name="full", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in stored.trials) == len(pruned)


def test_a_resumed_search_proposes_what_an_unbroken_one_would(splits, tiny_model_dir, tmp_path):
    """Each trial's proposal is seeded by its number: a search resumed in a new process (here, the
    same search asked for more trials) neither draws again the random trials it already trained
    (a sampler seeded once per process did: CoLA's LoRA search trained one recipe twice) nor
    proposes other trials than one search run straight through."""
    from loralab.config import SearchSpace

    def params(found):
        return [tuple(sorted(t.params.items())) for t in sorted(found.trials, key=lambda t: t.number)]

    space = SearchSpace(trials=4, lr_min=1e-3, lr_max=0.1, min_epochs=1, max_epochs=2)
    whole = search(splits, tiny_model_dir, tmp_path / "whole", space, pruner="none", startup_trials=3)
    first = dataclasses.replace(space, trials=2)
    search(splits, tiny_model_dir, tmp_path / "resumed", first, pruner="none", startup_trials=3)
    resumed = search(splits, tiny_model_dir, tmp_path / "resumed", space, pruner="none", startup_trials=3)
    assert len(set(params(resumed))) == 4  # no recipe trained twice
    assert params(resumed) == params(whole)  # the random startup trials and TPE's proposal after them


KILLED_SEARCH = """
import sys
sys.path.insert(0, {tests!r})
from test_search import search
from loralab.config import SearchSpace
import datasets
from pathlib import Path
splits = datasets.load_from_disk({splits!r})
space = SearchSpace(trials=6, lr_min=3e-3, lr_max=0.1, min_epochs=6, max_epochs=8)
found = search(splits, {model!r}, Path({out!r}), space, pruner="none", startup_trials=3)
print("best", found.learning_rate)
"""


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_without_redoing_a_finished_trial(splits, tiny_model_dir, tmp_path):
    splits.save_to_disk(tmp_path / "splits")
    script = tmp_path / "search.py"
    script.write_text(textwrap.dedent(KILLED_SEARCH.format(tests=os.path.dirname(__file__), out=str(tmp_path),
                                                           splits=str(tmp_path / "splits"), model=str(tiny_model_dir))))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, before = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:  # two trials finished and a third under way
        try:
            trials = optuna.load_study(study_name="full", storage=storage).trials
        except Exception:  # the study is not there yet
            trials = []
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) >= 2 and any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
            before = {t.number: (t.params, t.value, t.user_attrs["pid"]) for t in done}
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert before, "the search finished or failed before a trial could be interrupted"
    output = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert output.returncode == 0, output.stdout + output.stderr
    trials = optuna.load_study(study_name="full", storage=storage).trials
    after = {t.number: (t.params, t.value, t.user_attrs["pid"]) for t in trials
             if t.state == optuna.trial.TrialState.COMPLETE}
    assert {n: after[n] for n in before} == before  # kept, never trained again
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1  # the one the kill interrupted, then tried again with its values
    retried = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retried) == 1 and retried[0].params == failed[0].params
    assert len(after) == 6  # the budget: finished trials count, the interrupted one does not
    assert len({tuple(sorted(params.items())) for params, _, _ in after.values()}) == 6  # none drawn twice
    resumed_pid = {pid for n, (_, _, pid) in after.items() if n not in before}
    assert len(resumed_pid) == 1 and resumed_pid.isdisjoint({pid for _, _, pid in before.values()})


@pytest.mark.slow
def test_a_search_stopped_past_the_heartbeats_grace_gives_its_trial_up_and_goes_on(splits, tiny_model_dir,
                                                                                    tmp_path):
    """A worker stopped (a suspended machine) while its trial runs: another worker takes the
    silent trial for abandoned, fails it and asks it again. The stopped one, woken, drops its
    result, trains on, and the search still ends at its budget."""
    import sqlite3

    from loralab.search import STALE_SECONDS, _fail_stale, _open_study

    splits.save_to_disk(tmp_path / "splits")
    script = tmp_path / "search.py"
    script.write_text(textwrap.dedent(KILLED_SEARCH.format(tests=os.path.dirname(__file__), out=str(tmp_path),
                                                           splits=str(tmp_path / "splits"), model=str(tiny_model_dir))))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage, deadline, stopped = f"sqlite:///{tmp_path / 'search.db'}", time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:  # a trial finished and the next under way
        try:
            trials = optuna.load_study(study_name="full", storage=storage).trials
        except Exception:  # the study is not there yet
            trials = []
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and "owner" in t.user_attrs]
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials) and running:
            proc.send_signal(signal.SIGSTOP)
            stopped = running[0]
            break
        time.sleep(0.05)
    assert stopped, "the search finished or failed before a trial could be stopped"
    with sqlite3.connect(tmp_path / "search.db") as db:  # silent past the grace period
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', ?) WHERE trial_id = ?",
                   (f"-{STALE_SECONDS + 60} seconds", stopped._trial_id))
    _fail_stale(optuna, _open_study(optuna, tmp_path / "search.db", "full", optuna.pruners.NopPruner()))
    proc.send_signal(signal.SIGCONT)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    assert f"trial {stopped.number} was taken for abandoned" in output
    trials = optuna.load_study(study_name="full", storage=storage).trials
    assert trials[stopped.number].state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get("retry_of") == stopped.number]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 6  # the budget


WORKER = """
import sys
from pathlib import Path
import datasets
from loralab.config import SearchSpace
from loralab.search import search_recipe
from loralab.settings import TrainSettings
splits = datasets.load_from_disk({splits!r})
space = SearchSpace(trials=6, lr_min=3e-3, lr_max=0.1, min_epochs=3, max_epochs=4)
settings = TrainSettings(batch_size=16, max_length=64, precision="fp32", quiet=True)
search_recipe("full", splits, model={model!r}, settings=settings, space=space, storage=Path({out!r}) / "search.db",
              study_name="full", work=Path({out!r}) / sys.argv[1], pruner="none", startup_trials=2)
"""


@pytest.mark.slow
def test_workers_share_a_search_and_stop_at_its_budget_together(splits, tiny_model_dir, tmp_path):
    """`search.workers`: two processes train the trials of one study side by side; neither
    takes the other's running trial for an interrupted one, and together they stop at the budget."""
    splits.save_to_disk(tmp_path / "splits")
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(splits=str(tmp_path / "splits"), model=str(tiny_model_dir),
                                                    out=str(tmp_path))))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, str(script), f"trials-{i}"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    for proc in workers:
        assert proc.wait(600) == 0, proc.stdout.read()[-3000:]
    trials = optuna.load_study(study_name="full", storage=f"sqlite:///{tmp_path / 'search.db'}").trials
    states = [t.state for t in trials]
    assert optuna.trial.TrialState.FAIL not in states  # no live trial was taken for an interrupted one
    assert 6 <= states.count(optuna.trial.TrialState.COMPLETE) <= 7  # the budget, or one over: both asked at 5
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both trained trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)  # and drew apart


def test_another_hosts_trial_is_alive_until_its_heartbeat_goes_stale(splits, tiny_model_dir, tmp_path):
    """A search resumed on another machine (a study's records copied there) meets trials its
    first machine left running: one whose heartbeat is older than `STALE_SECONDS` was left by
    a process that is gone, and is failed and asked again with its values; one with a fresh
    heartbeat is another worker's, left alone and counted toward the budget."""
    import sqlite3

    from loralab.config import SearchSpace
    from loralab.search import STALE_SECONDS, _open_study

    space = SearchSpace(trials=3, lr_min=3e-3, lr_max=0.1, min_epochs=1, max_epochs=2)
    study = _open_study(optuna, tmp_path / "search.db", "full", optuna.pruners.NopPruner())
    left = []
    for lr in (0.01, 0.02):
        trial = study.ask()
        trial.suggest_float("learning_rate", space.lr_min, space.lr_max, log=True)
        trial.suggest_int("epochs", space.min_epochs, space.max_epochs)
        trial.suggest_categorical("warmup_ratio", list(space.warmup_ratios))
        trial.suggest_categorical("weight_decay", list(space.weight_decays))
        trial.set_user_attr("owner", "another-host|some-boot|12345")
        study._storage.record_heartbeat(trial._trial_id)
        left.append(trial.number)
    with sqlite3.connect(tmp_path / "search.db") as db:  # the first one's process died an hour ago
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', ?) WHERE trial_id = ?",
                   (f"-{STALE_SECONDS + 3600} seconds", study.trials[left[0]]._trial_id))
    search(splits, tiny_model_dir, tmp_path, space, pruner="none", startup_trials=1)
    trials = optuna.load_study(study_name="full", storage=f"sqlite:///{tmp_path / 'search.db'}").trials
    stale, alive = trials[left[0]], trials[left[1]]
    assert stale.state == optuna.trial.TrialState.FAIL and alive.state == optuna.trial.TrialState.RUNNING
    retried = [t for t in trials if t.user_attrs.get("retry_of") == stale.number]
    assert len(retried) == 1 and retried[0].params == stale.params
    assert retried[0].state == optuna.trial.TrialState.COMPLETE
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 2  # 3, the live one counted


STUDY = """
model = "{model}"
precision = "fp32"
[data]
dir = "{data}"
validation = 0.25
[train]
max_length = 64
batch_size = 16
[methods]
baselines = false
lora_ranks = [2, 4]
lowrank = false
replace_test = false
extract = false
[search]
enabled = true
lora_rank = 2
startup_trials = 2
[search.full]
trials = 3
lr_min = 3e-3
lr_max = 0.1
min_epochs = 2
max_epochs = 4
[search.head]
trials = 2
max_epochs = 3
[search.lora]
trials = 3
lr_min = 1e-3
lr_max = 0.1
min_epochs = 2
max_epochs = 4
"""


@pytest.mark.slow
def test_a_study_trains_each_method_at_its_searched_recipe_and_stops_at_its_best_epoch(tmp_path, tiny_model_dir):
    from loralab.config import load_config
    from loralab.records import read_record
    from loralab.study import run_study

    data = write_synthetic_reviews(tmp_path / "data", n_train=96, n_eval=48)
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(model=tiny_model_dir, data=data))
    out = tmp_path / "out"
    result = run_study(load_config(path, out=str(out)), quiet=True)
    assert (out / "search.db").exists()
    for method, runs in (("full", ["full"]), ("head", ["head"]), ("lora", ["lora-r2", "lora-r4"])):
        found = read_record(out / f"search-{method}" / "result.json").search
        assert found.method == method and len(found.trials) == found.budget
        for run in runs:
            row = next(r for r in result.rows if r.run == run)
            assert row.recipe == {"learning_rate": found.learning_rate, "epochs": found.epochs,
                                  "best_epoch": found.best_epoch, "warmup_ratio": found.warmup_ratio,
                                  "weight_decay": found.weight_decay, "search": f"search-{method}"}
            assert len(row.history) == found.best_epoch  # stopped at the best epoch of its schedule
            assert row.learning_rate == found.learning_rate and row.chosen_on == "validation"
            assert row.token_passes and row.token_passes % found.best_epoch == 0
    assert read_record(out / "search-lora" / "result.json").search.rank == 2
    from loralab.report import write_report

    report = write_report(out).read_text()
    assert "## Recipes searched on the validation split" in report
    assert (out / "accuracy_vs_compute.png").exists() and "against training compute" in report
    again = run_study(load_config(path, out=str(out)), quiet=True)  # everything reused: nothing searched again
    assert {r.run: r.eval_accuracy for r in again.rows} == {r.run: r.eval_accuracy for r in result.rows}
    assert json.loads((out / "environment.json").read_text())["skipped_runs"] == len(result.runs)


def test_a_search_needs_a_validation_split_and_one_choice_of_rates():
    from loralab.config import load_config
    from loralab.errors import LoralabError

    with pytest.raises(LoralabError, match="data.validation"):
        load_config(None, **{"search.enabled": True})
    with pytest.raises(LoralabError, match="enable one"):
        load_config(None, **{"search.enabled": True, "select.enabled": True, "data.validation": 0.1})
    with pytest.raises(LoralabError, match="lr_min must be at most lr_max"):
        load_config(None, **{"search.enabled": True, "data.validation": 0.1, "search.lora.lr_min": 1.0})
    with pytest.raises(LoralabError, match="search.full.trials must be at least 1"):
        load_config(None, **{"search.full.trials": 0})


@pytest.mark.slow
def test_train_with_the_searched_profile_searches_then_stops_at_the_best_epoch(tmp_path, tiny_model_dir, run_cli):
    data = write_synthetic_reviews(tmp_path / "data", n_train=80, n_eval=32)
    config = tmp_path / "c.toml"
    config.write_text("[searched.search.lora]\ntrials = 3\nmin_epochs = 2\nmax_epochs = 3\n")
    out = tmp_path / "adapter"
    code, stdout, err = run_cli("train", "--method", "lora", "--rank", "2", "--model", tiny_model_dir, "--data", data,
                                "--profile", "searched", "--config", config, "--max-length", "64", "--quiet",
                                "--precision", "fp32", "--out", out)
    assert code == 0, err
    storage = f"sqlite:///{tmp_path / 'adapter.search.db'}"
    (name,) = optuna.get_all_study_names(storage)
    best = optuna.load_study(study_name=name, storage=storage).best_trial
    info = json.loads((out / "loralab.json").read_text())
    assert info["learning_rate"] == best.params["learning_rate"]
    assert len(info["history"]) == best.user_attrs["best_epoch"]


def test_compute_counts_the_encoders_passes_over_the_training_tokens():
    from loralab.search import token_passes

    assert token_passes("lora", 1000, 5) == token_passes("full", 1000, 5) == 5000
    assert token_passes("head", 1000, 5) == 1000  # the features are computed once, the head trains on them
    assert token_passes("head", 1000, 0) == 0
