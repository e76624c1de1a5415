"""The training loop's batches: what the Trainer evaluates on, and in what order; checkpoints."""

import json
from pathlib import Path

import datasets
import pytest
import torch

from loralab.inference import BucketedPadding, _batches, _sorted_by_length
from loralab.models import load_model, load_tokenizer
from loralab.training import (
    TrainSettings,
    _trainer_class,
    _training_arguments,
    latest_checkpoint,
    tokenize,
    train_with_trainer,
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
    collator = BucketedPadding(tokenizer, 8, settings.max_length)  # train_with_trainer's collator
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
    result = train_with_trainer(load_model(tiny_model_dir), tokenized, settings, tmp_path, tokenizer=tokenizer)
    assert [row["epoch"] for row in result.history] == [1, 2]
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")  # the last one, at step 8: epoch 2's end
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert checkpoint.name == "checkpoint-8"
    assert [e["epoch"] for e in state["log_history"] if "eval_accuracy" in e] == [1, 2]
    resumed = train_with_trainer(load_model(tiny_model_dir), tokenized, settings, tmp_path, tokenizer=tokenizer,
                          resume=True)
    assert resumed.history == result.history


def _lengthening_reviews(tokenizer):
    """16 tokenized reviews of 3 to 78 words, both classes, as train and eval."""
    texts = [" ".join(["good" if i % 3 else "bad"] * (3 + 5 * i)) for i in range(16)]
    data = datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": texts, "label": [0, 1] * 8})
                                 for split in ("train", "eval")})
    return tokenize(data, tokenizer, 64)


def test_micro_batches_take_the_same_steps_as_whole_batches(tmp_path, tiny_model_dir, monkeypatch):
    """`micro_batch_size` splits each batch into passes whose gradients add up to the whole
    batch's: without dropout, the trained weights match. So does the default on a CPU, which
    cuts each batch at its own length into passes of the memory of `MICRO_BATCH_TOKENS`
    tokens at 512 (here 80: batches of 64 tokens split unevenly, 3 + 3 + 2 rows). Both losses are
    checked: the model's own, and the class-weighted one (here with equal classes, so weights
    of 1), which the Trainer leaves unscaled, so it scales itself."""
    import loralab.training

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenized = _lengthening_reviews(tokenizer)
    monkeypatch.setattr(loralab.training, "MICRO_BATCH_TOKENS", 80)
    cut, real = [], loralab.training._passes
    monkeypatch.setattr(loralab.training, "_passes", lambda inputs, rows: cut.append(real(inputs, rows)) or cut[-1])

    def trained(micro: int, weights: str) -> dict:
        model = load_model(tiny_model_dir)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        settings = TrainSettings(epochs=1, batch_size=8, micro_batch_size=micro, learning_rate=1e-2, max_length=64,
                                 class_weights=weights, fast_dropout=False, quiet=True, precision="fp32")
        train_with_trainer(model, tokenized, settings, tmp_path / f"{micro}-{weights}", tokenizer=tokenizer)
        return dict(model.named_parameters())

    whole = trained(8, "none")
    assert not cut  # a micro_batch_size of its own: the Trainer's accumulation, no cut here
    start = dict(load_model(tiny_model_dir).named_parameters())
    assert max((whole[name] - p).abs().max().item() for name, p in start.items()) > 1e-3  # the steps moved
    for micro, weights in ((4, "none"), (2, "none"), (4, "balanced"), (2, "balanced"), (0, "none"), (0, "balanced")):
        for name, value in trained(micro, weights).items():
            torch.testing.assert_close(value, whole[name], rtol=1e-4, atol=1e-5, msg=f"{weights} {micro} {name}")
    sizes = sorted({tuple(len(part["input_ids"]) for part in parts) for parts in cut})
    assert len(cut) == 4 and all(len(s) > 1 for s in sizes) and any(len(set(s)) > 1 for s in sizes), sizes


