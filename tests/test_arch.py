"""One table per model family (loralab.arch): every entry's targets, head, head on cached
features and pooling agree with the model, and head-tuning and LoRA run through the study
for each family the README names."""

import pytest
import torch

from conftest import count_fraction
from loralab.arch import ARCHITECTURES
from loralab.config import load_config
from loralab.head import encoder, head_forward
from loralab.pooling import masked_mean, set_pooling
from loralab.surgery import find_targets, head_modules, inject_lora

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny(kind: str, vocab_size: int = 120, seed: int = 0):
    """A randomly initialised sequence classifier of family `kind`, small enough for tests."""
    import transformers as tf

    torch.manual_seed(seed)
    make = {
        "distilbert": lambda: tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512)),
        "bert": lambda: tf.BertForSequenceClassification(tf.BertConfig(vocab_size=vocab_size, **SMALL)),
        "roberta": lambda: tf.RobertaForSequenceClassification(tf.RobertaConfig(
            vocab_size=vocab_size, max_position_embeddings=514, **SMALL)),
        "xlm-roberta": lambda: tf.XLMRobertaForSequenceClassification(tf.XLMRobertaConfig(
            vocab_size=vocab_size, max_position_embeddings=514, **SMALL)),
        "electra": lambda: tf.ElectraForSequenceClassification(tf.ElectraConfig(
            vocab_size=vocab_size, embedding_size=16, **SMALL)),
        "deberta-v2": lambda: tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(
            vocab_size=vocab_size, max_position_embeddings=512, **SMALL)),
        "deberta": lambda: tf.DebertaForSequenceClassification(tf.DebertaConfig(
            vocab_size=vocab_size, max_position_embeddings=512, **SMALL)),
    }
    return make[kind]().eval()


def batch():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_every_family_has_a_tiny_model_here():
    assert set(ARCHITECTURES) == {"distilbert", "bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "deberta"}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_head_on_cached_features_gives_the_models_own_logits(kind, pooling):
    """Head-tuning trains the head on features computed once: applied to them, the head
    must give what the whole model gives."""
    model = set_pooling(tiny(kind), pooling)
    b = batch()
    with torch.no_grad():
        hidden = encoder(model)(**b).last_hidden_state
        features = masked_mean(hidden, b["attention_mask"]) if pooling == "mean" else hidden[:, 0]
        torch.testing.assert_close(head_forward(model, features, torch.nn.Identity()), model(**b).logits)


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_targets_and_head_of_each_family_are_found(kind):
    model = tiny(kind)
    arch = ARCHITECTURES[kind]
    assert head_modules(model) == arch.head
    targets = find_targets(model)
    assert targets and all(name.endswith(arch.targets) for name in targets)
    inject_lora(model, 2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".A", ".B")) or n.startswith(arch.head) for n in trainable)


@pytest.mark.parametrize("kind", ["distilbert", "bert", "roberta", "deberta-v2"])
def test_head_tuning_and_lora_through_the_study(kind, tmp_path, synthetic_data_dir):
    """Each family the README names, through `loralab run` (mean pooling: the hooks too)."""
    from loralab.models import load_tokenizer
    from loralab.study import run_study

    folder = tmp_path / kind
    tiny(kind, vocab_size=30522).save_pretrained(folder)
    load_tokenizer("minilm").save_pretrained(folder)
    config = load_config(None, out=str(tmp_path / "out"), model=str(folder), isolate=False, **{
        "data.dir": str(synthetic_data_dir), "data.limit_train": 32, "data.limit_eval": 16,
        "train.epochs": 1.0, "train.max_length": 32, "train.pooling": "mean", "methods.baselines": False,
        "methods.full": False, "methods.replace_test": False, "methods.lowrank": False, "methods.lora_ranks": [2]})
    result = run_study(config, quiet=True)
    assert [(r.method, r.rank) for r in result.rows] == [("head", None), ("lora", 2)]
    head, lora = result.rows
    assert lora.trainable_params - head.trainable_params == 2 * 2 * 2 * (32 + 32)  # 2 layers x q, v x r (in + out)
    for r in result.rows:
        count_fraction(r.eval_accuracy, 16)
        assert r.eval_accuracy == r.history[-1]["eval_accuracy"]
