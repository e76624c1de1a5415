"""`loralab run --executor ray` on a real Ray cluster on this machine (#36): a head node and a
second node on 127.0.0.1, one CPU each (Ray's own `ray.cluster_utils.Cluster`, which starts
real raylets), and a small study on a tiny model driven by `loralab run` in a process of its
own. It must use both nodes, give the local executor's numbers, survive the second node's
death mid-run, and resume after the driver is killed without redoing a finished run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_synthetic_reviews

pytestmark = [pytest.mark.slow, pytest.mark.ray]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
ray = pytest.importorskip("ray")

STUDY = """
model = "{model}"
seeds = [0, 1]
[data]
dir = "{data}"
limit_train = 48
limit_eval = 32
[train]
epochs = 1
max_length = 48
learning_rate = 1e-3
[methods]
baselines = false
full = false
replace_test = false
lowrank = false
extract = false
lora_ranks = [2]
"""


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = made.add_node(num_cpus=1)
    made.wait_for_nodes()
    made.worker = worker
    yield made
    made.shutdown()


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("ray-study")
    data = write_synthetic_reviews(folder / "data", n_train=48, n_eval=32)
    config = folder / "study.toml"
    config.write_text(STUDY.format(model=tiny_model_dir, data=data))
    return config


def driver(config: Path, out: Path, *extra, quiet: bool = True) -> subprocess.Popen:
    """`loralab run` in a process of its own (as a user runs it), on the cluster `extra` names."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "loralab.cli", "run", "--config", str(config), "--out", str(out),
            *(["--quiet"] if quiet else []), *map(str, extra)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output
    return output


def scores(out: Path) -> dict:
    return {(r["run"], r["seed"]): (r["eval_accuracy"], round(r["history"][-1]["train_loss"], 4))
            for r in json.loads((out / "results.json").read_text())}


def nodes(out: Path) -> dict[str, str]:
    return json.loads((out / "environment.json").read_text())["nodes"]


