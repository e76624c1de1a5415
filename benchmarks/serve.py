"""Serving many adapters (`loralab serve`), each side in the same run, bounded load on 127.0.0.1.

    python benchmarks/serve.py [--model minilm] [--counts 1,10,100] [--requests 400] [--concurrency 16] [--tiny]

LoRA r = 8 adapters (query and value, two classes, weights drawn at random) of the model,
served under uniformly mixed traffic (each request one SST-2 dev sentence for an adapter
drawn at random), requests per second and p50 / p99 latency (medians of rounds of load, every
server up at once and loaded in turn), against:

(a) one merged model serving one adapter's traffic through the same server (batching, HTTP):
    goal, 100 mixed adapters at >= 0.7x its throughput;
(b) PEFT's `adapter_names` on the same mixed batches in-process, beside loralab's two ways
    of mixing (segments, gather): goal, at least level; and loralab serving what PEFT cannot
    batch (DoRA, heads of other label sets) beside it;
(c) memory: the server's resident memory with 100 adapters against one adapter's (goal:
    <= base + 150 MB), and what a merged model per adapter costs;
(d) the simplest alternative a user would write: a merged model per adapter in one process,
    requests one at a time (FastAPI, a lock), at the largest count its memory allows here.

Last line: `ratio: X`, the largest count's requests/s (the faster mixing) over the merged model's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import done, machine, table

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sentences(n: int) -> list[str]:
    """SST-2's dev sentences (../shared/data), or made-up ones where the data is missing."""
    import csv

    path = ROOT.parent / "shared" / "data" / "glue" / "sst2" / "dev.csv"
    if path.exists():
        with open(path, newline="") as fh:
            return [row["sentence"] for row in csv.DictReader(fh)][:n]
    return [f"review {i}: a film with moments, some of them good and some far too long" for i in range(n)]


def make_adapters(model: str, folder: Path, count: int, kinds: bool = False) -> list[str]:
    """`count` adapters of `model`: LoRA r = 8 of two classes; with `kinds`, every third a DoRA of
    three classes and every third an IA3 regression head, so methods and label sets mix."""
    import torch

    from loralab import inject_ia3, inject_lora, save_adapter
    from loralab.models import load_model

    names, nets = [], {}
    plans = [("lora", ("negative", "positive"))] + ([("dora", ("a", "b", "c")), ("ia3", ("score",))] if kinds else [])
    for i in range(count):
        method, labels = plans[i % len(plans)]
        if method not in nets:
            net = load_model(model, list(labels))
            if method == "ia3":
                inject_ia3(net)
            else:
                inject_lora(net, 8, 16, variant=method, init="kaiming")
            trained = [p for p in net.parameters() if p.requires_grad]
            nets[method] = (net, trained, [p.detach().clone() for p in trained])
        net, trained, start = nets[method]
        torch.manual_seed(i)
        with torch.no_grad():
            for p, p0 in zip(trained, start):
                p.copy_(p0 + 0.02 * torch.randn_like(p))
        name = f"{method}-{i:03d}"
        save_adapter(net, folder / name)
        names.append(name)
    return sorted(names)


