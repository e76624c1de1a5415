"""The report's plots, as PNG files: the study's score (accuracy, Pearson correlation,
...) against parameters and rank, training curves, cost, and the spectrum of dW. Each
takes the report's summaries (one per method and rank; see `loralab.report.Summary`) and
writes its file atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..fileio import atomic_path
from ..methods import LORA_FAMILY, METHODS
from ..settings import REGRESSION, SCORE_LABELS, metric_task

if TYPE_CHECKING:  # the report's types; plots only read their attributes
    from ..lowrank import LayerSpectrum
    from .findings import Summary

LABELS = {name: m.label for name, m in METHODS.items()}
COLORS = {name: m.color for name, m in METHODS.items()}
# The series against rank: the approximated models, trained LoRA and its variants (VeRA's rank is
# another kind of number and IA3 has none: they are points on the parameters plot; extracted adapters are
# compared in the report's extraction table instead).
RANK_SERIES = tuple(name for name, m in METHODS.items()
                    if m.kind == "approximation" or name in LORA_FAMILY or m.base in LORA_FAMILY)
# Series that often lie on top of one another, drawn so that each shows through: approximated
# model 1 as large hollow squares on a dashed line around model 2's dots.
SERIES_STYLE = {"approx1": {"marker": "s", "markersize": 10, "markerfacecolor": "none", "ls": "--", "lw": 2},
                "approx2": {"marker": "o", "markersize": 5}}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(fig, path: Path, **options) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", **{"bbox_inches": "tight", **options})
    plt.close(fig)  # pyplot keeps every figure until closed


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points that no other point beats with fewer (or equal) parameters and
    higher (or equal) accuracy, sorted by parameters."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# Where a point's label may go, in points from it: right and above first, then below, then
# further out; the first place whose box meets no other label's is taken.
LABEL_PLACES = [(3, 3), (3, -9), (3, 11), (3, -17), (3, 19), (3, -25), (-18, 3), (-18, -9)]
CHAR_WIDTH, LABEL_HEIGHT = 5.0, 8.0  # a 7-point label's box, in points, with a little room


def label_offsets(points: list[tuple[float, float]], texts: list[str]) -> list[tuple[int, int]]:
    """An offset (in points) for each text's label at its point (in display points), so
    that no two labels' boxes overlap where `LABEL_PLACES` allows: "r=1" and "r=2" at
    nearly the same place read as "r=1r=2" when both sit above-right."""
    placed: list[tuple[float, float, float, float]] = []
    offsets = []
    for (x, y), text in zip(points, texts):
        width = CHAR_WIDTH * len(text)
        for dx, dy in LABEL_PLACES:
            box = (x + dx, y + dy, x + dx + width, y + dy + LABEL_HEIGHT)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        offsets.append((dx, dy))
    return offsets


def _words(summaries: list[Summary]) -> tuple[str, str]:
    """The score the summaries lead with, in words: ("accuracy", "Accuracy")."""
    words = SCORE_LABELS[summaries[0].metric] if summaries else "accuracy"
    return words, words[0].upper() + words[1:]


def plot_accuracy_vs_params(summaries: list[Summary], path: Path) -> bool:
    """The study's score (`Summary.score`: accuracy, or the task's metric) against trainable
    parameters, with the Pareto front."""
    plt = _plt()
    data = [r for r in summaries if r.trainable_params and r.score is not None]
    if not data:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for method in COLORS:
        pts = [r for r in data if r.method == method]
        if pts:
            ax.scatter([r.trainable_params for r in pts], [r.score for r in pts],
                       color=COLORS[method], label=LABELS[method], s=40, zorder=3)
    ax.set_xscale("log")
    ax.autoscale_view()
    sized = [r for r in data if r.size]
    # Where the points are, in points (display pixels at the figure's dpi): the labels' unit.
    where = ax.transData.transform([(r.trainable_params, r.score) for r in sized]) * 72 / fig.dpi if sized else []
    for r, offset in zip(sized, label_offsets([tuple(p) for p in where], [r.size for r in sized])):
        ax.annotate(r.size, (r.trainable_params, r.score), fontsize=7, xytext=offset, textcoords="offset points")
    front = [data[i] for i in pareto_front([(r.trainable_params, r.score) for r in data])]
    ax.step([r.trainable_params for r in front], [r.score for r in front], where="post",
            color="black", lw=1, ls="--", zorder=2)
    ax.scatter([r.trainable_params for r in front], [r.score for r in front], s=140,
               facecolors="none", edgecolors="black", lw=1.2, label="Pareto front (no method better with fewer)",
               zorder=4)
    words, title = _words(data)
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel=f"eval {words}",
           title=f"{title} against trainable parameters")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)
    return True


def plot_accuracy_vs_compute(summaries: list[Summary], searches: dict, path: Path) -> bool:
    """The study's score against training compute (token-passes: training tokens x epochs
    trained), each method's final training filled, and hollow with its recipe search's
    compute added (`searches`: method -> the search's token-passes)."""
    plt = _plt()
    data = [r for r in summaries if r.row.token_passes and r.score is not None]
    if not data:
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for method in COLORS:
        pts = [r for r in data if r.method == method]
        if not pts:
            continue
        ax.scatter([r.row.token_passes for r in pts], [r.score for r in pts], color=COLORS[method],
                   label=LABELS[method], s=40, zorder=3)
        if method in searches:
            total = [r.row.token_passes + searches[method] for r in pts]
            ax.scatter(total, [r.score for r in pts], facecolors="none", edgecolors=COLORS[method], s=40, zorder=3)
            for r, x in zip(pts, total):
                ax.plot([r.row.token_passes, x], [r.score, r.score], color=COLORS[method], lw=0.6, ls=":", zorder=2)
    words, title = _words(data)
    ax.set(xscale="log", xlabel="training compute (token-passes, log scale; hollow: with the recipe search)",
           ylabel=f"eval {words}", title=f"{title} against training compute")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)
    return True


