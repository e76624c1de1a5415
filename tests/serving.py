"""Adapter folders for the serving tests and benchmark: every method, label sets of their own,
weights moved away from their start so that each adapter really changes the model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loralab import inject_ia3, inject_lora, inject_vera, save_adapter
from loralab.models import load_model
from loralab.pooling import set_pooling

TEXTS = ["A wonderful, moving film with great acting.", "Dull, predictable and far too long.",
         "I laughed, I cried, I loved it.", "The worst film I have seen this year.", "It was fine."]
PAIRS = [("The cat sat on the mat.", "A cat was sitting on a mat."), ("He left early.", "She stayed all night."),
         ("Stocks fell sharply.", "The market dropped a lot."), ("It rains.", "The sun shines brightly today.")]


def make_adapter(base: str | Path, out: Path, method: str = "lora", labels=("negative", "positive"), rank: int = 4,
                 seed: int = 0, pairs: bool = False, pooling: str = "cls", targets=None) -> Path:
    """An adapter folder of `method` on `base`, its weights drawn at random (seeded)."""
    model = set_pooling(load_model(base, list(labels)), pooling)
    torch.manual_seed(seed)
    if method in ("lora", "dora", "pissa"):
        inject_lora(model, rank, 2 * rank, targets=targets, variant=method, init="kaiming")
    elif method == "vera":
        inject_vera(model, rank, targets, seed=seed)
    else:
        inject_ia3(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)  # a tiny random model's logits are near 0: large steps
    save_adapter(model, out)
    task = "regression" if tuple(labels) == ("score",) else "classification"
    info = {"method": method, "rank": rank if method != "ia3" else None, "labels": list(labels),
            "data": {"text_column": "text", "text_pair_column": "text_pair" if pairs else "", "label_column": "label",
                     "task": task}}
    (out / "loralab.json").write_text(json.dumps(info))
    return out


def three_adapters(base, folder: Path) -> dict[str, Path]:
    """Three adapters of different methods and label sets: LoRA sentiment (2 classes, single
    texts), DoRA on pairs (3 classes, mean pooling), VeRA regression on pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"sentiment": make_adapter(base, folder / "sentiment", "lora", seed=1),
            "nli": make_adapter(base, folder / "nli", "dora", ("entailment", "neutral", "contradiction"), seed=2,
                                pairs=True, pooling="mean"),
            "similarity": make_adapter(base, folder / "similarity", "vera", ("score",), rank=8, seed=3, pairs=True)}
