import json

import pytest
import torch
from torch import nn

from conftest import tiny_bert
from loralab import inject_lora, load_adapter, lora_layers, save_adapter
from loralab.errors import ModelLoadError

IDS = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(0))


def trained_adapter(rank=4, seed=0):
    model = inject_lora(tiny_bert(seed=seed), rank)
    torch.manual_seed(seed + 10)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            nn.init.normal_(layer.B)
        model.classifier.weight.normal_()
    return model


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_loralab_to_loralab(tmp_path):
    model = trained_adapter()
    save_adapter(model, tmp_path)
    loaded = load_adapter(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 4


def test_loralab_to_peft(tmp_path):
    from peft import PeftModel

    model = trained_adapter()
    save_adapter(model, tmp_path)
    peft_model = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(peft_model), logits(model), atol=1e-5, rtol=0)


def test_peft_to_loralab(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=3, lora_alpha=5,
                                                        target_modules=["query", "value"],
                                                        modules_to_save=["bert.pooler"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_()
    peft_model.save_pretrained(tmp_path)
    loaded = load_adapter(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(loaded), logits(peft_model), atol=1e-5, rtol=0)
    assert {layer.rank for layer in lora_layers(loaded).values()} == {3}


def test_minilm_rank6_adapter_is_small(tmp_path):
    from loralab.models import load_model

    save_adapter(inject_lora(load_model("minilm"), 6), tmp_path)
    assert (tmp_path / "adapter_model.safetensors").stat().st_size < 1_000_000


def test_other_base_model_is_refused(tmp_path):
    save_adapter(trained_adapter(), tmp_path)
    other = tiny_bert(seed=5)
    with pytest.raises(ModelLoadError, match="weights differ"):
        load_adapter(other, tmp_path)
    assert not lora_layers(other)  # nothing loaded partially


def test_rank_mismatch_is_refused(tmp_path):
    save_adapter(trained_adapter(rank=4), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["r"] = 6
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="says r=6, but the weights have rank 4"):
        load_adapter(tiny_bert(), tmp_path)


def test_missing_keys_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    save_adapter(trained_adapter(), tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors.pop(next(k for k in tensors if "lora_B" in k))
    save_file(tensors, path)
    base = tiny_bert()
    with pytest.raises(ModelLoadError, match="missing 1 key"):
        load_adapter(base, tmp_path)
    assert not lora_layers(base)


def test_pickle_and_damaged_files_are_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": ["query"]}))
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="never from pickle"):
        load_adapter(tiny_bert(), tmp_path)
    save_adapter(trained_adapter(), tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="truncated or corrupted"):
        load_adapter(tiny_bert(), tmp_path)


def test_a_peft_adapter_of_the_packaged_model_loads_onto_it(tmp_path):
    # PEFT records the folder it loaded the packaged model from; loralab knows it by its Hub id.
    from peft import LoraConfig, get_peft_model

    from loralab.models import load_model

    made = get_peft_model(load_model("minilm"), LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"]))
    made.save_pretrained(tmp_path)
    assert "site-packages" in json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert len(lora_layers(load_adapter(load_model("minilm"), tmp_path))) == 6
