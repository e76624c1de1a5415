"""`loralab run --quick --executor ray` on a Ray cluster of one node against two (#36).

Both clusters run on this machine (Ray's `ray.cluster_utils.Cluster`: real raylets), each
node with one CPU, so two nodes have the machine's two cores and one node half of them; each
run asks for one CPU (`[resources] cpus = 1`). The study is the lab's `--quick` one (the
default model, the lab data's subset), driven by `loralab run` in a process of its own and
timed from start to finish, the clusters started before the clock starts. One study per
cluster size, alternating, `--repeats` times, each into a fresh folder.

    python benchmarks/ray_nodes.py [--repeats 1] [--tiny]

Last line: `ratio: X`, one node's wall time over two nodes'.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import done, machine, median, table

TINY_STUDY = """
model = "{model}"
[data]
limit_train = 32
limit_eval = 16
[train]
epochs = 1
max_length = 32
[methods]
baselines = false
full = false
replace_test = false
lowrank = false
extract = false
lora_ranks = [2]
"""


def study_seconds(nodes: int, args, folder: Path) -> float:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        extra = ["--quick"] + (["--model", args.model] if args.model else [])
        if args.tiny:  # head-tuning and LoRA alone, without --quick's sweeps
            config = folder / "tiny.toml"
            config.write_text(TINY_STUDY.format(model=args.model))
            extra = ["--config", str(config)]
        out = folder / f"nodes{nodes}-{time.monotonic_ns()}"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "loralab.cli", "run", "--quiet", "--executor", "ray",
                               "--address", cluster.address, "--out", str(out), *extra],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"the study on {nodes} node(s) failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return seconds
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="", help="default: the study's (minilm)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="a smoke run: head-tuning and LoRA on --model")
    args = parser.parse_args()
    print(f"loralab run --quick on a Ray cluster of 1 node against 2 (1 CPU each); {machine()}")
    runs: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for nodes in runs:
                runs[nodes].append(study_seconds(nodes, args, Path(tmp)))
    seconds = {nodes: median(values) for nodes, values in runs.items()}
    print(table(["nodes", "CPUs", "study wall s (median)", "min", "max"],
                [[str(n), str(n), seconds[n], min(runs[n]), max(runs[n])] for n in runs]))
    done(seconds[1] / seconds[2])


if __name__ == "__main__":
    main()
