"""Training runs unchanged under torchrun: two CPU processes (gloo) on a tiny model."""

import json
import os
import subprocess
import sys

import pytest

from conftest import free_port


@pytest.mark.slow
def test_two_processes_finish_and_write_once(tmp_path, tiny_model_dir, synthetic_data):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "loralab.cli", "train", "--method", "lora", "--rank", "2", "--model", str(tiny_model_dir),
           "--limit-train", "32", "--limit-eval", "16", "--epochs", "1", "--max-length", "32", "--device", "cpu",
           "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("lora: eval accuracy") == 2  # both ranks finished
    info = json.loads((out / "loralab.json").read_text())
    assert len(info["history"]) == 1
    # written once: no second copy or leftover scratch folders beside the result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    assert (out / "adapter_model.safetensors").exists()