def plot_accuracy_vs_rank(summaries: list[Summary], path: Path) -> bool:
    plt = _plt()
    series = {m: sorted((r for r in summaries if r.method == m), key=lambda r: r.rank)
              for m in RANK_SERIES}
    if not any(series.values()):
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    for method, pts in series.items():
        if pts:  # each series its own marker and dashes: approximated models 1 and 2 often coincide
            ax.plot([r.rank for r in pts], [r.score for r in pts], color=COLORS[method], label=LABELS[method],
                    **SERIES_STYLE.get(method, {"marker": "o"}))
            spread = [r for r in pts if r.seeds > 1]
            if spread:  # min-max over seeds around the median
                ax.errorbar([r.rank for r in spread], [r.score for r in spread],
                            yerr=[[r.score - r.score_min for r in spread],
                                  [r.score_max - r.score for r in spread]],
                            fmt="none", ecolor=COLORS[method], capsize=3)
    for method, style in (("full", "-"), ("head", "--")):
        r = next((s for s in summaries if s.method == method), None)  # the first seed's
        if r and r.score is not None:
            ax.axhline(r.score, color=COLORS[method], ls=style, lw=1.2,
                       label=f"{LABELS[method]} ({r.score:.3f})")
    words, title = _words(summaries)
    ax.set(xscale="log", xlabel="rank r (log scale)", ylabel=f"eval {words}", title=f"{title} against rank")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)
    return True


def plot_training_curves(summaries: list[Summary], path: Path) -> bool:
    plt = _plt()
    trained = [r for r in summaries if r.history]
    if not trained:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("tab10")
    words, title = _words(trained)
    metric = trained[0].metric
    for i, r in enumerate(trained):
        epochs = [h["epoch"] for h in r.history]
        ax1.plot(epochs, [h["train_loss"] for h in r.history], marker="o", color=cmap(i % 10), label=r.label)
        ax2.plot(epochs, [h.get(f"eval_{metric}", math.nan) for h in r.history], marker="o", color=cmap(i % 10),
                 label=r.label)
    loss = "mean squared error" if metric_task(metric) == REGRESSION else "cross-entropy"
    epochs = sorted({h["epoch"] for r in trained for h in r.history})
    for ax in (ax1, ax2):  # the epochs themselves, with room around one epoch (not an axis from 0.96 to 1.04)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax1.set(xlabel="epoch", ylabel=f"mean training loss ({loss})", title="Training loss per epoch")
    ax2.set(xlabel="epoch", ylabel=f"eval {words}", title=f"Eval {words} after each epoch")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)
    return True


def plot_cost(summaries: list[Summary], path: Path) -> bool:
    plt = _plt()
    trained = [r for r in summaries if r.train_seconds is not None]
    if not trained:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.4 * len(trained) + 2))
    names = [r.label for r in trained]
    colors = [COLORS.get(r.method, "grey") for r in trained]
    ax1.barh(names, [r.train_seconds for r in trained], color=colors)
    ax1.set(xscale="log", xlabel="training time (s, log scale)", title="Training time")
    ax2.barh(names, [r.peak_memory_mb or 0 for r in trained], color=colors)
    ax2.set(xlabel="peak resident memory (MB)", title="Peak memory")
    ax2.set_yticklabels([])
    for ax in (ax1, ax2):
        ax.invert_yaxis()
    _save(fig, path)
    return True


def plot_confusion(summaries: list[Summary], labels: list[str], path: Path) -> bool:
    """One heat map per model: rows the true class, columns the predicted one, each row
    as shares of its class (the counts written in the cells)."""
    import numpy as np

    if not summaries:
        return False
    plt = _plt()
    size = 2.2 + 0.45 * len(labels)
    fig, axes = plt.subplots(1, len(summaries), figsize=(size * len(summaries) + 1, size), squeeze=False)
    for k, (ax, s) in enumerate(zip(axes[0], summaries)):
        counts = np.asarray(s.row.confusion)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set(xlabel="predicted", ylabel="true" if k == 0 else "", title=s.label)
        ax.grid(False)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_spectrum(spectrum: dict[str, LayerSpectrum], path: str | os.PathLike, title: str = "") -> None:
    """Two panels: singular values of dW per layer (log y) and captured energy per rank."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, (name, layer) in enumerate(spectrum.items()):
        color = cmap(i / max(1, len(spectrum) - 1))
        label = short_layer_name(name)
        ranks = range(1, len(layer.singular_values) + 1)
        ax1.plot(ranks, layer.singular_values, color=color, lw=1, label=label)
        ax2.plot(ranks, [100 * e for e in layer.energy], color=color, lw=1, label=label)
    ax1.set(xscale="log", yscale="log", xlabel="index i of singular value (log)",
            ylabel="singular value s_i of dW (log)", title="Spectrum of dW = W_finetuned - W_pretrained")
    ax2.set(xscale="log", xlabel="rank r (log)", ylabel="||dW||_F^2 captured by top r (%)",
            title="Energy captured at rank r", ylim=(0, 101))
    for p in (50, 90, 99):
        ax2.axhline(p, color="grey", lw=0.5, ls="--")
    ax2.legend(fontsize=6, ncol=2, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path, bbox_inches=None)


def short_layer_name(name: str) -> str:
    """'bert.encoder.layer.3.attention.self.query' -> 'L3 query'."""
    parts = name.split(".")
    layer = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p == "layer" and parts[i + 1].isdigit()), "?")
    return f"L{layer} {parts[-1]}"
