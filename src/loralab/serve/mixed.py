"""Many adapters on one base model, and batches that mix them (`loralab serve`'s core).

The base model is loaded once. Each adapter folder (loralab's or PEFT's layout: LoRA, DoRA,
PiSSA, VeRA, IA3) is read onto a throw-away copy of it by `adapters.load_adapter`, so every
check of a lone load holds (base fingerprint, keys, shapes, no pickles); then only what the
adapter owns is kept: its adapter layers, re-pointed at the base's own frozen `nn.Linear`s,
the modules it holds whole beyond the head (an extracted adapter's layer norms), and its
head with its pooling and classes. 100 LoRA r = 8 adapters of all-MiniLM-L6-v2 cost their
own tensors, about 0.6 MB each with the head, not 100 models.

A mixed batch holds rows of several adapters, grouped by adapter (`segments`). Each layer
that some adapter changes is a `Switch`: rows of an adapter that changes it get that
adapter's change, the other rows the base layer alone. Two ways to compute it:

- ``gather`` (the default): the base layer once over the whole batch, then each row's own
  terms gathered from stacks built once per adapter set: y * scale + shift + (x A) B. LoRA
  (and PiSSA, saved as LoRA), DoRA (its norm fixed once trained), VeRA (its vectors folded
  into A and B) and IA3 on a layer's output all take that form (`_gather_terms`): two
  batched matmuls per layer whatever the number of adapters, as S-LoRA and LoRAX do on GPUs;
- ``segments``: one call of the adapter's own layer per run of its rows (`LoRA.forward`,
  `DoRA.forward`, ...: the code of `loralab predict` itself); IA3 on a layer's input and
  modules held whole always go this way.

Measured here (`benchmarks/serve.py`, 2 AMD EPYC cores, bf16, medians of 3 rounds): 100
LoRA adapters under mixed traffic served 213 requests/s with gather, 125 with segments,
against 252 for one merged model; in-process on the same batches gather ran 1.28x PEFT's
`adapter_names`, segments 0.87x. Both give `loralab predict`'s scores (tested in fp32).

The encoder runs once for the whole batch; then each adapter's rows are pooled its way and
go through its own head (`arch.Architecture.head_forward`), whatever its number of classes.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    _resolve_modules,
    class_names,
    load_adapter,
    read_adapter,
    whole_modules,
)
from ..api import read_info
from ..arch import architecture
from ..errors import ModelLoadError
from ..inference import autocast, bucket_length, resolve_precision
from ..lora import DoRA, LoRA
from ..models import load_model, load_tokenizer, pick_device
from ..pooling import masked_mean, pooling_of
from ..settings import MIXINGS, REGRESSION_LABELS, TrainSettings
from ..surgery import adapter_layers, head_modules, inside, replace
from ..vectors import IA3, VeRA

logger = logging.getLogger("loralab")


@dataclass
class Served:
    """One adapter in memory: what it changes, its head, and what `GET /adapters` says of it."""

    name: str
    folder: Path
    layers: dict[str, nn.Module]  # module path -> the module its rows go through there
    head: nn.Module               # the head's modules, at their paths in the model
    pooling: str
    labels: list[str]
    method: str                   # lora, dora, vera, ia3 (PiSSA is saved as a LoRA of the unchanged base)
    rank: int | None
    trainable_params: int
    pairs: bool | None            # reads sentence pairs (None: the folder does not say)
    card: str = ""                # the folder's README.md, if any
    info: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return "regression" if tuple(self.labels) == REGRESSION_LABELS else "classification"

    def describe(self) -> dict:
        """The adapter's metadata, as `GET /adapters` lists it."""
        return {"name": self.name, "method": self.method, "rank": self.rank, "task": self.task,
                "labels": self.labels, "pairs": self.pairs, "trainable_params": self.trainable_params,
                "pooling": self.pooling, "model_card": self.card}


class _Batch:
    """The batch a forward pass is computing: which rows belong to which adapter."""

    def __init__(self):
        self.segments: list[tuple[str, slice]] = []
        self.rows: torch.Tensor | None = None  # each row's adapter, as an index into a Switch's stack


_UNBUILT = object()  # a Switch's stack before its first gathered batch, and after adapters change


