"""loralab: from-scratch LoRA for Hugging Face Transformers encoders, and a reproducible
study of accuracy against trainable parameters on IMDB sentiment classification or any
text-classification task."""

from . import lab, report, study  # noqa: F401 - the sub-packages
from .adapters import load_adapter, save_adapter
from .api import choose_learning_rate, evaluate, load_trained, prepare_model, save_trained, train
from .data import DataOptions, load_data, load_split, split_validation
from .errors import DataError, LoralabError, ModelLoadError
from .export import export
from .extraction import extract_adapter, save_extraction
from .lora import LoRA
from .models import load_model, load_tokenizer, num_trainable_parameters
from .pooling import pooling_of, set_pooling
from .predict import predict
from .settings import IA3Options, LoraOptions, TrainSettings, VeraOptions
from .surgery import (
    adapter_layers,
    find_targets,
    freeze_all_but_head,
    head_modules,
    inject_ia3,
    inject_lora,
    inject_vera,
    lora_layers,
    merge_and_unload,
    replace,
    target_layers,
)
from .vectors import IA3, VeRA
from .version import __version__  # noqa: E402, F401

__all__ = [
    "DataError", "DataOptions", "IA3", "IA3Options", "LoRA", "LoraOptions", "LoralabError",
    "ModelLoadError", "TrainSettings", "VeRA", "VeraOptions",
    "adapter_layers", "choose_learning_rate", "evaluate", "export", "extract_adapter", "find_targets",
    "freeze_all_but_head",
    "head_modules", "inject_ia3", "inject_lora", "inject_vera", "load_adapter", "load_data", "load_model", "load_split",
    "load_tokenizer", "load_trained", "lora_layers", "merge_and_unload", "num_trainable_parameters",
    "pooling_of", "predict", "prepare_model", "replace", "save_adapter", "save_extraction", "save_trained",
    "set_pooling",
    "split_validation", "target_layers", "train",
]
