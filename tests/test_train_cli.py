"""`loralab train`, `evaluate` and `lowrank` through the CLI, and the lab module."""

import json

import pytest
import torch

from conftest import LAB_DATA, count_fraction, needs_lab_data, png_size

pytestmark = pytest.mark.usefixtures("synthetic_data")  # but the test that measures IMDB accuracy


@needs_lab_data
def test_lora_rank6_on_default_model_saves_a_small_adapter_that_evaluates_alike(tmp_path, run_cli):
    """The CLI on the real model and data (that LoRA there learns is the notebook test's:
    tests/test_notebook.py asserts every method above the majority class)."""
    out = tmp_path / "lora"
    code, stdout, err = run_cli("train", "--data", LAB_DATA, "--method", "lora", "--rank", "6", "--limit-train", 64,
                                "--limit-eval", 64, "--epochs", 1, "--lr", "1e-3", "--max-length", 64,
                                "--out", out, "--quiet")
    assert code == 0, err
    info = json.loads((out / "loralab.json").read_text())
    assert info["trainable_params"] == 203_906 and info["rank"] == 6
    assert (out / "adapter_model.safetensors").stat().st_size < 1_000_000
    code, stdout, _ = run_cli("evaluate", out, "--data", LAB_DATA, "--limit-eval", 64, "--max-length", 64, "--quiet")
    assert code == 0
    assert float(stdout.split()[-1]) == pytest.approx(info["eval_accuracy"], abs=1 / 64 + 1e-9)


@pytest.fixture(scope="module")
def full_and_head(tmp_path_factory, tiny_model_dir, synthetic_data):
    from loralab.cli import main

    folder = tmp_path_factory.mktemp("trained")
    common = ["--model", str(tiny_model_dir), "--limit-train", "48", "--limit-eval", "32", "--epochs", "1",
              "--max-length", "64", "--quiet"]
    for method in ("full", "head"):
        assert main(["train", "--method", method, "--out", str(folder / method), *common]) == 0
    assert main(["train", "--method", "lora", "--rank", "2", "--out", str(folder / "lora"), *common]) == 0
    return folder


def test_lowrank_cli_writes_json_and_png(full_and_head, tiny_model_dir, run_cli, tmp_path):
    out = tmp_path / "lowrank"
    code, stdout, err = run_cli("lowrank", "--finetuned", full_and_head / "full", "--headtuned",
                                full_and_head / "head", "--pretrained", tiny_model_dir, "--out", out,
                                "--ranks", 32, 4, 1, "--lora", full_and_head / "lora", "--limit-eval", 32,
                                "--max-length", 64, "--quiet")
    assert code == 0, err
    summary = json.loads((out / "lowrank.json").read_text())
    assert [r["rank"] for r in summary["rows"]] == [32, 4, 1, 32, 4, 1]
    assert set(summary["lowest_rank_above_head"]) == {"1", "2"}
    similarity = next(iter(summary["lora_similarity"].values()))
    # 4 layers; for r = 2 of 32 output directions, chance is about 2/32, and a trained update is well above it
    assert len(similarity) == 4 and all(2 / 32 < v <= 1 + 1e-6 for v in similarity.values())
    spectrum = json.loads((out / "spectrum.json").read_text())
    assert all({"rank_50", "rank_90", "rank_99"} <= set(layer) for layer in spectrum.values())
    assert png_size(out / "spectrum.png") == (1320, 495)
    assert "lowest rank above head-tuning" in stdout


def test_head_model_changed_only_its_head(full_and_head, tiny_model_dir):
    from loralab.models import load_model

    base, head = load_model(tiny_model_dir), load_model(full_and_head / "head")
    changed = {n for (n, p), (_, q) in zip(base.named_parameters(), head.named_parameters()) if not torch.equal(p, q)}
    assert changed and all(n.startswith(("bert.pooler", "classifier")) for n in changed)


def test_lab_module_names():
    import loralab.lab as lab

    for name in ("num_trainable_parameters", "make_headtuned_model", "make_finetuned_model", "extract",
                 "replace", "LoRA", "make_lora_model", "approximate", "make_approximated_model_1",
                 "make_approximated_model_2", "clone_linear", "evaluate"):
        assert callable(getattr(lab, name)), name
    layer = torch.nn.Linear(8, 4)
    assert lab.LoRA(layer).rank == 12 and lab.LoRA(layer).alpha == 24


def test_lab_make_lora_model_trains_in_memory(tiny_model_dir):
    from loralab import lora_layers, pooling_of
    from loralab.data import limit_data, load_data
    from loralab.lab import evaluate, make_lora_model, num_trainable_parameters
    from loralab.training import TrainSettings

    data = limit_data(load_data(), 32, 16)
    settings = TrainSettings(epochs=1, max_length=64, quiet=True, pooling="mean")
    model = make_lora_model(2, model=str(tiny_model_dir), data=data, settings=settings, init="kaiming", alpha=8)
    assert num_trainable_parameters(model) < 5000
    assert pooling_of(model) == "mean"  # the settings' pooling, and the LoRA options given
    assert {(layer.alpha, layer.init) for layer in lora_layers(model).values()} == {(8, "kaiming")}
    accuracy = evaluate(model, data, model_name=str(tiny_model_dir), settings=settings)
    assert accuracy == model.loralab_result.eval_accuracy  # the same model, the same eval split
    count_fraction(accuracy, 16)


def test_report_to_tensorboard_lands_in_the_output_folder_and_none_writes_nothing_else(
        tmp_path, tiny_model_dir, run_cli, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    common = ["--model", tiny_model_dir, "--limit-train", "24", "--limit-eval", "16", "--epochs", "1",
              "--max-length", "32", "--quiet"]
    code, _, err = run_cli("train", "--method", "lora", "--rank", "2", "--out", "plain", *common)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]  # nothing beside the output folder
    assert not list((tmp_path / "plain").rglob("events.out.tfevents*"))
    code, _, err = run_cli("train", "--method", "lora", "--rank", "2", "--out", "tracked", "--report-to",
                           "tensorboard", *common)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "tracked"]
    events = list((tmp_path / "tracked").rglob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 0
