"""Model surgery: find, extract, replace, wrap and freeze layers by name.

Targets are matched by fully qualified module name or by suffix (``"query"`` matches
``bert.encoder.layer.0.attention.self.query``), as PEFT does. Without targets, each
architecture's query and value projections are used, and each architecture's
classification head is found, from the table in `loralab.arch`.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from torch import nn

from .arch import ARCHITECTURES, USUAL_HEADS, model_type
from .errors import LoralabError
from .lora import Adapter, DoRA, LoRA, PiSSA
from .vectors import D_INITIAL, IA3, VeRA, vera_projections

LORA_LAYERS = {"lora": LoRA, "dora": DoRA, "pissa": PiSSA}  # the adapter layers `inject_lora` makes


class TargetError(LoralabError):
    """No layer matched the targets, or a target is already wrapped."""


def head_modules(model: nn.Module) -> tuple[str, ...]:
    """Fully qualified names of the classification head's modules."""
    kind = model_type(model)
    names = dict(model.named_modules())
    known = ARCHITECTURES[kind].head if kind in ARCHITECTURES else USUAL_HEADS
    heads = tuple(n for n in known if n in names)
    if not heads:
        raise LoralabError(f"Cannot find the classification head of this {kind or 'model'} "
                           f"({type(model).__name__}).")
    return heads


def matches(name: str, wanted: str) -> bool:
    """Whether module `name` is `wanted` or ends in it (``"query"`` matches
    ``bert.encoder.layer.0.attention.self.query``), as PEFT matches targets and modules to save."""
    return name == wanted or name.endswith("." + wanted)


def inside(name: str, modules: Sequence[str]) -> bool:
    """Whether module `name` is one of `modules` or within one of them."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def parse_targets(targets: str | Iterable[str] | None) -> list[str] | str | None:
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets.strip() == "all-linear":
            return "all-linear"
        targets = targets.split(",")
    parsed = [t.strip() for t in targets if t.strip()]
    if not parsed:
        raise TargetError("The target list is empty.")
    return parsed


def default_targets(model: nn.Module) -> list[str]:
    kind = model_type(model)
    if kind not in ARCHITECTURES:
        raise TargetError(f"No default LoRA targets for model type {kind!r}; pass targets "
                          "explicitly, for example --targets query,value or --targets all-linear.")
    return list(ARCHITECTURES[kind].targets)


def find_targets(model: nn.Module, targets: str | Iterable[str] | None = None,
                 *, allow_wrapped: bool = False) -> dict[str, nn.Module]:
    """Modules matched by `targets`, keyed by fully qualified name, in model order.

    Raises:
        TargetError: when nothing matches, or a match is already a LoRA layer.
    """
    parsed = parse_targets(targets)
    if parsed is None:
        parsed = default_targets(model)
    heads = head_modules(model)
    found: dict[str, nn.Module] = {}
    inside_adapter = set()
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_adapter):
            continue  # the base layer inside an adapter's wrapper is not a separate target
        if isinstance(module, Adapter):
            inside_adapter.add(name)
        if not isinstance(module, (nn.Linear, Adapter)) or inside(name, heads):
            continue
        if parsed == "all-linear" or any(matches(name, t) for t in parsed):
            found[name] = module
    if not found:
        raise TargetError(f"No linear layer matches targets {parsed!r} in {type(model).__name__}.")
    wrapped = [n for n, m in found.items() if isinstance(m, Adapter)]
    if wrapped and not allow_wrapped:
        raise TargetError(f"Layer {wrapped[0]} already has a {found[wrapped[0]].kind} adapter; refusing to wrap it "
                          f"twice ({len(wrapped)} such layer(s)).")
    return found


def target_layers(model: nn.Module, targets: str | Iterable[str] | None = None) -> dict[str, nn.Linear]:
    """The target linear layers (by default query and value), keyed by module name: the
    lab's `extract` (step 4; `loralab.lab.extract`), not SVD extraction (`loralab.extraction`).

    The layers are the model's own modules, not copies.
    """
    return find_targets(model, targets)  # type: ignore[return-value]


def replace(model: nn.Module, named_layers: dict[str, nn.Module]) -> nn.Module:
    """Put modules into `model` by fully qualified name, in place; returns `model`."""
    for name, layer in named_layers.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            getattr(parent, child)
        except AttributeError as err:
            raise TargetError(f"{type(model).__name__} has no module named {name!r}.") from err
        setattr(parent, child, layer)
    return model


def clone_linear(original: nn.Linear) -> nn.Linear:
    """A linear layer of the same shape with fresh random weights (the lab's replace test)."""
    clone = nn.Linear(original.in_features, original.out_features, bias=original.bias is not None)
    return clone.to(original.weight.dtype)


def freeze_all_but_head(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the classification head's (head-tuning)."""
    model.requires_grad_(False)
    for name in head_modules(model):
        model.get_submodule(name).requires_grad_(True)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRA]:
    """Every LoRA layer in the model (DoRA and PiSSA included), found by type, keyed by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRA)}


def adapter_layers(model: nn.Module) -> dict[str, Adapter]:
    """Every adapter layer in the model (LoRA and its variants, VeRA, IA3), keyed by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Adapter)}