def make_peft_adapters(model: str, folder: Path, count: int) -> list[str]:
    """`count` LoRA r = 8 adapters made by PEFT itself (query and value, its SEQ_CLS head: the
    classifier alone; PEFT cannot mix batches of adapters that also save BERT's pooler)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loralab.models import load_model

    net = get_peft_model(load_model(model), LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                                       target_modules=["query", "value"]))
    trained = [p for p in net.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trained]
    names = []
    for i in range(count):
        torch.manual_seed(i)
        with torch.no_grad():
            for p, p0 in zip(trained, start):
                p.copy_(p0 + 0.02 * torch.randn_like(p))
        names.append(f"peft-{i:03d}")
        net.save_pretrained(folder / names[-1])
    return names


def link_subset(folder: Path, names: list[str], target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(folder / name, target_is_directory=True)
    return target


class Process:
    """A server in a process of its own on 127.0.0.1, up when /health answers."""

    def __init__(self, argv: list[str], port: int, env: dict | None = None):
        self.port = port
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"the server ended: {self.log.read()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.5)
        sys.exit("the server did not come up")

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def peak_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def serve_process(folder: Path, model: str, precision: str, *flags: str) -> Process:
    port = free_port()
    code = "import sys; from loralab.cli import main; sys.exit(main())"
    return Process([sys.executable, "-c", code, "serve", str(folder), "--model", model, "--port", str(port),
                    "--precision", precision, *flags], port)


def child_process(kind: str, folder: Path, model: str, precision: str, count: int = 0) -> Process:
    port = free_port()
    return Process([sys.executable, __file__, "--child", kind, "--folder", str(folder), "--model", model,
                    "--port", str(port), "--precision", precision, "--count", str(count)], port,
                   env={"PYTHONPATH": str(Path(__file__).parent)})


def load(port: int, names: list[str], texts: list[str], requests: int, concurrency: int, seed: int = 0) -> dict:
    """`requests` requests from `concurrency` clients on kept-alive connections, each one text for an
    adapter drawn uniformly: requests/s over the whole, and each request's latency."""
    rng = random.Random(seed)
    plan = [(rng.choice(names), texts[i % len(texts)]) for i in range(requests)]
    latencies, failures, lock, next_i = [], [], threading.Lock(), [0]

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(plan):
                return
            name, text = plan[i]
            start = time.perf_counter()
            conn.request("POST", "/predict", json.dumps({"adapter": name, "inputs": text}),
                         {"Content-Type": "application/json"})
            reply = conn.getresponse()
            body = reply.read()
            took = time.perf_counter() - start
            with lock:
                (latencies if reply.status == 200 else failures).append(took if reply.status == 200 else body)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        sys.exit(f"{len(failures)} requests failed, e.g. {failures[0][:300]!r}")
    ordered = sorted(latencies)
    return {"rps": len(latencies) / wall, "p50": statistics.median(ordered) * 1000,
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000}


# ---------------------------------------------------------------------------------------------
# In-process: loralab's mixed batches (segments, gather) against PEFT's adapter_names


