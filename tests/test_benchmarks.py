"""Every benchmark script runs on a tiny model for a few steps, so none can rot."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = {"attention": "ratio", "lora_train": "ratio", "inference": "ratio", "memory": "ratio",
           "roofline": "fraction of bf16 peak", "lab_pipeline": "ratio", "compile": "ratio",
           "precision": "ratio", "gpu_check": "checked", "adapter_step": "ratio", "ray_nodes": "ratio",
           "serve": "ratio", "glue_train": "ratio", "side_by_side": "ratio"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_benchmark_smoke(name, tiny_model_dir, synthetic_data_dir):
    """On the synthetic reviews: the figures are the point of a full run, not of this one."""
    if name == "compile" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile on a CPU needs a C++ compiler")
    script = ROOT / "benchmarks" / f"{name}.py"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--model", str(tiny_model_dir)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "benchmarks"),
                               "LORALAB_DATA": str(synthetic_data_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"{SCRIPTS[name]}: \d+(\.\d+)?", last), last
    assert "commit" in proc.stdout  # the table states the machine and commit
