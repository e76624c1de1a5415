"""The report from a small hand-made results.json: numbers and sentences, missing runs,
and a self-contained HTML page whose plots load in a real browser."""

import json
import re
import shutil
import subprocess

import pytest

from conftest import png_size
from loralab.records import LowrankSummary, RunRecord
from loralab.report import RunTime, build, write_report
from loralab.report.plots import pareto_front


def write_record(folder, name, seconds=60.0, finished="2026-01-01T10:00:00", device="cpu", **parts):
    (folder / name).mkdir(exist_ok=True)
    record = RunRecord(name=name, key="k", seconds=seconds, finished=finished, device=device, **parts)
    (folder / name / "result.json").write_text(json.dumps(record.to_json()))


def hand_made(folder, drop=()):
    rows = [
        {"method": "tfidf-lr", "rank": None, "trainable_params": 25100, "eval_accuracy": 0.84,
         "train_seconds": 0.5, "peak_memory_mb": 500, "history": []},
        {"method": "tfidf-nb", "rank": None, "trainable_params": 50200, "eval_accuracy": 0.832,
         "train_seconds": 0.25, "peak_memory_mb": 500, "history": []},
        {"method": "full", "rank": None, "trainable_params": 1_000_000, "eval_accuracy": 0.9,
         "train_seconds": 1000.0, "peak_memory_mb": 6000,
         "history": [{"epoch": 1, "train_loss": 0.5, "eval_loss": 0.4, "eval_accuracy": 0.88},
                     {"epoch": 2, "train_loss": 0.3, "eval_loss": 0.3, "eval_accuracy": 0.9}]},
        {"method": "head", "rank": None, "trainable_params": 10_000, "eval_accuracy": 0.8,
         "train_seconds": 20.0, "peak_memory_mb": 2000,
         "history": [{"epoch": 1, "train_loss": 0.6, "eval_loss": 0.5, "eval_accuracy": 0.8}]},
        {"method": "approx1", "rank": 8, "trainable_params": 20_000, "eval_accuracy": 0.85},
        {"method": "approx1", "rank": 4, "trainable_params": 15_000, "eval_accuracy": 0.79},
        {"method": "approx2", "rank": 8, "trainable_params": 20_000, "eval_accuracy": 0.86},
        {"method": "approx2", "rank": 4, "trainable_params": 15_000, "eval_accuracy": 0.82},
        {"method": "lora", "rank": 6, "trainable_params": 30_000, "eval_accuracy": 0.882,
         "train_seconds": 500.0, "peak_memory_mb": 3000,
         "history": [{"epoch": 1, "train_loss": 0.45, "eval_loss": 0.35, "eval_accuracy": 0.882}]},
    ]
    rows = [dict({"train_seconds": None, "peak_memory_mb": None, "history": []}, **r) for r in rows
            if r["method"] not in drop]
    (folder / "results.json").write_text(json.dumps(rows))
    if "approx1" not in drop:
        summary = LowrankSummary(headtuned_score=0.8, ranks=[8, 4], full_rank=32,
                                 lowest_rank_above_head={1: 8, 2: 4})
        write_record(folder, "lowrank", lowrank=summary)
    (folder / "environment.json").write_text(json.dumps({
        "model": "minilm", "data": {"train_rows": 2000, "eval_rows": 500, "source": "lab"},
        "loralab": "0.1.0", "torch": "2.13.0", "transformers": "5", "python": "3.11", "device": "cpu",
        "threads": 2, "precision": "bf16", "seed": 0, "total_seconds": 1600.0}))
    return folder


def test_a_study_stopped_part_way_is_reported_as_its_own_task(tmp_path):
    """environment.json is written when a study starts: a study stopped part-way (a GLUE task
    between sessions) is reported with its own data and classes, and says it had not finished."""
    folder = hand_made(tmp_path)
    env = json.loads((folder / "environment.json").read_text())
    env.update(total_seconds=None, labels=["entailment", "not_entailment"],
               data={"train_rows": 2239, "eval_rows": 277, "train_files": ["/data/glue/rte/train.csv"]})
    (folder / "environment.json").write_text(json.dumps(env))
    md = write_report(folder).read_text()
    assert "rte (2 classes: entailment, not_entailment)" in md and "IMDB" not in md
    assert "The last `loralab run` had not finished when this was written" in md and "Total time" not in md


