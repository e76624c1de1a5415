"""Saving and loading adapters in the layout of Hugging Face PEFT.

An adapter folder holds `adapter_config.json` (a PEFT `LoraConfig`, `VeraConfig` or
`IA3Config`) and `adapter_model.safetensors` with, for every wrapped layer NAME,

    LoRA (DoRA, PiSSA)   base_model.model.NAME.lora_A.weight   (r, in)   = A^T
                         base_model.model.NAME.lora_B.weight   (out, r)  = B^T
                         base_model.model.NAME.lora_magnitude_vector (out,)  DoRA's m
    VeRA                 base_model.model.NAME.vera_lambda_b   (out,)
                         base_model.model.NAME.vera_lambda_d   (r,)
                         base_model.vera_A (r, in_max), base_model.vera_B (out_max, r): shared
    IA3                  base_model.model.NAME.ia3_l           (out, 1), or (1, in) where the
                                                               layer's input is scaled

plus the classification head's parameters under `base_model.model.`, so
`peft.PeftModel.from_pretrained(base, folder)` loads a loralab adapter and
`load_adapter` loads a PEFT adapter of these kinds. Weights are never pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import LoralabError, ModelLoadError
from .fileio import atomic_path, write_json
from .lora import Adapter, DoRA, LoRA, PiSSA
from .models import load_model, minilm_path, refuse_other_classes
from .pooling import pooling_of, set_pooling
from .settings import REGRESSION_LABELS
from .surgery import (
    adapter_layers,
    find_targets,
    head_modules,
    inject_ia3,
    inject_lora,
    inject_vera,
    inside,
    lora_layers,
    matches,
)
from .vectors import IA3, VeRA

logger = logging.getLogger("loralab")

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "pytorch_model.bin")
PREFIX = "base_model.model."
MAGNITUDE = "lora_magnitude_vector"  # DoRA's m of a layer, PEFT's key
VERA_A, VERA_B = "base_model.vera_A", "base_model.vera_B"  # VeRA's shared projections, PEFT's keys
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
WHOLE_ATTR = "loralab_whole_modules"  # a model attribute: modules beyond the head its adapter holds whole


def base_model_name(model: nn.Module) -> str | None:
    """The name a base model is known by: its Hub id, or its local path."""
    return known_as(getattr(getattr(model, "config", None), "_name_or_path", None) or None)


def known_as(name: str | None) -> str | None:
    """A model's name as adapters record it: the packaged all-MiniLM-L6-v2's folder is its Hub
    id (PEFT records the folder it was given)."""
    try:
        packaged = os.path.realpath(minilm_path())
    except ImportError:  # the packaged model is not installed, so this is not it
        return name
    return MINILM_HUB_ID if name and os.path.realpath(name) == packaged else name


def adapter_base(spec: dict) -> str | None:
    """The base model an adapter spec names, as `load_model` takes it (the packaged
    all-MiniLM-L6-v2 for its Hub id)."""
    name = spec.get("base_model_name_or_path")
    return "minilm" if name == MINILM_HUB_ID else name


def base_fingerprint(layers: dict[str, nn.Module]) -> str:
    """A hash of the frozen base weights of the adapted layers: tells base models apart
    even when they share an architecture.

    Args:
        layers: the adapted layers by name, plain `nn.Linear`s or adapter layers.
    """
    digest = hashlib.sha256()
    for name, layer in sorted(layers.items()):
        # PiSSA's base holds a residual; its adapter is saved for the original weight.
        weight = layer.original_weight() if isinstance(layer, Adapter) else layer.weight.detach().float()
        # Rounded to bfloat16, so that merge round-off and bfloat16 storage do not count.
        rounded = getattr(layer, "w0_bf16", None)  # PiSSA keeps W0's own rounding
        rounded = weight.to(torch.bfloat16) if rounded is None else rounded
        digest.update(name.encode())
        digest.update(rounded.view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def whole_modules(model: nn.Module) -> tuple[str, ...]:
    """The modules an adapter of `model` holds whole (PEFT's `modules_to_save`): the
    classification head, then any others the model was given (an extracted adapter's
    layer norms, see `loralab.extraction`)."""
    heads = head_modules(model)
    return heads + tuple(m for m in getattr(model, WHOLE_ATTR, ()) if m not in heads)


def _layer_keys(name: str, layer: "_LayerPlan") -> dict[str, tuple]:
    """PEFT key -> shape of one adapted layer's tensors (DoRA's magnitude included)."""
    keys = {f"{PREFIX}{name}.lora_A.weight": (layer.rank, layer.in_features),
            f"{PREFIX}{name}.lora_B.weight": (layer.out_features, layer.rank)}
    if layer.bias:
        keys[f"{PREFIX}{name}.lora_B.bias"] = (layer.out_features,)
    if layer.dora:
        keys[f"{PREFIX}{name}.{MAGNITUDE}"] = (layer.out_features,)
    return keys


def _module_keys(model: nn.Module, modules) -> dict[str, tuple]:
    return {f"{PREFIX}{module}.{pname}": tuple(param.shape)
            for module in modules for pname, param in model.get_submodule(module).named_parameters()}


def peft_type(model: nn.Module) -> str:
    """PEFT's name of the one kind of adapter layers `model` has: LORA, VERA or IA3."""
    layers = adapter_layers(model)
    if not layers:
        raise ModelLoadError("This model has no adapter layers to save.")
    kinds = {"VERA" if isinstance(m, VeRA) else "IA3" if isinstance(m, IA3) else "LORA" for m in layers.values()}
    if len(kinds) > 1:
        raise ModelLoadError(f"A PEFT adapter holds one kind of layers; this model mixes {', '.join(sorted(kinds))}.")
    return kinds.pop()


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter, head and other whole-module tensors under PEFT's key names."""
    codec = CODECS[peft_type(model)]
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        state.update(codec.tensors(f"{PREFIX}{name}.", layer))
    for module in whole_modules(model):
        for pname, param in model.get_submodule(module).named_parameters():
            state[f"{PREFIX}{module}.{pname}"] = param.detach()
    return {k: v.contiguous().float().cpu() for k, v in state.items()}


