"""predict and export: same answers as the model itself, and folders the ecosystem loads."""

import csv
import json

import numpy as np
import pytest
import torch

from loralab import export, predict
from loralab.api import load_trained
from loralab.training import TrainSettings

pytestmark = pytest.mark.usefixtures("synthetic_data")  # no test here measures accuracy on IMDB
FP32 = TrainSettings(precision="fp32", quiet=True)
TEXTS = ["A wonderful, moving film with great acting.", "Dull, predictable and far too long.",
         "I laughed, I cried, I loved it.", "The worst film I have seen this year.", "It was fine."]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir, synthetic_data):
    from loralab.cli import main

    out = tmp_path_factory.mktemp("serve") / "lora"
    assert main(["train", "--method", "lora", "--rank", "2", "--model", str(tiny_model_dir), "--limit-train", "48",
                 "--limit-eval", "16", "--epochs", "1", "--max-length", "64", "--lr", "1e-2", "--out", str(out),
                 "--quiet"]) == 0
    return out


def direct_probs(model_dir, texts):
    model, tokenizer = load_trained(model_dir)
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
        return torch.softmax(model.eval()(**batch).logits, -1).numpy()


def test_predict_csv_matches_the_model(lora_dir, tmp_path):
    source = tmp_path / "in.csv"
    with open(source, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "review", "label"])
        writer.writerows([(f"r{i}", t, i % 2) for i, t in enumerate(TEXTS)])
    result = predict(lora_dir, input=str(source), output=tmp_path / "out.csv", settings=FP32, progress=False)
    expected = direct_probs(lora_dir, TEXTS)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(5)]
    assert [r["label"] for r in rows] == [["negative", "positive"][i] for i in expected.argmax(-1)]
    assert [r["row"] for r in rows] == ["1", "2", "3", "4", "5"]  # the input's data rows
    assert set(rows[0]) == {"row", "id", "label", "prob_negative", "prob_positive"}
    assert result.accuracy == pytest.approx(float((expected.argmax(-1) == np.arange(5) % 2).mean()))


def test_predict_jsonl_output_and_cli(lora_dir, tmp_path, run_cli):
    code, out, err = run_cli("predict", lora_dir, *TEXTS[:2], "--precision", "fp32", "--quiet")
    assert code == 0, err
    assert out.splitlines()[0].split("\t")[0] in {"positive", "negative"}
    predict(lora_dir, TEXTS, output=tmp_path / "p.jsonl", settings=FP32, progress=False)
    lines = [json.loads(line) for line in open(tmp_path / "p.jsonl")]
    assert len(lines) == 5 and abs(lines[0]["prob_negative"] + lines[0]["prob_positive"] - 1) < 1e-5


def test_merged_export_loads_in_transformers_pipeline(lora_dir, tmp_path):
    from transformers import pipeline

    out = export(lora_dir, tmp_path / "merged", merge=True)
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    assert not any("lora" in k.lower() for k in json.loads((out / "config.json").read_text()))
    classify = pipeline("text-classification", model=str(out), top_k=None, device="cpu")
    ours = predict(lora_dir, TEXTS, settings=FP32, progress=False)
    for text, scores, probs, label in zip(TEXTS, classify(TEXTS), ours.probabilities, ours.labels):
        by_label = {s["label"]: s["score"] for s in scores}
        assert max(by_label, key=by_label.get) == label
        np.testing.assert_allclose([by_label["negative"], by_label["positive"]], probs, atol=1e-5)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "| rank | 2 |" in card


def test_adapter_export_loads_in_peft(lora_dir, tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    out = export(lora_dir, tmp_path / "adapter")
    assert (out / "adapter_config.json").exists() and "library_name: peft" in (out / "README.md").read_text()
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = load_trained(lora_dir)[1]
    with torch.no_grad():
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        probs = torch.softmax(model(**batch).logits, -1).numpy()
    np.testing.assert_allclose(probs, direct_probs(lora_dir, TEXTS), atol=1e-5)


def _copy(lora_dir, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(lora_dir, folder)
    return folder


@pytest.mark.parametrize("config, says", [
    ([1, 2, 3], "a JSON object with the adapter's fields is expected, not a list"),
    ({"r": "two"}, "the field 'r' must be a positive number, got 'two'"),
    ({"r": "six"}, "the field 'r' must be a positive number, got 'six'"),
    ({"lora_alpha": -1}, "the field 'lora_alpha' must be a positive number, got -1"),
    ({"target_modules": 7}, "the field 'target_modules' must be a name or a list of names, got 7"),
    ({"rank_pattern": {"query": "x"}}, "the field 'rank_pattern' must map layer names to numbers"),
])
def test_an_adapter_config_of_the_wrong_shape_is_refused_by_field(lora_dir, tmp_path, run_cli, config, says):
    folder = _copy(lora_dir, tmp_path)
    path = folder / "adapter_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(config if isinstance(config, list) else {**saved, **config}))
    code, _, err = run_cli("predict", folder, "a film", "--quiet")
    assert code == 2 and f"{path}: {says}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("labels, says", [("not json", "is not valid JSON"), ('["only"]', "two or more distinct"),
                                          ('{"a": 1}', "two or more distinct"), ('["a", "a"]', "two or more distinct")])
def test_malformed_class_metadata_in_an_adapter_is_refused(lora_dir, tmp_path, run_cli, labels, says):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = _copy(lora_dir, tmp_path)
    weights = folder / "adapter_model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        metadata = dict(fh.metadata())
    save_file(load_file(str(weights)), str(weights), metadata={**metadata, "loralab_labels": labels})
    code, _, err = run_cli("predict", folder, "a film", "--quiet")
    assert code == 2 and "loralab_labels" in err and says in err and "Traceback" not in err, err


def test_predict_labels_file_without_a_label_column_and_a_malformed_loralab_json(lora_dir, tmp_path, run_cli):
    source = tmp_path / "in.csv"
    source.write_text("review\nfine\ndull\n")
    code, _, err = run_cli("predict", lora_dir, "--input", source, "--score-against", source, "--quiet")
    assert code == 2 and f"{source}: no column 'label' (--label-column" in err and "Traceback" not in err, err
    unseen = tmp_path / "gold.csv"
    unseen.write_text("review,label\nfine,maybe\ndull,0\n")
    code, _, err = run_cli("predict", lora_dir, "--input", unseen, "--score-against", unseen, "--quiet")
    assert code == 2 and "row 1: label 'maybe'" in err and "with a model trained on these classes" in err, err
    assert "--labels" not in err  # --labels names classes; predict's file of true labels is --score-against
    folder = _copy(lora_dir, tmp_path)
    (folder / "loralab.json").write_text("{broken")
    code, _, err = run_cli("export", folder, "--out", tmp_path / "out")
    assert code == 2 and f"{folder / 'loralab.json'}: not valid JSON" in err, err