def test_numbers_and_sentences(tmp_path):
    from loralab.report import answers, results_table

    findings = build(hand_made(tmp_path))
    assert findings.head_points_below_full == pytest.approx(10.0)
    assert findings.lowest_rank_above_head == {1: 8, 2: 4}
    assert findings.lora6.eval_accuracy == 0.882 and findings.full.trainable_params == 1_000_000
    assert [b.method for b in findings.baselines] == ["tfidf-lr", "tfidf-nb"]
    assert findings.best_transformer.method == "full"
    text = " ".join(answers(findings))
    assert "reaches 0.8000 eval accuracy, 10.0 points below full fine-tuning (0.9000)" in text
    assert "1.00% of full fine-tuning" in text  # head 10,000 of 1,000,000
    assert "approximated model 1 still beats the head-tuned model's accuracy (0.8000) is r = 8 (0.8500)" in text
    assert "approximated model 2 still beats the head-tuned model's accuracy (0.8000) is r = 4 (0.8200)" in text
    assert "LoRA with r = 6 trains 30,000 parameters, 3.00% of full fine-tuning's 1,000,000" in text
    assert "98.00% of full fine-tuning's 0.9000" in text
    assert "TF-IDF + logistic regression reaches 0.8400 eval accuracy in 0.50 s" in text
    lora_row = next(r for r in results_table(findings.summaries).rows if r[0] == "LoRA r=6")
    assert lora_row[1:5] == ["30,000", "3.00%", "0.8820", "98.00%"]


def test_extracted_adapters_against_trained_lora_and_full(tmp_path):
    from loralab.records import Extracted
    from loralab.report import extraction_lines

    folder = hand_made(tmp_path)
    rows = json.loads((folder / "results.json").read_text())
    made = [("lora", 1, None, 12_000, 0.85), ("lora", 4, None, 20_000, 0.88),
            ("extract", 1, None, 12_500, 0.80), ("extract", 4, None, 21_000, 0.895),
            ("extract", None, 0.9, 40_000, 0.893), ("extract-all", 4, None, 50_000, 0.897)]
    rows += [{"method": m, "rank": r, "energy": e, "trainable_params": p, "eval_accuracy": a}
             for m, r, e, p, a in made]
    (folder / "results.json").write_text(json.dumps(rows))
    write_record(folder, "extract", extracted=[
        Extracted(m, "all-linear" if m == "extract-all" else "query,value", r, e, [r or 2, r or 7], p, 4 * p, 0.5,
                  0.2, f"{m}-{r or e}") for m, r, e, p, _ in made if m != "lora"])
    findings = build(folder)
    text = " ".join(extraction_lines(findings))
    # 0.895 and 0.893 are within 1 point of full's 0.9; the smaller of the two is the rank-4 one
    assert ("smallest extracted adapter within 1 point of full fine-tuning's accuracy (0.9000) is Extracted LoRA "
            "(query, value) r=4: 21,000 parameters (2.10% of the model), 0.8950") in text
    assert "trained LoRA is the better adapter: trained LoRA is more accurate at 1 of 2 ranks" not in text
    assert "neither is better: trained LoRA scores higher at 1 of 2 ranks, by +1.7 points on average" in text
    write_report(folder)
    md = (folder / "report.md").read_text()
    assert "## Adapters extracted from full fine-tuning" in md
    assert "| query,value | energy 0.9 | 2-7 | 40,000 | 156 | 50.0% | 0.2 | 0.8930 | - |" in md
    assert "| Extracted LoRA (query, value) e=0.9 | 40,000 |" in md  # a row of its own in the results table


@pytest.mark.parametrize("eval_counts, says", [
    ([50, 50], "Every trained Transformer model is above the majority class (negative, 0.5000); the lowest, "
               "Head-tuning, reaches 0.8000."),
    ([15, 85], "At or below the majority class (positive, 0.8500), so no better than always predicting it: "
               "Head-tuning."),
])
def test_the_answers_say_whether_each_trained_model_beats_the_majority_class(tmp_path, eval_counts, says):
    from loralab.report import answers

    folder = hand_made(tmp_path)
    env = json.loads((folder / "environment.json").read_text())
    env["class_counts"] = {"train": [1000, 1000], "eval": eval_counts}
    (folder / "environment.json").write_text(json.dumps(env))
    assert says in " ".join(answers(build(folder)))


