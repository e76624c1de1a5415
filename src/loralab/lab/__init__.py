"""The lab "L5: Parameter-efficient fine-tuning" under its own names: its functions
(`functions`) and its "Test your code" cells as checks to call on your own code (`check`,
module `checks`). See `loralab.lab.functions` for the walk through the lab's steps."""

from . import checks
from . import checks as check
from .functions import (
    LoRA,
    approximate,
    clone_linear,
    evaluate,
    extract,
    make_approximated_model_1,
    make_approximated_model_2,
    make_finetuned_model,
    make_headtuned_model,
    make_lora_model,
    num_trainable_parameters,
    replace,
)

__all__ = [
    "LoRA", "approximate", "check", "checks", "clone_linear", "evaluate", "extract", "make_approximated_model_1",
    "make_approximated_model_2", "make_finetuned_model", "make_headtuned_model", "make_lora_model",
    "num_trainable_parameters", "replace",
]
