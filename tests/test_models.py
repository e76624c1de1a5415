import pytest

from loralab import num_trainable_parameters
from loralab.errors import ModelLoadError
from loralab.models import load_model, load_tokenizer


def test_lab_count_for_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
    assert num_trainable_parameters(model) == 66_955_010


def test_frozen_and_integer_parameters_do_not_count(bert):
    import torch

    total = num_trainable_parameters(bert)
    bert.classifier.requires_grad_(False)
    assert num_trainable_parameters(bert) == total - 32 * 2 - 2
    bert.register_parameter("steps", torch.nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False))
    assert num_trainable_parameters(bert) == total - 32 * 2 - 2


def test_default_model_loads_offline_with_its_count():
    model = load_model("minilm")
    assert num_trainable_parameters(model) == 22_713_986
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert load_tokenizer("minilm")("a good film")["input_ids"][0] == 101


def test_hub_id_offline_gives_one_paragraph():
    with pytest.raises(ModelLoadError) as err:
        load_model("distilbert-base-uncased-not-cached-anywhere")
    message = str(err.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE is set" in message and "--model DIR" in message


def test_missing_local_directory():
    with pytest.raises(ModelLoadError, match="Model directory not found"):
        load_model("./no/such/model")