def saved_factors(layer: LoRA) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, alpha) as an adapter stores a layer: its own, or for PiSSA the rank-2r LoRA
    of the unchanged base model it equals (`PiSSA.saved_factors`)."""
    if isinstance(layer, PiSSA):
        return layer.saved_factors()
    return layer.A.detach(), layer.B.detach(), layer.alpha


def _common_and_pattern(values: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The most common value, and the layers that differ from it (PEFT's `*_pattern`)."""
    common = Counter(values.values()).most_common(1)[0][0]
    return common, {name: v for name, v in values.items() if v != common}


def _from_pattern(pattern: dict, name: str, default):
    """A layer's value from a PEFT `rank_pattern` / `alpha_pattern`: the first key that
    matches the end of its name, by PEFT's rule (`peft.utils.other.get_pattern_key`)."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def save_adapter(model: nn.Module, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save only adapter and head weights, as PEFT does, to `directory`.

    Layers of other ranks or alphas than the most common go into PEFT's `rank_pattern` /
    `alpha_pattern`; adapters with a bias of their own set `lora_bias`.

    Args:
        model: a model with adapter layers of one kind (see `inject_lora`, `inject_vera`, `inject_ia3`).
        directory: created if missing; both files are written atomically.
        extra: more string metadata for the safetensors header.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = adapter_state_dict(model)
    layers = adapter_layers(model)
    kind = peft_type(model)
    spec = {"peft_type": kind, "task_type": "SEQ_CLS", "base_model_name_or_path": base_model_name(model),
              "target_modules": sorted(layers), "modules_to_save": list(whole_modules(model)),
              "fan_in_fan_out": False, "inference_mode": True, **CODECS[kind].fields(layers)}
    init = getattr(next(iter(layers.values())), "init", kind.lower())
    metadata = {"format": "pt", "loralab_base_fingerprint": base_fingerprint(layers),
                "loralab_init": init, "loralab_pooling": pooling_of(model),
                "loralab_labels": json.dumps(class_names(model)),
                **{k: str(v) for k, v in (extra or {}).items()}}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    write_json(directory / CONFIG_NAME, spec)
    return directory


def _lora_fields(layers: dict[str, Adapter]) -> dict:
    """adapter_config.json's fields of a LORA adapter (ranks and alphas per layer where they differ)."""
    first = next(iter(layers.values()))
    if len({layer.b is not None for layer in layers.values()}) > 1:
        raise ModelLoadError("PEFT's lora_bias is one setting for every layer: give every adapter a bias or none.")
    dora = {isinstance(layer, DoRA) for layer in layers.values()}
    if len(dora) > 1:
        raise ModelLoadError("PEFT's use_dora is one setting for every layer: make every adapter DoRA or none.")
    factors = {n: saved_factors(layer) for n, layer in layers.items()}
    rank, rank_pattern = _common_and_pattern({n: a.shape[1] for n, (a, _, _) in factors.items()})
    alpha, alpha_pattern = _common_and_pattern({n: alpha for n, (_, _, alpha) in factors.items()})
    return {"r": rank, "lora_alpha": alpha, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
            "lora_dropout": float(getattr(first.dropout, "p", 0.0)), "use_rslora": first.rslora, "bias": "none",
            "init_lora_weights": True,
            **({"lora_bias": True} if first.b is not None else {}),  # only where set: older PEFT lacks the field
            **({"use_dora": True} if True in dora else {})}


