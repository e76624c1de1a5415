"""The lab's functions under the lab's names and defaults, for teachers and students.

    from loralab.lab import *

    finetuned = make_finetuned_model()          # step 2
    headtuned = make_headtuned_model()          # step 3
    layers = extract(finetuned)                 # step 4
    approximate(torch.rand(768, 8) @ torch.rand(8, 384), 8)          # step 5
    make_approximated_model_1(rank, headtuned, finetuned)             # step 6
    make_approximated_model_2(rank, headtuned, finetuned, pretrained) # step 7
    LoRA(pretrained_linear, rank=12, alpha=24)  # step 8
    make_lora_model(6)                          # step 9

`check` holds the lab's "Test your code" cells as functions to call on your own code
(`check.lora(MyLoRA)`, `check.replace(my_replace)`, ...; see `loralab.lab.checks`).

A model that `make_finetuned_model`, `make_headtuned_model` or `make_lora_model` returns
carries what its training measured as `model.loralab_result` (a `loralab.training.TrainResult`:
`eval_accuracy`, `history` with the eval accuracy after each epoch, `train_seconds`).

Each is a thin layer over the general API (`loralab.surgery`, `loralab.lowrank`,
`loralab.training`); the models train with the lab's settings (3 epochs, batch 8,
learning rate 5e-5) on the lab data unless told otherwise. The default model is the
packaged MiniLM; pass ``model="distilbert-base-uncased"`` where a hub is reachable.
"""

from __future__ import annotations

import tempfile

from torch import nn

from ..api import prepare_model, train_in_place
from ..inference import evaluate_model
from ..lora import LoRA
from ..lowrank import approximate, make_approximated_model_1, make_approximated_model_2
from ..models import DEFAULT_MODEL, load_tokenizer, num_trainable_parameters
from ..settings import LoraOptions
from ..surgery import clone_linear, replace
from ..surgery import target_layers as extract  # the lab's name for finding the target layers
from ..training import TrainSettings, tokenize
from . import checks as check

__all__ = [
    "LoRA", "approximate", "check", "clone_linear", "evaluate", "extract", "make_approximated_model_1",
    "make_approximated_model_2", "make_finetuned_model", "make_headtuned_model", "make_lora_model",
    "num_trainable_parameters", "replace",
]


def _prepared(model, data, settings):
    import torch

    from ..data import class_names_of, load_data

    settings = settings or TrainSettings()
    torch.manual_seed(settings.seed)  # the new head's (and adapters') initial weights
    tokenizer = load_tokenizer(model)
    tokenized = tokenize(data if data is not None else load_data(), tokenizer, settings.max_length)
    return tokenizer, tokenized, settings, class_names_of(tokenized["train"])


def _trained(method: str, model, data, settings, lora: LoraOptions | None = None) -> nn.Module:
    tokenizer, tokenized, settings, labels = _prepared(model, data, settings)
    net = prepare_model(method, model, lora=lora, pooling=settings.pooling, labels=labels)
    with tempfile.TemporaryDirectory(prefix="loralab-lab-") as work:  # checkpoints, logs: not kept
        result = train_in_place(net, method, tokenized, settings, work, tokenizer, lora=lora)
    net.loralab_result = result  # eval accuracy after each epoch, training time: no second evaluation needed
    return net


def make_finetuned_model(model: str = DEFAULT_MODEL, data=None, settings: TrainSettings | None = None) -> nn.Module:
    """Step 2: the pre-trained model with every parameter fine-tuned."""
    return _trained("full", model, data, settings)


def make_headtuned_model(model: str = DEFAULT_MODEL, data=None, settings: TrainSettings | None = None) -> nn.Module:
    """Step 3: the pre-trained model with only its classification head trained."""
    return _trained("head", model, data, settings)


def make_lora_model(rank: int, model: str = DEFAULT_MODEL, data=None,
                    settings: TrainSettings | None = None, **lora_options) -> nn.Module:
    """Step 9: query and value layers wrapped in LoRA (alpha = 2 * rank), adapters and
    head trained, every other parameter untouched. `lora_options` (`init`, `alpha`,
    `targets`, ...; see `LoraOptions`) change the lab's adapter."""
    return _trained("lora", model, data, settings, LoraOptions(rank=rank).replace(**lora_options))


def evaluate(model: nn.Module, data=None, model_name: str = DEFAULT_MODEL,
             settings: TrainSettings | None = None) -> float:
    """Accuracy on the eval split (the lab's `evaluate`, without the Trainer)."""
    from datasets import DatasetDict

    from ..data import load_data

    settings = settings or TrainSettings()
    tokenizer = load_tokenizer(model_name)
    split = (data if data is not None else load_data())["eval"]
    tokenized = tokenize(DatasetDict(eval=split), tokenizer, settings.max_length)["eval"]
    return evaluate_model(model, tokenized, tokenizer, settings)
