"""Is fine-tuning low-rank? Truncated SVD of fine-tuned weights and of their update.

For a layer with pre-trained weight W0 and fully fine-tuned weight W = W0 + dW:

* approximated model 1 (the lab's step 6): the head-tuned model with W replaced by its
  rank-r truncated SVD, approx(W, r);
* approximated model 2 (step 7): W0 + approx(dW, r), LoRA's hypothesis made explicit;
* the spectrum of dW: singular values and the share of ||dW||_F^2 in the top r of them;
* the subspace similarity of Hu et al. (2021, section 7) between a trained LoRA update and
  the top singular directions of dW.

By Eckart-Young, approx(M, r) = U_r S_r V_r^T is the best rank-r matrix in Frobenius
norm, with error sqrt(sum of the discarded s_i^2). Each matrix is factored once, in
float64, and every rank of a sweep is read off that one SVD.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .surgery import lora_layers, replace, target_layers


@dataclass
class SVD:
    """A matrix's thin SVD in float64, reused for every rank."""

    U: torch.Tensor   # (m, k)
    S: torch.Tensor   # (k,)
    Vh: torch.Tensor  # (k, n)

    @classmethod
    def of(cls, matrix: torch.Tensor) -> "SVD":
        if matrix.dim() != 2:
            raise ValueError(f"expected a 2-D tensor, got shape {tuple(matrix.shape)}")
        U, S, Vh = torch.linalg.svd(matrix.detach().to(torch.float64), full_matrices=False)
        return cls(U, S, Vh)

    @property
    def full_rank(self) -> int:
        return self.S.numel()

    def approx(self, rank: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """U_r diag(S_r) V_r^T; rank 0 gives zeros, ranks above full rank the matrix."""
        r = max(0, min(rank, self.full_rank))
        return ((self.U[:, :r] * self.S[:r]) @ self.Vh[:r]).to(dtype)  # (m, r) (r, n)

    def energy(self) -> torch.Tensor:
        """Fraction of the squared Frobenius norm captured by the top 1, 2, ... values."""
        sq = self.S ** 2
        total = sq.sum()
        return torch.cumsum(sq, 0) / total if total > 0 else torch.ones_like(sq)


def approximate(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-`rank` truncated-SVD approximation of a 2-D tensor, in its dtype."""
    return SVD.of(matrix).approx(rank, matrix.dtype)


def halving_ranks(full_rank: int) -> list[int]:
    """full, full/2, ... down to 1: 384, 192, 96, 48, 24, 12, 6, 3, 1."""
    ranks, r = [], full_rank
    while r >= 1:
        ranks.append(r)
        r //= 2
    return ranks


def _as_model(model_or_dir) -> nn.Module:
    if isinstance(model_or_dir, nn.Module):
        return model_or_dir
    from .models import load_model

    return load_model(model_or_dir)


def _approximated(headtuned, finetuned, pretrained, targets, weights: Callable) -> nn.Module:
    """A copy of the head-tuned model whose target layers are the fine-tuned ones (bias
    included) with the weight given by `weights(name, finetuned_layer, pretrained_layer)`."""
    model = copy.deepcopy(_as_model(headtuned))
    tuned = target_layers(_as_model(finetuned), targets)
    base = target_layers(_as_model(pretrained), targets) if pretrained is not None else {}
    layers = {}
    for name, layer in tuned.items():
        new = copy.deepcopy(layer)
        with torch.no_grad():
            new.weight.copy_(weights(name, layer, base.get(name)))
        layers[name] = new
    return replace(model, layers)


def make_approximated_model_1(rank: int, headtuned, finetuned, *, targets=None) -> nn.Module:
    """The head-tuned model with every target layer replaced by the fine-tuned layer whose
    weight is approximated as a whole: approx(W0 + dW, r). Inputs are not changed.

    Args:
        rank: r.
        headtuned, finetuned: models or saved model folders.
        targets: the layers (default: query and value).
    """
    return _approximated(headtuned, finetuned, None, targets,
                         lambda name, ft, _: approximate(ft.weight, rank))


def make_approximated_model_2(rank: int, headtuned, finetuned, pretrained, *, targets=None) -> nn.Module:
    """The head-tuned model with every target layer's weight W0 + approx(dW, r), where
    dW = fine-tuned minus pre-trained weight; the bias is the fine-tuned layer's, as in the lab.
    """
    return _approximated(headtuned, finetuned, pretrained, targets,
                         lambda name, ft, pre: pre.weight + approximate(ft.weight - pre.weight, rank))


@dataclass
class SweepPoint:
    """An approximated model at one rank, as evaluated: its eval scores by name (accuracy,
    macro_f1, ...; a regression model's pearson, spearman, mse)."""

    rank: int
    scores: dict[str, float]  # or, as loralab 0.1 took it, the accuracy alone

    def __post_init__(self):
        if isinstance(self.scores, (int, float)):
            self.scores = {"accuracy": float(self.scores)}

    def score(self, name: str) -> float | None:
        return self.scores.get(name)

    @property
    def eval_accuracy(self) -> float | None:
        return self.scores.get("accuracy")

    @property
    def eval_macro_f1(self) -> float | None:
        return self.scores.get("macro_f1")

    def eval_scores(self) -> dict[str, float]:
        """The scores as keywords of a results row: ``{"eval_accuracy": ...}``."""
        return {f"eval_{name}": value for name, value in self.scores.items()}


@dataclass
class LayerSpectrum:
    """The singular values of one layer's fine-tuning update dW (a value of `spectrum.json`)."""

    shape: list[int]
    frobenius_norm: float
    singular_values: list[float]
    energy: list[float]  # share of ||dW||_F^2 the top r singular values hold, r = 1, 2, ...
    rank_50: int         # the smallest rank holding 50% of it
    rank_90: int
    rank_99: int

    @classmethod
    def from_json(cls, data: dict) -> "LayerSpectrum":
        return cls(**data)


def read_spectrum(data: dict) -> dict[str, LayerSpectrum]:
    """`spectrum.json` (layer name -> its spectrum) as types."""
    return {name: LayerSpectrum.from_json(layer) for name, layer in data.items()}


class LowRankStudy:
    """The SVDs of every target layer's W and dW, computed once, and models built from them.

    Args:
        headtuned, finetuned, pretrained: models or saved model folders.
        targets: the layers (default: query and value).
    """

    def __init__(self, headtuned, finetuned, pretrained, targets=None):
        self.headtuned = _as_model(headtuned)
        finetuned, pretrained = _as_model(finetuned), _as_model(pretrained)
        self.tuned = target_layers(finetuned, targets)
        self.base = target_layers(pretrained, targets)
        self.targets = list(self.tuned)
        self.svd_w = {n: SVD.of(layer.weight) for n, layer in self.tuned.items()}
        self.svd_dw = {n: SVD.of(layer.weight - self.base[n].weight) for n, layer in self.tuned.items()}
        self._model: nn.Module | None = None

    @property
    def full_rank(self) -> int:
        return max(s.full_rank for s in self.svd_w.values())

    def model(self, approach: int, rank: int) -> nn.Module:
        """Approximated model `approach` (1 or 2) at `rank`. One working copy of the
        head-tuned model is reused and overwritten, so take a copy to keep a result."""
        if self._model is None:
            self._model = copy.deepcopy(self.headtuned)
            replace(self._model, {n: copy.deepcopy(layer) for n, layer in self.tuned.items()})
        layers = target_layers(self._model, self.targets)
        with torch.no_grad():
            for name, layer in layers.items():
                if approach == 1:
                    weight = self.svd_w[name].approx(rank)
                elif approach == 2:
                    weight = self.base[name].weight.double() + self.svd_dw[name].approx(rank, torch.float64)
                else:
                    raise ValueError(f"approach must be 1 or 2, got {approach}")
                layer.weight.copy_(weight.to(layer.weight.dtype))
        return self._model

    def sweep(self, approach: int, ranks: Iterable[int], evaluate: Callable[[nn.Module], object],
              progress: bool = True) -> list[SweepPoint]:
        """Approximated model `approach` evaluated at each rank. `evaluate` returns the
        accuracy, or the scores (`loralab.metrics.Metrics`: every score it has is kept)."""
        from tqdm.auto import tqdm

        points = []
        for rank in tqdm(list(ranks), desc=f"Approximated model {approach}", disable=not progress):
            result = evaluate(self.model(approach, rank))
            points.append(SweepPoint(rank, {"accuracy": float(result)} if isinstance(result, (int, float))
                                     else result.scores()))
        return points

    def spectrum(self) -> dict[str, LayerSpectrum]:
        """Per layer: singular values of dW, captured energy per rank, ranks for 50/90/99%."""
        out = {}
        for name, svd in self.svd_dw.items():
            energy = svd.energy()
            out[name] = LayerSpectrum(
                shape=list(self.tuned[name].weight.shape), frobenius_norm=float(svd.S.square().sum().sqrt()),
                singular_values=[float(s) for s in svd.S], energy=[float(e) for e in energy],
                **{f"rank_{p}": rank_for_energy(energy, p / 100) for p in (50, 90, 99)})
        return out

    def lora_similarity(self, lora_model: nn.Module) -> dict[str, float]:
        """Subspace similarity between each LoRA update and the top-r directions of dW."""
        adapters = lora_layers(lora_model)
        sims = {}
        for name, svd in self.svd_dw.items():
            if name in adapters:
                layer = adapters[name]
                sims[name] = subspace_similarity(layer.delta_weight(), svd, layer.rank)
        return sims


def rank_for_energy(energy: torch.Tensor, fraction: float) -> int:
    """The smallest r whose top-r singular values hold `fraction` of the squared norm."""
    return int(torch.searchsorted(energy, torch.tensor(fraction - 1e-12, dtype=energy.dtype)).item()) + 1


def subspace_similarity(update: torch.Tensor, reference: SVD | torch.Tensor, rank: int) -> float:
    """phi = ||U_a^T U_b||_F^2 / r between the top-r left singular vectors of two updates
    (Hu et al. 2021, eq. 4, with i = j = r): 1 for the same subspace, about r/m at random."""
    ref = reference if isinstance(reference, SVD) else SVD.of(reference)
    mine = SVD.of(update)
    r = min(rank, mine.full_rank, ref.full_rank)
    overlap = mine.U[:, :r].T @ ref.U[:, :r]  # (r, r)
    return float(overlap.square().sum() / r)


def lowest_rank_above(points: list[SweepPoint], threshold: float, metric: str = "accuracy") -> int | None:
    """The lowest rank whose `metric` is still above `threshold` (None if none is)."""
    above = [p.rank for p in points if p.score(metric) is not None and p.score(metric) > threshold]
    return min(above) if above else None
