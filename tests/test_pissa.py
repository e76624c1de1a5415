"""PiSSA (#35): LoRA started from W0's principal singular directions, the base holding the
residual; saved as a rank-2r LoRA adapter of the unchanged base (PEFT's conversion), so
adapters share one base model. Against PEFT's PiSSA both ways."""

import json

import pytest
import torch
from torch import nn

from conftest import tiny_bert
from loralab import inject_lora, load_adapter, lora_layers, merge_and_unload, save_adapter
from loralab.lora import LoRA, PiSSA

IDS = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def trained_pissa(rank=2, seed=0):
    model = inject_lora(tiny_bert(seed=seed), rank, variant="pissa")
    torch.manual_seed(seed + 10)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.A.add_(0.3 * torch.randn_like(layer.A))
            layer.B.add_(0.3 * torch.randn_like(layer.B))
        model.classifier.weight.normal_()
    return model


def test_pissa_starts_as_the_base_model_from_its_principal_part():
    base = tiny_bert()
    model = inject_lora(tiny_bert(), 3, variant="pissa")
    torch.testing.assert_close(logits(model), logits(base), atol=1e-5, rtol=0)
    name, layer = next(iter(lora_layers(model).items()))
    w0 = base.get_submodule(name).weight
    u, s, vh = torch.linalg.svd(w0)
    torch.testing.assert_close(layer.scaling * (layer.A @ layer.B).T, u[:, :3] @ torch.diag(s[:3]) @ vh[:3],
                               atol=1e-5, rtol=0)  # the top-3 part of W0
    torch.testing.assert_close(layer.original_weight(), w0, atol=1e-5, rtol=0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = inject_lora(tiny_bert(), 3)
    assert trainable == sum(p.numel() for p in lora.parameters() if p.requires_grad)  # LoRA's count at rank r


def test_the_saved_adapter_on_the_unchanged_base_equals_the_trained_model(tmp_path):
    model = trained_pissa()
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)  # rank 2r, the same scale alpha / r
    loaded = load_adapter(tiny_bert(), tmp_path)  # the unchanged base, not the residual
    assert all(type(layer) is LoRA and layer.rank == 4 for layer in lora_layers(loaded).values())
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-5, rtol=0)
    other = trained_pissa(seed=0)  # a second PiSSA adapter shares the same base model
    with torch.no_grad():
        next(iter(lora_layers(other).values())).B.mul_(2)
    save_adapter(other, tmp_path / "second")
    torch.testing.assert_close(logits(load_adapter(tiny_bert(), tmp_path / "second")), logits(other), atol=1e-5,
                               rtol=0)


def test_an_adapter_of_large_layers_names_its_own_base_model(tmp_path):
    # The residual plus A0 B0 is W0 up to float32 round-off, which flips about one in 30,000
    # of W0's bfloat16 values: the base fingerprint of a saved adapter must not see it (it
    # did, and a PiSSA adapter of every linear layer said it was trained on another base).
    from transformers import BertConfig, BertForSequenceClassification

    def base():
        torch.manual_seed(0)
        return BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=128, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=256)).eval()

    model = base()
    rounded = {n: m.weight.to(torch.bfloat16) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    inject_lora(model, 2, targets="all-linear", variant="pissa")
    flipped = sum(int((layer.original_weight().to(torch.bfloat16) != rounded[n]).sum())
                  for n, layer in lora_layers(model).items())
    assert flipped > 0  # the round-off this test is about does happen here
    save_adapter(model, tmp_path)
    torch.testing.assert_close(logits(load_adapter(base(), tmp_path)), logits(model), atol=1e-5, rtol=0)


def test_merge_and_unload_equals_the_unmerged_model():
    model = trained_pissa()
    before = logits(model)
    torch.testing.assert_close(logits(merge_and_unload(model)), before, atol=1e-5, rtol=0)


def test_peft_pissa_and_loralab_pissa_agree_both_ways(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file, save_file

    peft_model = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                        target_modules=["query", "value"],
                                                        modules_to_save=["bert.pooler"], init_lora_weights="pissa"))
    ours = inject_lora(tiny_bert(), 2, alpha=4, variant="pissa")
    for name, layer in lora_layers(ours).items():  # the same start from the same W0 (up to the SVD's signs)
        theirs = peft_model.base_model.model.get_submodule(name)
        product = theirs.lora_B["default"].weight @ theirs.lora_A["default"].weight
        torch.testing.assert_close((layer.A @ layer.B).T, product, atol=1e-5, rtol=0)
        torch.testing.assert_close(layer.base.weight, theirs.base_layer.weight, atol=1e-5, rtol=0)
    peft_model.peft_config["default"].init_lora_weights = True
    peft_model.save_pretrained(tmp_path / "init")
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(0.3 * torch.randn_like(param))
            elif "modules_to_save" in name:
                param.normal_()
    peft_model.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "init"))
    # PEFT's conversion leaves out modules_to_save (the trained head): take it from a plain save.
    peft_model.save_pretrained(tmp_path / "plain")
    converted = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert not any("classifier" in key for key in converted)
    head = {k: v for k, v in load_file(tmp_path / "plain" / "adapter_model.safetensors").items() if "lora_" not in k}
    save_file({**converted, **head}, tmp_path / "peft" / "adapter_model.safetensors")
    loaded = load_adapter(tiny_bert(), tmp_path / "peft")  # PEFT's converted adapter, on the unchanged base
    torch.testing.assert_close(logits(loaded), logits(peft_model), atol=1e-5, rtol=0)

    model = trained_pissa()
    save_adapter(model, tmp_path / "ours")
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours")), logits(model),
                               atol=1e-5, rtol=0)