class Switch(nn.Module):
    """A layer of the base model that some adapters change: each adapter's rows of the batch
    go through its own module, the others through `base`."""

    def __init__(self, base: nn.Module, batch: _Batch, mixing: str, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.base = base
        self.batch = batch
        self.mixing = mixing
        self.dtype = dtype  # of the stacked A and B: bfloat16 where the products run in it (half the memory)
        self.by_adapter: dict[str, nn.Module] = {}
        self._stack = _UNBUILT  # gather: each adapter's terms stacked (`_build_stack`), built at first use

    def add(self, name: str, module: nn.Module) -> None:
        self.by_adapter[name] = module
        self._stack = _UNBUILT

    def remove(self, name: str) -> None:
        self.by_adapter.pop(name, None)
        self._stack = _UNBUILT

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        runs = self._runs()
        if len(runs) == 1:
            return runs[0][1](x, *args, **kwargs)
        if self.mixing == "gather":
            if self._stack is _UNBUILT:
                self._stack = self._build_stack(x.device)
            if self._stack is not None:
                return self._gather(x)
        return torch.cat([module(x[rows], *args, **kwargs) for rows, module in runs], dim=0)

    def _runs(self) -> list[tuple[slice, nn.Module]]:
        """(rows, module) for each run of consecutive rows that one module computes."""
        runs: list[tuple[slice, nn.Module]] = []
        for name, rows in self.batch.segments:
            module = self.by_adapter.get(name, self.base)
            if runs and runs[-1][1] is module:
                runs[-1] = (slice(runs[-1][0].start, rows.stop), module)
            else:
                runs.append((rows, module))
        return runs or [(slice(None), self.base)]

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """base(x) * scale + shift + (x A) B, with each row's own A, B, scale and shift (`_gather_terms`)."""
        index, a, b, scale, shift = self._stack
        rows = torch.cat([torch.full((s.stop - s.start,), index.get(n, 0), dtype=torch.long)
                          for n, s in self.batch.segments]).to(x.device)
        y = self.base(x)
        if scale is not None:
            y = y * scale[rows][:, None, :].to(y.dtype)
        if shift is not None:
            y = y + shift[rows][:, None, :].to(y.dtype)
        if a is not None:
            h = x.to(a.dtype) if not torch.is_autocast_enabled(x.device.type) else x
            y = y + torch.bmm(torch.bmm(h, a[rows]), b[rows]).to(y.dtype)  # (rows, tokens, r), then (.., out)
        return y

    def _build_stack(self, device):
        """Every adapter's terms stacked, row 0 the identity (rows of no adapter here); None where
        an adapter's layer here has no such terms (its rows then go the segments' way)."""
        names = list(self.by_adapter)
        terms = [_gather_terms(self.by_adapter[n]) for n in names]
        if any(t is None for t in terms):
            return None
        n, d_in, d_out = len(names) + 1, self.base.in_features, self.base.out_features
        rank = max((t[0].shape[1] for t in terms if t[0] is not None), default=0)
        a = torch.zeros(n, d_in, rank, device=device, dtype=self.dtype) if rank else None
        b = torch.zeros(n, rank, d_out, device=device, dtype=self.dtype) if rank else None
        scale = torch.ones(n, d_out, device=device) if any(t[2] is not None for t in terms) else None
        shift = torch.zeros(n, d_out, device=device) if any(t[3] is not None for t in terms) else None
        for i, (ta, tb, tscale, tshift) in enumerate(terms, 1):
            if ta is not None:
                a[i, :, :ta.shape[1]], b[i, :tb.shape[0]] = ta.to(self.dtype), tb.to(self.dtype)
            if tscale is not None:
                scale[i] = tscale
            if tshift is not None:
                shift[i] = tshift
        return {name: i for i, name in enumerate(names, 1)}, a, b, scale, shift


@torch.no_grad()
def _gather_terms(layer: nn.Module):
    """A frozen adapter layer as (A (in, r), B (r, out), scale (out,), shift (out,)) with
    layer(x) = base(x) * scale + shift + (x A) B (None: no such term), or None where it is not
    of that form (IA3 on a layer's input, a module held whole): its rows go the segments' way.

    LoRA: A, s B (and s b as shift). DoRA, with m / ||W0 + s (A B)^T|| fixed once trained: scale
    it, shift (1 - it) * bias, B scaled by it. VeRA: A^T d and B^T b, its vectors folded in.
    IA3 on a layer's output: scale l."""
    if isinstance(layer, DoRA):
        norm_scale = layer.magnitude.float() / layer.weight_norm()
        bias = layer.base.bias
        return (layer.A.float(), layer.scaling * layer.B.float() * norm_scale[None, :], norm_scale,
                None if bias is None else (1 - norm_scale) * bias.float())
    if isinstance(layer, LoRA):
        return (layer.A.float(), layer.scaling * layer.B.float(), None,
                None if layer.b is None else layer.scaling * layer.b.float())
    if isinstance(layer, VeRA):
        a, b = layer.A[:, :layer.in_features].float(), layer.B[:layer.out_features].float()
        return a.T * layer.lambda_d.float()[None, :], b.T * layer.lambda_b.float()[None, :], None, None
    if isinstance(layer, IA3) and not layer.feedforward:
        return None, None, layer.scale.float(), None
    return None


def _head_holder(model: nn.Module) -> nn.Module:
    """The head's modules, taken out of `model`, at the same paths in an empty module (so the
    architecture's `head_forward` finds `holder.bert.pooler`, `holder.classifier`)."""
    holder = nn.Module()
    for path in head_modules(model):
        parent = holder
        *outer, last = path.split(".")
        for part in outer:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(last, model.get_submodule(path))
    return holder.eval()


def _method(layers: dict[str, nn.Module]) -> tuple[str, int | None]:
    first = next(iter(layers.values()))
    if isinstance(first, DoRA):
        return "dora", first.rank
    if isinstance(first, LoRA):
        return "lora", max(m.rank for m in layers.values())
    if isinstance(first, VeRA):
        return "vera", first.rank
    if isinstance(first, IA3):
        return "ia3", None
    return type(first).__name__.lower(), None


class MixedModel:
    """One base model and the adapters served on it; `logits` runs a batch that mixes them.

    `read` builds an adapter from its folder and touches nothing shared, so it may run in
    any thread while batches run; `add` and `remove` change what the model computes and
    must run between batches, in the thread that runs `logits` (the server does both)."""

    def __init__(self, model: str = "minilm", settings: TrainSettings | None = None, mixing: str = "auto"):
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {', '.join(MIXINGS)}, got {mixing!r}")
        self.name = str(model)
        self.settings = settings or TrainSettings()
        self.device = pick_device(self.settings.device)
        self.precision = resolve_precision(self.settings, self.device)
        self.mixing = "gather" if mixing == "auto" else mixing
        self.model = load_model(model).eval().to(self.device)
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(model)
        self.arch = architecture(self.model, "Serving adapters")
        self.encoder = getattr(self.model, self.model.base_model_prefix)
        self.modules = dict(self.model.named_modules())  # the base's own modules, before any Switch
        self.switches: dict[str, Switch] = {}
        self.adapters: dict[str, Served] = {}
        self._batch = _Batch()
        self._templates: dict[tuple, nn.Module] = {}
        self._template_lock = threading.Lock()
        self.max_tokens = min(n for n in (getattr(self.model.config, "max_position_embeddings", 512),
                                              self.settings.max_length) if n)

    def _template(self, labels: tuple[str, ...] | None) -> nn.Module:
        """The base model with a head for `labels`, on the CPU, its other parameters the served
        model's own tensors (no second copy of the base)."""
        with self._template_lock:
            if labels not in self._templates:
                template = load_model(self.name, list(labels) if labels else None).eval()
                heads = head_modules(template)
                for path, module in template.named_modules():
                    if path in self.modules and not inside(path, heads):
                        for pname, _ in list(module.named_parameters(recurse=False)):
                            setattr(module, pname, getattr(self.modules[path], pname))
                self._templates[labels] = template
            return self._templates[labels]

    def _copy(self, template: nn.Module, folder: Path) -> nn.Module:
        """A copy of `template` to load an adapter onto: the parameters the adapter writes (its
        head, the modules it holds whole) copied, every other one shared, not copied."""
        spec, _, _ = read_adapter(folder)
        written = head_modules(template) + _resolve_modules(template, spec.get("modules_to_save") or [])
        shared = {id(p): p for path, p in template.named_parameters() if not inside(path.rsplit(".", 1)[0], written)}
        return copy.deepcopy(template, memo=shared)

    def read(self, name: str, folder: str | Path) -> Served:
        """Build adapter `name` from `folder`: load it onto a copy of the base (every check of
        `load_adapter` holds), keep what it owns, point its layers at the shared base."""
        folder = Path(folder)
        if not (folder / CONFIG_NAME).exists():
            raise ModelLoadError(f"{folder}: no {CONFIG_NAME}; an adapter folder has {CONFIG_NAME} and "
                                 f"{WEIGHTS_NAME}.")
        _, _, metadata = read_adapter(folder)
        labels = tuple(json.loads(metadata["loralab_labels"])) if "loralab_labels" in metadata else None
        model = load_adapter(self._copy(self._template(labels), folder), folder)
        layers = adapter_layers(model)
        owned: dict[str, nn.Module] = {}
        for path, layer in layers.items():
            base = self.modules.get(path)
            if not isinstance(base, nn.Linear):
                raise ModelLoadError(f"{folder}: adapts {path}, which the base model {self.name!r} has no linear "
                                     "layer at.")
            layer.base = base  # the shared frozen layer; the copy's is dropped with the copy
            owned[path] = layer
        heads = head_modules(model)
        for path in whole_modules(model):
            if path not in heads:
                owned[path] = model.get_submodule(path)
        method, rank = _method(layers)
        info = read_info(folder)
        if info.get("method") in ("lora", "dora", "pissa", "vera", "ia3"):  # PiSSA is saved as LoRA
            method, rank = info["method"], info.get("rank") or rank
        columns = info.get("data") or {}
        head = _head_holder(model)
        trainable = sum(p.numel() for m in owned.values() for n, p in m.named_parameters() if not n.startswith("base."))
        card = folder / "README.md"
        served = Served(name, folder, owned, head, pooling_of(model), class_names(model), method, rank,
                        trainable + sum(p.numel() for p in head.parameters()),
                        bool(columns.get("text_pair_column")) if columns else None,
                        card.read_text("utf-8", errors="replace") if card.is_file() else "", info)
        for module in list(owned.values()) + [served.head]:
            module.eval().requires_grad_(False)
            module.to(self.device)
        return served

    def add(self, served: Served) -> None:
        """Serve `served` (replacing an adapter of the same name)."""
        if served.name in self.adapters:
            self.remove(served.name)
        for path, module in served.layers.items():
            switch = self.switches.get(path)
            if switch is None:
                switch = Switch(self.modules[path], self._batch, self.mixing,
                                torch.bfloat16 if self.precision == "bf16" else torch.float32)
                replace(self.model, {path: switch})
                self.switches[path] = switch
            switch.add(served.name, module)
        self.adapters[served.name] = served

    def remove(self, name: str) -> Served | None:
        served = self.adapters.pop(name, None)
        for switch in self.switches.values():
            switch.remove(name)
        return served

    def encode(self, text: str | tuple[str, str]) -> dict:
        """One text (or pair) as token ids, cut as training and `loralab predict` cut it."""
        if isinstance(text, tuple):
            return dict(self.tokenizer(text[0], text[1], truncation="longest_first", max_length=self.max_tokens))
        return dict(self.tokenizer(text, truncation=True, max_length=self.max_tokens))

    @torch.inference_mode()
    def logits(self, rows: list[tuple[str, dict]]) -> list[np.ndarray]:
        """Each row's logits (a float32 vector of its adapter's classes; one value for a
        regression head), for rows (adapter name, `encode`'s output) in any order of adapters:
        they are grouped by adapter for the pass and returned in the order given."""
        order = sorted(range(len(rows)), key=lambda i: rows[i][0])
        names = [rows[i][0] for i in order]
        segments, start = [], 0
        for i in range(1, len(names) + 1):
            if i == len(names) or names[i] != names[start]:
                segments.append((names[start], slice(start, i)))
                start = i
        features = [rows[i][1] for i in order]
        pairs = any(any(f.get("token_type_ids") or ()) for f in features)
        longest = max(len(f["input_ids"]) for f in features)
        length = bucket_length(longest, self.settings.pad_to_multiple_of, self.max_tokens)
        keep = ("input_ids", "attention_mask") + (("token_type_ids",) if pairs else ())
        batch = self.tokenizer.pad([{k: f[k] for k in keep if k in f} for f in features], padding="max_length",
                                   max_length=length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        self._batch.segments = segments
        out: list[np.ndarray] = [None] * len(rows)  # type: ignore[list-item]
        try:
            with autocast(self.device, self.precision):
                hidden = self.encoder(**batch)[0]
                for name, rows_of in segments:
                    served = self.adapters[name]
                    states = hidden[rows_of]
                    if served.pooling == "mean":
                        feats = masked_mean(states, batch["attention_mask"][rows_of])
                    else:
                        feats = states[:, 0]
                    values = self.arch.head_forward(served.head, feats, nn.Identity()).float().cpu().numpy()
                    for j, row in enumerate(range(rows_of.start, rows_of.stop)):
                        out[order[row]] = values[j]
        finally:
            self._batch.segments = []
        return out
