"""Two runs side by side, one thread each, against one run with every thread: training
throughput on GLUE-shaped batches.

A step of 16 short sentences is a few small matrix products plus some 600 operators of
eager PyTorch, whose per-operator cost does not shrink with more threads; on a machine of
few cores two processes of one thread each (`loralab glue --jobs 2`, `loralab run --jobs 2`:
each run's process gets its share of the threads) may train more steps per second than one
process with all of them. Each side runs LoRA r=8 (query/value + head) training steps of
16 rows at each length in turn, in bf16 autocast where the hardware has it (else fp32):

- one process: `torch.set_num_threads(cores)`, the steps one after another;
- side by side: `cores` processes of one thread each, started together, each running the
  same steps; their steps per second add up.

    python benchmarks/side_by_side.py [--steps 12] [--lengths 16,32,64,128] [--tiny]

Last line: `ratio: X`, side by side's steps per second over one process's, at the median
over the lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import done, machine, median, table

CHILD = """
import json, sys, torch
from _common import training_pass
from loralab import inject_lora, load_model
from loralab.inference import resolve_precision
from loralab.settings import TrainSettings
threads, steps, lengths, model_name = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
torch.manual_seed(0)
model = inject_lora(load_model(model_name, num_labels=2), 8, 16, init="kaiming")
precision = resolve_precision(TrainSettings(), torch.device("cpu"))
out = {}
for length in lengths:
    batch = {"input_ids": torch.randint(1000, 2000, (16, length)),
             "attention_mask": torch.ones(16, length, dtype=torch.long), "labels": torch.randint(0, 2, (16,))}
    training_pass(model, [batch] * 2, precision, fast_dropout=True)()  # warm-up
    timed = training_pass(model, [batch] * steps, precision, fast_dropout=True)
    print("ready", flush=True)
    sys.stdin.readline()  # every process starts each length's steps together
    out[length] = steps / timed()
print(json.dumps(out), flush=True)
"""


def run(processes: int, threads: int, steps: int, lengths: list[int], model: str) -> dict[int, float]:
    """Steps per second at each length, summed over `processes` started together."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(__file__)),
                                                       os.environ.get("PYTHONPATH")]))}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(threads), str(steps), json.dumps(lengths), model],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                 env=env) for _ in range(processes)]
    for _ in lengths:
        for child in children:
            assert child.stdout.readline().strip() == "ready", "a child failed"
        for child in children:
            child.stdin.write("\n")
            child.stdin.flush()
    rates = [json.loads(child.stdout.readline()) for child in children]
    for child in children:
        child.wait()
    return {length: sum(r[str(length)] for r in rates) for length in lengths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lengths", default="16,32,64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.lengths, args.repeats = 2, "16", 1
    lengths = [int(x) for x in args.lengths.split(",")]
    cores = os.cpu_count() or 1
    print(f"# {machine()}")
    print(f"# LoRA r=8 on query/value + head of {args.model}, training steps of 16 rows; one process with {cores} "
          f"threads against {cores} processes of one thread started together; {args.steps} steps a length after "
          f"2 warm-up steps, {args.repeats} alternating repeats, medians")
    one, side = {n: [] for n in lengths}, {n: [] for n in lengths}
    for _ in range(args.repeats):
        for n, rate in run(1, cores, args.steps, lengths, args.model).items():
            one[n].append(rate)
        for n, rate in run(cores, 1, args.steps, lengths, args.model).items():
            side[n].append(rate)
    rows = [[f"16 x {n}", median(one[n]), median(side[n]), median(side[n]) / median(one[n])] for n in lengths]
    print(table(["batch (rows x tokens)", "one process (steps/s)", "side by side (steps/s)", "ratio"], rows))
    done(median([row[3] for row in rows]))


if __name__ == "__main__":
    main()
