"""A LoRA adapter from a fully fine-tuned model: the truncated SVD of each layer's update.

For every target linear layer, dW = W_finetuned - W_base is factored once in float64
(`lowrank.SVD`), and its top r singular triplets become the adapter:

    lora_B = U_r sqrt(S_r),   lora_A = sqrt(S_r) V_r^T,   alpha = r (scaling 1),

so that lora_B lora_A = approx(dW, r), the best rank-r update in Frobenius norm
(Eckart-Young). The rank is the same for every layer (`rank`), or each layer's smallest
rank whose singular values keep the fraction `energy` of its ||dW||_F^2, capped by
`max_rank`; ranks that differ go into PEFT's `rank_pattern` / `alpha_pattern`.

Everything else the fine-tune changed is accounted for, and none of it silently:
* the change of each adapted layer's bias goes into the adapter (PEFT's `lora_bias`);
* the classification head, every layer norm that changed and the modules named in `keep`
  are saved whole (PEFT's `modules_to_save`);
* the rest (the other linear layers, the embeddings) is left out, and listed with its share
  of the fine-tune's squared update norm (every parameter outside the head).

    >>> result = extract_adapter("runs/lab/full", "minilm", energy=0.9)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
    >>> save_extraction(result, "adapters/full-e0.9")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .adapters import WHOLE_ATTR, class_names, save_adapter
from .arch import model_type
from .errors import LoralabError, ModelLoadError
from .lowrank import SVD, rank_for_energy
from .models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model_path
from .outputs import check_output, output_dir
from .pooling import pooling_of, set_pooling
from .surgery import find_targets, head_modules, inject_lora, inside, lora_layers, matches, replace


@dataclass(frozen=True)
class ModuleRow:
    """One adapted layer: its rank, and the share of its update that rank keeps."""

    name: str
    shape: tuple[int, int]  # (out, in)
    rank: int
    energy: float           # share of this layer's ||dW||^2 in its top `rank` singular values
    parameters: int         # rank * (in + out), plus out for the bias
    norm_sq: float          # ||dW||_F^2 of the weight


@dataclass(frozen=True)
class Part:
    """A changed parameter outside the adapted layers' weights, and where it went."""

    name: str
    norm_sq: float
    how: str  # "bias" (lora_bias), "whole" (modules_to_save) or "left out"


@dataclass
class Extraction:
    """What `extract_adapter` built: the model with its adapters, and the accounts."""

    model: nn.Module
    modules: list[ModuleRow]
    parts: list[Part]
    whole: tuple[str, ...]   # modules saved whole, the head first
    total_sq: float          # ||dW||^2 over every parameter outside the head
    seconds: float
    settings: dict = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        """The adapter's size: low-rank factors, their biases, and the modules saved whole."""
        whole = sum(p.numel() for m in self.whole for p in self.model.get_submodule(m).parameters())
        return sum(row.parameters for row in self.modules) + whole

    @property
    def kept_share(self) -> float:
        """Share of the fine-tune's ||dW||^2 the adapter holds (exactly or in its top ranks)."""
        kept = sum(r.energy * r.norm_sq for r in self.modules) + sum(p.norm_sq for p in self.parts
                                                                       if p.how != "left out")
        return kept / self.total_sq if self.total_sq > 0 else 1.0

    @property
    def left_out(self) -> list[Part]:
        return [p for p in self.parts if p.how == "left out"]

    def share(self, part: Part) -> float:
        return part.norm_sq / self.total_sq if self.total_sq > 0 else 0.0

    def summary(self) -> str:
        """Plain lines for the terminal and the adapter's README."""
        ranks = [r.rank for r in self.modules]
        lines = [f"{len(self.modules)} adapted layer(s), rank {min(ranks)}-{max(ranks)}" if ranks
                 else "no adapted layer (the targets did not change)",
                 f"{self.parameters:,} parameters (low-rank factors {sum(r.parameters for r in self.modules):,}; "
                 f"saved whole: {', '.join(self.whole)})",
                 f"keeps {100 * self.kept_share:.1f}% of the fine-tune's ||dW||^2 (every parameter "
                 f"outside the head)"]
        left = grouped(self.left_out)
        if left:
            lines.append("left out (share of ||dW||^2):")
            lines += [f"  {name}: {100 * sq / self.total_sq:.2f}%" for name, sq in left]
        lines.append(f"took {self.seconds:.1f} s")
        return "\n".join(lines)

    def table(self) -> str:
        """A Markdown table of the adapted layers."""
        rows = ["| layer | shape | rank | energy kept | parameters |", "|---|---|---:|---:|---:|"]
        rows += [f"| {r.name} | {r.shape[0]} x {r.shape[1]} | {r.rank} | {r.energy:.3f} | {r.parameters:,} |"
                 for r in self.modules]
        return "\n".join(rows)


