"""A suite of tasks (#37): `loralab glue SUITE` runs the study on each task in its own folder
and writes one table across them, shaped like the LoRA paper's Table 2."""

import json
import shutil

import pytest

from conftest import SHARED_DATA
from test_pairs import write_pairs
from test_regression import write_scores

SUITE = """
name = "tiny suite"
data_root = "{root}"
[run.methods]
extract = false
[tasks.pairs]
name = "Pairs"
train = "pairs/train.csv"
eval = "pairs/dev.csv"
text_column = "sentence1"
text_pair_column = "sentence2"
labels = ["different", "same"]
metric = "matthews"
also = ["f1_positive"]
[tasks.scores]
name = "Scores"
train = "scores/train.csv"
eval = "scores/dev.csv"
text_column = "sentence1"
text_pair_column = "sentence2"
label_column = "score"
task = "regression"
also = ["spearman"]
[[references]]
name = "A published model"
parameters = "9 M"
scores = {{ pairs = 81.5, scores = 70.0 }}
"""


@pytest.fixture
def suite(tmp_path):
    write_pairs(tmp_path / "data" / "pairs")
    write_scores(tmp_path / "data" / "scores")
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(root=tmp_path / "data"))
    return path


def test_a_suite_file_is_read_and_each_mistake_named(suite, tmp_path, monkeypatch):
    from loralab.errors import LoralabError
    from loralab.study.suite import load_suite

    loaded = load_suite(suite)
    assert [t.key for t in loaded.tasks] == ["pairs", "scores"] and loaded.tasks[1].data["task"] == "regression"
    assert loaded.tasks[0].data["train"] == [str(tmp_path / "data" / "pairs" / "train.csv")]
    assert [t.key for t in load_suite(suite, only=["scores"]).tasks] == ["scores"]
    text = suite.read_text()
    for change, says in ((("metric = \"matthews\"", "metrik = \"matth\""), "tasks.pairs has unknown key(s) 'metrik'"),
                         (("pairs/dev.csv", "pairs/test.csv"), "tasks.pairs.eval:"),
                         ((f'data_root = "{tmp_path / "data"}"', 'data_root = "$NO_SUCH_ROOT"'), "$NO_SUCH_ROOT"),
                         (("[[references]]", "[[reference]]"), "unknown key(s) 'reference'")):
        suite.write_text(text.replace(*change))
        with pytest.raises(LoralabError, match=r"suite\.toml: .*" if "tasks." in says else ".*") as err:
            load_suite(suite)
        assert says in str(err.value)
    with pytest.raises(LoralabError, match="no task 'nope'"):
        suite.write_text(text)
        load_suite(suite, only=["nope"])


@pytest.mark.skipif(not (SHARED_DATA / "glue" / "rte" / "train.csv").exists(), reason="no shared GLUE data")
def test_the_example_glue_suite_reads_the_five_shared_tasks():
    from conftest import ROOT
    from loralab.study.suite import load_suite, task_configs

    suite = load_suite(ROOT / "examples" / "glue.toml", SHARED_DATA / "glue")
    assert [t.name for t in suite.tasks] == ["RTE", "MRPC", "CoLA", "SST-2", "STS-B"]
    configs = task_configs(suite, "runs/glue", profile="tuned", seeds=[0, 1, 2])
    assert configs["stsb"].data.task == "regression" and configs["cola"].data.metric == "matthews"
    assert configs["mrpc"].train.batch_size == 16 and configs["mrpc"].select.enabled
    assert configs["rte"].methods.lora_ranks == (8,) and configs["rte"].out.endswith("rte")
    searched = task_configs(suite, "runs/glue", seeds=[0, 1, 2])  # the suite's own default: the searched profile
    rte = searched["rte"]
    assert rte.profile == "searched" and rte.search.enabled and not rte.select.enabled and rte.data.validation == 0.1
    assert rte.methods.lora_targets == ("", "all-linear") and rte.methods.extract_targets == ("all-linear",)
    assert rte.methods.variants == ("dora", "pissa")  # rows of their own on both targets, each searched
    assert (rte.search.lora.trials, rte.search.lora.max_epochs) == (8, 12)


def test_the_searched_suites_committed_records_resume_under_this_code():
    """docs/example-report-glue-searched/records is how the searched GLUE suite spans sessions
    (its README: copy the records, run the same command): every record there is still finished
    under this code, its key unchanged, so nothing is redone, and a task whose study finished
    (its environment.json has its total time) has every run but DoRA's and PiSSA's (a later
    pass adds them)."""
    from conftest import ROOT
    from loralab.outputs import read_marker
    from loralab.study.executors import read_result
    from loralab.study.plan import Context, plan
    from loralab.study.suite import load_suite, task_configs

    records = ROOT / "docs" / "example-report-glue-searched" / "records"
    assert read_marker(records) == {"kind": "suite", "foreign": []}  # the copy is taken for the suite's own folder
    suite = load_suite(ROOT / "examples" / "glue.toml", SHARED_DATA / "glue")
    configs = task_configs(suite, records, seeds=[0, 1, 2], jobs=2)
    started = [t.key for t in suite.tasks if (records / t.key / "results.json").exists()]
    for task in started:
        runs = plan(configs[task], Context(configs[task].data, records / task, quiet=True))
        env = records / task / "environment.json"
        whole = env.exists() and json.loads(env.read_text())["total_seconds"] is not None
        expected = [run for run in runs if (records / task / run.name).exists()
                    or whole and not {"dora", "pissa"} & set(run.name.split("-"))]
        assert len(expected) >= (24 if whole else 1), task
        assert [run.name for run in expected if not read_result(records / task / run.name, run.key)] == [], task


