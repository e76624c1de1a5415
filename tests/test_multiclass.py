"""Any text-classification task: K classes with names, from the data through training,
saving, loading, predicting and exporting; parameter counts that follow K."""

import csv
import json

import pytest

from conftest import png_size
from loralab.errors import LoralabError
from loralab.models import load_model
from loralab.surgery import freeze_all_but_head, inject_lora

FRUIT = {"apple": ["crisp", "red", "orchard"], "banana": ["yellow", "peel", "tropical"],
         "cherry": ["stone", "dark", "sweet"]}


def write_fruit(folder, n_train=60, n_eval=30):
    """A 3-class data set with string labels that a tiny model can learn."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(FRUIT)
    for split, n in (("train", n_train), ("eval", n_eval)):
        with open(folder / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            for i in range(n):
                name = names[i % 3]
                words = FRUIT[name]
                writer.writerow([f"{words[i % 3]} {words[(i + 1) % 3]} {split} number {i}", name])
    return folder


@pytest.mark.parametrize("k, head", [(2, 148_610), (5, 149_765), (6, 150_150)])
def test_head_and_lora_counts_follow_the_number_of_classes(k, head):
    """Head-tuning of the default model trains 147,840 + 385 K parameters; LoRA r = 6 adds
    its 55,296 adapter parameters to that."""
    labels = [f"class {i}" for i in range(k)]
    from loralab.models import num_trainable_parameters

    assert head == 147_840 + 385 * k
    model = load_model("minilm", labels)
    assert model.config.num_labels == k and model.config.id2label[k - 1] == f"class {k - 1}"
    assert num_trainable_parameters(freeze_all_but_head(model)) == head
    assert num_trainable_parameters(inject_lora(load_model("minilm", labels), 6)) == head + 55_296


def test_string_labels_through_train_save_predict_export_and_pipeline(tmp_path, tiny_model_dir, run_cli):
    import transformers

    from loralab import predict

    data = write_fruit(tmp_path / "fruit")
    common = ["--model", tiny_model_dir, "--data", data, "--text-column", "text", "--epochs", "3",
              "--max-length", "16", "--lr", "1e-2", "--quiet"]
    code, out, err = run_cli("train", "--method", "lora", "--rank", "2", "--out", tmp_path / "lora", *common)
    assert code == 0, err
    info = json.loads((tmp_path / "lora" / "loralab.json").read_text())
    assert info["labels"] == ["apple", "banana", "cherry"]
    f1s = [c["f1"] for c in info["per_class"].values()]
    assert info["eval_macro_f1"] == pytest.approx(sum(f1s) / 3)  # macro-F1 is the classes' mean F1
    assert set(info["per_class"]) == {"apple", "banana", "cherry"}
    assert sum(c["support"] for c in info["per_class"].values()) == 30

    texts = ["crisp red orchard", "yellow peel tropical", "stone dark sweet"]
    result = predict(tmp_path / "lora", texts, output=tmp_path / "p.csv", progress=False)
    assert set(result.labels) <= set(FRUIT) and result.probabilities.shape == (3, 3)
    header = next(csv.reader(open(tmp_path / "p.csv")))
    assert header == ["row", "text", "label", "prob_apple", "prob_banana", "prob_cherry"]  # texts given: echoed

    code, _, err = run_cli("export", tmp_path / "lora", "--out", tmp_path / "merged", "--merge")
    assert code == 0, err
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["id2label"] == {"0": "apple", "1": "banana", "2": "cherry"}
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "| 2 | cherry |" in card and "3-class text classification" in card and "imdb" not in card
    classify = transformers.pipeline("text-classification", model=str(tmp_path / "merged"), device="cpu")
    assert [r["label"] for r in classify(texts)] == result.labels

    code, _, err = run_cli("export", tmp_path / "lora", "--out", tmp_path / "adapter")
    assert code == 0, err
    assert "num_labels=len(labels)" in (tmp_path / "adapter" / "README.md").read_text()


def test_an_adapter_or_model_for_other_classes_is_refused_with_both_sets(tmp_path, tiny_model_dir):
    from loralab import evaluate, load_adapter, save_adapter
    from loralab.data import load_data
    from loralab.errors import ModelLoadError

    model = inject_lora(load_model(tiny_model_dir, ["apple", "banana", "cherry"]), 2)
    save_adapter(model, tmp_path / "adapter")
    with pytest.raises(ModelLoadError, match="trained for the classes 'apple', 'banana', 'cherry'; the model "
                                             "given has 'negative', 'positive'"):
        load_adapter(load_model(tiny_model_dir), tmp_path / "adapter")
    assert load_adapter(None, tmp_path / "adapter").config.num_labels == 3  # by name: the adapter's classes

    fruit = write_fruit(tmp_path / "fruit")
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "train.csv").write_text("text,label\na,0\nb,1\n")
    (binary / "eval.csv").write_text("text,label\na,0\nb,1\n")
    with pytest.raises(LoralabError, match="the data has 'negative', 'positive'"):
        from loralab.data import DataOptions

        evaluate(tmp_path / "adapter", data=load_data(binary, options=DataOptions(text_column="text")))
    assert load_data(fruit, options=DataOptions(text_column="text"))["eval"].features["label"].num_classes == 3


@pytest.mark.slow  # a whole study: the fast tier keeps under 3 minutes (#43)
def test_a_three_class_study_runs_every_method_and_writes_its_report(tmp_path, tiny_model_dir, run_cli):
    """`loralab run --quick` on a made-up 3-class data set: every method, then the report."""
    from loralab.records import read_rows
    from loralab.report import build

    data = write_fruit(tmp_path / "fruit")
    config = tmp_path / "fruit.toml"
    config.write_text(f'model = "{tiny_model_dir}"\n[data]\ndir = "{data}"\ntext_column = "text"\n'
                      '[train]\nmax_length = 16\nlearning_rate = 1e-3\n')
    code, out, err = run_cli("run", "--quick", "--config", config, "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    rows = read_rows(tmp_path / "out" / "results.json")
    assert {r.method for r in rows} == {"tfidf-lr", "tfidf-nb", "full", "head", "approx1", "approx2", "lora",
                                        "extract", "extract-all"}
    assert all(r.eval_macro_f1 is not None for r in rows)
    from sklearn.feature_extraction.text import TfidfVectorizer

    train_texts = [row[0] for row in list(csv.reader(open(data / "train.csv")))[1:]]
    features = len(TfidfVectorizer().fit(train_texts).vocabulary_)
    lr = next(r for r in rows if r.method == "tfidf-lr")
    assert lr.trainable_params == 3 * (features + 1)  # one weight per class and feature, and an intercept
    findings = build(tmp_path / "out")
    assert findings.replace_test.chance_score == pytest.approx(1 / 3)
    assert findings.labels == ["apple", "banana", "cherry"] and not findings.sentiment
    assert findings.majority_class == ("apple", pytest.approx(1 / 3))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "on fruit (3 classes: apple, banana, cherry)" in md and "| method | apple | banana | cherry |" in md
    assert "review" not in md and "positive" not in md and "IMDB" not in md
    assert "Eval macro-F1" in md and png_size(tmp_path / "out" / "confusion.png")[0] > 500


def test_balanced_class_weights_are_the_inverse_frequencies_and_reach_the_loss(tmp_path, tiny_model_dir):
    import torch

    from loralab.metrics import class_weights, weighted_loss

    weights = class_weights([0, 0, 0, 1, 2, 2], 4, "balanced")  # class 3 is absent
    torch.testing.assert_close(weights, torch.tensor([6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2), 0.0]))
    assert class_weights([0, 1], 2, "none") is None and weighted_loss(None) is None
    logits, labels = torch.randn(6, 4), torch.tensor([0, 0, 0, 1, 2, 2])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    torch.testing.assert_close(weighted_loss(weights)({"logits": logits}, labels), expected)


def test_class_weights_and_the_selection_metric_are_settings_of_the_run(tmp_path, run_cli, tiny_model_dir):
    from loralab.config import load_config

    with pytest.raises(LoralabError, match="select.metric must be one of accuracy, macro_f1"):
        load_config(None, profile="tuned", **{"select.metric": "f1"})
    data = write_fruit(tmp_path / "fruit", n_train=30, n_eval=9)
    code, _, err = run_cli("train", "--method", "head", "--model", tiny_model_dir, "--data", data, "--text-column",
                           "text", "--epochs", "1", "--max-length", "16", "--class-weights", "balanced",
                           "--out", tmp_path / "head", "--quiet")
    assert code == 0, err