def _lora_tensors(key: str, layer: LoRA) -> dict[str, torch.Tensor]:
    a, b, _ = saved_factors(layer)
    state = {key + "lora_A.weight": a.T, key + "lora_B.weight": b.T}
    if layer.b is not None:
        state[key + "lora_B.bias"] = layer.b.detach()
    if isinstance(layer, DoRA):
        state[key + MAGNITUDE] = layer.magnitude.detach()
    return state


def _vera_fields(layers: dict[str, Adapter]) -> dict:
    first = next(iter(layers.values()))
    return {"r": first.rank, "projection_prng_key": first.projection_seed, "save_projection": True,
            "vera_dropout": float(getattr(first.dropout, "p", 0.0)), "d_initial": first.d_initial,
            "bias": "none", "init_weights": True}


def _vera_tensors(key: str, layer) -> dict[str, torch.Tensor]:
    return {key + "vera_lambda_b": layer.lambda_b.detach(), key + "vera_lambda_d": layer.lambda_d.detach(),
            VERA_A: layer.A, VERA_B: layer.B}  # the shared pair: every layer holds the same


def _ia3_fields(layers: dict[str, Adapter]) -> dict:
    return {"feedforward_modules": sorted(n for n, m in layers.items() if m.feedforward), "init_ia3_weights": True}


def _ia3_tensors(key: str, layer) -> dict[str, torch.Tensor]:
    scale = layer.scale.detach()
    return {key + "ia3_l": scale[None, :] if layer.feedforward else scale[:, None]}


def class_names(model: nn.Module) -> list[str]:
    """The names of a classifier's classes, in order (`config.id2label`)."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(model.config.num_labels)]


def read_adapter(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Read and check an adapter folder: (spec, tensors, safetensors metadata)."""
    from safetensors import safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"Adapter folder not found: {directory}")
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        pickled = [n for n in PICKLE_NAMES if (directory / n).exists()]
        if pickled:
            raise ModelLoadError(f"{directory / pickled[0]}: loralab loads adapters only from "
                                 "safetensors, never from pickle files (.bin/.pt), which can run "
                                 "code when loaded. Convert it to adapter_model.safetensors.")
        raise ModelLoadError(f"{directory}: no {WEIGHTS_NAME}.")
    try:
        spec = json.loads((directory / CONFIG_NAME).read_text("utf-8"))
    except FileNotFoundError as err:
        raise ModelLoadError(f"{directory}: no {CONFIG_NAME}.") from err
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{directory / CONFIG_NAME}: not valid JSON ({err}).") from err
    _check_config_shape(spec, directory / CONFIG_NAME)
    kind = spec.setdefault("peft_type", "LORA")
    if kind not in CODECS:
        raise ModelLoadError(f"{directory / CONFIG_NAME}: peft_type is {kind!r}; loralab loads "
                             f"{', '.join(CODECS)} adapters.")
    for key in CODECS[kind].required:
        if key not in spec:
            raise ModelLoadError(f"{directory / CONFIG_NAME}: the field {key!r} is missing.")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # safetensors raises its own error type for damaged headers
        raise ModelLoadError(f"{weights}: the file is truncated or corrupted and cannot be read "
                             f"as safetensors ({err}).") from err
    _check_labels(metadata, weights)
    return spec, tensors, metadata