def grouped(parts: Iterable[Part]) -> list[tuple[str, float]]:
    """Parts summed over the layers of the stack: ``bert.encoder.layer.*.output.dense.weight``."""
    sums: dict[str, float] = {}
    for part in parts:
        key = re.sub(r"\.\d+\.", ".*.", part.name)
        sums[key] = sums.get(key, 0.0) + part.norm_sq
    return sorted(sums.items(), key=lambda kv: -kv[1])


def _own_labels(folder) -> list[str] | None:
    """The class names a model folder's config gives, Hugging Face's placeholders (LABEL_0,
    ...) included: a config that names none has them."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(folder), trust_remote_code=False)
    except (OSError, ValueError):
        return None  # load_model reports what is wrong with the folder
    return [config.id2label[i] for i in range(config.num_labels)]


def extract_adapter(finetuned: nn.Module | str | os.PathLike, base: nn.Module | str | os.PathLike = DEFAULT_MODEL,
                    *, rank: int | None = None, energy: float | None = None, max_rank: int | None = None,
                    targets: str | Iterable[str] | None = None, keep: Iterable[str] = (), keep_norms: bool = True,
                    progress: bool = True) -> Extraction:
    """A LoRA adapter on `base` that approximates the fine-tune `finetuned` (see the module docstring).

    Args:
        finetuned: the fully fine-tuned classifier, or its folder (made by loralab or not).
        base: the model it was fine-tuned from, or its name (``"minilm"``, a folder, a Hub id).
        rank: one rank for every target layer.
        energy: instead of `rank`, each layer's smallest rank keeping this fraction of its ||dW||^2.
        max_rank: the largest rank any layer gets.
        targets: the layers to adapt: names or suffixes, ``"all-linear"``, or None (query and value).
        keep: more modules to save whole (names or suffixes, e.g. ``"embeddings"``).
        keep_norms: save every layer norm that changed whole (they are small).

    Raises:
        ModelLoadError: the two models differ in architecture or in any parameter's shape.
    """
    if (rank is None) == (energy is None):
        raise LoralabError("Give the adapter a rank or an energy to keep, one of the two.")
    if rank is not None and rank < 1:
        raise LoralabError(f"The rank must be at least 1, got {rank}.")
    if energy is not None and not 0 < energy <= 1:
        raise LoralabError(f"The energy to keep is a fraction in (0, 1], got {energy}.")
    if max_rank is not None and max_rank < 1:
        raise LoralabError(f"The largest rank must be at least 1, got {max_rank}.")
    start = time.perf_counter()
    # The fine-tune's own class names, unnamed ones (LABEL_0, ...) included: extraction names no classes.
    tuned = finetuned if isinstance(finetuned, nn.Module) else load_model(finetuned, _own_labels(finetuned))
    model = copy.deepcopy(base) if isinstance(base, nn.Module) else load_model(base, class_names(tuned))
    heads = head_modules(model)
    _check_same_architecture(tuned, model, heads, _name(finetuned, "the fine-tuned model"), _name(base, "the base"))
    set_pooling(model, pooling_of(tuned))
    replace(model, {h: copy.deepcopy(tuned.get_submodule(h)) for h in heads})
    for key in ("num_labels", "id2label", "label2id"):
        setattr(model.config, key, copy.deepcopy(getattr(tuned.config, key)))

    tuned_params = dict(tuned.named_parameters())
    changed = {}  # parameter -> ||dW||^2, outside the head
    for name, param in model.named_parameters():
        if not inside(name, heads) and param.is_floating_point():
            sq = float((tuned_params[name].detach().double() - param.detach().double()).square().sum())
            if sq > 0:
                changed[name] = sq
    whole = heads + _whole_modules(model, changed, keep, keep_norms, heads)
    layers = {n: layer for n, layer in find_targets(model, targets).items() if f"{n}.weight" in changed}
    clash = [n for n in layers if inside(n, whole)]
    if clash:
        raise LoralabError(f"{clash[0]} is both a target and inside a module saved whole; keep one of the two.")
    bias = any(f"{n}.bias" in changed for n in layers)

    from tqdm.auto import tqdm

    rows, factors = [], {}
    for name, layer in tqdm(layers.items(), desc="Extracting", disable=not progress):
        svd = SVD.of(tuned_params[f"{name}.weight"].detach().double() - layer.weight.detach().double())
        r = rank if rank is not None else rank_for_energy(svd.energy(), energy)
        r = min(r, max_rank or r, svd.full_rank)
        root = svd.S[:r].sqrt()
        factors[name] = (svd.U[:, :r] * root, root[:, None] * svd.Vh[:r])  # lora_B (out, r), lora_A (r, in)
        out_f, in_f = layer.weight.shape
        rows.append(ModuleRow(name, (out_f, in_f), r, float(svd.energy()[r - 1]), r * (in_f + out_f)
                              + (out_f if bias else 0), changed[f"{name}.weight"]))

    adapted = {f"{n}.weight" for n in layers}
    parts = [Part(name, sq, "bias" if bias and name.removesuffix(".bias") in layers and name.endswith(".bias")
                  else "whole" if inside(name, whole) else "left out")
             for name, sq in changed.items() if name not in adapted]
    with torch.no_grad():
        for module in whole[len(heads):]:
            for pname, param in model.get_submodule(module).named_parameters():
                param.copy_(tuned_params[f"{module}.{pname}"])
        if layers:
            ranks = {row.name: row.rank for row in rows}
            inject_lora(model, ranks, {n: float(r) for n, r in ranks.items()}, bias=bias)  # alpha = r: scaling 1
            for name, layer in lora_layers(model).items():
                lora_b, lora_a = factors[name]
                layer.A.copy_(lora_a.T)
                layer.B.copy_(lora_b.T)
                if bias:
                    layer.b.copy_(tuned_params[f"{name}.bias"].detach().double() - layer.base.bias.detach().double())
    if whole[len(heads):]:
        setattr(model, WHOLE_ATTR, whole[len(heads):])
    settings = {"rank": rank, "energy": energy, "max_rank": max_rank,
                "targets": targets if isinstance(targets, (str, type(None))) else ",".join(targets),
                "keep": list(keep), "keep_norms": keep_norms}
    return Extraction(model.eval(), rows, parts, whole, sum(changed.values()), time.perf_counter() - start, settings)


def _name(model, fallback: str) -> str:
    return fallback if isinstance(model, nn.Module) else str(model)


def _check_same_architecture(tuned: nn.Module, base: nn.Module, heads, tuned_name: str, base_name: str) -> None:
    kinds = [(type(m).__name__, model_type(m)) for m in (tuned, base)]
    if kinds[0] != kinds[1]:
        raise ModelLoadError(f"{tuned_name} is a {kinds[0][0]} ({kinds[0][1]!r}), {base_name} a {kinds[1][0]} "
                             f"({kinds[1][1]!r}): an adapter is extracted from a fine-tune of the base itself.")
    shapes = [{n: tuple(p.shape) for n, p in m.named_parameters() if not inside(n, heads)} for m in (tuned, base)]
    differ = [f"{n} {shapes[0].get(n, 'missing')} against {shapes[1].get(n, 'missing')}"
              for n in sorted(set(shapes[0]) | set(shapes[1])) if shapes[0].get(n) != shapes[1].get(n)]
    if differ:
        raise ModelLoadError(f"{tuned_name} and {base_name} differ in the shape of {len(differ)} parameter(s), "
                             f"e.g. {differ[0]}: an adapter is extracted from a fine-tune of the base itself.")


def _whole_modules(model: nn.Module, changed: dict[str, float], keep: Iterable[str], keep_norms: bool,
                   heads: tuple[str, ...]) -> tuple[str, ...]:
    """The modules beyond the head saved whole: `keep`, then the changed layer norms not inside them."""
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for wanted in keep:
        found = [n for n in names if matches(n, wanted)]
        if not found:
            raise LoralabError(f"No module named {wanted!r} to keep whole in {type(model).__name__}.")
        chosen += [n for n in found if not inside(n, heads + tuple(chosen))]
    if keep_norms:
        for name, module in model.named_modules():
            if (isinstance(module, nn.LayerNorm) and not inside(name, heads + tuple(chosen))
                    and any(p.startswith(name + ".") for p in changed)):
                chosen.append(name)
    return tuple(chosen)


def save_extraction(result: Extraction, directory: str | os.PathLike, source: str | os.PathLike | None = None,
                    *, overwrite: bool = False, base: str | os.PathLike | None = None) -> Path:
    """Save the adapter in PEFT's layout, with a README.md of what it holds and leaves out,
    and the tokenizer of `source` (the fine-tuned folder) where it has one; atomically, into
    a new folder or one loralab wrote (`overwrite`: `loralab.outputs.check_output`), never
    into `source` or `base`."""
    directory = check_output(directory, "extract", overwrite=overwrite,
                             inputs=[("--finetuned", source), ("--base", base)])
    text = [f"# A LoRA adapter extracted from {source or 'a fully fine-tuned model'}", "",
            "Made by `loralab extract` (the truncated SVD of each layer's fine-tuning update, alpha = rank).",
            f"Settings: {', '.join(f'{k} = {v}' for k, v in result.settings.items() if v not in (None, [], ''))}.", "",
            "```", result.summary(), "```", "", result.table(), "",
            "Load it with `loralab.load_adapter(base, folder)`, `peft.PeftModel.from_pretrained(base, folder)`, "
            "`loralab predict FOLDER \"some text\"` or `loralab export FOLDER --out MERGED --merge`.", ""]
    with output_dir(directory, "extract") as tmp:
        save_adapter(result.model, tmp, extra={"loralab_extracted_from": source or "",
                                               "loralab_kept_share": f"{result.kept_share:.6f}"})
        (tmp / "README.md").write_text("\n".join(text), encoding="utf-8")
        if source and (Path(source) / "tokenizer_config.json").exists():  # predict and export read it here
            load_tokenizer(source).save_pretrained(tmp)
    return directory
