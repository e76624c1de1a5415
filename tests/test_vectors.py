"""VeRA and IA3 (#35): adapters that train vectors. loralab's layers against their formulas
and against PEFT's, both ways through the saved adapter; merging; parameter counts."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import tiny_bert
from loralab import load_adapter, merge_and_unload, save_adapter
from loralab.surgery import adapter_layers, head_modules, inject_ia3, inject_vera
from loralab.vectors import IA3, VeRA, vera_projections

IDS = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def head_size(model) -> int:
    return sum(p.numel() for name in head_modules(model) for p in model.get_submodule(name).parameters())


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trained_vera(rank=4, seed=0):
    """A tiny model with VeRA layers whose vectors and head are away from their start."""
    model = inject_vera(tiny_bert(seed=seed), rank, seed=7)
    torch.manual_seed(seed + 10)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lambda_b.normal_()
            layer.lambda_d.normal_()
        model.classifier.weight.normal_()
    return model


def trained_ia3(seed=0):
    model = inject_ia3(tiny_bert(seed=seed))
    torch.manual_seed(seed + 10)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.scale.mul_(1 + 0.5 * torch.randn_like(layer.scale))
        model.classifier.weight.normal_()
    return model


# --- VeRA ---------------------------------------------------------------------------------

def test_vera_starts_as_the_base_model_and_costs_out_plus_r_a_layer():
    base = tiny_bert()
    model = inject_vera(tiny_bert(), 5)
    torch.testing.assert_close(logits(model), logits(base), atol=1e-6, rtol=0)  # b = 0
    layers = adapter_layers(model)
    assert set(layers) == {f"bert.encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "value")}
    assert trainable(model) == sum(m.out_features + 5 for m in layers.values()) + head_size(model)
    first, *others = layers.values()
    assert all(m.A.data_ptr() == first.A.data_ptr() for m in others)  # one shared pair, not copies


def test_vera_layer_is_its_formula_with_shared_projections_sliced():
    a, b = vera_projections(3, 12, 9, seed=1)
    layer = VeRA(nn.Linear(10, 7), a, b)  # a smaller layer than the projections: A[:, :10], B[:7]
    with torch.no_grad():
        layer.lambda_b.normal_()
        layer.lambda_d.normal_()
    x = torch.randn(4, 10)
    delta = layer.lambda_b[:, None] * b[:7] @ torch.diag(layer.lambda_d) @ a[:, :10]
    torch.testing.assert_close(layer(x), layer.base(x) + x @ delta.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.delta_weight(), delta.detach(), atol=1e-6, rtol=0)
    layer(x).sum().backward()
    assert layer.A.grad is None and layer.lambda_b.grad is not None and layer.lambda_d.grad is not None


def test_vera_projections_are_peft_draws_for_the_same_seed():
    from peft import VeraConfig, get_peft_model

    peft_model = get_peft_model(tiny_bert(), VeraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS",
                                                        projection_prng_key=11))
    a, b = vera_projections(4, 32, 32, seed=11)
    assert torch.equal(peft_model.base_model.vera_A["default"], a)
    assert torch.equal(peft_model.base_model.vera_B["default"], b)


def test_loralab_vera_loads_in_peft_and_back_with_the_same_logits(tmp_path):
    from peft import PeftModel

    model = trained_vera()
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "VERA" and config["r"] == 4 and config["projection_prng_key"] == 7
    peft_model = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(peft_model), logits(model), atol=1e-5, rtol=0)
    loaded = load_adapter(tiny_bert(), tmp_path)
    assert all(isinstance(m, VeRA) for m in adapter_layers(loaded).values())
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-5, rtol=0)


@pytest.mark.parametrize("save_projection", [True, False])
def test_peft_vera_loads_in_loralab_with_the_same_logits(tmp_path, save_projection):
    from peft import VeraConfig, get_peft_model

    peft_model = get_peft_model(tiny_bert(), VeraConfig(r=6, target_modules=["query", "value"], task_type="SEQ_CLS",
                                                        projection_prng_key=3, save_projection=save_projection,
                                                        modules_to_save=["bert.pooler"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "vera_lambda" in name or "modules_to_save" in name:
                param.normal_()
    peft_model.save_pretrained(tmp_path)
    loaded = load_adapter(tiny_bert(), tmp_path)  # without the projections saved, drawn again from the seed
    torch.testing.assert_close(logits(loaded), logits(peft_model), atol=1e-5, rtol=0)


def test_vera_merge_and_unload_equals_the_unmerged_model():
    model = trained_vera()
    before = logits(model)
    layer = next(iter(adapter_layers(model).values()))
    w0 = layer.base.weight.clone()
    layer.merge()
    torch.testing.assert_close(layer.original_weight(), w0, atol=1e-6, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    merged = merge_and_unload(model)
    assert not adapter_layers(merged)
    torch.testing.assert_close(logits(merged), before, atol=1e-5, rtol=0)


@pytest.mark.slow  # processes of their own, started and signalled: the slow tier
def test_vera_saved_adapter_reproduces_in_a_new_process(tmp_path):
    model = trained_vera(seed=1)
    save_adapter(model, tmp_path / "vera")
    script = (
        "import sys, torch\n"
        "sys.path.insert(0, 'tests')\n"
        "from conftest import tiny_bert\n"
        "from loralab import load_adapter\n"
        "ids = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(0))\n"
        f"model = load_adapter(tiny_bert(seed=1), {str(tmp_path / 'vera')!r}).eval()\n"
        "with torch.no_grad():\n"
        f"    torch.save(model(input_ids=ids).logits, {str(tmp_path / 'logits.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), logits(model), atol=1e-6, rtol=0)


# --- IA3 ----------------------------------------------------------------------------------

def test_ia3_scales_keys_values_and_the_feed_forward_activations_by_default():
    base = tiny_bert()
    model = inject_ia3(tiny_bert())
    torch.testing.assert_close(logits(model), logits(base), atol=1e-6, rtol=0)  # every vector starts at one
    layers = adapter_layers(model)
    outputs = {f"bert.encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("key", "value")}
    inputs = {f"bert.encoder.layer.{i}.output.dense" for i in (0, 1)}  # not attention.output.dense
    assert set(layers) == outputs | inputs
    assert {n for n, m in layers.items() if m.feedforward} == inputs
    assert trainable(model) == 4 * 32 + 2 * 64 + head_size(model)  # out per key/value, in (64) per FFN layer


def test_ia3_layer_is_its_formula_and_merges_both_ways():
    torch.manual_seed(0)
    x = torch.randn(4, 10)
    for feedforward in (False, True):
        layer = IA3(nn.Linear(10, 7), feedforward=feedforward)
        with torch.no_grad():
            layer.scale.uniform_(0.5, 1.5)
        w, bias = layer.base.weight.detach().clone(), layer.base.bias.detach().clone()
        want = (nn.functional.linear(x * layer.scale, w, bias) if feedforward
                else nn.functional.linear(x, w, bias) * layer.scale)
        torch.testing.assert_close(layer(x), want.detach(), atol=1e-6, rtol=0)
        layer.merge()
        torch.testing.assert_close(layer(x), want.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.original_weight(), w, atol=1e-6, rtol=0)
        layer.unmerge()
        torch.testing.assert_close(layer.base.weight, w, atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.base.bias, bias, atol=1e-6, rtol=0)


def test_ia3_merge_and_unload_equals_the_unmerged_model():
    model = trained_ia3()
    before = logits(model)
    merged = merge_and_unload(model)
    assert not adapter_layers(merged)
    torch.testing.assert_close(logits(merged), before, atol=1e-5, rtol=0)


def test_loralab_ia3_loads_in_peft_and_back_with_the_same_logits(tmp_path):
    from peft import PeftModel

    model = trained_ia3()
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3" and len(config["feedforward_modules"]) == 2
    peft_model = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(peft_model), logits(model), atol=1e-5, rtol=0)
    loaded = load_adapter(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-5, rtol=0)


def test_peft_ia3_loads_in_loralab_with_the_same_logits(tmp_path):
    from peft import IA3Config, get_peft_model

    config = IA3Config(task_type="SEQ_CLS", target_modules=["key", "value", "intermediate.dense", "output.dense"],
                       feedforward_modules=["output.dense"], modules_to_save=["bert.pooler"])
    peft_model = get_peft_model(tiny_bert(), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "ia3_l" in name:
                param.uniform_(0.5, 1.5)
            elif "modules_to_save" in name:
                param.normal_()
    peft_model.save_pretrained(tmp_path)
    loaded = load_adapter(tiny_bert(), tmp_path)
    layers = adapter_layers(loaded)
    assert layers["bert.encoder.layer.0.intermediate.dense"].feedforward is False
    assert layers["bert.encoder.layer.0.output.dense"].feedforward is True
    assert layers["bert.encoder.layer.0.attention.output.dense"].feedforward is True  # PEFT's suffix rule, kept
    torch.testing.assert_close(logits(loaded), logits(peft_model), atol=1e-5, rtol=0)


def test_a_model_mixing_kinds_of_adapters_is_not_saved_as_one(tmp_path):
    from loralab import inject_lora
    from loralab.errors import ModelLoadError

    model = inject_ia3(inject_lora(tiny_bert(), 2), targets="key")
    with pytest.raises(ModelLoadError, match="mixes IA3, LORA"):
        save_adapter(model, tmp_path)


# --- through the CLI, the study and the report -----------------------------------------

@pytest.mark.parametrize("method", ["vera", "ia3"])
def test_train_predict_and_merged_export_agree(tmp_path, tiny_model_dir, run_cli, method):
    from transformers import pipeline

    from loralab import predict
    from loralab.training import TrainSettings
    from test_pairs import write_pairs

    pairs = write_pairs(tmp_path / "pairs")
    out = tmp_path / method
    code, stdout, err = run_cli("train", "--method", method, *(["--rank", "16"] if method == "vera" else []),
                                "--model", tiny_model_dir, "--train", pairs / "train.csv", "--eval", pairs / "dev.csv",
                                "--text-column", "sentence1", "--text-pair-column", "sentence2", "--epochs", "1",
                                "--learning-rate", "1e-2", "--max-length", "32", "--out", out, "--quiet")
    assert code == 0, err
    saved = json.loads((out / "loralab.json").read_text())
    head = (32 * 32 + 32) + (32 * 2 + 2)  # the pooler and the classifier
    adapters = 4 * (32 + 16) if method == "vera" else 4 * 32 + 2 * 64  # query/value: out + r; key/value out, FFN in
    assert saved["method"] == method and saved["trainable_params"] == adapters + head
    assert saved["rank"] == (16 if method == "vera" else None)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == method.upper()
    code, printed, err = run_cli("evaluate", out, "--eval", pairs / "dev.csv", "--text-column", "sentence1",
                                 "--text-pair-column", "sentence2", "--max-length", "32", "--precision", "fp32",
                                 "--quiet")
    assert code == 0 and "eval accuracy" in printed, err
    settings = TrainSettings(precision="fp32", max_length=32, quiet=True)
    given = [("film plot cast", "film plot cast"), ("music ending scene", "actor script score")]
    ours = predict(out, given, settings=settings, progress=False)
    code, _, err = run_cli("export", out, "--out", tmp_path / "merged", "--merge")
    assert code == 0, err
    classify = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None, device="cpu")
    for scores, probs in zip(classify([{"text": a, "text_pair": b} for a, b in given]), ours.probabilities):
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label[c] for c in ours.classes] == pytest.approx(list(probs), abs=1e-4)


@pytest.mark.slow  # a tuned study of LoRA, VeRA and IA3 with 2 seeds: a minute or more
def test_a_study_compares_the_adapters_at_their_budgets(tmp_path, tiny_model_dir, run_cli):
    from test_pairs import pair_study

    config = pair_study(tmp_path, tiny_model_dir, '[vera]\nrank = 8\n[methods]\nvariants = ["vera", "ia3"]\n'
                        'lora_ranks = [2]\nlowrank = false\nextract = false\nreplace_test = false\nfull = false\n')
    code, _, err = run_cli("run", "--quick", "--profile", "tuned", "--config", config, "--out", tmp_path / "out",
                           "--quiet")
    assert code == 0, err
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted((r["rank"], r["seed"]) for r in rows if r["method"] == "vera") == [(8, 0), (8, 1)]
    assert sorted(r["seed"] for r in rows if r["method"] == "ia3") == [0, 1]
    assert (tmp_path / "out" / "vera-r8-seed1" / "model" / "adapter_config.json").exists()
    assert (tmp_path / "out" / "ia3-seed0" / "model" / "adapter_config.json").exists()
    for method, grid in (("vera", {"0.003", "0.01", "0.03"}), ("ia3", {"0.001", "0.003", "0.01"})):  # their own
        selected = json.loads((tmp_path / "out" / f"select-{method}" / "result.json").read_text())["selection"]
        assert set(selected["validation_accuracy"]) >= grid
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Which adapter at which budget" in report and "Up to " in report


def test_vera_rate_choice_is_said_at_its_own_rank_and_loras_at_every_rank():
    from loralab.records import Selection
    from loralab.report.document import selection_lines

    def chosen(method, rank):
        return Selection(method, 1e-2, 90, 10, 3.0, "mean", {"0.003": 0.5, "0.01": 0.6}, rank=rank)

    vera, lora, ia3 = selection_lines([chosen("vera", 256), chosen("lora", 6), chosen("ia3", None)], "rows")
    assert vera.startswith("VeRA (at r = 256): learning rate 0.01")
    assert lora.startswith("LoRA (at r = 6, used at every rank): learning rate 0.01")
    assert ia3.startswith("IA3: learning rate 0.01")
