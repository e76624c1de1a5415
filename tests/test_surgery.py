import copy

import pytest
import torch
from torch import nn

from conftest import tiny_bert
from loralab import (
    freeze_all_but_head,
    inject_lora,
    lora_layers,
    merge_and_unload,
    num_trainable_parameters,
    replace,
)
from loralab.errors import LoralabError
from loralab.lab import extract  # the lab's name for surgery.target_layers
from loralab.surgery import TargetError, find_targets, head_modules


@pytest.fixture(scope="module")
def lab_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))


def test_lab_counts_on_distilbert(lab_distilbert):
    layers = extract(lab_distilbert)
    assert len(layers) == 12
    assert sum(p.numel() for layer in layers.values() for p in layer.parameters()) == 7_087_104
    assert all(name.endswith(("q_lin", "v_lin")) for name in layers)
    head = freeze_all_but_head(copy.deepcopy(lab_distilbert))
    assert num_trainable_parameters(head) == 592_130
    assert num_trainable_parameters(inject_lora(copy.deepcopy(lab_distilbert), 6)) == 702_722
    assert num_trainable_parameters(inject_lora(copy.deepcopy(lab_distilbert), 12)) == 813_314


def test_minilm_counts():
    from loralab.models import load_model

    model = load_model("minilm")
    assert len(extract(model)) == 12
    assert sum(p.numel() for layer in extract(model).values() for p in layer.parameters()) == 1_774_080
    assert num_trainable_parameters(freeze_all_but_head(copy.deepcopy(model))) == 148_610
    assert num_trainable_parameters(inject_lora(copy.deepcopy(model), 6)) == 203_906
    assert num_trainable_parameters(inject_lora(model, 12)) == 259_202


def test_targets_by_suffix_and_all_linear(bert):
    assert len(find_targets(bert, "query,key,value")) == 6
    assert len(find_targets(bert, ["attention.output.dense"])) == 2
    everything = find_targets(bert, "all-linear")
    assert len(everything) == 2 * 6  # q, k, v, attn out, intermediate, output per layer
    assert not any(name.startswith(("classifier", "bert.pooler")) for name in everything)


def test_nothing_matched_and_wrapping_twice_are_errors(bert):
    with pytest.raises(TargetError, match="No linear layer matches"):
        find_targets(bert, "nonexistent")
    inject_lora(bert, 2)
    with pytest.raises(TargetError, match="already has a LoRA adapter"):
        inject_lora(bert, 2)
    assert isinstance(TargetError("x"), LoralabError)


def test_heads_per_architecture(bert, distilbert):
    assert head_modules(bert) == ("bert.pooler", "classifier")
    assert head_modules(distilbert) == ("pre_classifier", "classifier")


def test_b_zero_model_equals_base(bert):
    ids = torch.randint(0, 120, (2, 9))
    before = bert(input_ids=ids).logits
    inject_lora(bert, 4)
    assert torch.equal(bert(input_ids=ids).logits, before)


def test_one_step_changes_only_adapters_and_head(bert):
    inject_lora(bert, 4)
    bert.train()
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    optim = torch.optim.AdamW([p for p in bert.parameters() if p.requires_grad], lr=1e-2)
    # Two steps: after the first, B moves; after the second, A moves too (its gradient needs B != 0).
    for _ in range(2):
        out = bert(input_ids=torch.randint(0, 120, (4, 9)), labels=torch.tensor([0, 1, 1, 0]))
        out.loss.backward()
        optim.step()
        optim.zero_grad()
    changed = {n for n, p in bert.named_parameters() if not torch.equal(p, before[n])}
    allowed = {n for n in before if n.endswith((".A", ".B")) or n.startswith(("classifier", "bert.pooler"))}
    assert changed == allowed


def test_merge_and_unload_gives_plain_linears_with_same_logits(bert):
    inject_lora(bert, 3)
    for layer in lora_layers(bert).values():
        nn.init.normal_(layer.B, std=0.1)
    ids = torch.randint(0, 120, (2, 9))
    with torch.no_grad():
        before = bert(input_ids=ids).logits
    merged = merge_and_unload(bert)
    assert not lora_layers(merged)
    assert all(type(m) is nn.Linear for m in extract(merged).values())
    plain = tiny_bert(seed=1)
    plain.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, before, atol=1e-5, rtol=1e-5)


def test_replace_puts_layers_back_by_name(bert):
    layers = extract(bert)
    clones = {n: nn.Linear(layer.in_features, layer.out_features) for n, layer in layers.items()}
    replace(bert, clones)
    assert all(extract(bert)[n] is clones[n] for n in clones)
    replace(bert, layers)
    assert all(extract(bert)[n] is layers[n] for n in layers)
    with pytest.raises(TargetError, match="no module named"):
        replace(bert, {"bert.nothing.here": nn.Linear(2, 2)})
