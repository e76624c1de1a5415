"""Training and evaluation through the Hugging Face Trainer.

The lab's defaults (3 epochs, evaluation after each epoch, a log line every 5 steps,
batch 8, the Trainer's default learning rate and linear schedule) with what makes them
fast: dynamic padding, length-grouped batches, bfloat16 autocast where the hardware has
it, and head-tuning on features the frozen encoder computes once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .adapters import class_names
from .errors import LoralabError
from .fastdropout import fast_dropout_enabled
from .fileio import write_json
from .inference import BucketedPadding, _sorted_by_length, resolve_precision
from .measure import PeakMemory, release_free_memory, rss_bytes
from .metrics import SCORES, EvalMetrics, Metrics, Scored, class_weights, weighted_loss
from .models import pick_device
from .settings import EVAL_BATCH_SIZE, TrainSettings  # noqa: F401 - the training API's settings

logger = logging.getLogger("loralab")

def is_main_process() -> bool:
    """False on every process but rank 0 of a distributed run (torchrun, accelerate launch)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int):
    """Texts tokenized without padding; with `pairs` (each text's second text), both go in
    together, `[CLS] a [SEP] b [SEP]` with token types where the model has them, cut longest
    first to `max_length`. Training and every inference encode through here."""
    if pairs is not None:
        return tokenizer(texts, pairs, truncation="longest_first", max_length=max_length)
    return tokenizer(texts, truncation=True, max_length=max_length)


def tokenize(data, tokenizer, max_length: int = 512):
    """Tokenize every split (`encode`, a `text_pair` column for pairs) without padding;
    batches are padded as they are made."""
    def encode_batch(batch):
        return encode(tokenizer, batch["text"], batch.get("text_pair"), max_length)

    def columns(split):
        return [c for c in ("text", "text_pair") if c in split.column_names]

    first = next(iter(data.values()))
    return data.map(encode_batch, batched=True, remove_columns=columns(first), desc="Tokenizing")


# On a CPU, each forward/backward pass holds at most the memory of this many tokens in rows
# of 512 (batch 8 of 512-token reviews: passes of 2). Measured on 400 lab reviews, one epoch
# of LoRA r=6: passes of 8 2.7 GB peak, 133 s; of 4 1.9 GB, 118 s; of 2 1.4 GB, 91-108 s; of
# 1 1.0 GB, 102-108 s. Short texts stay whole: SST-5 sentences in passes of 1 took 2.5x as long.
MICRO_BATCH_TOKENS = 1024
# A pass's activations grow with its tokens times (PASS_LENGTH_OFFSET + its length), the
# attention scores being the length's share. Peak MB over the loaded model, one step of LoRA
# r=8 in bf16: 2 rows x 512 tokens 434, 6 x 256 412, 16 x 128 413, 32 x 64 401, 4 x 256 305:
# 2,048 tokens at 128 take what 1,024 take at 512. Each batch is cut at its own padded
# length: length-grouped, most are far shorter than the data's longest, and passes of a fixed
# size for the longest made an RTE epoch take 1.23x as long, MRPC's 1.12x (benchmarks/glue_train.py).
PASS_LENGTH_OFFSET = 220


