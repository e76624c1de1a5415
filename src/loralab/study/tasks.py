"""What each kind of run does: a function of the study's shared `Context`, the run's
folder and its inputs (`loralab.study.plan`), returning its `RunOutput` (the results of
its `RunRecord`). A task reads its settings from its inputs only, so every setting it
reads is in the run's key.
"""

from __future__ import annotations

import multiprocessing
import resource
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import LoralabError
from ..methods import row_method
from ..records import RESULT_NAME, Extracted, ReplaceTest, Row, RunOutput, read_record
from ..settings import TrainSettings
from .plan import (
    BaselineInputs,
    Context,
    ExtractInputs,
    LowrankInputs,
    Ref,
    ReplaceInputs,
    SearchInputs,
    SelectInputs,
    SimilarityInputs,
    TrainInputs,
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _settings(ctx: Context, inputs) -> TrainSettings:
    return inputs.settings.replace(quiet=ctx.quiet)  # quiet changes no result: it is not in the key


def task_baseline(ctx: Context, run_dir: Path, inputs: BaselineInputs) -> RunOutput:
    from ..baselines import run_baseline
    from ..measure import PeakMemory

    with PeakMemory() as mem:
        result = run_baseline(inputs.method, ctx.data["train"], ctx.data["eval"], seed=inputs.seed)
    return RunOutput([Row(inputs.method, trainable_params=result.trainable_params, train_seconds=result.train_seconds,
                          peak_memory_mb=mem.peak_mb, **result.eval_scores())])


def chosen(ctx: Context, ref: Ref):
    """What the `ref` run chose on the validation split: a select-* run's `Selection` or a
    search-* run's `Search`."""
    record = read_record(ctx.out / ref.name / RESULT_NAME)
    choice = None if record is None or record.key != ref.key else record.search or record.selection
    if choice is None:
        raise LoralabError(f"{ctx.out / ref.name / RESULT_NAME}: the choice made on the validation split is "
                           "missing; run the study again to redo it.")
    return choice


def task_train(ctx: Context, run_dir: Path, inputs: TrainInputs) -> RunOutput:
    from ..api import train
    from ..config import REMEMBERED_COLUMNS
    from ..records import Search
    from ..search import token_count, token_passes
    from ..training import stop_after_epoch

    settings, callbacks, recipe = _settings(ctx, inputs), (), None
    if inputs.learning_rate_from:
        choice = chosen(ctx, inputs.learning_rate_from)
        settings = settings.replace(learning_rate=choice.learning_rate)
        if isinstance(choice, Search):  # the searched recipe, stopped at its best epoch on validation
            settings = settings.replace(epochs=float(choice.epochs), warmup_ratio=choice.warmup_ratio,
                                        weight_decay=choice.weight_decay)
            callbacks = (stop_after_epoch(choice.best_epoch),)
            recipe = {"learning_rate": choice.learning_rate, "epochs": choice.epochs,
                      "best_epoch": choice.best_epoch, "warmup_ratio": choice.warmup_ratio,
                      "weight_decay": choice.weight_decay, "search": inputs.learning_rate_from.name}
    tokenized = ctx.tokenized(inputs.model, settings.max_length)
    # The model remembers its data's columns, as `loralab train`'s do: `predict`, `evaluate` and
    # `loralab serve` then read its files (and pairs) as it was trained.
    columns = {key: getattr(ctx.data_options, key) for key in REMEMBERED_COLUMNS if hasattr(ctx.data_options, key)}
    info = train(method=inputs.method, out=run_dir / "model", model=inputs.model, settings=settings,
                 tokenized=tokenized, lora=inputs.lora, lock=False, callbacks=callbacks, columns=columns or None)
    row = info.row(chosen_on="validation" if inputs.learning_rate_from else None)
    row.method = row_method(inputs.method, getattr(inputs.lora, "targets", None))  # "lora-all": its own row
    row.recipe = recipe
    row.token_passes = token_passes(inputs.method, token_count(tokenized["train"]), len(row.history))
    if multiprocessing.parent_process() is not None:  # a child of its own: the process peak is this run's
        row.peak_memory_mb = max(row.peak_memory_mb, peak_rss_mb())
    return RunOutput([row])


def task_select(ctx: Context, run_dir: Path, inputs: SelectInputs) -> RunOutput:
    """Choose a method's learning rate on the validation split (see `choose_learning_rate`).
    Its candidates' scratch lives beside the run folder, so a killed choice resumes."""
    import datasets

    from ..api import choose_learning_rate

    settings = _settings(ctx, inputs)
    tokenized = ctx.tokenized(inputs.model, settings.max_length)
    data = datasets.DatasetDict(train=tokenized["train"], validation=tokenized["validation"])
    if inputs.limit_train and inputs.limit_train < len(data["train"]):
        data["train"] = data["train"].shuffle(seed=0).select(range(inputs.limit_train))
    selection = choose_learning_rate(inputs.method, inputs.candidates, data, model=inputs.model, settings=settings,
                                     lora=inputs.lora, tokenizer=ctx.tokenizer(inputs.model),
                                     work=ctx.out / f".{run_dir.name}.candidates", resume=True,
                                     metric=inputs.metric)
    return RunOutput(selection=selection)


def task_search(ctx: Context, run_dir: Path, inputs: SearchInputs) -> RunOutput:
    """Search a method's recipe on the validation split (`loralab.search`). Its trials live
    in the study's `search.db` under the run's name and key, so a killed search resumes and a
    changed setting starts afresh; their models' scratch lives beside the run folder."""
    from dataclasses import asdict, fields

    import datasets

    from ..records import fingerprint, search_run
    from ..search import search_recipe

    settings = _settings(ctx, inputs)
    tokenized = ctx.tokenized(inputs.model, settings.max_length)
    data = datasets.DatasetDict(train=tokenized["train"], validation=tokenized["validation"])
    if inputs.limit_train and inputs.limit_train < len(data["train"]):
        data["train"] = data["train"].shuffle(seed=0).select(range(inputs.limit_train))
    # One study for a search and its workers (`search.workers`): named by the search's own inputs.
    search_inputs = SearchInputs(**{f.name: getattr(inputs, f.name) for f in fields(SearchInputs)})
    key = fingerprint("search", asdict(search_inputs))
    name = search_run(row_method(inputs.method, getattr(inputs.lora, "targets", None)))
    search = search_recipe(inputs.method, data, model=inputs.model, settings=settings, space=inputs.space,
                           storage=ctx.out / "search.db", study_name=f"{name}-{key}",
                           work=ctx.out / f".{run_dir.name}.trials", lora=inputs.lora, metric=inputs.metric,
                           tokenizer=ctx.tokenizer(inputs.model), pruner=inputs.pruner,
                           startup_trials=inputs.startup_trials, warmup_epochs=inputs.warmup_epochs,
                           rank=getattr(inputs.lora, "rank", None))
    search.method = row_method(inputs.method, getattr(inputs.lora, "targets", None))
    return RunOutput(search=search)


def task_replace(ctx: Context, run_dir: Path, inputs: ReplaceInputs) -> RunOutput:
    """The lab's step 4 on a freshly loaded fine-tuned model: random clones of the query and
    value layers take its score (the study's metric) to chance, the originals restore the
    predictions exactly."""
    import torch

    from ..inference import predict_logits
    from ..metrics import scores_of
    from ..models import load_model
    from ..surgery import clone_linear, replace, target_layers

    settings = _settings(ctx, inputs)
    model = load_model(ctx.out / inputs.full.name / "model")
    tokenizer = ctx.tokenizer(inputs.model)
    evals = ctx.tokenized(inputs.model, settings.max_length)["eval"]
    labels = np.asarray(evals["label"])
    original = predict_logits(model, evals, tokenizer, settings, "Replace test: original")
    layers = target_layers(model)
    torch.manual_seed(settings.seed)
    replace(model, {name: clone_linear(layer) for name, layer in layers.items()})
    scrambled = predict_logits(model, evals, tokenizer, settings, "Replace test: random clones")
    replace(model, layers)
    restored = predict_logits(model, evals, tokenizer, settings, "Replace test: restored")
    score = lambda logits: scores_of(logits, labels).score(inputs.metric)  # noqa: E731
    regression = original.shape[1] == 1
    # Knowing nothing: always the largest class, or always the mean target (correlation 0).
    constant = (np.full((len(labels), 1), labels.mean()) if regression
                else np.eye(original.shape[1])[np.full(len(labels), np.bincount(labels).argmax())])
    same = np.array_equal(original, restored) if regression else (original.argmax(-1) == restored.argmax(-1)).all()
    return RunOutput(replace_test=ReplaceTest(
        layers=len(layers), parameters=sum(p.numel() for layer in layers.values() for p in layer.parameters()),
        original_score=score(original), random_clones_score=score(scrambled), restored_score=score(restored),
        restored_predictions_identical=bool(same), restored_logits_identical=bool(np.array_equal(original, restored)),
        chance_score=score(constant), metric=inputs.metric))


def task_lowrank(ctx: Context, run_dir: Path, inputs: LowrankInputs) -> RunOutput:
    from ..api import lowrank

    settings = _settings(ctx, inputs)
    head = read_record(ctx.out / inputs.head.name / RESULT_NAME)  # finished before this run (`after`)
    rows, summary = lowrank(ctx.out / inputs.full.name / "model", ctx.out / inputs.head.name / "model",
                            inputs.model, out=run_dir, tokenized=ctx.tokenized(inputs.model, settings.max_length),
                            tokenizer=ctx.tokenizer(inputs.model), settings=settings,
                            ranks=list(inputs.ranks) or None, sweep_points=inputs.points, targets=inputs.targets,
                            head_score=head.rows[0].score(inputs.metric), metric=inputs.metric)
    return RunOutput(rows, lowrank=summary)


def task_similarity(ctx: Context, run_dir: Path, inputs: SimilarityInputs) -> RunOutput:
    from ..adapters import load_adapter
    from ..lowrank import LowRankStudy
    from ..models import load_model

    pretrained = load_model(inputs.model)
    study = LowRankStudy(pretrained, load_model(ctx.out / inputs.full.name / "model"), pretrained,
                         targets=inputs.targets)
    sims = {str(rank): study.lora_similarity(load_adapter(inputs.model, ctx.out / ref.name / "model"))
            for rank, ref in inputs.loras}
    return RunOutput(similarity=sims)


def task_extract(ctx: Context, run_dir: Path, inputs: ExtractInputs) -> RunOutput:
    """Adapters extracted from the full fine-tune at each rank and energy (`loralab extract`),
    each saved in the run folder and evaluated on eval."""
    from ..adapters import WEIGHTS_NAME, class_names
    from ..extraction import extract_adapter, save_extraction
    from ..inference import evaluate_metrics
    from ..metrics import eval_fields
    from ..models import load_model

    settings = _settings(ctx, inputs)
    full_dir = ctx.out / inputs.full.name / "model"
    tuned = load_model(full_dir)
    base = load_model(inputs.model, class_names(tuned))
    evals = ctx.tokenized(inputs.model, settings.max_length)["eval"]
    rows, extracted = [], []
    for targets in inputs.targets:
        method = "extract-all" if targets == "all-linear" else "extract"
        sizes = [(r, None) for r in inputs.ranks] + [(None, e) for e in inputs.energies]
        for rank, energy in sizes:
            result = extract_adapter(tuned, base, rank=rank, energy=energy, targets=targets or None, progress=False)
            folder = f"{method}-r{rank}" if rank else f"{method}-e{energy:g}"
            save_extraction(result, run_dir / folder, source=str(full_dir))
            size = f"r = {rank}" if rank else f"energy {energy:g}"
            metrics = evaluate_metrics(result.model, evals, ctx.tokenizer(inputs.model), settings,
                                       f"Extracted {targets or 'query,value'} {size}")
            rows.append(Row(method, rank, result.parameters, energy=energy, **eval_fields(metrics)))
            ranks = [m.rank for m in result.modules]
            extracted.append(Extracted(method, targets or "query,value", rank, energy, [min(ranks), max(ranks)],
                                       result.parameters, (run_dir / folder / WEIGHTS_NAME).stat().st_size,
                                       result.kept_share, result.seconds, folder))
    return RunOutput(rows, extracted=extracted)


RUN_TASKS: dict[str, Callable[[Context, Path, Any], RunOutput]] = {
    "baseline": task_baseline, "select": task_select, "search": task_search, "train": task_train,
    "replace": task_replace, "lowrank": task_lowrank, "similarity": task_similarity, "extract": task_extract}
