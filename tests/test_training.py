"""The training loop's batches: what the Trainer evaluates on, and in what order; checkpoints."""

import json
from pathlib import Path

import datasets
import torch

from loralab.inference import BucketedPadding, _batches, _sorted_by_length
from loralab.models import load_model, load_tokenizer
from loralab.training import (
    TrainSettings,
    _trainer_class,
    _training_arguments,
    latest_checkpoint,
    tokenize,
    train_model,
)


def test_trainer_evaluates_the_length_sorted_batches_of_predict(tmp_path, tiny_model_dir):
    """With length grouping on, the Trainer would also group evaluation batches, at random
    for a small eval set (nearly every batch padded to its longest review). loralab keeps
    the eval set's own longest-first order: the same batches as `predict_logits`."""
    tokenizer = load_tokenizer(tiny_model_dir)
    words = [" ".join(["good"] * n) for n in (3, 40, 7, 25, 12, 60, 5, 33, 18, 50, 9, 28)]
    data = datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": words, "label": [0, 1] * 6})
                                 for split in ("train", "eval")})
    evals = tokenize(data, tokenizer)["eval"]
    settings = TrainSettings(eval_batch_size=4, group_by_length=True, quiet=True)
    args = _training_arguments(settings, Path(tmp_path), torch.device("cpu"), "fp32")
    collator = BucketedPadding(tokenizer, 8, settings.max_length)  # train_model's collator
    trainer = _trainer_class()(model=load_model(tiny_model_dir), args=args, eval_dataset=_sorted_by_length(evals),
                               data_collator=collator)
    batches = list(trainer.get_eval_dataloader())
    ours = list(_batches(evals["input_ids"], 4, tokenizer, 8, settings.max_length))
    widths = [batch["input_ids"].shape[1] for batch in batches]
    assert widths == [batch["input_ids"].shape[1] for _, batch in ours] == [64, 32, 16]
    assert all(a["input_ids"].equal(b["input_ids"]) for a, (_, b) in zip(batches, ours))


def test_a_checkpoint_at_an_epochs_end_holds_its_evaluation_and_resumes_with_every_row(tmp_path, tiny_model_dir):
    """With --save-steps equal to an epoch, the Trainer saved at the epoch's last step,
    before the epoch's evaluation: a run killed between the two resumed past that epoch and
    its history lacked the row (seen in CI). The checkpoint now comes after the evaluation."""
    tokenizer = load_tokenizer(tiny_model_dir)
    data = datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"text": [f"a {'fine' if i % 2 else 'dull'} film number {i}" for i in range(16)], "label": [0, 1] * 8})
        for split in ("train", "eval")})
    tokenized = tokenize(data, tokenizer, 16)
    settings = TrainSettings(epochs=2, batch_size=4, max_length=16, save_steps=4, quiet=True, precision="fp32")
    result = train_model(load_model(tiny_model_dir), tokenized, settings, tmp_path, tokenizer=tokenizer)
    assert [row["epoch"] for row in result.history] == [1, 2]
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")  # the last one, at step 8: epoch 2's end
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert checkpoint.name == "checkpoint-8"
    assert [e["epoch"] for e in state["log_history"] if "eval_accuracy" in e] == [1, 2]
    resumed = train_model(load_model(tiny_model_dir), tokenized, settings, tmp_path, tokenizer=tokenizer,
                          resume=True)
    assert resumed.history == result.history