def test_gradient_checkpointing_recomputes_each_layer_and_trains_the_same_weights(tmp_path, tiny_model_dir):
    """`gradient_checkpointing` runs each encoder layer again in the backward pass (counted
    here) and, because the recomputation replays the dropout masks (fast dropout on, the
    CPU default), trains the same weights as a plain backward: for LoRA, whose frozen
    embeddings need no gradient, and for full fine-tuning."""
    from loralab.surgery import inject_lora

    tokenizer = load_tokenizer(tiny_model_dir)
    tokenized = _lengthening_reviews(tokenizer)

    def trained(method: str, checkpointing: bool) -> tuple[dict, int]:
        torch.manual_seed(0)
        model = load_model(tiny_model_dir)
        if method == "lora":
            inject_lora(model, rank=2)
        calls = []
        model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *_: calls.append(1))
        settings = TrainSettings(epochs=1, batch_size=8, learning_rate=1e-2, max_length=64, quiet=True,
                                 precision="fp32", gradient_checkpointing=checkpointing)
        train_with_trainer(model, tokenized, settings, tmp_path / f"{method}-{checkpointing}", tokenizer=tokenizer)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)

    for method in ("lora", "full"):
        plain, plain_calls = trained(method, False)
        recomputed, calls = trained(method, True)
        assert calls - plain_calls == 2  # 2 training steps, each layer run twice; evaluation the same
        assert plain.keys() == recomputed.keys()
        for name, value in recomputed.items():
            torch.testing.assert_close(value, plain[name], rtol=1e-5, atol=1e-6, msg=f"{method} {name}")