def _check_config_shape(spec, where: Path) -> None:
    """Refuse an adapter_config.json of the wrong shape by field, before anything reads it."""
    if not isinstance(spec, dict):
        raise ModelLoadError(f"{where}: a JSON object with the adapter's fields is expected, not a "
                             f"{type(spec).__name__}.")
    for key in ("r", "lora_alpha"):
        value = spec.get(key)
        if key in spec and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ModelLoadError(f"{where}: the field {key!r} must be a positive number, got {value!r}.")
    targets = spec.get("target_modules")
    if "target_modules" in spec and not (isinstance(targets, str) or
                                           (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise ModelLoadError(f"{where}: the field 'target_modules' must be a name or a list of names, got {targets!r}.")
    for key in ("rank_pattern", "alpha_pattern"):
        pattern = spec.get(key) or {}
        if not isinstance(pattern, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in pattern.values()):
            raise ModelLoadError(f"{where}: the field {key!r} must map layer names to numbers, got {pattern!r}.")
    saved = spec.get("modules_to_save")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(m, str) for m in saved)):
        raise ModelLoadError(f"{where}: the field 'modules_to_save' must be a list of names, got {saved!r}.")


def _check_labels(metadata: dict, where: Path) -> None:
    """The class names an adapter's metadata holds: a JSON list of at least two distinct names,
    or a regression model's one output (`REGRESSION_LABELS`)."""
    if "loralab_labels" not in metadata:
        return
    try:
        labels = json.loads(metadata["loralab_labels"])
    except ValueError as err:
        raise ModelLoadError(f"{where}: its metadata 'loralab_labels' is not valid JSON ({err}).") from err
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)
            and len(set(labels)) == len(labels)) and labels != list(REGRESSION_LABELS):
        raise ModelLoadError(f"{where}: its metadata 'loralab_labels' must list two or more distinct class names "
                             f"(or a regression model's {list(REGRESSION_LABELS)}), got {labels!r}.")


def _resolve_targets(model: nn.Module, target_modules) -> list[str] | str:
    if isinstance(target_modules, str) and target_modules != "all-linear":
        # PEFT stores a string as a regular expression matched against full names.
        pattern = re.compile(target_modules)
        return [n for n, m in model.named_modules()
                if isinstance(m, nn.Linear) and pattern.fullmatch(n)] or [target_modules]
    return target_modules


def load_adapter(model_or_base: nn.Module | str | os.PathLike, directory: str | os.PathLike,
                 *, check_base: bool = True) -> nn.Module:
    """Load an adapter (loralab's or PEFT's) onto a base model.

    Args:
        model_or_base: a base model without adapters, or its name (``"minilm"``, a folder,
            a Hub id); None-like values fall back to the adapter's `base_model_name_or_path`.
        directory: the adapter folder.
        check_base: refuse a base model whose weights or name differ from the adapter's.

    Raises:
        ModelLoadError: on another base model, a rank or target mismatch, missing or
            unexpected keys, pickle files, or a damaged file. Nothing is loaded partially.
    """
    spec, tensors, metadata = read_adapter(directory)
    where = Path(directory) / CONFIG_NAME
    labels = json.loads(metadata["loralab_labels"]) if "loralab_labels" in metadata else None
    if isinstance(model_or_base, nn.Module):
        model = model_or_base
        if labels:
            refuse_other_classes(directory, "adapter", labels, class_names(model), "the model given")
    else:
        base = model_or_base or adapter_base(spec)
        if not base:
            raise ModelLoadError(f"{where}: names no base model; pass one.")
        model = load_model(base, labels)
    if adapter_layers(model):
        raise ModelLoadError("The model already has adapter layers; load the adapter onto a base model.")

    try:
        layers = find_targets(model, _resolve_targets(model, spec["target_modules"]))
    except LoralabError as err:
        raise ModelLoadError(f"{where}: its target_modules {spec['target_modules']!r} do not fit "
                             f"this model: {err}") from err
    extra = _resolve_modules(model, spec.get("modules_to_save") or [])
    if check_base:
        _check_base(model, layers, spec, metadata, where)

    # Check everything before the model is touched: nothing is ever loaded partially.
    saved = {k if k.startswith("base_model.") else PREFIX + k: v for k, v in tensors.items()}
    expected, build = CODECS[spec["peft_type"]].plan(spec, layers, saved, where)
    # The head's modules that the adapter saves (all of a module's tensors, or a missing
    # key is refused); one it does not save keeps the base model's, as in PEFT (which
    # saves the classifier alone, not BERT's pooler).
    heads = tuple(m for m in head_modules(model) if any(k in saved for k in _module_keys(model, [m])))
    if not heads:
        logger.warning("%s saves no classification head: the base model's is used, as PEFT does.", directory)
    expected.update(_module_keys(model, heads + extra))
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise ModelLoadError(f"{directory}: the adapter does not fit this model: "
                             f"{'; '.join(parts)}. Nothing was loaded.")
    for key, value in saved.items():
        if tuple(value.shape) != expected[key]:
            raise ModelLoadError(f"{directory}: {key} has shape {tuple(value.shape)}, the model "
                                 f"needs {expected[key]}. Nothing was loaded.")

    build(model, saved)
    with torch.no_grad():
        for module in heads + extra:
            for pname, param in model.get_submodule(module).named_parameters():
                param.copy_(saved[f"{PREFIX}{module}.{pname}"])
    if extra:
        setattr(model, WHOLE_ATTR, extra)
    return set_pooling(model, metadata.get("loralab_pooling", "cls"))


