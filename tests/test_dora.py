"""DoRA (#35), weight-decomposed LoRA: W' = m * (W0 + s (A B)^T) / ||W0 + s (A B)^T||_c, the
norm a constant of the gradient. loralab's layer against PEFT's, both ways through the saved
adapter, and against the formula."""

import json

import pytest
import torch
from torch import nn

from conftest import tiny_bert
from loralab import inject_lora, load_adapter, lora_layers, merge_and_unload, save_adapter
from loralab.lora import DoRA
from loralab.surgery import head_modules

IDS = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def trained_dora(rank=2, seed=0):
    """A tiny model with DoRA layers whose B, magnitudes and head are not at their start."""
    model = inject_lora(tiny_bert(seed=seed), rank, init="kaiming", variant="dora")
    torch.manual_seed(seed + 10)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            nn.init.normal_(layer.B, std=0.5)
            layer.magnitude.mul_(1 + 0.3 * torch.randn_like(layer.magnitude))
        model.classifier.weight.normal_()
    return model


def reference(layer: DoRA, x: torch.Tensor, detach: bool = True) -> torch.Tensor:
    """DoRA by its formula, forming the adapted weight: m * V / ||V||_c, V = W0 + s (A B)^T."""
    v = layer.base.weight + layer.scaling * (layer.A @ layer.B).T
    norm = v.norm(dim=1, keepdim=True)
    return nn.functional.linear(x, layer.magnitude[:, None] * v / (norm.detach() if detach else norm),
                                layer.base.bias)


def test_dora_starts_as_the_base_model_and_counts_its_parameters():
    base = tiny_bert()
    model = inject_lora(tiny_bert(), 3, variant="dora", init="kaiming")
    torch.testing.assert_close(logits(model), logits(base), atol=1e-6, rtol=0)  # B = 0, m = ||W0||: W' = W0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layers = lora_layers(model)
    head = sum(p.numel() for name in head_modules(model) for p in model.get_submodule(name).parameters())
    assert trainable == sum(3 * (m.in_features + m.out_features) + m.out_features for m in layers.values()) + head


def test_the_layer_is_the_formula_and_its_gradient_skips_the_norm():
    torch.manual_seed(0)
    layer = DoRA(nn.Linear(12, 7), rank=3, alpha=6, init="kaiming")
    with torch.no_grad():
        layer.B.normal_()
        layer.magnitude.mul_(1.5)
    x = torch.randn(5, 12)
    ours = layer(x)
    torch.testing.assert_close(ours, reference(layer, x), atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(ours.square().sum(), [layer.A, layer.B, layer.magnitude])
    expected = torch.autograd.grad(reference(layer, x).square().sum(), [layer.A, layer.B, layer.magnitude])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    through_norm = torch.autograd.grad(reference(layer, x, detach=False).square().sum(), [layer.A])[0]
    assert not torch.allclose(grads[0], through_norm, atol=1e-4)  # the test tells the two apart


def test_merge_unmerge_and_merge_and_unload_keep_the_outputs():
    model = trained_dora()
    before = logits(model)
    layer = next(iter(lora_layers(model).values()))
    w0 = layer.base.weight.detach().clone()
    layer.merge()
    torch.testing.assert_close(layer.original_weight(), w0, atol=1e-6, rtol=0)  # W0 recovered while merged
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, w0, atol=1e-6, rtol=0)
    merged = merge_and_unload(model)
    assert not lora_layers(merged)
    torch.testing.assert_close(logits(merged), before, atol=1e-5, rtol=0)


def test_loralab_dora_loads_in_peft_with_the_same_logits(tmp_path):
    from peft import PeftModel

    model = trained_dora()
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_dora"] is True
    peft_model = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(peft_model), logits(model), atol=1e-5, rtol=0)
    loaded = load_adapter(tiny_bert(), tmp_path)  # and back into loralab
    assert all(isinstance(layer, DoRA) for layer in lora_layers(loaded).values())
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-5, rtol=0)


def test_peft_dora_loads_in_loralab_with_the_same_logits(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=3, lora_alpha=5, use_dora=True,
                                                        target_modules=["query", "value"],
                                                        modules_to_save=["bert.pooler"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_()
            elif "lora_magnitude_vector" in name:
                param.mul_(1.2)
    peft_model.save_pretrained(tmp_path)
    loaded = load_adapter(tiny_bert(), tmp_path)
    assert {layer.rank for layer in lora_layers(loaded).values()} == {3}
    torch.testing.assert_close(logits(loaded), logits(peft_model), atol=1e-5, rtol=0)


def test_dora_through_train_and_export(tmp_path, tiny_model_dir):
    from transformers import pipeline

    from loralab import predict, train
    from loralab.data import DataOptions, load_data
    from loralab.export import export
    from loralab.training import TrainSettings
    from test_pairs import write_pairs

    pairs = write_pairs(tmp_path / "pairs")
    data = load_data(train=pairs / "train.csv", eval=pairs / "dev.csv",
                     options=DataOptions(text_column="sentence1", text_pair_column="sentence2"))
    info = train("dora", tmp_path / "dora", str(tiny_model_dir), data,
                 TrainSettings(epochs=1, learning_rate=3e-3, max_length=32, quiet=True), rank=2, init="kaiming")
    adapters = 4 * (2 * (32 + 32) + 32)  # query and value of 2 layers: A, B and a magnitude per output
    assert info.method == "dora" and info.trainable_params == adapters + (32 * 32 + 32) + (32 * 2 + 2)  # pooler, head
    assert json.loads((tmp_path / "dora" / "adapter_config.json").read_text())["use_dora"] is True
    settings = TrainSettings(precision="fp32", max_length=32, quiet=True)
    given = [("film plot cast", "film plot cast"), ("music ending scene", "actor script score")]
    ours = predict(tmp_path / "dora", given, settings=settings, progress=False)
    export(tmp_path / "dora", tmp_path / "merged", merge=True)
    classify = pipeline("text-classification", model=str(tmp_path / "merged"), top_k=None, device="cpu")
    for scores, probs in zip(classify([{"text": a, "text_pair": b} for a, b in given]), ours.probabilities):
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label[c] for c in ours.classes] == pytest.approx(list(probs), abs=1e-4)