def rows_per_pass(settings: TrainSettings, length: int, device: torch.device) -> int:
    """Examples per forward/backward pass of a batch padded to `length` tokens:
    `settings.micro_batch_size` where set; otherwise on a CPU as many as take at most the
    memory of `MICRO_BATCH_TOKENS` tokens in rows of 512 (at least one), and on a GPU the
    whole batch."""
    if settings.micro_batch_size or device.type != "cpu":
        return settings.micro_batch_size or settings.batch_size
    budget = MICRO_BATCH_TOKENS * (512 + PASS_LENGTH_OFFSET)
    return max(1, min(settings.batch_size, budget // (max(length, 1) * (length + PASS_LENGTH_OFFSET))))


def _passes(inputs: dict, rows: int) -> list[dict]:
    """A batch's tensors cut into passes of at most `rows` examples, as even as they go
    (16 rows at most 10 a pass: 8 and 8)."""
    n = len(inputs["input_ids"])
    count = -(-n // rows)
    if count <= 1:
        return [inputs]
    parts = {key: torch.tensor_split(value, count) if torch.is_tensor(value) and len(value) == n else [value] * count
             for key, value in inputs.items()}
    return [{key: parts[key][i] for key in inputs} for i in range(count)]


def _training_arguments(settings: TrainSettings, out_dir: Path, device: torch.device, precision: str,
                        **overrides):
    """The Trainer's arguments for `settings`, every one passed by its name: where
    transformers renamed a field between the versions loralab supports, the name this
    version has is chosen here, and a name it does not know (a misspelt override, a field
    a release removed) is an error, never dropped: transformers 5 removed `warmup_ratio`,
    and a filter by name silently dropped loralab's warm-up."""
    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    micro = settings.micro_batch_size or settings.batch_size  # auto: whole batches (the trainer splits them)
    kwargs = dict(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=settings.batch_size // micro,
        per_device_eval_batch_size=settings.eval_batch_size,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        weight_decay=settings.weight_decay,
        eval_strategy="epoch",
        logging_strategy="steps",
        logging_steps=settings.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must reach the log, where StopOnNonFinite sees it
        save_strategy="steps" if settings.save_steps else "epoch",
        save_steps=settings.save_steps or 500,
        save_total_limit=1,  # the last good checkpoint is all a resume needs
        seed=settings.seed,
        bf16=precision == "bf16",
        torch_compile=settings.compile,
        use_cpu=device.type == "cpu",
        report_to=settings.report_to,
        disable_tqdm=settings.quiet,
        dataloader_num_workers=0,
    )
    # transformers 5 reads a float warmup_steps below 1 as a share of the steps (warmup_ratio before).
    if "warmup_ratio" in names:
        kwargs["warmup_ratio"] = settings.warmup_ratio
    elif settings.warmup_ratio:
        kwargs["warmup_steps"] = float(settings.warmup_ratio)
    # Non-reentrant checkpoints: LoRA's frozen embeddings need no gradient, and the random
    # state (dropout) is replayed in the recomputation, so the gradients are a plain backward's.
    if settings.gradient_checkpointing:
        checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
        kwargs.update({checkpointing: True, f"{checkpointing}_kwargs": {"use_reentrant": False}})
    if settings.group_by_length:
        if "train_sampling_strategy" in names:  # transformers >= 5
            kwargs["train_sampling_strategy"] = "group_by_length"
        else:
            kwargs["group_by_length"] = True
    kwargs.update(overrides)
    unknown = sorted(set(kwargs) - names)
    if unknown:
        import transformers

        raise LoralabError(f"TrainingArguments of transformers {transformers.__version__} has no field "
                           f"{', '.join(map(repr, unknown))}.")
    return TrainingArguments(**kwargs)


def _quiet_trainer(trainer, settings: TrainSettings) -> None:
    """The Trainer's terminal output: with --quiet it prints each log dict instead of a bar,
    which is dropped; otherwise its bar shows the loss and each evaluation is one line,
    where the Trainer wrote every log as a raw dict between the bars."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if settings.quiet:
        trainer.remove_callback(PrinterCallback)
    elif any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_tidy_progress())


def _tidy_progress():
    """A `ProgressCallback` whose logs go into the bar (the training loss) or one line per
    evaluation ("epoch 2: eval accuracy 0.8312, eval loss 0.4121")."""
    from transformers.trainer_callback import ProgressCallback

    class TidyProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            if "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}", refresh=False)
            scores = {k[5:]: v for k, v in logs.items() if k.startswith("eval_") and isinstance(v, float)
                      and not k.endswith(("_runtime", "_per_second"))}
            if scores:
                shown = ", ".join(f"eval {name.replace('_', ' ')} {value:.4f}" for name, value in scores.items())
                self.training_bar.write(f"epoch {logs.get('epoch', state.epoch or 0):g}: {shown}")

    return TidyProgress()


def epoch_history(log_history: list[dict]) -> list[dict]:
    """Per-epoch rows from the Trainer's log: mean training loss, eval loss and every eval
    score logged (`eval_accuracy`, `eval_macro_f1`, ... or `eval_pearson`, ...)."""
    rows, losses = [], []
    for entry in log_history:
        if "loss" in entry:
            losses.append(entry["loss"])
        if any(f"eval_{name}" in entry for name in SCORES):
            rows.append({"epoch": round(entry["epoch"], 4),
                         "train_loss": float(np.mean(losses)) if losses else None,
                         "eval_loss": entry.get("eval_loss"),
                         **{f"eval_{name}": entry[f"eval_{name}"] for name in SCORES if f"eval_{name}" in entry}})
            losses = []
    return rows


MEMORY_KEYS = ("train_rss_mb", "train_peak_rss_mb", "rss_mb", "peak_rss_mb")


def epoch_memory(log_history: list[dict]) -> list[dict]:
    """Per-epoch resident memory from the Trainer's log (`memory_log`): MB after the epoch's
    training steps, after its evaluation, and the peak so far. Measurements, kept apart
    from `epoch_history`'s results, which a rerun with the same seed reproduces exactly."""
    return [{"epoch": round(entry["epoch"], 4), **{k: entry[k] for k in MEMORY_KEYS}}
            for entry in log_history if "rss_mb" in entry]


@dataclass
class TrainResult(Scored):
    """What one training run measured: the last evaluation's `Metrics`, its cost, and its
    curves. `train_with_trainer` and `head.train_head` return it; `api.train` saves it in
    `loralab.json` (`TrainInfo`) and the study in a `Row`."""

    metrics: Metrics                  # of the last evaluation, per class and confusion included
    train_seconds: float
    peak_memory_mb: float             # the process's peak resident (host) memory
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, train_loss, eval_loss, eval scores
    precision: str = "fp32"
    memory: list[dict] = field(default_factory=list)   # per epoch: resident MB after training, after eval, peak
    peak_gpu_memory_mb: float | None = None  # on a GPU: the most memory allocated on it




class StopOnNonFinite:
    """A Trainer callback that stops at the first NaN or infinite loss.

    The step is not saved (the check runs at logging, before a checkpoint could be made of
    it), so the last checkpoint on disk is the last good one.
    """

    def __init__(self):
        self.bad = None

    def __call__(self):  # the Trainer expects a TrainerCallback; built lazily below
        from transformers import TrainerCallback

        outer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                # The loss is only known at logging; force a log when a save is due so that
                # no checkpoint of a diverged model is ever written.
                if control.should_save:
                    control.should_log = True

            def on_log(self, args, state, control, logs=None, **kwargs):
                for key in ("loss", "eval_loss"):
                    value = (logs or {}).get(key)
                    if value is not None and not math.isfinite(value) and outer.bad is None:
                        outer.bad = (key, value, state.global_step)
                        control.should_training_stop = True
                        control.should_save = False

        return _Callback()


def save_after_epoch_evaluation():
    """A Trainer callback: a step checkpoint (`save_steps`) that falls on an epoch's last
    step is saved after that epoch's evaluation instead of before it. The Trainer saves at
    the step's end and evaluates at the epoch's end; a run resumed from a checkpoint saved
    in between counts the epoch as done and never evaluates it, so its history lacked that
    epoch's row."""
    from transformers import TrainerCallback

    class SaveAfterEpochEvaluation(TrainerCallback):
        deferred = False

        def on_step_end(self, args, state, control, **kwargs):
            ends_epoch = state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-9
            if control.should_save and ends_epoch and args.eval_strategy == "epoch":
                control.should_save, self.deferred = False, True

        def on_epoch_end(self, args, state, control, **kwargs):
            if self.deferred:
                control.should_save, self.deferred = True, False

    return SaveAfterEpochEvaluation()


def release_memory_after_evaluation():
    """A Trainer callback that returns the allocator's free pages to the system after each
    evaluation (`release_free_memory`): what the next epoch starts from is what the
    process uses, not what glibc kept from evaluation's batches."""
    from transformers import TrainerCallback

    class ReleaseMemory(TrainerCallback):
        def on_evaluate(self, args, state, control, **kwargs):
            release_free_memory()

    return ReleaseMemory()


def memory_log(mem: PeakMemory):
    """A Trainer callback that adds the process's resident memory to each epoch's evaluation
    entry of the log: after the epoch's training steps (`train_rss_mb`), the peak so far
    then (`train_peak_rss_mb`), after its evaluation (`rss_mb`), and the peak so far after
    it (`peak_rss_mb`), in MB. A run whose memory grows with its steps shows it here, epoch
    by epoch; where the two peaks differ, evaluation set the peak."""
    from transformers import TrainerCallback

    class MemoryLog(TrainerCallback):
        after_training = peak_training = None

        def on_epoch_end(self, args, state, control, **kwargs):
            self.after_training = rss_bytes()
            self.peak_training = max(mem.peak, self.after_training)

        def on_evaluate(self, args, state, control, **kwargs):
            entry = state.log_history[-1] if state.log_history else {}
            if "eval_loss" not in entry or mem.device.type != "cpu":
                return
            now = rss_bytes()
            entry.update(train_rss_mb=round((self.after_training or now) / 2**20, 1),
                         train_peak_rss_mb=round((self.peak_training or now) / 2**20, 1),
                         rss_mb=round(now / 2**20, 1), peak_rss_mb=round(max(mem.peak, now) / 2**20, 1))

    return MemoryLog()


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint in `folder` (incomplete ones are removed:
    a checkpoint is complete once its trainer_state.json, written last, exists)."""
    import shutil

    found = []
    for path in folder.glob("checkpoint-*"):
        if (path / "trainer_state.json").exists():
            found.append(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def optimizer_for(model: nn.Module, args, lr_ratio: float = 1.0):
    """The Trainer's default optimiser (same class and arguments), with LoRA+ (Hayou et al.
    2024): the B matrices of LoRA layers learn `lr_ratio` times faster than everything else.
    None when `lr_ratio` is 1 (the Trainer builds its own)."""
    from transformers import Trainer

    if lr_ratio == 1:
        return None
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fast = [p for n, p in trainable if n.endswith(".B")]
    if not fast:
        raise LoralabError("lr_ratio (LoRA+) needs a model with LoRA layers.")
    rest = [p for n, p in trainable if not n.endswith(".B")]
    groups = [{"params": rest, "lr": args.learning_rate, "weight_decay": args.weight_decay},
              {"params": fast, "lr": args.learning_rate * lr_ratio, "weight_decay": args.weight_decay}]
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    return optimizer_cls(groups, lr=args.learning_rate, **kwargs)


class EpochSeededSampler(torch.utils.data.Sampler):
    """A sampler that draws from its own generator, seeded with `seed + epoch` at the
    start of every epoch (the Trainer calls `set_epoch`).

    The Trainer's length-grouped sampler draws from the global generator when an epoch
    starts, so an epoch's batches depended on every random number drawn before (dropout
    included), and a run resumed in the middle of an epoch trained on other batches than
    an uninterrupted one. Seeded per epoch, both see the same batches.
    """

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed = sampler, seed
        sampler.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.generator.manual_seed(self.seed + int(epoch))

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.sampler)


def _frozen_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def _buffer_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_buffers()}


def _trainer_class():
    """The Trainer, with length-grouped training batches that do not depend on the global
    generator, and evaluation batches in the order of the (length-sorted) eval set."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class LoralabTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # A classifier's forward takes **kwargs, so the Trainer thinks its loss divides by
            # the step's `num_items_in_batch` and stops dividing by the accumulated passes; its
            # loss is a mean of its own batch. Micro-batches would add up to a gradient
            # `batch_size / micro_batch_size` times too large (and clipped as such).
            self.model_accepts_loss_kwargs = False
            self.rows_per_pass = None  # set: each batch split into passes of rows_per_pass(its length) rows
            self._share = 1.0  # the pass's share of its batch's examples, while a batch is split

        def training_step(self, model, inputs, num_items_in_batch=None):
            rows = self.rows_per_pass(inputs["input_ids"].shape[1]) if self.rows_per_pass else 0
            passes = _passes(inputs, rows) if rows else [inputs]
            if len(passes) == 1:
                return super().training_step(model, inputs, num_items_in_batch)
            # Each pass's mean loss weighted by its share of the batch: the gradients add up to
            # the whole batch's; the last pass synchronises them across processes.
            total, n = 0.0, len(inputs["input_ids"])
            try:
                for i, part in enumerate(passes):
                    self._share = len(part["input_ids"]) / n
                    last = i == len(passes) - 1
                    with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                        total = total + super().training_step(model, part, None)
            finally:
                self._share = 1.0
            return total

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            if self._share == 1.0:
                return result
            return (result[0] * self._share, *result[1:]) if return_outputs else result * self._share

        def _get_train_sampler(self, *args, **kwargs):
            sampler = super()._get_train_sampler(*args, **kwargs)
            if isinstance(sampler, LengthGroupedSampler):
                return EpochSeededSampler(sampler, self.args.seed)
            return sampler

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            # A checkpoint of a model with frozen weights (LoRA, head-tuning) holds only what
            # trains: the frozen base is the one the run started from, and `resume` loads it
            # again first. A LoRA checkpoint of the default model was 90 MB, now under 1 MB.
            frozen = _frozen_names(self.model)
            if frozen and state_dict is None and self.args.should_save:
                import safetensors.torch
                from transformers.utils import SAFE_WEIGHTS_NAME

                os.makedirs(output_dir, exist_ok=True)
                trainable = {n: p.detach().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
                safetensors.torch.save_file(trainable, os.path.join(output_dir, SAFE_WEIGHTS_NAME),
                                            metadata={"format": "pt", "loralab": "trainable parameters only"})
                return
            super()._save(output_dir, state_dict)

        def _issue_warnings_after_load(self, load_result) -> None:
            # The frozen weights a trainable-only checkpoint leaves out are "missing" by design.
            missing = set(load_result.missing_keys) - _frozen_names(self.model) - _buffer_names(self.model)
            if missing or load_result.unexpected_keys:
                super()._issue_warnings_after_load(load_result)

        def _get_eval_sampler(self, eval_dataset):
            # With length grouping on, the Trainer also groups evaluation batches, in random
            # "megabatches" of len // (4 * batch) rows: for a few hundred reviews that is one
            # batch each, so nearly every batch was padded to 512 tokens (6.1 s instead of
            # 3.6 s for 100 reviews here). The eval set comes sorted by length: keep its order.
            if self.args.world_size <= 1 and eval_dataset is not None:
                return SequentialSampler(eval_dataset)
            return super()._get_eval_sampler(eval_dataset)

    return LoralabTrainer


def train_with_trainer(model: nn.Module, tokenized, settings: TrainSettings, out_dir: str | os.PathLike,
                       tokenizer=None, collator=None, resume: bool = False, lr_ratio: float = 1.0,
                       callbacks: tuple = ()) -> TrainResult:
    """Train `model` on `tokenized["train"]`, evaluating on `tokenized["eval"]` each epoch.

    Checkpoints go to `out_dir/checkpoints` at the end of every epoch (and every
    `settings.save_steps` steps); with `resume`, training continues from the newest one.
    `lr_ratio` other than 1 trains LoRA's B matrices that many times faster (LoRA+).
    `callbacks` are more `TrainerCallback`s (a search's pruner, `StopAfterEpoch`).
    The Trainer's own log is written to `out_dir/train_log.json`. The model is changed in
    place; saving it is the caller's choice (adapter, head or whole model).

    Raises:
        LoralabError: when the loss becomes NaN or infinite; the last good checkpoint is kept.
    """
    out_dir = Path(out_dir)
    device = pick_device(settings.device)
    precision = resolve_precision(settings, device)
    split = not settings.micro_batch_size and device.type == "cpu"  # each batch at its own length
    logger.info("Batches of %d in passes of %s.", settings.batch_size,
                "sized to each batch's length" if split else rows_per_pass(settings, 0, device))
    args = _training_arguments(settings, out_dir, device, precision)
    collator = collator or BucketedPadding(tokenizer, settings.pad_to_multiple_of, settings.max_length)
    eval_set = _sorted_by_length(tokenized["eval"])
    guard, metrics, mem = StopOnNonFinite(), EvalMetrics(), PeakMemory(device)
    weights = class_weights(tokenized["train"]["label"], model.config.num_labels, settings.class_weights)
    trainer = _trainer_class()(model=model, args=args, train_dataset=tokenized["train"], eval_dataset=eval_set,
                               data_collator=collator, compute_metrics=metrics,
                               compute_loss_func=weighted_loss(weights),
                               callbacks=[guard(), save_after_epoch_evaluation(), release_memory_after_evaluation(),
                                          memory_log(mem), *callbacks],
                               optimizers=(optimizer_for(model, args, lr_ratio), None))
    if split:
        trainer.rows_per_pass = lambda length: rows_per_pass(settings, length, device)
    _quiet_trainer(trainer, settings)
    checkpoint = latest_checkpoint(out_dir / "checkpoints") if resume else None
    if resume and checkpoint is None:
        logger.warning("--resume: no checkpoint in %s; training from the start.", out_dir / "checkpoints")
    # Compiled, dropout is inductor's own fused kernel; FastDropout's reinterpreted random
    # words do not trace (an aliasing dtype view).
    fast = settings.fast_dropout and device.type == "cpu" and not settings.compile
    with mem, fast_dropout_enabled(model, fast):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.is_world_process_zero():
        write_json(out_dir / "train_log.json", trainer.state.log_history)
    if guard.bad:
        key, value, step = guard.bad
        last = latest_checkpoint(out_dir / "checkpoints")
        kept = f"The last good checkpoint is kept in {last}." if last else "No checkpoint was saved before it."
        raise LoralabError(f"Training stopped: the {key.replace('_', ' ')} became {value} at step {step}. {kept} "
                           "Try a lower learning rate or --precision fp32, then --resume.")
    history = epoch_history(trainer.state.log_history)
    model.eval()
    final = metrics.final(class_names(model))
    if final is None:  # resumed after its last evaluation: the scores logged then
        last = history[-1] if history else {}
        final = Metrics(**{name: last.get(f"eval_{name}") for name in SCORES})
    return TrainResult(final, train_seconds=mem.seconds, peak_memory_mb=mem.peak_mb, history=history,
                       precision=precision, memory=epoch_memory(trainer.state.log_history),
                       peak_gpu_memory_mb=mem.gpu_peak_mb)




def stop_after_epoch(epoch: int):
    """A `TrainerCallback` that ends training after `epoch` epochs (evaluated, as every epoch
    is) while the schedule keeps its full length: a searched recipe's best epoch of its
    schedule, reproduced."""
    from transformers import TrainerCallback

    class StopAfterEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if state.epoch is not None and state.epoch >= epoch - 1e-6:
                control.should_training_stop = True

    return StopAfterEpoch()