def in_process(model: str, folder: Path, names: list[str], texts: list[str], precision: str, batches: int,
               batch_size: int = 32) -> dict:
    import numpy as np
    import torch

    from loralab.inference import autocast
    from loralab.serve import MixedModel
    from loralab.settings import TrainSettings

    settings = TrainSettings(precision=precision, quiet=True)
    rng = random.Random(0)
    plan = [[(rng.choice(names), texts[rng.randrange(len(texts))]) for _ in range(batch_size)]
            for _ in range(batches)]
    results, logits = {}, {}
    for mixing in ("segments", "gather"):
        mixed = MixedModel(model, settings, mixing)
        for name in names:
            mixed.add(mixed.read(name, folder / name))
        rows = [[(n, mixed.encode(t)) for n, t in batch] for batch in plan]
        mixed.logits(rows[0])
        start = time.perf_counter()
        out = [mixed.logits(r) for r in rows]
        results[f"loralab ({mixing})"] = batches * batch_size / (time.perf_counter() - start)
        logits[mixing] = out[0]
        device, precision_used = mixed.device, mixed.precision
        del mixed

    from peft import PeftModel

    from loralab.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model)
    peft = PeftModel.from_pretrained(load_model(model), str(folder / names[0]), adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(str(folder / name), adapter_name=name)
    peft.eval()
    encoded = []
    for batch in plan:
        order = sorted(range(len(batch)), key=lambda i: batch[i][0])  # as loralab groups a batch by adapter
        enc = tokenizer([batch[i][1] for i in order], padding=True, truncation=True, max_length=512,
                        return_tensors="pt")
        encoded.append((dict(enc), [batch[i][0] for i in order], order))
    with torch.inference_mode(), autocast(device, precision_used):
        first = peft(**encoded[0][0], adapter_names=encoded[0][1]).logits.float()
        start = time.perf_counter()
        for enc, adapter_names, _ in encoded:
            peft(**enc, adapter_names=adapter_names)
        results["PEFT adapter_names"] = batches * batch_size / (time.perf_counter() - start)
    ours = torch.from_numpy(np.stack([logits["segments"][i] for i in encoded[0][2]]))
    results["max |PEFT - loralab| logit"] = float((first - ours).abs().max())
    return results


# ---------------------------------------------------------------------------------------------
# The peers' servers (run as `--child KIND`)


def merged_model(model: str, folder: Path):
    from loralab import load_adapter, merge_and_unload
    from loralab.models import load_model

    return merge_and_unload(load_adapter(load_model(model), folder)).eval()


def child_merged(args) -> None:
    """(a): one merged model through loralab's own server: the same batching and HTTP, no adapters."""
    import uvicorn

    from loralab.adapters import class_names
    from loralab.config import ServeConfig
    from loralab.pooling import pooling_of
    from loralab.serve import Served
    from loralab.serve.app import create_app
    from loralab.serve.mixed import _head_holder
    from loralab.settings import TrainSettings

    merged_dir = Path(tempfile.mkdtemp()) / "merged"
    from loralab.models import load_tokenizer

    net = merged_model(args.model, Path(args.folder))
    net.save_pretrained(merged_dir)
    load_tokenizer(args.model).save_pretrained(merged_dir)
    empty = Path(tempfile.mkdtemp())
    app = create_app(empty, str(merged_dir), ServeConfig(), TrainSettings(precision=args.precision, quiet=True))
    mixed = app.state.engine.mixed
    mixed.add(Served("merged", merged_dir, {}, _head_holder(mixed.model), pooling_of(mixed.model),
                     class_names(mixed.model), "merged", None, 0, False))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def child_naive(args) -> None:
    """(d): a merged model per adapter in one process, each request alone (what a user writes first)."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from loralab.adapters import class_names
    from loralab.inference import autocast, resolve_precision
    from loralab.models import load_tokenizer, pick_device
    from loralab.settings import TrainSettings

    folder = Path(args.folder)
    names = sorted(p.name for p in folder.iterdir())[:args.count]
    models = {name: merged_model(args.model, folder / name) for name in names}
    tokenizer = load_tokenizer(args.model)
    device = pick_device("auto")
    precision = resolve_precision(TrainSettings(precision=args.precision), device)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/predict")
    def predict(body: dict):
        model = models[body["adapter"]]
        with lock, torch.inference_mode(), autocast(device, precision):
            enc = tokenizer(body["inputs"], truncation=True, max_length=512, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits.float(), -1)[0]
        return sorted(({"label": n, "score": float(p)} for n, p in zip(class_names(model), probs)),
                      key=lambda p: -p["score"])

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--counts", default="1,10,100", help="numbers of adapters served")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of load per server, the servers in turn")
    parser.add_argument("--naive-count", type=int, default=10, help="merged models the simplest server holds")
    parser.add_argument("--batches", type=int, default=20, help="in-process mixed batches of 32 rows")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--child", choices=("merged", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return {"merged": child_merged, "naive": child_naive}[args.child](args)
    counts = [int(c) for c in args.counts.split(",")]
    if args.tiny:
        counts, args.requests, args.concurrency, args.naive_count, args.batches, args.rounds = [1, 3], 24, 4, 2, 2, 1

    print(machine())
    texts = sentences(500)
    work = Path(tempfile.mkdtemp(prefix="loralab-serve-bench-"))
    names = make_adapters(args.model, work / "all", max(counts))
    kinds = make_adapters(args.model, work / "kinds", max(counts), kinds=True)
    one, most = min(counts), max(counts)

    # Every server up at once (an idle one takes no CPU), then rounds of load in turn, so that
    # each side meets the machine as the others do; medians over the rounds.
    servers = {"(a) one merged model, one adapter's traffic": (
        child_process("merged", work / "all" / names[0], args.model, args.precision), ["merged"])}
    for count in counts:
        folder = link_subset(work / "all", names[:count], work / f"n{count}")
        for mixing in ("gather", "segments") if count == most else ("gather",):
            servers[f"loralab serve ({mixing}), {count} adapter(s), mixed traffic"] = (
                serve_process(folder, args.model, args.precision, "--mixing", mixing), names[:count])
    for mixing in ("gather", "segments"):
        servers[f"loralab serve ({mixing}), {len(kinds)} of LoRA / DoRA 3 classes / IA3 regression"] = (
            serve_process(work / "kinds", args.model, args.precision, "--mixing", mixing), kinds)
    servers[f"(d) {args.naive_count} merged models, one request at a time"] = (
        child_process("naive", work / "all", args.model, args.precision, args.naive_count),
        names[:args.naive_count])
    rounds: dict[str, list[dict]] = {label: [] for label in servers}
    for label, (server, served) in servers.items():
        load(server.port, served, texts, 2 * args.concurrency, args.concurrency, seed=99)  # warm-up
    for r in range(args.rounds):
        for label, (server, served) in servers.items():
            rounds[label].append(load(server.port, served, texts, args.requests, args.concurrency, seed=r))
    memory_mb = {label: (server.rss_mb(), server.peak_mb()) for label, (server, _) in servers.items()}
    for server, _ in servers.values():
        server.stop()

    def med(label, key):
        return statistics.median(x[key] for x in rounds[label])

    merged = next(iter(servers))
    rows = [[label, len(served), med(label, "rps"), med(label, "p50"), med(label, "p99"),
             med(label, "rps") / med(merged, "rps")] for label, (_, served) in servers.items()]
    print(f"\nServing {args.requests} requests from {args.concurrency} clients on 127.0.0.1, one SST-2 sentence "
          f"each, adapters LoRA r = 8 (query, value), precision {args.precision}; medians of {args.rounds} "
          "rounds, the servers in turn:")
    print(table(["server", "adapters", "requests/s", "p50 ms", "p99 ms", "x merged"], rows))

    base_label = f"loralab serve (gather), {one} adapter(s), mixed traffic"
    base_now, base_peak = memory_mb[base_label]
    memory = [[label, now, now - base_now, peak, peak - base_peak] for label, (now, peak) in memory_mb.items()
              if label.startswith("loralab serve") and "traffic" in label or label.startswith("(d)")]
    naive_label = rows[-1][0]
    per_model = (memory_mb[naive_label][0] - base_now) / args.naive_count
    memory.append([f"{most} merged models (estimated: {per_model:.0f} MB each)", base_now + per_model * most,
                   per_model * most, float("nan"), float("nan")])
    print(f"\n(c) Resident memory after the rounds, and its peak (the base: the server of {one} adapter):")
    print(table(["process", "RSS MB", "above the base", "peak MB", "peak above the base"], memory))
    best = max(med(f"loralab serve ({m}), {most} adapter(s), mixed traffic", "rps") for m in ("gather", "segments"))

    print(f"\n(b) In-process, {args.batches} batches of 32 rows mixed uniformly over {max(counts)} adapters "
          "(texts/s):")
    peft_names = make_peft_adapters(args.model, work / "peft", max(counts))
    inproc = in_process(args.model, work / "peft", peft_names, texts, args.precision, args.batches)
    gap = inproc.pop("max |PEFT - loralab| logit")
    print(table(["way", "texts/s", "x PEFT"], [[k, v, v / inproc["PEFT adapter_names"]] for k, v in inproc.items()]))
    print(f"largest difference of a logit, PEFT against loralab: {gap:.2e}")
    for name, reason in peft_refusals(args.model, work / "peft", peft_names[0]).items():
        print(f"PEFT mixing a LoRA adapter with a {name} one in a batch: {reason}")
    done(best / med(merged, "rps"))


def peft_refusals(model: str, folder: Path, first: str) -> dict[str, str]:
    """What PEFT says when asked to batch adapter `first` (LoRA, two classes) with a DoRA adapter,
    and with a LoRA adapter of three classes (both made by PEFT itself)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from loralab.models import load_model, load_tokenizer

    for name, labels, dora in (("dora", 2, True), ("three-classes", 3, False)):
        net = get_peft_model(load_model(model, num_labels=labels), LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], use_dora=dora))
        net.save_pretrained(folder / name)
    enc = dict(load_tokenizer(model)(["a fine film", "a dull film"], padding=True, return_tensors="pt"))
    said = {}
    for other in ("dora", "three-classes"):
        try:
            peft = PeftModel.from_pretrained(load_model(model), str(folder / first), adapter_name=first)
            peft.load_adapter(str(folder / other), adapter_name=other)
            with torch.inference_mode():
                peft(**enc, adapter_names=[first, other])
            said[other] = "batched"
        except Exception as err:  # noqa: BLE001 - its words are the finding
            said[other] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
    return said


if __name__ == "__main__":
    main()
