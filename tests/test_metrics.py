"""A task's own metrics (#37): Matthews correlation (CoLA) and the F1 of the positive class
(MRPC) beside accuracy and macro-F1, by hand-counted figures, recorded by every run."""

import json
import math

import pytest

from loralab.metrics import SCORES, classification_metrics


def test_matthews_and_positive_f1_by_hand():
    # true 1 0 0 0, predicted 1 1 0 0: TP 1, FP 1, TN 2, FN 0
    m = classification_metrics([1, 1, 0, 0], [1, 0, 0, 0], ["no", "yes"])
    assert m.accuracy == 0.75
    assert m.f1_positive == pytest.approx(2 / 3)  # 2 TP / (2 TP + FP + FN)
    assert m.matthews == pytest.approx((1 * 2 - 1 * 0) / math.sqrt(2 * 1 * 3 * 2))
    assert m.per_class["yes"]["f1"] == pytest.approx(m.f1_positive)  # the positive class is the second
    three = classification_metrics([0, 1, 2, 2], [0, 1, 2, 1], ["a", "b", "c"])
    assert three.f1_positive is None and three.matthews is not None  # no positive class among three
    assert [three.score(name) is not None for name in SCORES] == [True, True, True, False, False, False, False]


def test_a_run_records_them_and_the_tuned_profile_can_choose_on_them(tmp_path, tiny_model_dir, run_cli,
                                                                     synthetic_data):
    code, _, err = run_cli("train", "--method", "lora", "--rank", "2", "--model", tiny_model_dir, "--limit-train",
                           32, "--limit-eval", 16, "--epochs", 1, "--max-length", 32, "--out", tmp_path / "run",
                           "--quiet")
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "loralab.json").read_text())
    m = classification_metrics(*_predictions_of(info), ["negative", "positive"])
    assert info["eval_matthews"] == pytest.approx(m.matthews)
    assert info["eval_f1_positive"] == pytest.approx(m.f1_positive)
    assert "eval_matthews" in info["history"][-1]

    import datasets

    from loralab.api import choose_learning_rate
    from loralab.training import TrainSettings

    def split(n):
        return datasets.Dataset.from_dict({"text": ["a fine film", "a dull film"] * n, "label": [1, 0] * n})

    chosen = choose_learning_rate("head", [1e-3, 1e-2], datasets.DatasetDict(train=split(8), validation=split(3)),
                                  model=str(tiny_model_dir), settings=TrainSettings(epochs=1, max_length=16,
                                                                                    quiet=True),
                                  work=tmp_path / "work", metric="matthews", extend=False)
    assert chosen.metric == "matthews" and set(chosen.validation_scores["matthews"]) == {repr(1e-3), repr(1e-2)}
    best = max(chosen.validation_scores["matthews"].items(), key=lambda kv: kv[1])[0]
    assert chosen.learning_rate == float(best)


def _predictions_of(info):
    """(predictions, labels) rebuilt from a run's confusion matrix (rows true, columns predicted)."""
    predicted, true = [], []
    for t, row in enumerate(info["confusion"]):
        for p, count in enumerate(row):
            predicted += [p] * count
            true += [t] * count
    return predicted, true
