"""Sentence pairs (#37): two text columns reach the model together, `[CLS] a [SEP] b [SEP]`,
through every command: data, train, evaluate, predict, export, run."""

import csv
import json
import random

import numpy as np
import pytest
import torch

from conftest import count_fraction, write_csv
from loralab.data import DataOptions, load_data
from loralab.training import TrainSettings, tokenize

WORDS = ["film", "plot", "cast", "story", "music", "ending", "scene", "actor", "script", "score"]
FP32 = TrainSettings(precision="fp32", quiet=True, max_length=32)


def write_pairs(folder, n_train=64, n_eval=32, seed=0):
    """Made-up paraphrase pairs: the second sentence repeats the first (same) or not."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_eval)):
        rows = []
        for i in range(n):
            first = " ".join(rng.sample(WORDS, 3))
            second = first if i % 2 else " ".join(rng.sample(WORDS, 3))
            rows.append([first, second, "same" if i % 2 else "different"])
        write_csv(folder / f"{split}.csv", ["sentence1", "sentence2", "label"], rows)
    return folder


def pair_study(folder, model, tables: str):
    """A `loralab run` config on the tiny pair task (written into `folder`, seeds 0 and 1)
    with more TOML `tables` after its [data] table."""
    pairs = write_pairs(folder / "pairs")
    config = folder / "study.toml"
    config.write_text(f'model = "{model}"\nseeds = [0, 1]\n[data]\ntext_column = "sentence1"\n'
                      f'text_pair_column = "sentence2"\ntrain = ["{pairs / "train.csv"}"]\n'
                      f'eval = ["{pairs / "dev.csv"}"]\n' + tables)
    return config


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs")


def pair_data(folder):
    return load_data(train=folder / "train.csv", eval=folder / "dev.csv",
                     options=DataOptions(text_column="sentence1", text_pair_column="sentence2"))


def data_flags(folder):
    return ["--train", folder / "train.csv", "--eval", folder / "dev.csv", "--text-column", "sentence1",
            "--text-pair-column", "sentence2"]


def test_the_tokenized_pair_is_the_tokenizers_own_pair_encoding(pairs, tiny_model_dir):
    from loralab.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    data = pair_data(pairs)
    assert data["train"].column_names == ["text", "text_pair", "label"]
    tokenized = tokenize(data, tokenizer, 32)["train"]
    first, second = data["train"][0]["text"], data["train"][0]["text_pair"]
    own = tokenizer(first, second, truncation="longest_first", max_length=32)
    assert tokenized[0]["input_ids"] == own["input_ids"]
    assert tokenized[0]["token_type_ids"] == own["token_type_ids"] and 1 in own["token_type_ids"]
    sep = tokenizer.sep_token_id
    assert own["input_ids"][0] == tokenizer.cls_token_id and own["input_ids"].count(sep) == 2


def test_the_second_text_reaches_the_model(pairs, tiny_model_dir):
    from transformers import BertConfig, BertForSequenceClassification

    from loralab.models import load_tokenizer
    from loralab.predict import predict_texts

    torch.manual_seed(0)  # weights large enough that every input token moves the answer
    model = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        initializer_range=0.5)).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    probs = predict_texts(model, tokenizer, [("film plot cast", "story music ending"),
                                             ("story music ending", "film plot cast"),  # swapped
                                             ("film plot cast", "actor"),                # another second text
                                             ("film plot cast", "story music ending")], FP32)
    assert abs(probs[0] - probs[1]).max() > 1e-3 and abs(probs[0] - probs[2]).max() > 1e-3
    np.testing.assert_allclose(probs[0], probs[3], atol=1e-6)  # the same pair: the same answer


def test_a_missing_pair_column_and_an_empty_second_text_are_named(pairs, tmp_path, run_cli):
    code, _, err = run_cli("data", *data_flags(pairs)[:-1], "sentence3")
    assert code == 2 and "no column 'sentence3' (--text-pair-column)" in err and "Did you mean 'sentence2'" in err
    rows = (pairs / "dev.csv").read_text().splitlines()
    rows[3] = rows[3].split(",")[0] + ",,same"  # data row 3: no second text
    (pairs / "dev.csv").write_text("\n".join(rows) + "\n")
    code, _, err = run_cli("data", *data_flags(pairs))
    assert code == 2 and "empty or whitespace-only text in column 'sentence1' or 'sentence2': rows 3" in err, err
    code, out, err = run_cli("data", *data_flags(pairs), "--drop-invalid")
    assert code == 0 and "eval: 31 rows" in out, err


def test_pairs_through_train_evaluate_predict_export_and_the_pipeline(pairs, tmp_path, tiny_model_dir, run_cli):
    from transformers import pipeline

    from loralab import predict

    out = tmp_path / "lora"
    code, stdout, err = run_cli("train", "--method", "lora", "--rank", "2", "--model", tiny_model_dir, "--epochs", 2,
                                "--max-length", 32, "--lr", "3e-3", "--init", "kaiming", "--out", out, "--quiet",
                                *data_flags(pairs))
    assert code == 0, err
    info = json.loads((out / "loralab.json").read_text())
    code, stdout, err = run_cli("evaluate", out, "--max-length", 32, "--precision", "fp32", "--quiet",
                                "--eval", pairs / "dev.csv", "--text-column", "sentence1", "--text-pair-column",
                                "sentence2")
    assert code == 0, err
    assert float(stdout.split()[-1]) == pytest.approx(info["eval_accuracy"], abs=1 / 32 + 1e-9)  # bf16 vs fp32

    rows = list(csv.DictReader(open(pairs / "dev.csv")))[:6]
    given = [(r["sentence1"], r["sentence2"]) for r in rows]
    ours = predict(out, given, settings=FP32, progress=False)
    by_file = predict(out, input=str(pairs / "dev.csv"), text_column="sentence1", text_pair_column="sentence2",
                      settings=FP32, progress=False)
    np.testing.assert_allclose(by_file.probabilities[:6], ours.probabilities, atol=1e-6)
    code, stdout, err = run_cli("predict", out, f"{given[0][0]} ||| {given[0][1]}", "--precision", "fp32",
                                "--max-length", 32, "--quiet")
    assert code == 0 and stdout.split("\t")[0] == ours.labels[0], err

    code, _, err = run_cli("export", out, "--out", tmp_path / "merged", "--merge")
    assert code == 0, err
    classify = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None, device="cpu")
    answers = classify([{"text": a, "text_pair": b} for a, b in given])
    for scores, probs in zip(answers, ours.probabilities):
        by_label = {s["label"]: s["score"] for s in scores}
        np.testing.assert_allclose([by_label[c] for c in ours.classes], probs, atol=1e-4)


def test_tfidf_reads_both_texts_of_a_pair(pairs):
    from loralab.baselines import baseline_texts, run_baseline

    data = pair_data(pairs)
    assert baseline_texts(data["train"])[0] == f"{data['train'][0]['text']} [SEP] {data['train'][0]['text_pair']}"
    result = run_baseline("tfidf-lr", data["train"], data["eval"])
    vocabulary = {w for t in baseline_texts(data["train"]) for w in t.replace("[SEP]", "sep").split()}
    assert result.trainable_params == len(vocabulary) + 1  # one coefficient per word, and the intercept
    count_fraction(result.eval_accuracy, 32)


@pytest.mark.slow  # a whole study: the fast tier keeps under 3 minutes (#43)
def test_a_quick_study_on_a_pair_task_runs_every_method_and_reports(pairs, tmp_path, tiny_model_dir, run_cli):
    config = tmp_path / "pairs.toml"
    config.write_text(f'model = "{tiny_model_dir}"\n[data]\ntext_column = "sentence1"\n'
                      'text_pair_column = "sentence2"\n'
                      f'train = ["{pairs / "train.csv"}"]\neval = ["{pairs / "dev.csv"}"]\n')
    code, _, err = run_cli("run", "--quick", "--config", config, "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["method"] for r in rows} >= {"tfidf-lr", "tfidf-nb", "full", "head", "approx1", "approx2", "lora",
                                            "extract", "extract-all"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "same" in report and "## Results" in report


def test_inference_gives_a_pair_its_token_types_as_training_does(pairs, tiny_model_dir):
    """Every loralab inference (predict, evaluate, the study's sweeps) reads a pair with its
    token types, as the Trainer's batches do: the model's own forward on the tokenizer's full
    encoding, not one with every token in segment A."""
    from transformers import BertConfig, BertForSequenceClassification

    from loralab.inference import predict_logits
    from loralab.models import load_tokenizer
    from loralab.predict import predict_texts

    torch.manual_seed(0)  # large weights: segment B's embedding moves the answer
    model = BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        initializer_range=0.5)).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    data = pair_data(pairs)
    firsts, seconds = data["eval"]["text"][:4], data["eval"]["text_pair"][:4]
    encoded = tokenizer(firsts, seconds, padding=True, return_tensors="pt")
    with torch.no_grad():
        own = torch.softmax(model(**encoded).logits, -1).numpy()
        typeless = torch.softmax(model(input_ids=encoded["input_ids"],
                                       attention_mask=encoded["attention_mask"]).logits, -1).numpy()
    assert abs(own - typeless).max() > 1e-3  # the token types matter to this model
    np.testing.assert_allclose(predict_texts(model, tokenizer, list(zip(firsts, seconds)), FP32), own, atol=1e-5)
    logits = predict_logits(model, tokenize(data, tokenizer, 32)["eval"].select(range(4)), tokenizer, FP32)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), -1).numpy(), own, atol=1e-5)
