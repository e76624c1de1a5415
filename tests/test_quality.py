"""Result quality: mean pooling, the validation split, learning rates chosen on it (the
tuned profile), several seeds, and LoRA+."""

import copy
import csv
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_STUDY, count_fraction, tiny_bert, tiny_distilbert
from loralab.adapters import read_adapter
from loralab.errors import LoralabError


def batch(ids: list[list[int]]):
    width = max(map(len, ids))
    input_ids = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return {"input_ids": input_ids, "attention_mask": mask}


# ---------------------------------------------------------------------------------------
# Pooling


@pytest.mark.parametrize("make", [tiny_bert, tiny_distilbert], ids=["bert", "distilbert"])
def test_mean_pooling_reads_the_mean_of_real_tokens_only(make):
    from loralab.pooling import masked_mean, pooling_of, set_pooling

    model = make()
    cls_logits = model(**batch([[5, 6, 7]])).logits
    set_pooling(model, "mean")
    assert pooling_of(model) == "mean"
    alone = model(**batch([[5, 6, 7]])).logits
    padded = model(**batch([[5, 6, 7], [5, 6, 7, 8, 9, 10, 11]])).logits[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=0)  # padding does not move the mean
    assert not torch.allclose(alone, cls_logits, atol=1e-4)  # and it is not the first token
    # what the head reads is exactly the masked mean of the encoder's output
    encoder = getattr(model, model.base_model_prefix)
    b = batch([[5, 6, 7], [5, 6, 7, 8, 9]])
    hidden = encoder(**b).last_hidden_state
    expected = torch.stack([hidden[0, :3].mean(0), hidden[1, :5].mean(0)])
    torch.testing.assert_close(masked_mean(hidden, b["attention_mask"]), expected)
    set_pooling(model, "cls")
    torch.testing.assert_close(model(**batch([[5, 6, 7]])).logits, cls_logits)


def test_mean_pooling_survives_save_load_and_adapters(tmp_path):
    from loralab.adapters import load_adapter, save_adapter
    from loralab.models import load_model
    from loralab.pooling import pooling_of, set_pooling
    from loralab.surgery import inject_lora

    model = set_pooling(tiny_bert(), "mean")
    b = batch([[5, 6, 7], [8, 9]])
    model.save_pretrained(tmp_path / "full")
    loaded = load_model(tmp_path / "full")
    assert pooling_of(loaded) == "mean"
    torch.testing.assert_close(loaded.eval()(**b).logits, model(**b).logits)

    base = tiny_bert()
    base.save_pretrained(tmp_path / "base")
    lora = set_pooling(inject_lora(load_model(tmp_path / "base"), 2), "mean").eval()
    with torch.no_grad():
        for layer in lora.modules():
            if hasattr(layer, "B") and isinstance(layer.B, torch.nn.Parameter):
                layer.B.normal_()
    save_adapter(lora, tmp_path / "adapter")
    again = load_adapter(load_model(tmp_path / "base"), tmp_path / "adapter").eval()
    assert pooling_of(again) == "mean"
    torch.testing.assert_close(again(**b).logits, lora(**b).logits)