def test_missing_runs_are_said_missing(tmp_path):
    from loralab.report import answers

    findings = build(hand_made(tmp_path, drop=("full", "approx1", "approx2", "lora")))
    assert findings.full is None and findings.lora6 is None and findings.sweeps == {}
    assert findings.head_points_below_full is None and findings.lowest_rank_above_head == {}
    text = " ".join(answers(findings))
    assert "Head-tuning against full fine-tuning: missing (full not run)" in text
    assert "approximated model 1 beats head-tuning: the sweep is missing" in text
    assert "LoRA r = 6 against full fine-tuning: missing (LoRA r=6, full not run)" in text
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Accuracy against rank: no data" in md and "0.9000" not in md


def test_steps_a_study_left_out_are_said_left_out_not_missing(tmp_path):
    """A GLUE task's study runs no low-rank sweeps and LoRA at rank 8 only (its config.toml
    says so): the lab's questions say those steps were not part of it, and compare the LoRA
    it ran; without the file (or with steps it planned and lost), missing is missing."""
    from loralab.report import answers

    folder = hand_made(tmp_path, drop=("approx1", "approx2", "lora"))
    rows = json.loads((folder / "results.json").read_text())
    rows.append({"method": "lora", "rank": 8, "trainable_params": 40_000, "eval_accuracy": 0.87,
                 "train_seconds": 50.0, "peak_memory_mb": 900, "history": []})
    (folder / "results.json").write_text(json.dumps(rows))
    assert "the sweep is missing" in " ".join(answers(build(folder)))
    (folder / "config.toml").write_text("[methods]\nlowrank = false\nreplace_test = false\nlora_ranks = [8]\n")
    text = " ".join(answers(build(folder)))
    assert "rank sweeps were not part of this study (methods.lowrank = false)" in text
    assert "missing" not in text
    assert "its best LoRA, r = 8, trains 40,000 parameters and reaches 0.8700 eval accuracy, 96.67% of" in text
    (folder / "config.toml").write_text("[methods]\nlora_ranks = [6, 8]\n")  # planned, not run: missing
    text = " ".join(answers(build(folder)))
    assert "the sweep is missing" in text and "LoRA r = 6 against full fine-tuning: missing (LoRA r=6 not run)" in text


def test_the_suite_report_says_what_each_search_cost_on_each_task(tmp_path):
    """A suite's report adds up each method's search on each task (seconds and token-passes)
    and each task's runs; a task without searches is left out of that table."""
    from loralab.records import Search
    from loralab.report.render import markdown_table
    from loralab.report.suite import TaskResult, cost_table

    def searched(name: str, costs: dict) -> TaskResult:
        folder = hand_made(tmp_path / name)
        for method, (seconds, passes) in costs.items():
            write_record(folder, f"search-{method}", seconds=seconds, search=Search(
                method=method, metric="accuracy", learning_rate=1e-4, epochs=4, best_epoch=2, warmup_ratio=0.0,
                weight_decay=0.0, score=0.8, trials=[], budget=4, train_rows=90, validation_rows=10,
                seconds=seconds, token_passes=passes, storage="search.db", study_name=method))
        return TaskResult(name, name.upper(), "accuracy", build(folder))

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    tasks = [searched("a", {"full": (100.0, 2_000_000), "lora": (300.0, 5_000_000)}),
             searched("b", {"lora": (50.0, 1_000_000)}), searched("c", {})]
    text = markdown_table(cost_table(tasks))
    assert "|  | A | B | All |" in text  # C searched nothing
    assert "| Search: LoRA | 300 s (5.0) | 50 s (1.0) | 350 s (6.0) |" in text
    assert "| Search: Full fine-tuning | 100 s (2.0) | - | 100 s (2.0) |" in text
    assert cost_table(tasks[2:]) is None


def test_the_suite_report_sets_every_row_against_full_fine_tuning(tmp_path):
    """The suite's gap table: each row's median minus full fine-tuning's, in points, task by
    task; an adapter extracted from one fine-tune against that fine-tune (the same seed), not
    the median; the mean gap, and the tasks within 1 point."""
    from loralab.report.render import markdown_table
    from loralab.report.suite import TaskResult, gap_table

    def task(name: str, lora: float, extra: list[dict]) -> TaskResult:
        folder = hand_made(tmp_path / name)
        rows = json.loads((folder / "results.json").read_text())
        rows = [dict(r, eval_accuracy=lora) if r["method"] == "lora" else r for r in rows] + extra
        (folder / "results.json").write_text(json.dumps(rows))
        return TaskResult(name, name.upper(), "accuracy", build(folder))

    def row(method, score, seed, rank=None):
        return {"method": method, "rank": rank, "eval_accuracy": score, "seed": seed, "history": []}

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    # b: full fine-tuning 0.9 (hand-made, no seed) and 0.8 (seed 1), median 0.85; extracted from seed 1
    tasks = [task("a", 0.882, []), task("b", 0.89, [row("full", 0.8, 1), row("extract-all", 0.795, 1, 16)])]
    text = markdown_table(gap_table(tasks))
    assert "| Method | A | B | Mean | Within 1 point |" in text
    assert "| LoRA r=6 | -1.8 | +4.0 | +1.1 | 1 of 2 |" in text
    assert "| Head-tuning | -10.0 | -5.0 | -7.5 | 0 of 2 |" in text
    assert "| Extracted LoRA (all linear) r=16 | - | -0.5 | - | 1 of 2 |" in text  # against seed 1's 0.8
    assert "Full fine-tuning |" not in text
    assert gap_table([TaskResult("c", "C", "accuracy", None)]) is None


