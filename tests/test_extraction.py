"""`loralab extract`: adapters from full fine-tunes, exact at full rank, loadable by PEFT,
ranks chosen by energy, other architectures refused, nothing dropped unlisted."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import tiny_bert, tiny_distilbert
from loralab import extract_adapter, load_adapter, save_extraction
from loralab.errors import ModelLoadError
from loralab.surgery import lora_layers

IDS = torch.randint(0, 120, (4, 12), generator=torch.Generator().manual_seed(0))


def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def fine_tuned(base, scale=0.05, seed=1, only=None):
    """`base` with every parameter (or those named in `only`) moved, as a fine-tune moves them."""
    tuned = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if only is None or name in only:
                param.add_(scale * torch.randn(param.shape, generator=gen))
    return tuned


def test_every_module_at_full_rank_gives_the_fine_tuned_logits(tmp_path):
    base = tiny_bert()
    tuned = fine_tuned(base)
    result = extract_adapter(tuned, base, rank=32, targets="all-linear", keep=["embeddings"], progress=False)
    assert not result.left_out
    assert result.kept_share == pytest.approx(1.0)
    torch.testing.assert_close(logits(result.model), logits(tuned), atol=1e-4, rtol=0)
    save_extraction(result, tmp_path)
    torch.testing.assert_close(logits(load_adapter(tiny_bert(), tmp_path)), logits(tuned), atol=1e-4, rtol=0)


def test_peft_loads_an_extracted_adapter_with_loralabs_logits(tmp_path):
    from peft import PeftModel

    base = tiny_bert()
    result = extract_adapter(fine_tuned(base), base, energy=0.9, progress=False)
    save_extraction(result, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["rank_pattern"] and config["lora_bias"] is True  # per-layer ranks and biases in PEFT's fields
    assert "bert.encoder.layer.0.output.LayerNorm" in config["modules_to_save"]
    ours = load_adapter(tiny_bert(), tmp_path)
    assert {n: layer.rank for n, layer in lora_layers(ours).items()} == {r.name: r.rank for r in result.modules}
    peft_model = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(peft_model), logits(ours), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(ours), logits(result.model), atol=1e-6, rtol=0)


def test_energy_picks_the_rank_of_a_known_spectrum():
    base = tiny_bert()
    tuned = copy.deepcopy(base)
    name = "bert.encoder.layer.0.attention.self.query"
    layer = tuned.get_submodule(name)
    q_left, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(2)))
    q_right, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(3)))
    s = torch.tensor([4.0, 2.0, 1.0, 0.5] + [0.0] * 28)  # energy kept: 0.753, 0.941, 0.988, 1
    with torch.no_grad():
        layer.weight.add_((q_left * s) @ q_right.T)

    def ranks(**how):
        result = extract_adapter(tuned, base, progress=False, **how)
        return {row.name: row.rank for row in result.modules}

    assert ranks(energy=0.75) == {name: 1}  # the unchanged layers get no adapter at all
    assert ranks(energy=0.9) == {name: 2}
    assert ranks(energy=0.95) == {name: 3}
    assert ranks(energy=0.99) == {name: 4}
    assert ranks(energy=0.99, max_rank=2) == {name: 2}
    assert ranks(rank=3) == {name: 3}
    row = extract_adapter(tuned, base, energy=0.9, progress=False).modules[0]
    assert row.energy == pytest.approx(20 / 21.25, abs=1e-4)


def test_another_architecture_or_size_is_refused(tmp_path, run_cli):
    with pytest.raises(ModelLoadError, match="DistilBertForSequenceClassification"):
        extract_adapter(tiny_distilbert(), tiny_bert(), rank=2, progress=False)
    other = tiny_bert(type_vocab_size=3)
    other.save_pretrained(tmp_path / "other")
    tiny_bert().save_pretrained(tmp_path / "base")
    code, out, err = run_cli("extract", "--finetuned", tmp_path / "other", "--base", tmp_path / "base",
                             "--rank", 2, "--out", tmp_path / "adapter", "--quiet")
    assert code == 2 and "Traceback" not in err
    assert "token_type_embeddings.weight (3, 32) against (2, 32)" in err
    assert not (tmp_path / "adapter").exists()


def test_nothing_the_fine_tune_changed_is_dropped_unlisted(tmp_path):
    base = tiny_bert()
    tuned = fine_tuned(base)
    result = extract_adapter(tuned, base, rank=2, progress=False)
    heads = ("bert.pooler.", "classifier.")
    changed = {n for n, _ in tuned.named_parameters() if not n.startswith(heads)}
    adapted = {f"{row.name}.weight" for row in result.modules}
    assert adapted | {p.name for p in result.parts} == changed
    assert adapted.isdisjoint(p.name for p in result.parts)
    kinds = {p.name: p.how for p in result.parts}
    assert kinds["bert.encoder.layer.0.attention.self.query.bias"] == "bias"
    assert kinds["bert.encoder.layer.1.output.LayerNorm.weight"] == "whole"
    assert kinds["bert.embeddings.word_embeddings.weight"] == "left out"
    assert kinds["bert.encoder.layer.0.attention.self.key.weight"] == "left out"
    # every share adds up: kept, the truncated singular values, and what was left out
    truncated = sum(r.norm_sq * (1 - r.energy) for r in result.modules) / result.total_sq
    left = sum(result.share(p) for p in result.left_out)
    assert result.kept_share + truncated + left == pytest.approx(1.0)
    save_extraction(result, tmp_path)
    readme = (tmp_path / "README.md").read_text()
    for listed in ("bert.embeddings.word_embeddings.weight", "bert.encoder.layer.*.attention.self.key.weight",
                   "bert.encoder.layer.*.intermediate.dense.bias"):
        assert listed in readme


def test_extract_predict_and_export_from_the_cli(tmp_path, run_cli):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from loralab.models import load_model

    base = load_model("minilm", ["sad", "happy", "other"])
    tuned = fine_tuned(base, scale=0.01, only={n for n, _ in base.named_parameters() if "encoder.layer.5" in n
                                                or n.startswith(("classifier", "bert.pooler"))})
    tuned.save_pretrained(tmp_path / "full")
    code, out, err = run_cli("extract", "--finetuned", tmp_path / "full", "--rank", 4, "--targets", "all-linear",
                             "--out", tmp_path / "adapter", "--quiet")
    assert code == 0, err
    assert "6 adapted layer(s), rank 4-4" in out and "took" in out
    code, out, err = run_cli("predict", tmp_path / "adapter", "a fine film", "--quiet")
    assert code == 0, err
    assert out.split("\t")[0] in {"sad", "happy", "other"}
    code, out, err = run_cli("export", tmp_path / "adapter", "--merge", "--out", tmp_path / "merged")
    assert code == 0, err
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    batch = tokenizer(["a fine film", "a dull one"], return_tensors="pt", padding=True)
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    ours = load_adapter(None, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, ours(**batch).logits, atol=1e-4, rtol=0)
    assert len(lora_layers(ours)) == 6  # the last block's linear layers; the untouched blocks get none
    # the commands the adapter's README gives work as written
    import re
    import shlex

    readme = (tmp_path / "adapter" / "README.md").read_text()
    commands = [c for c in re.findall(r"`(loralab [^`]+)`", readme) if c != "loralab extract"]  # how it was made
    assert {c.split()[1] for c in commands} == {"predict", "export"}, commands
    for command in commands:
        argv = [a.replace("FOLDER", str(tmp_path / "adapter")).replace("MERGED", str(tmp_path / "from-readme"))
                for a in shlex.split(command)[1:]]
        code, _, err = run_cli(*argv, *(["--quiet"] if argv[0] == "predict" else []))
        assert code == 0, (command, err)