def test_pissa_layer_keeps_its_start_and_a_reset_goes_back_to_it():
    torch.manual_seed(0)
    layer = PiSSA(nn.Linear(10, 6), rank=2, alpha=4)
    start = layer.A.detach().clone()
    with torch.no_grad():
        layer.A.add_(1.0)
    layer.reset_parameters()
    torch.testing.assert_close(layer.A.detach(), start)


def test_pissa_through_train_and_predict(tmp_path, tiny_model_dir):
    from loralab import predict, train
    from loralab.data import DataOptions, load_data
    from loralab.training import TrainSettings
    from test_pairs import write_pairs

    pairs = write_pairs(tmp_path / "pairs")
    data = load_data(train=pairs / "train.csv", eval=pairs / "dev.csv",
                     options=DataOptions(text_column="sentence1", text_pair_column="sentence2"))
    settings = TrainSettings(epochs=1, learning_rate=1e-3, max_length=32, quiet=True, precision="fp32")
    info = train("pissa", tmp_path / "pissa", str(tiny_model_dir), data, settings, rank=2)
    saved = json.loads((tmp_path / "pissa" / "loralab.json").read_text())
    assert saved["method"] == "pissa" and saved["rank"] == 2 and info.eval_accuracy is not None
    assert json.loads((tmp_path / "pissa" / "adapter_config.json").read_text())["r"] == 4
    result = predict(tmp_path / "pissa", [("film plot cast", "film plot cast")], settings=settings, progress=False)
    assert result.labels[0] in ("different", "same")


@pytest.mark.slow  # a tuned study of 3 methods x 2 ranks x 2 seeds: a minute or more
def test_a_study_trains_lora_and_its_variants_at_each_rank_and_compares_them(tmp_path, tiny_model_dir, run_cli):
    from test_pairs import pair_study

    config = pair_study(tmp_path, tiny_model_dir, '[methods]\nvariants = ["dora", "pissa"]\nlowrank = false\n'
                        'extract = false\nreplace_test = false\n')
    code, _, err = run_cli("run", "--quick", "--profile", "tuned", "--config", config, "--out", tmp_path / "out",
                           "--quiet")
    assert code == 0, err
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    for method in ("lora", "dora", "pissa"):
        assert sorted((r["rank"], r["seed"]) for r in rows if r["method"] == method) == [(2, 0), (2, 1), (6, 0), (6, 1)]
        assert (tmp_path / "out" / f"select-{method}" / "result.json").exists()  # each its own learning rate
    dora = next(r for r in rows if r["method"] == "dora" and r["rank"] == 2)
    lora = next(r for r in rows if r["method"] == "lora" and r["rank"] == 2)
    assert dora["trainable_params"] - lora["trainable_params"] == 4 * 32  # a magnitude per output row of 4 layers
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## LoRA and its variants at each rank" in report
    assert report.count("r = 2: ") == 1 and ("is best (" in report)

    config.write_text(config.read_text().replace('"pissa"]', '"adalora"]'))
    code, _, err = run_cli("run", "--quick", "--config", config, "--out", tmp_path / "bad")
    assert code == 2 and "methods.variants may list 'dora', 'pissa', 'vera', 'ia3'" in err, err


def test_a_methods_lead_is_judged_by_the_seeds_spread_only_where_every_side_has_seeds():
    from types import SimpleNamespace

    from loralab.report.document import _lead

    def run(method, low, mid, high, seeds):
        return SimpleNamespace(method=method, rank=1, seeds=seeds, score=mid,
                               score_min=low if seeds > 1 else None, score_max=high if seeds > 1 else None)

    dora, lora = run("dora", 0.60, 0.61, 0.62, 3), run("lora", 0.50, 0.55, 0.59, 3)
    assert _lead(dora, [lora]) == "its lowest seed above every other method's highest"
    assert _lead(dora, [run("lora", 0.50, 0.55, 0.60, 3)]).startswith("within the seeds' spread of LoRA r = 1")
    pissa = run("pissa", 0.50, 0.55, 0.605, 3)
    assert _lead(dora, [lora, pissa]) == "within the seeds' spread of PiSSA r = 1"  # clear of LoRA, not of PiSSA
    assert _lead(run("dora", 0, 0.61, 0, 1), [lora]).startswith("one run of DoRA r = 1, so no spread")
    assert _lead(run("dora", 0, 0.61, 0, 1), [run("lora", 0, 0.5, 0, 1)]).startswith("one run each, so no spread")