def _lora_plan(spec: dict, layers: dict[str, nn.Module], saved: dict, where: Path):
    """A LORA adapter's expected keys and shapes, and how to put it into the model."""
    bias = bool(spec.get("lora_bias", False))
    dora = bool(spec.get("use_dora", False))
    plans = {name: _LayerPlan(int(_from_pattern(spec.get("rank_pattern") or {}, name, spec["r"])),
                              _from_pattern(spec.get("alpha_pattern") or {}, name, spec["lora_alpha"]),
                              layer.in_features, layer.out_features, bias, dora)
             for name, layer in layers.items()}
    _check_ranks(saved, plans, where)
    expected = {}
    for name, plan in plans.items():
        expected.update(_layer_keys(name, plan))

    def build(model: nn.Module, saved: dict) -> None:
        inject_lora(model, {n: p.rank for n, p in plans.items()}, {n: p.alpha for n, p in plans.items()},
                    dropout=float(spec.get("lora_dropout", 0.0)), rslora=bool(spec.get("use_rslora", False)),
                    bias=bias, variant="dora" if dora else "lora")
        with torch.no_grad():
            for name, layer in lora_layers(model).items():
                layer.A.copy_(saved[f"{PREFIX}{name}.lora_A.weight"].T)
                layer.B.copy_(saved[f"{PREFIX}{name}.lora_B.weight"].T)
                if bias:
                    layer.b.copy_(saved[f"{PREFIX}{name}.lora_B.bias"])
                if dora:
                    layer.magnitude.copy_(saved[f"{PREFIX}{name}.{MAGNITUDE}"])

    return expected, build


def _vera_plan(spec: dict, layers: dict[str, nn.Module], saved: dict, where: Path):
    """A VERA adapter's expected keys and shapes, and how to put it into the model. Without
    its projections (PEFT's `save_projection = false`) they are drawn again from its
    `projection_prng_key`."""
    from .vectors import vera_projections

    rank, seed = int(spec["r"]), int(spec.get("projection_prng_key", 0))
    in_max = max(m.in_features for m in layers.values())
    out_max = max(m.out_features for m in layers.values())
    expected = {}
    for name, layer in layers.items():
        expected[f"{PREFIX}{name}.vera_lambda_b"] = (layer.out_features,)
        expected[f"{PREFIX}{name}.vera_lambda_d"] = (rank,)
    if VERA_A in saved or VERA_B in saved:
        expected[VERA_A], expected[VERA_B] = (rank, in_max), (out_max, rank)

    def build(model: nn.Module, saved: dict) -> None:
        projections = ((saved[VERA_A], saved[VERA_B]) if VERA_A in saved
                       else vera_projections(rank, in_max, out_max, seed))
        inject_vera(model, rank, list(layers), seed=seed, dropout=float(spec.get("vera_dropout", 0.0)),
                    d_initial=float(spec.get("d_initial", 0.1)), projections=projections)
        with torch.no_grad():
            for name, layer in adapter_layers(model).items():
                layer.lambda_b.copy_(saved[f"{PREFIX}{name}.vera_lambda_b"])
                layer.lambda_d.copy_(saved[f"{PREFIX}{name}.vera_lambda_d"])

    return expected, build