@pytest.fixture(scope="module")
def local_scores(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    finish(driver(study, out, "--jobs", "2"))  # one thread a run, as each Ray run with resources.cpus = 1
    return scores(out)


def test_a_study_uses_both_nodes_and_gives_the_local_numbers(cluster, study, local_scores, tmp_path):
    out = tmp_path / "out"
    output = finish(driver(study, out, "--executor", "ray", "--address", cluster.address, quiet=False))
    ran_on = nodes(out)
    for run, node in ran_on.items():  # the progress lines say where each run is, then where it finished
        assert f"{run}: running on {node}" in output and f"{run}: done in " in output, output
    assert set(ran_on) == {"head-seed0", "head-seed1", "lora-r2-seed0", "lora-r2-seed1"}
    assert {node.split()[1] for node in ran_on.values()} == {cluster.head_node.node_id, cluster.worker.node_id}
    assert scores(out) == local_scores
    assert json.loads((out / "lora-r2-seed0" / "result.json").read_text())["node"] == ran_on["lora-r2-seed0"]
    assert (out / "lora-r2-seed0" / "run.log").exists()


def test_a_node_dying_mid_run_loses_only_that_run(cluster, study, local_scores, tmp_path):
    out = tmp_path / "out"
    proc = driver(study, out, "--executor", "ray", "--address", cluster.address)
    worker_id = cluster.worker.node_id
    deadline = time.time() + 300
    while time.time() < deadline:  # a run started on the second node and not finished
        started = [p.parent for p in out.glob("*/node.json") if worker_id in p.read_text()
                   and not (p.parent / "result.json").exists()]
        if started:
            break
        time.sleep(0.2)
    assert started, "no run started on the second node"
    cluster.remove_node(cluster.worker)
    try:
        finish(proc)
        assert scores(out) == local_scores  # every run done, the lost one again on the head node
        assert nodes(out)[started[0].name].split()[1] == cluster.head_node.node_id
    finally:
        cluster.worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()


def test_a_killed_driver_resumes_without_redoing_a_finished_run(cluster, study, local_scores, tmp_path):
    out = tmp_path / "out"
    proc = driver(study, out, "--executor", "ray", "--address", cluster.address)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*/result.json")):
        time.sleep(0.2)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    assert finished, "no run finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    output = finish(driver(study, out, "--executor", "ray", "--address", cluster.address))
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # never redone
    assert json.loads((out / "environment.json").read_text())["skipped_runs"] >= len(finished)
    assert scores(out) == local_scores, output


def test_a_failed_run_is_named_with_its_node_and_log(cluster, study, tmp_path):
    config = tmp_path / "failing.toml"
    config.write_text(study.read_text().replace("max_length = 48", "max_length = 4096"))  # past the model's 512
    proc = driver(config, tmp_path / "out", "--executor", "ray", "--address", cluster.address)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, output
    line = next(line for line in output.splitlines() if "The run 'head-seed0' failed on " in line)
    node = line.split(" failed on ")[1].split(":")[0]
    assert node.split()[1] in {cluster.head_node.node_id, cluster.worker.node_id}
    log = tmp_path / "out" / "head-seed0" / "run.log"
    assert f"(its log: {log})" in line and "max_length" in log.read_text()


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    from loralab.errors import LoralabError
    from loralab.study import cluster

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(LoralabError, match=r"pip install 'loralab\[ray\]'"):
        cluster.import_ray()


SEARCHED = """
[data]
validation = 0.25
[search]
enabled = true
lora_rank = 2
startup_trials = 1
workers = 2
[search.head]
trials = 2
max_epochs = 2
[search.lora]
trials = 2
lr_min = 1e-3
lr_max = 1e-2
min_epochs = 1
max_epochs = 2
"""


def test_the_recipe_searches_run_on_the_cluster(cluster, study, tmp_path):
    """#44: each method's trials are trained by two worker runs placed on the nodes, sharing the
    study folder's search.db; the search run records them, and the runs train at its recipe."""
    from loralab.records import read_record

    config = tmp_path / "searched.toml"
    config.write_text(study.read_text().replace("[data]\n", "[data]\nvalidation = 0.25\n", 1)
                      + SEARCHED.split("[data]\nvalidation = 0.25\n")[1])
    out = tmp_path / "out"
    finish(driver(config, out, "--executor", "ray", "--address", cluster.address))
    ran_on = nodes(out)
    assert {"search-head", "search-lora", "trials-head-1", "trials-head-2", "trials-lora-1", "trials-lora-2"} <= \
        set(ran_on)
    assert all(node.split()[1] in {cluster.head_node.node_id, cluster.worker.node_id} for node in ran_on.values())
    # The trials were trained on both nodes.
    assert {ran_on[r].split()[1] for r in ran_on if r.startswith("trials-")} == \
        {cluster.head_node.node_id, cluster.worker.node_id}
    assert (out / "search.db").exists()
    for method, run in (("head", "head-seed1"), ("lora", "lora-r2-seed0")):
        found = read_record(out / f"search-{method}" / "result.json").search
        assert 2 <= len(found.trials) <= 3  # the budget, or one over where both workers asked at once
        row = read_record(out / run / "result.json").rows[0]
        assert row.recipe["search"] == f"search-{method}" and len(row.history) == found.best_epoch


def test_the_server_runs_as_replicas_on_ray_serve(cluster, tiny_model_dir, tmp_path):
    """#45: `loralab serve --replicas`: one replica per node, each holding at most two adapters;
    Ray Serve's multiplexing sends every request for an adapter to the replica that holds it,
    and the answers are each adapter's `loralab predict`."""
    import urllib.request

    import numpy as np

    serve = pytest.importorskip("ray.serve")

    from conftest import free_port
    from loralab.config import ServeConfig
    from loralab.predict import predict
    from loralab.serve.replicas import MODEL_ID_HEADER, application
    from loralab.training import TrainSettings
    from serving import PAIRS, TEXTS, three_adapters

    fp32 = TrainSettings(precision="fp32", quiet=True)
    made = three_adapters(tiny_model_dir, tmp_path / "adapters")
    port = free_port()
    ray.init(address=cluster.address)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServeConfig(replicas=2, adapters_per_replica=2, replica_cpus=1, max_wait_ms=5)
        serve.run(application(tmp_path / "adapters", str(tiny_model_dir), settings, fp32), name="loralab",
                  route_prefix="/")
        def ask(name, text):
            body = {"inputs": list(text) if isinstance(text, tuple) else text}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", json.dumps(body).encode(),
                                         {"Content-Type": "application/json", MODEL_ID_HEADER: name})
            with urllib.request.urlopen(req, timeout=120) as reply:
                nodes_used.add(reply.headers["X-Loralab-Node"])
                return json.loads(reply.read()), reply.headers["X-Loralab-Replica"]

        asks = (("sentiment", TEXTS), ("nli", PAIRS), ("similarity", PAIRS))
        nodes_used = set()
        for name, inputs in asks:  # each adapter loaded on a replica, which then tells the routers
            ask(name, inputs[0])
        time.sleep(5)
        answered_by = {}
        for name, inputs in asks:
            got = []
            for text in inputs:
                answer, replica = ask(name, text)
                got.append(answer)
                answered_by.setdefault(name, set()).add(replica)
            alone = predict(made[name], list(inputs), settings=fp32, progress=False)
            if alone.scores is not None:
                np.testing.assert_allclose([g[0]["score"] for g in got], alone.scores, atol=1e-4)
            else:
                probs = [[{p["label"]: p["score"] for p in g}[c] for c in alone.classes] for g in got]
                np.testing.assert_allclose(probs, alone.probabilities, atol=1e-4)
        assert all(len(replicas) == 1 for replicas in answered_by.values()), answered_by  # routed to the holder
        assert nodes_used == {cluster.head_node.node_id, cluster.worker.node_id}  # a replica on each node
    finally:
        serve.shutdown()
        ray.shutdown()