def test_pareto_front():
    points = [(10, 0.5), (100, 0.9), (50, 0.4), (1000, 0.85), (20, 0.7)]
    assert pareto_front(points) == [0, 4, 1]


def test_files_and_self_contained_html(tmp_path):
    write_report(hand_made(tmp_path))
    for name in ("report.md", "report.html", "accuracy_vs_params.png", "accuracy_vs_rank.png",
                 "training_curves.png", "cost.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert png_size(tmp_path / "accuracy_vs_params.png")[0] > 500
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(http|//)', page)
    assert "Total time of the last `loralab run`: 1,600 s" in (tmp_path / "report.md").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_every_plot_loads_in_headless_chromium(tmp_path):
    write_report(hand_made(tmp_path))
    page = (tmp_path / "report.html").read_text()
    probe = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
             "document.body.setAttribute('data-probe',i.length+':'+i.filter(x=>x.complete&&x.naturalWidth>100).length)})"
             "</script></body>")
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                           "--dump-dom", (tmp_path / "probe.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r'data-probe="(\d+):(\d+)"', proc.stdout)
    assert match, proc.stderr[-2000:]
    assert match.group(1) == match.group(2) == "4"


def hand_made_with_run_folders(tmp_path):
    """The hand-made study, its rows naming the run folders they came from."""
    folder = hand_made(tmp_path)
    rows = json.loads((folder / "results.json").read_text())
    for r, name in zip(rows, ("tfidf-lr", "tfidf-nb", "full", "head")):
        r["run"] = name
    (folder / "results.json").write_text(json.dumps(rows))
    return folder


def test_time_per_run_from_the_run_folders(tmp_path):
    folder = hand_made_with_run_folders(tmp_path)
    env = json.loads((folder / "environment.json").read_text())
    (folder / "environment.json").write_text(json.dumps(dict(env, skipped_runs=2)))
    done = {"full": (3000.4, "2026-01-01T10:00:00"), "head": (80.0, "2026-01-01T11:00:00"),
            "lowrank": (277.0, "2026-01-01T12:00:00"), "lora-r32": (999.0, "2026-01-01T09:00:00")}
    for name, (secs, finished) in done.items():  # lora-r32: a folder left from another study
        write_record(folder, name, secs, finished)
    assert [t[:2] for t in build(folder).times] == [("full", 3000.4), ("head", 80.0), ("lowrank", 277.0)]
    md = write_report(folder).read_text()
    assert "In all: 3,357 s (56 min).\n" in md  # one after another: no overlap to report
    assert "| full | 3,000 |" in md and "lora-r32" not in md
    assert "1,600 s (it skipped 2 runs finished by an earlier one)" in md


def test_runs_side_by_side_report_their_busy_wall_time():
    from loralab.report import busy_seconds

    # a: 10:00-10:10, b: 10:05-10:15 (overlaps a), c: 11:00-11:01 (alone)
    times = [RunTime("a", 600, "2026-01-01T10:10:00", "cpu"), RunTime("b", 600, "2026-01-01T10:15:00", "cpu"),
             RunTime("c", 60, "2026-01-01T11:01:00", "cpu")]
    assert busy_seconds(times) == 900 + 60
    assert busy_seconds(times[:1]) == 600
    assert busy_seconds([RunTime("a", 600, "", "cpu")]) is None


def test_a_study_resumed_on_another_device_says_which_run_ran_where(tmp_path):
    folder = hand_made_with_run_folders(tmp_path)
    for name, device in (("full", "NVIDIA H100 80GB HBM3"), ("head", "cpu")):
        write_record(folder, name, device=device)
    md = write_report(folder).read_text()
    assert "| full | 60 | NVIDIA H100 80GB HBM3 |" in md and "| head | 60 | cpu |" in md


def test_memory_over_the_epochs_shows_growth(tmp_path):
    hand_made(tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())
    for row in rows:
        if row["method"] == "lora":
            row["memory"] = [{"epoch": 1.0, "rss_mb": 1000.0, "peak_rss_mb": 1100.0},
                             {"epoch": 2.0, "rss_mb": 1150.4, "peak_rss_mb": 1234.0}]
    (tmp_path / "results.json").write_text(json.dumps(rows))
    text = write_report(tmp_path).read_text()
    section = text.split("## Memory over the epochs")[1].split("##")[0]
    assert "| LoRA r=6 | 1,000 | 1,150 | +15% | 1,234 |" in section
    assert "Full fine-tuning" not in section  # no memory recorded: not a row of dashes
    assert "## Memory over the epochs" not in write_report(hand_made(tmp_path)).read_text()


def _drawn(monkeypatch):
    """The figures the plot functions draw, kept instead of closed (their files are still written)."""
    import loralab.report.plots as plots

    figures = []
    save = plots._save

    def keep(fig, path, **options):
        figures.append(fig)
        import matplotlib.pyplot as plt

        with plots.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)

    monkeypatch.setattr(plots, "_save", keep)
    return figures, save


def test_point_labels_never_overlap_even_at_one_place():
    from loralab.report.plots import CHAR_WIDTH, LABEL_HEIGHT, label_offsets

    points = [(100.0, 200.0), (101.0, 200.5), (102.0, 199.0), (300.0, 50.0)]  # three at nearly one spot
    texts = ["r=1", "r=2", "r=4", "r=8"]
    boxes = [(x + dx, y + dy, x + dx + CHAR_WIDTH * len(t), y + dy + LABEL_HEIGHT)
             for (x, y), t, (dx, dy) in zip(points, texts, label_offsets(points, texts))]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_approximated_models_on_top_of_each_other_both_show_and_one_epoch_is_an_epoch(tmp_path, monkeypatch):
    from loralab.report.findings import build
    from loralab.report.plots import plot_accuracy_vs_rank, plot_training_curves

    folder = hand_made(tmp_path)
    rows = json.loads((folder / "results.json").read_text())
    for r in rows:  # model 1 exactly on model 2, and every history one epoch long
        if r["method"] == "approx1":
            r["eval_accuracy"] = next(s["eval_accuracy"] for s in rows if s["method"] == "approx2"
                                      and s["rank"] == r["rank"])
        r["history"] = r["history"][:1]
    (folder / "results.json").write_text(json.dumps(rows))
    figures, _ = _drawn(monkeypatch)
    summaries = build(folder).summaries
    assert plot_accuracy_vs_rank(summaries, tmp_path / "rank.png")
    lines = {line.get_label(): line for line in figures[-1].axes[0].get_lines()}
    one, two = lines["Approximated model 1"], lines["Approximated model 2"]
    assert list(one.get_ydata()) == list(two.get_ydata())
    assert (one.get_marker(), one.get_linestyle()) != (two.get_marker(), two.get_linestyle())
    assert one.get_markersize() > two.get_markersize() and one.get_markerfacecolor() == "none"
    assert plot_training_curves(summaries, tmp_path / "curves.png")
    for ax in figures[-1].axes:
        low, high = ax.get_xlim()
        assert low <= 0.5 and high >= 1.5, (low, high)
        assert list(ax.get_xticks()) == [1]


@pytest.mark.slow
@pytest.mark.parametrize("example", ["example-report-glue", "example-report-glue-searched", "example-report-methods"])
def test_the_example_reports_regenerate_from_their_records_line_for_line(tmp_path, example):
    """Every task report kept under docs/ is what `loralab report` writes from the runs'
    records kept beside it: the report (and the configuration under it) did not drift."""
    import shutil

    from conftest import ROOT
    from loralab.report import write_report

    docs = ROOT / "docs" / example
    tasks = sorted(p.name for p in (docs / "records").iterdir() if (p / "environment.json").exists())
    assert tasks
    for task in tasks:
        study = shutil.copytree(docs / "records" / task, tmp_path / task)
        write_report(study, tmp_path / f"{task}-report")
        assert (tmp_path / f"{task}-report" / "report.md").read_text().splitlines() == \
            (docs / task / "report.md").read_text().splitlines(), task
