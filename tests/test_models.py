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


def test_hugging_face_spellings_of_the_classes_are_taken(tiny_model_dir):
    from loralab.adapters import class_names
    from loralab.errors import ModelLoadError
    from loralab.models import load_model

    assert class_names(load_model(tiny_model_dir, num_labels=6)) == [f"LABEL_{i}" for i in range(6)]
    assert load_model(tiny_model_dir, num_labels=6).classifier.out_features == 6
    assert class_names(load_model(tiny_model_dir, id2label={0: "no", 1: "yes"})) == ["no", "yes"]
    assert class_names(load_model(tiny_model_dir, labels=["a", "b", "c"], num_labels=3)) == ["a", "b", "c"]
    with pytest.raises(ModelLoadError, match="num_labels=2 but 3 labels were named"):
        load_model(tiny_model_dir, labels=["a", "b", "c"], num_labels=2)


def test_an_adapter_extracted_from_an_unnamed_fine_tune_loads_on_the_same_base(tmp_path, tiny_model_dir):
    """A model fine-tuned outside loralab names its classes LABEL_0, LABEL_1 (Hugging Face's
    defaults): its extracted adapter keeps those names, and loads onto the base whether the
    base names no classes or two."""
    import copy

    import torch
    from transformers import AutoModelForSequenceClassification

    from loralab import extract_adapter, load_adapter, save_extraction
    from loralab.adapters import class_names

    tuned = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    tuned.config.id2label, tuned.config.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    with torch.no_grad():
        for layer in tuned.bert.encoder.layer:
            layer.attention.self.query.weight.add_(0.01 * torch.randn_like(layer.attention.self.query.weight))
    tuned.save_pretrained(tmp_path / "tuned")
    save_extraction(extract_adapter(tmp_path / "tuned", tiny_model_dir, rank=2, progress=False), tmp_path / "adapter")
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)  # LABEL_0, LABEL_1
    assert class_names(load_adapter(copy.deepcopy(plain), tmp_path / "adapter")) == ["LABEL_0", "LABEL_1"]
    named = load_adapter(None, tmp_path / "adapter")  # the base by its name: the fine-tune's (unnamed) classes
    assert class_names(named) == ["LABEL_0", "LABEL_1"]