def _train_adapters_and_head(model: nn.Module, wrapped: dict[str, Adapter]) -> nn.Module:
    """Put the adapter layers in and leave only their own parameters and the head's trainable."""
    replace(model, wrapped)
    freeze_all_but_head(model)
    for layer in adapter_layers(model).values():
        layer.requires_grad_(True)
        layer.base.requires_grad_(False)
    return model


def inject_lora(model: nn.Module, rank: int | Mapping[str, int], alpha: float | Mapping[str, float] | None = None,
                targets: str | Iterable[str] | None = None, variant: str = "lora", **lora_options) -> nn.Module:
    """Wrap the target layers in LoRA adapters (or a variant's) and train only adapters and
    head.

    Args:
        model: a sequence-classification model; changed in place and returned.
        rank: the adapters' rank, or a rank per layer name (PEFT's `rank_pattern`; those
            layers are then the targets).
        alpha: scale numerator, or one per layer name; defaults to 2 * rank as in the lab.
        targets: names or suffixes, ``"all-linear"``, or None for the defaults.
        variant: ``"lora"``, ``"dora"`` (`loralab.lora.DoRA`: a magnitude per output row too) or
            ``"pissa"`` (`loralab.lora.PiSSA`: A and B from W0's top singular directions).
        **lora_options: `dropout`, `init`, `rslora`, `bias`, passed to `LoRA`.
    """
    if isinstance(rank, Mapping) and targets is None:
        targets = list(rank)
    if variant not in LORA_LAYERS:
        raise ValueError(f"variant must be one of {', '.join(LORA_LAYERS)}, got {variant!r}")
    layers = find_targets(model, targets)

    def each(value, name):
        return value[name] if isinstance(value, Mapping) else value

    for name, layer in layers.items():  # an update of a larger rank has more numbers than the layer
        smallest = min(layer.in_features, layer.out_features)
        if each(rank, name) > smallest:
            raise LoralabError(f"rank {each(rank, name)} is larger than the smallest dimension of {name} "
                               f"({layer.out_features} x {layer.in_features}); give a rank from 1 to {smallest}.")
    wrapped = {}
    for name, layer in layers.items():
        r = each(rank, name)
        kind = LORA_LAYERS[variant]
        wrapped[name] = kind(layer, rank=r, alpha=2 * r if alpha is None else each(alpha, name), **lora_options)
    return _train_adapters_and_head(model, wrapped)


def inject_vera(model: nn.Module, rank: int, targets: str | Iterable[str] | None = None, *, seed: int = 0,
                dropout: float = 0.0, d_initial: float = D_INITIAL,
                projections: tuple | None = None) -> nn.Module:
    """Wrap the target layers (by default the query and value projections) in VeRA adapters
    sharing one random pair A (rank, in_max), B (out_max, rank) drawn from `seed`, or the
    `projections` (A, B) given (a saved adapter's); train only the vectors and the head."""
    layers = find_targets(model, targets)
    if projections is None:
        projections = vera_projections(rank, max(m.in_features for m in layers.values()),
                                       max(m.out_features for m in layers.values()), seed)
    a, b = projections
    wrapped = {name: VeRA(layer, a, b, dropout=dropout, d_initial=d_initial, projection_seed=seed)
               for name, layer in layers.items()}
    return _train_adapters_and_head(model, wrapped)


def ia3_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """IA3's default layers (`loralab.arch`): (those whose output it scales, those whose input
    it scales), as fully qualified names."""
    kind = model_type(model)
    if ARCHITECTURES.get(kind) is None or ARCHITECTURES[kind].ia3 is None:
        raise TargetError(f"No default IA3 targets for model type {kind!r}; pass targets and feedforward "
                          "explicitly, for example --targets key,value,output.dense with feedforward output.dense.")
    arch = ARCHITECTURES[kind]
    outputs, inputs = arch.ia3
    return list(find_targets(model, outputs)), arch.ia3_feedforward(find_targets(model, inputs))


def inject_ia3(model: nn.Module, targets: str | Iterable[str] | None = None,
               feedforward: str | Iterable[str] | None = None) -> nn.Module:
    """Wrap layers in IA3 adapters: by default the keys and values (outputs rescaled) and the
    feed-forward blocks' second layers (inputs rescaled; see `loralab.arch`). With `targets`,
    the layers of `targets` that match `feedforward` have their input rescaled, the others
    their output. Only the vectors and the head train."""
    if targets is None and feedforward is None:
        outputs, inputs = ia3_targets(model)
        layers = find_targets(model, outputs + inputs)
    else:
        layers = find_targets(model, targets if targets is not None else parse_targets(feedforward))
        wanted = parse_targets(feedforward) or []
        inputs = [n for n in layers if wanted == "all-linear" or any(matches(n, f) for f in wanted)]
    wrapped = {name: IA3(layer, feedforward=name in inputs) for name, layer in layers.items()}
    return _train_adapters_and_head(model, wrapped)


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight and put plain `nn.Linear`s back."""
    layers = adapter_layers(model)
    for layer in layers.values():
        layer.merge()
    return replace(model, {name: layer.base for name, layer in layers.items()})
