"""Inference in loralab: the precision a device computes in, and length-sorted batches
under autocast (`map_batches`), which every evaluation and prediction goes through: the
Trainer's evaluation after each epoch (its eval set is `_sorted_by_length`), `evaluate`,
the study's replace test and sweeps, head-tuning's features and `predict`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .errors import LoralabError
from .metrics import Metrics, scores_of
from .models import pick_device
from .settings import TrainSettings


def cpu_bf16_path() -> str | None:
    """How this CPU multiplies bfloat16 natively: "AMX bf16", "AVX-512 bf16", or None (it
    does not, and float32 is faster)."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx and amx():
        return "AMX bf16"
    return "AVX-512 bf16" if avx512 and avx512() else None


def bf16_supported(device: torch.device) -> bool:
    """True where bfloat16 matrix products run natively (and so faster than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_path() is not None


def resolve_precision(settings: TrainSettings, device: torch.device) -> str:
    if settings.precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return settings.precision


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _longest_first(input_ids) -> np.ndarray:
    """Row order by length, longest first: batches of similar length have little padding,
    and the largest batch comes first, so a lack of memory shows at once."""
    return np.argsort([-len(ids) for ids in input_ids], kind="stable")


def _sorted_by_length(ds):
    """The rows longest first. Order doesn't change accuracy; the Trainer's evaluation
    batches of it are the batches of `_batches`, so both see the same numbers."""
    return ds.select(_longest_first(ds["input_ids"]))


def bucket_length(longest: int, multiple: int, max_length: int) -> int:
    """The length a batch is padded to: its longest row's length rounded up to a multiple of
    `multiple`, never past `max_length` (nor below the longest row). `multiple` 0 (the
    default) scales with the length: an eighth of the largest power of two not above it, at
    least 8 (8 up to 127 tokens, 16 up to 255, 32 up to 511, 64 beyond), so a batch is
    padded by less than an eighth of its length (or 8 tokens, below 64) into at most 8
    lengths per doubling.

    Bounded shapes keep memory flat: with a length of its own for nearly every batch, the
    allocator's free blocks rarely fit the next batch's tensors and resident memory grew
    over a run (1.2 to 2.1 GB in 150 steps of a 2-layer model here; flat with multiples
    of 32), and every cache keyed by shape (oneDNN's primitives) kept growing too. A fixed
    32 cost short texts dearly: 1.6x the real tokens on SST-5's sentences, 2.4x on TREC's
    questions (1.16x and 1.30x with the scaled multiple; 1.05x against 1.06x on the lab's
    reviews; `benchmarks/memory.py` prints the table)."""
    if multiple == 0:
        multiple = max(8, (1 << (max(longest, 1).bit_length() - 1)) // 8)
    return max(longest, min(-(-longest // multiple) * multiple, max_length))


class BucketedPadding:
    """The training collator: `DataCollatorWithPadding`, padding each batch to its
    `bucket_length` instead of exactly to its longest row."""

    def __init__(self, tokenizer, multiple: int, max_length: int):
        self.tokenizer, self.multiple, self.max_length = tokenizer, multiple, max_length

    def __call__(self, features: list[dict]) -> dict:
        from transformers import DataCollatorWithPadding

        length = bucket_length(max(len(f["input_ids"]) for f in features), self.multiple, self.max_length)
        return DataCollatorWithPadding(self.tokenizer, padding="max_length", max_length=length)(features)


def _batches(input_ids, batch_size: int, tokenizer, multiple: int = 1, max_length: int = 512,
             token_type_ids=None):
    """Length-sorted batches, each padded to its `bucket_length`, and the original row order
    of each; with `token_type_ids` (sentence pairs), each row's segments too."""
    order = _longest_first(input_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        length = bucket_length(max(len(input_ids[i]) for i in rows), multiple, max_length)
        features = [{"input_ids": input_ids[i], **({"token_type_ids": token_type_ids[i]} if token_type_ids else {})}
                    for i in rows]
        yield rows, tokenizer.pad(features, padding="max_length", max_length=length, return_tensors="pt")


def pair_token_types(encoded) -> list | None:
    """The token types of tokenized rows (a dataset or a tokenizer's output) where they mark
    a second segment (sentence pairs); None for single texts, whose types are all 0 (the
    model's default, so their batches stay as they were)."""
    columns = encoded.column_names if hasattr(encoded, "column_names") else list(encoded.keys())
    if "token_type_ids" not in columns:
        return None
    types = list(encoded["token_type_ids"])
    return types if any(any(row) for row in types) else None


def map_batches(module: nn.Module, input_ids, tokenizer, settings: TrainSettings, desc: str, width: int,
                forward, token_type_ids=None) -> np.ndarray:
    """`forward(batch)` (a computation of `module`) for every row of token ids, in row
    order, in length-sorted batches of `settings.eval_batch_size` under autocast (float32
    array of `width` columns). Every inference of loralab goes through here: the Trainer's
    evaluation sees the same batches (`_sorted_by_length`), and so do `evaluate`, the
    study's sweeps and `predict`. Sentence pairs bring their `token_type_ids`
    (`pair_token_types`), as the Trainer's batches do."""
    from tqdm.auto import tqdm

    input_ids = list(input_ids)  # a dataset column is read once, not row by row
    device = pick_device(settings.device)
    precision = resolve_precision(settings, device)
    # Moved before inference mode: weights copied to a GPU inside it would be inference
    # tensors, which a later training step (head-tuning after encoding) cannot use.
    module.eval().to(device)
    if settings.compile:
        forward = torch.compile(forward)
    out = np.zeros((len(input_ids), width), dtype=np.float32)
    total = math.ceil(len(input_ids) / settings.eval_batch_size)
    batches = tqdm(_batches(input_ids, settings.eval_batch_size, tokenizer, settings.pad_to_multiple_of,
                            settings.max_length, token_type_ids), total=total, desc=desc,
                   disable=settings.quiet, leave=False, unit="batch")
    with torch.inference_mode():
        for rows, batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, precision):
                values = forward(batch)
            out[rows] = values.float().cpu().numpy()
    return out


def check_max_length(model: nn.Module, tokenizer, settings: TrainSettings, where="the model") -> None:
    """Refuse a `max_length` longer than the model has positions for (a BERT-sized model
    takes 512 tokens): the model would fail in the middle of a batch with a shape error."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limit = min((n for n in limits if isinstance(n, int) and 0 < n < 1_000_000), default=None)
    if limit is not None and settings.max_length > limit:
        raise LoralabError(f"--max-length {settings.max_length} is longer than {where} takes ({limit} tokens); "
                           f"give --max-length {limit} or less.")


def predict_logits(model: nn.Module, ds, tokenizer, settings: TrainSettings, desc: str = "Evaluating"):
    """Logits for every row of a tokenized dataset, in its order (float32 numpy array)."""
    return map_batches(model, ds["input_ids"], tokenizer, settings, desc, model.config.num_labels,
                       lambda batch: model(**batch).logits, pair_token_types(ds))


def evaluate_model(model: nn.Module, ds, tokenizer, settings: TrainSettings, desc: str = "Evaluating") -> float:
    """Accuracy of a classifier on a tokenized dataset with `label`s."""
    return evaluate_metrics(model, ds, tokenizer, settings, desc).accuracy


def evaluate_metrics(model: nn.Module, ds, tokenizer, settings: TrainSettings, desc: str = "Evaluating",
                     names=None) -> Metrics:
    """The scores of `model` on a tokenized dataset with `label`s (`metrics.scores_of`): a
    classifier's accuracy, macro-F1, ... (given the class `names`, each class's scores and
    the confusion matrix too), a regression model's correlations and error."""
    logits = predict_logits(model, ds, tokenizer, settings, desc)
    return scores_of(logits, ds["label"], names)
