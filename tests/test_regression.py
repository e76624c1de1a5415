"""Regression (#37): a real-valued target per row (STS-B's similarity from 0 to 5), a
one-output head trained with mean squared error, scored by Pearson and Spearman correlation,
through every command: data, train, evaluate, predict, export, run."""

import csv
import json
import random

import numpy as np
import pytest

from conftest import write_csv
from loralab.data import DataOptions, load_data
from loralab.training import TrainSettings

GOOD = ["great", "superb", "fine", "lovely"]
WORDS = ["film", "plot", "cast", "story", "music", "ending", "scene", "actor", "script", "score"]
FP32 = TrainSettings(precision="fp32", quiet=True, max_length=32)


def planted(first: str, second: str) -> float:
    """The planted target: how many "good" words the pair holds, 0 to 4 (plus a fixed offset)."""
    return 0.5 + sum(w in GOOD for w in (first + " " + second).split())


def write_scores(folder, n_train=160, n_eval=48, seed=0):
    """Made-up pairs scored by `planted`, written as sentence1, sentence2, score."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_eval)):
        pairs = [[" ".join(rng.sample(WORDS + GOOD[:rng.randint(0, 2)], 3)) for _ in range(2)] for _ in range(n)]
        write_csv(folder / f"{split}.csv", ["sentence1", "sentence2", "score"],
                  [[a, b, f"{planted(a, b):.1f}"] for a, b in pairs])
    return folder


@pytest.fixture
def scores(tmp_path):
    return write_scores(tmp_path / "scores")


def score_options():
    return DataOptions(text_column="sentence1", text_pair_column="sentence2", label_column="score", task="regression")


def data_flags(folder):
    return ["--train", folder / "train.csv", "--eval", folder / "dev.csv", "--text-column", "sentence1",
            "--text-pair-column", "sentence2", "--label-column", "score", "--task", "regression"]


def test_a_regression_split_holds_numbers(scores):
    data = load_data(train=scores / "train.csv", eval=scores / "dev.csv", options=score_options())
    rows = list(csv.DictReader(open(scores / "train.csv")))
    assert data["train"].features["label"].dtype == "float32"
    np.testing.assert_allclose(data["train"]["label"], [float(r["score"]) for r in rows], rtol=1e-6)


def test_a_target_that_is_no_number_is_named_by_row_and_value(scores, run_cli):
    rows = (scores / "train.csv").read_text().splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ",high"  # data row 3
    (scores / "train.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli("data", *data_flags(scores))
    assert code == 2 and "Traceback" not in err
    assert "train.csv: row 3: the target 'high' in column 'score' is not a number" in err, err
    code, _, err = run_cli("data", *data_flags(scores)[:-2])  # read as classes, a fraction is no class
    assert code == 2 and "row 1: label 0.5 in column 'score' is not a class label" in err, err


def test_regression_scores_by_hand():
    from loralab.metrics import regression_metrics, scores_of

    perfect = regression_metrics([1, 2, 3, 4], [2, 4, 6, 8])
    assert perfect.pearson == pytest.approx(1) and perfect.spearman == pytest.approx(1) and perfect.mse == 7.5
    ranks_only = regression_metrics([1, 2, 3, 10], [1, 2, 3, 4])  # the same order, not a line
    assert ranks_only.spearman == pytest.approx(1) and ranks_only.pearson < 0.95
    assert regression_metrics([3, 3, 3], [1, 2, 3]).pearson == 0  # a constant prediction
    assert scores_of(np.array([[1.0], [2.0], [3.0]]), [1, 2, 3]).pearson == pytest.approx(1)  # one column: a score
    assert scores_of(np.array([[0.0, 1.0], [1.0, 0.0]]), [1, 0]).accuracy == 1  # two: a classifier's logits


def test_the_ridge_baseline_reads_both_texts(scores):
    from loralab.baselines import baseline_texts, run_baseline

    data = load_data(train=scores / "train.csv", eval=scores / "dev.csv", options=score_options())
    result = run_baseline("tfidf-ridge", data["train"], data["eval"])
    vocabulary = {w for t in baseline_texts(data["train"]) for w in t.replace("[SEP]", "sep").split()}
    assert result.trainable_params == len(vocabulary) + 1  # one coefficient per word, and the intercept
    assert result.metrics.accuracy is None and result.metrics.pearson > 0.5  # counting words is what TF-IDF can do


def test_regression_trains_a_one_output_head_whose_predictions_follow_the_planted_score(scores, tmp_path,
                                                                                       tiny_model_dir):
    from loralab import predict, train
    from loralab.models import load_model

    data = load_data(train=scores / "train.csv", eval=scores / "dev.csv", options=score_options())
    info = train("full", tmp_path / "full", str(tiny_model_dir), data,
                 TrainSettings(epochs=10, batch_size=16, learning_rate=3e-3, max_length=32, quiet=True, seed=0))
    m = info.metrics
    assert m.accuracy is None and m.pearson > 0.8 and m.spearman > 0.7, m  # the model learnt the planted score
    assert info.labels == ["score"] and [h["epoch"] for h in info.result.history] == list(range(1, 11))
    saved = load_model(tmp_path / "full")
    assert saved.config.num_labels == 1 and saved.config.problem_type == "regression"
    written = json.loads((tmp_path / "full" / "loralab.json").read_text())
    assert written["eval_pearson"] == m.pearson and written["eval_accuracy"] is None

    rows = list(csv.DictReader(open(scores / "dev.csv")))
    predicted = predict(tmp_path / "full", [(r["sentence1"], r["sentence2"]) for r in rows], settings=FP32,
                        progress=False)
    assert predicted.labels == [] and predicted.scores.shape == (len(rows),)
    assert np.corrcoef(predicted.scores, [float(r["score"]) for r in rows])[0, 1] == pytest.approx(m.pearson, abs=0.02)


def test_regression_through_the_cli_and_the_exported_pipeline(scores, tmp_path, tiny_model_dir, run_cli):
    from transformers import pipeline

    from loralab import predict

    out = tmp_path / "lora"
    code, stdout, err = run_cli("train", "--method", "lora", "--rank", "2", "--model", tiny_model_dir, "--epochs", 2,
                                "--max-length", 32, "--lr", "3e-3", "--init", "kaiming", "--out", out, "--quiet",
                                "--precision", "fp32", *data_flags(scores))
    assert code == 0 and "eval Pearson correlation" in stdout, err
    info = json.loads((out / "loralab.json").read_text())
    code, stdout, err = run_cli("evaluate", out, "--max-length", 32, "--precision", "fp32", "--quiet",
                                "--eval", scores / "dev.csv", "--text-column", "sentence1", "--text-pair-column",
                                "sentence2", "--label-column", "score")  # the model says it is a regression model
    assert code == 0 and "eval Pearson correlation" in stdout, err
    assert float(stdout.split()[-1]) == pytest.approx(info["eval_pearson"], abs=1e-4)  # the Trainer's own evaluation

    rows = list(csv.DictReader(open(scores / "dev.csv")))[:6]
    given = [(r["sentence1"], r["sentence2"]) for r in rows]
    ours = predict(out, given, settings=FP32, progress=False)
    code, stdout, err = run_cli("predict", out, f"{given[0][0]} ||| {given[0][1]}", "--precision", "fp32",
                                "--max-length", 32, "--quiet")
    assert code == 0 and float(stdout.split()[0]) == pytest.approx(float(ours.scores[0]), abs=1e-4), err
    code, _, err = run_cli("predict", out, "--input", scores / "dev.csv", "--text-column", "sentence1",
                           "--text-pair-column", "sentence2", "--output", tmp_path / "scores.csv", "--precision",
                           "fp32", "--max-length", 32, "--quiet")
    assert code == 0, err
    written = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert list(written[0]) == ["row", "score"] and float(written[0]["score"]) == pytest.approx(float(ours.scores[0]),
                                                                                        abs=1e-5)

    code, _, err = run_cli("export", out, "--out", tmp_path / "merged", "--merge")
    assert code == 0, err
    assert "pearsonr" in (tmp_path / "merged" / "README.md").read_text()
    score = pipeline("text-classification", model=str(tmp_path / "merged"), device="cpu")
    answers = score([{"text": a, "text_pair": b} for a, b in given])  # problem_type regression: the raw score
    np.testing.assert_allclose([a["score"] for a in answers], ours.scores, atol=1e-4)


def test_class_weights_and_class_names_are_refused_for_regression(scores, run_cli, tmp_path):
    code, _, err = run_cli("run", "--quick", *data_flags(scores), "--class-weights", "balanced", "--out", tmp_path)
    assert code == 2 and "train.class_weights weighs classes" in err, err
    code, _, err = run_cli("run", "--quick", *data_flags(scores), "--metric", "accuracy", "--out", tmp_path)
    assert code == 2 and "data.metric = 'accuracy' is a classification score" in err, err


@pytest.mark.slow  # a whole study: the fast tier keeps under 3 minutes (#43)
def test_a_quick_study_on_a_regression_task_runs_every_method_and_reports(scores, tmp_path, tiny_model_dir, run_cli):
    config = tmp_path / "stsb.toml"
    config.write_text(f'model = "{tiny_model_dir}"\n[data]\ntext_column = "sentence1"\n'
                      'text_pair_column = "sentence2"\nlabel_column = "score"\ntask = "regression"\n'
                      f'train = ["{scores / "train.csv"}"]\neval = ["{scores / "dev.csv"}"]\n')
    code, stdout, err = run_cli("run", "--quick", "--config", config, "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert "Pearson" in stdout.splitlines()[0]  # the terminal's table leads with the task's score
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["method"] for r in rows} == {"tfidf-ridge", "full", "head", "approx1", "approx2", "lora", "extract",
                                           "extract-all"}
    assert all(r["eval_pearson"] is not None and r["eval_accuracy"] is None for r in rows)
    lowrank = json.loads((tmp_path / "out" / "lowrank" / "result.json").read_text())["lowrank"]
    head = next(r for r in rows if r["method"] == "head")
    assert lowrank["metric"] == "pearson" and lowrank["headtuned_score"] == head["eval_pearson"]
    replace = json.loads((tmp_path / "out" / "replace-test" / "result.json").read_text())["replace_test"]
    full = next(r for r in rows if r["method"] == "full")
    assert replace["metric"] == "pearson" and replace["original_score"] == pytest.approx(full["eval_pearson"], abs=0.05)
    assert replace["chance_score"] == 0 and replace["restored_logits_identical"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Pearson correlation against trainable parameters on scores (regression" in report
    assert "| Eval Pearson correlation | " in report or "Eval Pearson correlation" in report
    assert "TF-IDF + ridge regression" in report and "Macro-F1 is" not in report
