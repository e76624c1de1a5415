"""A chaos loop: `loralab run --quick` on a tiny model killed with SIGKILL at a dozen seeded
random moments, resumed each time, ends as an uninterrupted run ends: the same runs and
numbers in results.json, and no half-written or temporary file anywhere."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("synthetic_data")]
KILLS = 12


def run_cmd(config, out):
    return [sys.executable, "-m", "loralab.cli", "run", "--quick", "--config", str(config), "--out", str(out),
            "--quiet"]


def numbers(out):
    """What a study computed (not how long it took): each run's rows, by run."""
    rows = json.loads((out / "results.json").read_text())
    return sorted(((r["run"], r["method"], r["rank"], r["energy"], r["trainable_params"], r["eval_accuracy"],
                    r["eval_macro_f1"], [h["eval_accuracy"] for h in r["history"]]) for r in rows), key=repr)


def check_whole(out):
    """No temporary or moved-aside file is left, and every JSON and safetensors file reads whole."""
    from safetensors import safe_open

    left = [p for p in out.parent.rglob("*") if p.name.endswith((".tmp", ".old")) or ".work" in p.name]
    assert left == [], f"left behind: {left}"
    for path in out.rglob("*.json"):
        json.loads(path.read_text())  # raises on a half-written file
    for path in out.rglob("*.safetensors"):
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                fh.get_tensor(key)


def test_killed_at_random_moments_and_resumed_ends_as_an_uninterrupted_run(tmp_path, tiny_model_dir):
    config = tmp_path / "tiny.toml"
    config.write_text(f'model = "{tiny_model_dir}"\n')
    start = time.time()
    subprocess.run(run_cmd(config, tmp_path / "whole" / "out"), check=True, capture_output=True, timeout=900)
    whole = time.time() - start

    rng = random.Random(1234)
    out = tmp_path / "chaos" / "out"
    kills, moments = 0, []
    while kills < KILLS:
        proc = subprocess.Popen(run_cmd(config, out), start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        moment = rng.uniform(0.2, whole / 3)  # from the imports to the middle of a training run or the report
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            moments.append(round(moment, 1))
        else:
            assert proc.returncode == 0, f"a resumed run failed after kills at {moments}"
        assert len(moments) + 40 > kills  # bounded: each attempt either kills or finishes
    # the children die with their parent: nothing of a killed study may write later
    time.sleep(1)
    final = subprocess.run(run_cmd(config, out), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert numbers(out) == numbers(tmp_path / "whole" / "out"), f"killed at {moments} s"
    check_whole(out)
    assert (out / "report.md").read_text().startswith("# loralab study report")