@pytest.mark.slow  # a whole study: the fast tier keeps under 3 minutes (#43)
def test_glue_runs_each_task_in_its_folder_and_writes_one_table(suite, tmp_path, tiny_model_dir, run_cli):
    out = tmp_path / "out"
    args = ["glue", suite, "--quick", "--model", tiny_model_dir, "--out", out, "--quiet", "--seeds", "0,1"]
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert "| Method | Trainable parameters | Pairs (Matthews) | Scores (Pearson) | Avg. |" in stdout
    for task in ("pairs", "scores"):
        assert (out / task / "results.json").exists() and (out / task / "report.md").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"]["scores"]["metric"] == "pearson" and results["tasks"]["pairs"]["metric"] == "matthews"
    pairs = [r for r in results["tasks"]["pairs"]["rows"] if r["method"] == "lora" and r["rank"] == 2]
    low, high = sorted(r["eval_matthews"] for r in pairs)
    median = (low + high) / 2
    report = (out / "report.md").read_text()
    lora = next(line for line in report.splitlines() if line.startswith("| LoRA r=2 |"))
    assert f"| {100 * median:.1f} [{100 * low:.1f}, {100 * high:.1f}] |" in lora  # median [min, max] over seeds
    scores = [r["eval_pearson"] for r in results["tasks"]["scores"]["rows"] if r["method"] == "lora" and r["rank"] == 2]
    assert lora.endswith(f"| {100 * (median + sum(scores) / 2) / 2:.1f} |")  # the mean of the two medians
    assert "| TF-IDF + linear model (logistic; ridge for regression) |" in report
    assert "| A published model | 9 M | 81.5 | 70.0 | 75.8 |" in report
    assert "Pairs (F1)" in report and "Scores (Spearman)" in report  # each task's other scores
    assert "](pairs/accuracy_vs_params.png)" in report and (out / "report.html").stat().st_size > 10_000

    finished = {p: p.stat().st_mtime_ns for p in (out / "scores").glob("*/result.json")}
    code, _, err = run_cli(*args[:-2], "--seeds", "0,1", "--tasks", "scores")  # resumed: nothing to redo
    assert code == 0, err
    assert len(finished) > 5 and {p: p.stat().st_mtime_ns for p in finished} == finished
    assert json.loads((out / "results.json").read_text())["tasks"].keys() == {"pairs", "scores"}  # both kept

    # A task stopped before its study finished has no environment.json: still read by its metric.
    from loralab.report.suite import write_suite_report
    from loralab.study.executors import cpu_name
    from loralab.study.suite import load_suite

    (out / "scores" / "environment.json").unlink()
    write_suite_report(load_suite(suite, only=["scores"]), out)
    lora = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("| LoRA r=2 |"))
    assert f"| {100 * sum(scores) / 2:.1f} [" in lora  # the median of two seeds, not '-'

    # Some of a suite's tasks asked for on their own (--tasks): the others, without results, are left out of
    # the table and its average, and said to be; asked for by the whole suite, they are "not run yet".
    alone = tmp_path / "alone"
    shutil.copytree(out / "scores", alone / "scores")
    record = next((alone / "scores").glob("lora-*/result.json"))  # a run of a session before CPUs were named
    record.write_text(json.dumps({**json.loads(record.read_text()), "device": "cpu"}))
    report = write_suite_report(load_suite(suite), alone, only=["scores"]).read_text()
    assert f"h of runs on cpu and {cpu_name()}; report: [scores/report.md]" in report  # which machines ran the task
    assert "| Method | Trainable parameters | Scores (Pearson) | Avg. |" in report and "(Matthews)" not in report
    assert "other tasks (Pairs) have no results here" in report and "Not run yet" not in report
    assert json.loads((alone / "results.json").read_text())["tasks"].keys() == {"scores"}
    report = write_suite_report(load_suite(suite), alone).read_text()
    assert "| Pairs (Matthews) |" in report and "Not run yet: Pairs" in report


def test_sst2_is_named_by_its_files_not_taken_for_the_labs_imdb_task(tmp_path):
    """SST-2's classes are named as IMDB's (negative, positive); its report still names SST-2's files."""
    from conftest import ROOT
    from loralab.report import build

    shutil.copytree(ROOT / "docs" / "example-report-glue" / "records" / "sst2", tmp_path / "sst2")
    findings = build(tmp_path / "sst2")
    assert findings.labels == ["negative", "positive"] and not findings.sentiment
    assert findings.task == "sst2 (2 classes: negative, positive)" and findings.unit == "rows"
