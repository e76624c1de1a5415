"""The training loop's batches: what the Trainer evaluates on, and in what order."""

from pathlib import Path

import datasets
import torch
from transformers import DataCollatorWithPadding

from loralab.models import load_model, load_tokenizer
from loralab.training import TrainSettings, _batches, _sorted_by_length, _trainer_class, _training_arguments, tokenize


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
    trainer = _trainer_class()(model=load_model(tiny_model_dir), args=args, eval_dataset=_sorted_by_length(evals),
                               data_collator=DataCollatorWithPadding(tokenizer))
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_eval_dataloader()]
    assert widths == [batch["input_ids"].shape[1] for _, batch in _batches(evals, 4, tokenizer)]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 3