def _ia3_plan(spec: dict, layers: dict[str, nn.Module], saved: dict, where: Path):
    """An IA3 adapter's expected keys and shapes, and how to put it into the model. A layer
    is a feed-forward one (its input scaled) by PEFT's rule: its name ends in one of
    `feedforward_modules`, or matches it where it is one regular expression."""
    wanted = spec.get("feedforward_modules") or []
    if isinstance(wanted, str):
        inputs = [n for n in layers if re.fullmatch(wanted, n)]
    else:
        inputs = [n for n in layers if any(n.endswith(f) for f in wanted)]
    expected = {f"{PREFIX}{name}.ia3_l": (1, layer.in_features) if name in inputs else (layer.out_features, 1)
                for name, layer in layers.items()}

    def build(model: nn.Module, saved: dict) -> None:
        inject_ia3(model, list(layers), inputs or None)
        with torch.no_grad():
            for name, layer in adapter_layers(model).items():
                layer.scale.copy_(saved[f"{PREFIX}{name}.ia3_l"].flatten())

    return expected, build


@dataclass(frozen=True)
class Codec:
    """How one kind of PEFT adapter is written and read: each layer's tensors under PEFT's
    keys, the fields of its adapter_config.json, and the plan that checks a saved one
    (expected keys and shapes) and builds it into a model. Adding a kind is one entry."""

    tensors: Callable[[str, Adapter], dict]
    fields: Callable[[dict], dict]
    plan: Callable[[dict, dict, dict, Path], tuple]
    required: tuple[str, ...]  # the fields a saved adapter_config.json must have


CODECS = {"LORA": Codec(_lora_tensors, _lora_fields, _lora_plan, ("r", "lora_alpha", "target_modules")),
          "VERA": Codec(_vera_tensors, _vera_fields, _vera_plan, ("r", "target_modules")),
          "IA3": Codec(_ia3_tensors, _ia3_fields, _ia3_plan, ("target_modules",))}


@dataclass(frozen=True)
class _LayerPlan:
    """What an adapter says of one layer, checked before anything is loaded."""

    rank: int
    alpha: float
    in_features: int
    out_features: int
    bias: bool
    dora: bool = False


def _check_ranks(saved: dict[str, torch.Tensor], plans: dict[str, _LayerPlan], where: Path) -> None:
    wrong = {}
    for name, plan in plans.items():
        a = saved.get(f"{PREFIX}{name}.lora_A.weight")
        if a is not None and a.dim() == 2 and a.shape[0] != plan.rank:
            wrong[name] = (plan.rank, a.shape[0])
    if wrong:
        name, (said, has) = next(iter(wrong.items()))
        raise ModelLoadError(f"{where}: says r={said}, but the weights have rank {has} ({name}"
                             f"{f' and {len(wrong) - 1} more layer(s)' if len(wrong) > 1 else ''}).")


def _resolve_modules(model: nn.Module, modules_to_save) -> tuple[str, ...]:
    """Fully qualified names of the `modules_to_save` beyond the head. PEFT matches them as
    name suffixes and passes over names the model lacks (its SEQ_CLS task adds "classifier"
    and "score" to every list); tensors saved for a module the model lacks are refused
    as unexpected keys."""
    heads = head_modules(model)
    found: list[str] = []
    for wanted in modules_to_save:
        found += [n for n, _ in model.named_modules() if matches(n, wanted) and not inside(n, heads) and n not in found]
    return tuple(found)


def _check_base(model: nn.Module, layers: dict[str, nn.Module], spec: dict, metadata: dict,
                where: Path) -> None:
    saved_fp = metadata.get("loralab_base_fingerprint")
    saved_name = known_as(spec.get("base_model_name_or_path"))
    name = base_model_name(model)
    if saved_fp:
        if saved_fp != base_fingerprint(layers):
            raise ModelLoadError(f"{where}: this adapter was trained on base model {saved_name!r}, "
                                 f"whose weights differ from those of {name!r}; refusing to load "
                                 "it onto another base model.")
    elif saved_name and name and saved_name != name:
        raise ModelLoadError(f"{where}: names base model {saved_name!r}, not {name!r}. Pass "
                             "check_base=False if they are the same weights.")