def test_the_weighted_loss_of_micro_batches_adds_up_to_the_batchs():
    from loralab.metrics import weighted_loss

    loss, weights = torch.nn.functional.cross_entropy, torch.tensor([0.5, 2.0, 1.0])
    logits, labels = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 0, 2, 0])  # halves with equal classes
    whole = loss(logits, labels, weight=weights)
    parts = [weighted_loss(weights)({"logits": logits[s]}, labels[s], num_items_in_batch=torch.tensor(8))
             for s in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(parts[0] + parts[1], whole)
    torch.testing.assert_close(weighted_loss(weights)({"logits": logits}, labels), whole)


def test_micro_batch_size_must_divide_the_batch():
    import pytest

    from loralab.errors import LoralabError

    with pytest.raises(LoralabError, match="micro_batch_size must divide batch_size"):
        TrainSettings(batch_size=8, micro_batch_size=3)


def test_passes_hold_the_memory_of_1024_tokens_at_512_on_a_cpu_and_the_whole_batch_on_a_gpu():
    from loralab.training import rows_per_pass

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    settings = TrainSettings(batch_size=8)
    assert rows_per_pass(settings, 512, cpu) == 2  # 2 x 512
    assert rows_per_pass(settings, 256, cpu) == 6  # the memory of 1,024 tokens at 512: cut 4 and 4 (`_passes`)
    assert rows_per_pass(settings, 96, cpu) == 8  # short texts stay whole
    assert rows_per_pass(TrainSettings(batch_size=32), 128, cpu) == 16  # 2,048 tokens at 128
    assert rows_per_pass(settings.replace(max_length=2048), 2000, cpu) == 1
    assert rows_per_pass(settings, 512, gpu) == 8
    assert rows_per_pass(settings.replace(micro_batch_size=4), 20, cpu) == 4


def test_resume_with_other_settings_is_refused_naming_each_change(tmp_path, tiny_model_dir, synthetic_data,
                                                                  monkeypatch):
    """A run interrupted after it started, resumed with another learning rate or rank: refused,
    naming what changed (the old schedule went on silently, or shapes clashed in a traceback);
    the same settings resume, and what only reports (quiet, eval_batch_size) may change."""
    import loralab.api
    from loralab.errors import LoralabError

    real = loralab.api.train_in_place

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after the run's settings were kept beside its checkpoints

    settings = TrainSettings(epochs=1, max_length=32, learning_rate=1e-3, quiet=True)
    monkeypatch.setattr(loralab.api, "train_in_place", interrupted)
    with pytest.raises(KeyboardInterrupt):
        loralab.api.train("lora", tmp_path / "run", str(tiny_model_dir), settings=settings, rank=2)
    assert (tmp_path / ".run.work" / "resume.json").exists()
    monkeypatch.setattr(loralab.api, "train_in_place", real)
    with pytest.raises(LoralabError, match=r"settings.learning_rate 0.001, now 0.003"):
        loralab.api.train("lora", tmp_path / "run", str(tiny_model_dir), settings=settings.replace(learning_rate=3e-3),
                          rank=2, resume=True)
    with pytest.raises(LoralabError, match=r"\(lora.rank 2, now 4\)"):
        loralab.api.train("lora", tmp_path / "run", str(tiny_model_dir), settings=settings, rank=4, resume=True)
    info = loralab.api.train("lora", tmp_path / "run", str(tiny_model_dir), rank=2, resume=True,
                             settings=settings.replace(quiet=False, eval_batch_size=4))
    assert info.learning_rate == 1e-3 and (tmp_path / "run" / "adapter_model.safetensors").exists()


def test_a_lora_checkpoint_holds_only_what_trains_and_resumes_to_the_same_weights(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    """A LoRA run's checkpoints held the whole base model (about 90 MB each for the default
    model); they hold the adapters and the head, and a run resumed from the mid-run one ends
    with the weights of a run that was never interrupted."""
    from safetensors import safe_open

    from loralab.surgery import inject_lora

    tokenizer = load_tokenizer(tiny_model_dir)
    data = datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"text": [f"a {'fine' if i % 2 else 'dull'} film number {i}" for i in range(16)], "label": [0, 1] * 8})
        for split in ("train", "eval")})
    tokenized = tokenize(data, tokenizer, 16)
    settings = TrainSettings(epochs=2, batch_size=4, max_length=16, save_steps=2, quiet=True, precision="fp32",
                             learning_rate=1e-2)

    def lora_model():
        torch.manual_seed(0)
        return inject_lora(load_model(tiny_model_dir), 2, init="kaiming")

    whole = lora_model()
    train_with_trainer(whole, tokenized, settings, tmp_path / "whole", tokenizer=tokenizer)
    checkpoint = latest_checkpoint(tmp_path / "whole" / "checkpoints")
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as fh:
        saved = set(fh.keys())
    trainable = {n for n, p in whole.named_parameters() if p.requires_grad}
    assert saved == trainable and not any(".base." in n for n in saved)
    size = (checkpoint / "model.safetensors").stat().st_size
    assert size < sum(p.numel() * 4 for p in whole.parameters()) / 20, size

    # the same run, interrupted right after its checkpoint at step 4 (of 8), then resumed from it
    from transformers import TrainerCallback

    import loralab.training

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    monkeypatch.setattr(loralab.training, "release_memory_after_evaluation", Interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_with_trainer(lora_model(), tokenized, settings, tmp_path / "resumed", tokenizer=tokenizer)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "checkpoint-4"
    resumed = lora_model()
    train_with_trainer(resumed, tokenized, settings, tmp_path / "resumed", tokenizer=tokenizer, resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_trainer_arguments_are_passed_by_name_and_an_unknown_one_is_an_error(tmp_path):
    """A name TrainingArguments lacks (a misspelt override, a field a release removed) is an
    error, not dropped: transformers 5 removed `warmup_ratio`, and the old filter silently lost
    loralab's warm-up. It now reaches the schedule under this version's name."""
    from loralab.errors import LoralabError
    from loralab.training import _training_arguments

    cpu = torch.device("cpu")
    with pytest.raises(LoralabError, match="no field 'save_stratgy'"):
        _training_arguments(TrainSettings(), tmp_path, cpu, "fp32", save_stratgy="no")
    args = _training_arguments(TrainSettings(warmup_ratio=0.25), tmp_path, cpu, "fp32")
    assert args.get_warmup_steps(100) == 25  # a quarter of the steps, whichever field holds it
    assert _training_arguments(TrainSettings(), tmp_path, cpu, "fp32").get_warmup_steps(100) == 0