def test_cached_mean_features_give_the_models_own_logits():
    """Head-tuning on cached features must see what the whole model's head sees."""
    from loralab.head import encoder, head_forward
    from loralab.pooling import masked_mean, set_pooling

    model = set_pooling(tiny_bert(), "mean")
    b = batch([[5, 6, 7], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        features = masked_mean(encoder(model)(**b).last_hidden_state, b["attention_mask"])
        torch.testing.assert_close(head_forward(model, features, torch.nn.Identity()), model(**b).logits)


def test_export_refuses_a_mean_pooled_model(tmp_path, tiny_model_dir, synthetic_data_dir):
    from loralab.api import train
    from loralab.data import load_data
    from loralab.export import export
    from loralab.training import TrainSettings

    data = load_data(synthetic_data_dir)
    data["train"], data["eval"] = data["train"].select(range(16)), data["eval"].select(range(8))
    settings = TrainSettings(epochs=1, max_length=32, precision="fp32", quiet=True, pooling="mean")
    train("head", tmp_path / "head", str(tiny_model_dir), data, settings)
    assert json.loads((tmp_path / "head" / "loralab.json").read_text())["pooling"] == "mean"
    with pytest.raises(LoralabError, match="pooling mean"):
        export(tmp_path / "head", tmp_path / "exported", merge=True)
    assert not (tmp_path / "exported").exists()


# ---------------------------------------------------------------------------------------
# The validation split


def _dataset(texts, labels):
    import datasets

    return datasets.Dataset.from_dict({"text": texts, "label": labels})


def test_validation_split_is_disjoint_stratified_and_seeded():
    import datasets

    from loralab.data import split_validation

    texts = [f"review {i}" for i in range(200)] + ["duplicate"] * 3 + ["also in eval"]
    labels = [i % 4 == 0 for i in range(200)] + [1, 1, 1, 0]
    labels = [int(x) for x in labels]

    def make():
        return datasets.DatasetDict(train=_dataset(texts, labels),
                                    eval=_dataset(["also in eval", "other"], [0, 1]))

    data = split_validation(make(), 0.2, seed=0)
    train, val, ev = (set(data[s]["text"]) for s in ("train", "validation", "eval"))
    assert not train & val and not val & ev
    assert len(data["train"]) + len(data["validation"]) == len(texts)
    assert 40 <= len(data["validation"]) <= 43
    share = np.mean(data["validation"]["label"])
    assert abs(share - np.mean(labels)) < 0.03  # stratified
    again = split_validation(make(), 0.2, seed=0)
    assert list(again["validation"]["text"]) == list(data["validation"]["text"])
    assert list(split_validation(make(), 0.2, seed=1)["validation"]["text"]) != list(data["validation"]["text"])
    with pytest.raises(LoralabError, match="validation fraction"):
        split_validation(make(), 1.5)


# ---------------------------------------------------------------------------------------
# The tuned profile, seeds and LoRA+ in `loralab run`

TUNED = TINY_STUDY + """
[select]
full = [1e-4, 1e-3]
head = [1e-3, 1e-2]
lora = [1e-3, 3e-3]
lora_rank = 2
"""


@pytest.mark.slow  # a whole study: the fast tier keeps under 3 minutes (#43)
def test_tuned_profile_chooses_on_validation_only(tmp_path, tiny_model_dir, synthetic_data_dir):
    from loralab.config import load_config
    from loralab.study import Context, plan, run_study

    source = synthetic_data_dir
    eval_a = tmp_path / "eval_a.csv"
    eval_b = tmp_path / "eval_b.csv"
    shutil.copy(source / "eval.csv", eval_a)
    with open(source / "eval.csv", newline="", encoding="utf-8") as src:
        rows = list(csv.reader(src))
    with open(eval_b, "w", newline="", encoding="utf-8") as dst:  # another eval set
        csv.writer(dst).writerows([rows[0], *rows[1:][::-1][:40]])
    config_file = tmp_path / "tuned.toml"
    config_file.write_text(TUNED.format(model=tiny_model_dir).replace(
        "[methods]", "[methods]\nlowrank = false\nreplace_test = false\nbaselines = false"))
    out = tmp_path / "out"
    config = load_config(config_file, profile="tuned", out=str(out), **{"data.train": [str(source / "train.csv")],
                                                                         "data.eval": [str(eval_a)]})
    assert config.train.pooling == "mean" and config.data.validation == 0.1
    assert config.lora.init == "kaiming" and load_config().lora.init == "normal"
    ctx = Context(config.data, out)
    data = ctx.data
    train, val, ev = (set(data[s]["text"]) for s in ("train", "validation", "eval"))
    assert val and not train & val and not val & ev
    rows = run_study(config, quiet=True).rows
    choices = {m: json.loads((out / f"select-{m}" / "result.json").read_text()) for m in ("full", "head", "lora")}
    assert sorted(p.name for p in out.iterdir()  # no candidates' scratch left; the study's marker
                  if p.name.startswith(".") and p.name != ".loralab-output.json") == []
    for method, result in choices.items():
        sel = result["selection"]
        assert sel["chosen_on"] == "validation" and sel["validation_rows"] == len(data["validation"])
        assert sel["learning_rate"] in [float(x) for x in sel["validation_accuracy"]]
        run = next(r for r in rows if r.method == method)
        assert run.learning_rate == sel["learning_rate"] and run.chosen_on == "validation"
        assert run.pooling == "mean"

    # Another eval file: the same choices, not even redone (their fingerprints ignore eval).
    other = load_config(config_file, profile="tuned", out=str(out), **{"data.train": [str(source / "train.csv")],
                                                                        "data.eval": [str(eval_b)]})
    new_plan = {r.name: r.key for r in plan(other, Context(other.data, out))}
    old_plan = {r.name: r.key for r in plan(config, ctx)}
    for method in choices:
        assert new_plan[f"select-{method}"] == old_plan[f"select-{method}"] == choices[method]["key"]
    assert new_plan["full"] != old_plan["full"]  # the eval set changed: the final runs are redone


@pytest.mark.slow  # a whole study (several processes): the fast tier keeps under 3 minutes
def test_seeds_run_each_method_once_per_seed_and_report_the_spread(tmp_path, tiny_model_dir, synthetic_data):
    from loralab.config import load_config
    from loralab.report import build, results_table
    from loralab.study import run_study

    config_file = tmp_path / "seeds.toml"
    config_file.write_text(TINY_STUDY.format(model=tiny_model_dir).replace(
        "[methods]", "[methods]\nlowrank = false\nreplace_test = false\nfull = false"))
    config = load_config(config_file, out=str(tmp_path / "out"), seeds=[0, 1])
    rows = run_study(config, quiet=True).rows
    for method in ("head", "lora", "tfidf-lr"):
        assert sorted(r.seed for r in rows if r.method == method) == [0, 1]
    assert (tmp_path / "out" / "lora-r2-seed1" / "model" / "adapter_model.safetensors").exists()
    findings = build(tmp_path / "out")
    accs = sorted(r.eval_accuracy for r in rows if r.method == "lora")
    lora = next(s for s in findings.summaries if s.method == "lora")
    assert (lora.score, lora.score_min, lora.score_max, lora.seeds) == (np.median(accs), *accs, 2)
    row = next(r for r in results_table(findings.summaries).rows if r[0] == "LoRA r=2")
    assert row[3] == f"{np.median(accs):.4f}" and row[4] == f"{accs[0]:.4f}-{accs[1]:.4f} (2 seeds)"
    f1s = sorted(r.eval_macro_f1 for r in rows if r.method == "lora")
    assert row[6] == f"{np.median(f1s):.4f}" and row[7] == f"{f1s[0]:.4f}-{f1s[1]:.4f}"  # macro-F1 over seeds too


def test_lora_plus_gives_b_its_own_learning_rate(tmp_path):
    from transformers import TrainingArguments

    from loralab.surgery import inject_lora
    from loralab.training import optimizer_for

    model = inject_lora(tiny_bert(), 2)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, use_cpu=True, report_to="none")
    assert optimizer_for(model, args, 1.0) is None
    optimizer = optimizer_for(model, args, 16.0)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert rates[id(p)] == (16e-3 if name.endswith(".B") else 1e-3), name
    assert sum(map(len, (g["params"] for g in optimizer.param_groups))) == \
        sum(p.requires_grad for p in model.parameters())
    with pytest.raises(LoralabError, match="LoRA"):
        optimizer_for(copy.deepcopy(tiny_bert()), args, 2.0)


def test_train_cli_tuned_profile_records_its_choice(tmp_path, tiny_model_dir, run_cli, synthetic_data):
    code, out, err = run_cli("train", "--method", "lora", "--rank", "2", "--profile", "tuned", "--model",
                             tiny_model_dir, "--out", tmp_path / "lora", "--limit-train", "60", "--limit-eval",
                             "20", "--epochs", "1", "--max-length", "32", "--lr-ratio", "4", "--quiet")
    assert code == 0, err
    assert "chosen on 6 validation rows" in out
    info = json.loads((tmp_path / "lora" / "loralab.json").read_text())
    assert info["pooling"] == "mean" and info["lr_ratio"] == 4
    assert info["learning_rate"] == info["selection"]["learning_rate"]
    assert info["selection"]["train_rows"] == 54
    assert read_adapter(tmp_path / "lora")[2]["loralab_init"] == "kaiming"  # the tuned profile's init
    assert not (tmp_path / "lora.choose").exists()


def test_choosing_skips_candidates_evaluated_before_and_saves_each_new_one(tmp_path, tiny_model_dir):
    import datasets

    from loralab.api import choose_learning_rate
    from loralab.records import read_json
    from loralab.settings import LoraOptions
    from loralab.training import TrainSettings

    def split(n):
        return datasets.Dataset.from_dict({"text": ["a fine film", "a dull film"] * n, "label": [1, 0] * n})

    data = datasets.DatasetDict(train=split(8), validation=split(3))
    settings, lora, work = TrainSettings(epochs=1, max_length=16, quiet=True), LoraOptions(rank=2), tmp_path / "work"

    def choose(candidates, stop_after=None, **changes):
        seen = []
        if stop_after is not None:  # a kill after `stop_after` candidates: what is on disk then
            from loralab import api

            real = api.write_json

            def write(path, value):
                real(path, value)
                if path.name == "candidates.json":
                    seen.append(dict(value["candidates"]))
                    if len(seen) == stop_after:
                        raise KeyboardInterrupt
            api.write_json = write
        try:
            return choose_learning_rate("lora", candidates, data, model=tiny_model_dir, work=work,
                                        settings=settings.replace(**changes), lora=lora)
        finally:
            if stop_after is not None:
                api.write_json = real

    with pytest.raises(KeyboardInterrupt):
        choose([1e-3, 1e-2], stop_after=1)
    kept = read_json(work / "candidates.json")
    assert list(kept["candidates"]) == [repr(1e-3)]
    kept["candidates"][repr(1e-3)]["scores"]["accuracy"] = 1.5  # 1.5: proves it is not trained again
    (work / "candidates.json").write_text(json.dumps(kept))
    result = choose([1e-3, 1e-2])
    assert result.learning_rate == 1e-3 and result.validation_accuracy[repr(1e-3)] == 1.5
    count_fraction(result.validation_accuracy[repr(1e-2)], 6)  # trained: k of the 6 validation rows
    assert not work.exists()

    with pytest.raises(KeyboardInterrupt):  # other settings: what was kept is not theirs
        choose([1e-3, 1e-2], stop_after=1)
    kept = read_json(work / "candidates.json")
    kept["candidates"][repr(1e-3)]["scores"]["accuracy"] = 1.5
    (work / "candidates.json").write_text(json.dumps(kept))
    result = choose([1e-3, 1e-2], max_length=12)
    count_fraction(result.validation_accuracy[repr(1e-3)], 6)  # trained again, not the 1.5 kept for others

    # The best at the grid's edge: one more candidate a step past it, and a word where it wins again.
    from loralab.report.document import selection_lines

    with pytest.raises(KeyboardInterrupt):
        choose([1e-3, 1e-2], stop_after=1)
    kept = read_json(work / "candidates.json")
    entry = kept["candidates"][repr(1e-3)]
    kept["candidates"] = {repr(lr): {**entry, "scores": {"accuracy": acc, "macro_f1": acc}}
                          for lr, acc in ((1e-3, 0.2), (1e-2, 0.5), (0.1, 0.9))}  # 0.1: a step past 1e-2
    (work / "candidates.json").write_text(json.dumps(kept))
    result = choose([1e-3, 1e-2])
    assert (result.learning_rate, result.beyond_grid, result.at_edge) == (0.1, 0.1, True)
    assert list(result.validation_accuracy) == [repr(1e-3), repr(1e-2), repr(0.1)]
    assert "so 0.1 was tried one step past it; it was best again, so the best rate may lie further out" in \
        selection_lines([result])[0]
