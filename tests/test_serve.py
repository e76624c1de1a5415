"""`loralab serve` (#45), tested as a real server process on a free loopback port: every route,
bad input, load and unload under traffic, a mixed batch of adapters of different methods,
label sets and layouts (a regression, a pair task, PEFT's own) equal to each adapter's
`loralab predict`, SIGTERM's drain, the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import free_port
from loralab.predict import predict
from loralab.training import TrainSettings
from serving import PAIRS, TEXTS, make_adapter, three_adapters

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

FP32 = TrainSettings(precision="fp32", quiet=True)
TOKEN = "s3cret-token"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Server:
    """`loralab serve` in a process of its own on 127.0.0.1."""

    def __init__(self, adapters, model, *flags, token: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        env.pop("LORALAB_SERVE_TOKEN", None)
        if token:
            env["LORALAB_SERVE_TOKEN"] = token
        self.log = open(adapters.parent / f"server-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-c", "import sys; from loralab.cli import main; "
                                      "sys.exit(main())", "serve", str(adapters), "--model", str(model),
                                      "--port", str(self.port), "--precision", "fp32", *flags],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server ended ({self.proc.returncode}): {self.output()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not come up: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def request(self, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as reply:
                text = reply.read().decode()
                status, reply_headers = reply.status, dict(reply.headers)
        except urllib.error.HTTPError as err:
            text, status, reply_headers = err.read().decode(), err.code, dict(err.headers)
        try:
            return status, json.loads(text), reply_headers
        except ValueError:
            return status, text, reply_headers

    def get(self, path):
        return self.request("GET", path)[:2]

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)[:2]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("serve") / "adapters"
    made = three_adapters(tiny_model_dir, folder)
    damaged = make_adapter(tiny_model_dir, folder / "damaged", "lora", seed=9)
    weights = damaged / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    pickled = folder / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                             "target_modules": ["query"]}))
    (pickled / "adapter_model.bin").write_bytes(b"not loaded, never unpickled")
    made["peft"] = peft_adapter(tiny_model_dir, folder / "peft")
    return folder, made


def peft_adapter(base, out):
    """A LoRA adapter made by PEFT itself (its layout, its head: the classifier alone)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from loralab.models import load_model

    made = get_peft_model(load_model(base), LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4,
                                                       target_modules=["query", "value"]))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in made.parameters():
            if p.requires_grad:
                p.add_(0.5 * torch.randn_like(p))
    made.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(adapters, tiny_model_dir):
    running = Server(adapters[0], tiny_model_dir, "--max-wait-ms", "30", "--max-texts", "8", "--max-chars", "300",
                     token=TOKEN)
    yield running
    running.stop()


def probabilities(answer: list[dict], labels: list[str]) -> list[float]:
    by_label = {p["label"]: p["score"] for p in answer}
    return [by_label[label] for label in labels]


def test_a_mixed_batch_of_adapters_of_other_methods_and_label_sets_equals_each_adapters_predict(server, adapters):
    _, made = adapters
    asks = [("sentiment", t) for t in TEXTS] + [("nli", list(p)) for p in PAIRS] + \
           [("similarity", list(p)) for p in PAIRS] + [("peft", t) for t in TEXTS]
    with ThreadPoolExecutor(len(asks)) as pool:  # arrive together: they share batches
        answers = list(pool.map(lambda a: server.post("/predict", {"adapter": a[0], "inputs": a[1]}), asks))
    assert all(status == 200 for status, _ in answers), answers
    for name, inputs in (("sentiment", TEXTS), ("nli", PAIRS), ("similarity", PAIRS), ("peft", TEXTS)):
        alone = predict(made[name], list(inputs), settings=FP32, progress=False)
        got = [a for (n, _), (_, a) in zip(asks, answers) if n == name]
        if alone.scores is not None:  # regression: its score
            np.testing.assert_allclose([a[0]["score"] for a in got], alone.scores, atol=1e-4)
            assert all(a[0]["label"] == "score" for a in got)
        else:
            np.testing.assert_allclose([probabilities(a, alone.classes) for a in got], alone.probabilities, atol=1e-4)
            assert [a[0]["label"] for a in got] == alone.labels  # most likely first, as TEI answers
    # The adapters did share forward passes.
    metrics = server.get("/metrics")[1]
    one = float(re.search(r'loralab_batch_adapters_bucket\{le="1.0"\} (\S+)', metrics).group(1))
    total = float(re.search(r"loralab_batch_adapters_count (\S+)", metrics).group(1))
    assert total > one, metrics

    # A batch in one request, TEI's shape: a list of answers, one per text.
    status, batch = server.post("/predict", {"adapter": "nli", "inputs": [list(p) for p in PAIRS]})
    assert status == 200 and len(batch) == len(PAIRS) and all(len(a) == 3 for a in batch)
    status, raw = server.post("/predict", {"adapter": "sentiment", "inputs": TEXTS[0], "raw_scores": True})
    logits = np.array(probabilities(raw, ["negative", "positive"]))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, probabilities(answers[0][1], ["negative", "positive"]), atol=1e-5)


def test_the_adapters_layers_change_the_answer(adapters):
    # The equality above would hold for an adapter whose layers did nothing but whose head is its own.
    from loralab.api import load_trained
    from loralab.predict import predict_texts
    from loralab.surgery import lora_layers

    _, made = adapters
    model, tokenizer = load_trained(made["sentiment"])
    for layer in lora_layers(model).values():
        layer.B.data.zero_()
    head_alone = predict_texts(model, tokenizer, TEXTS, FP32)
    assert np.abs(head_alone - predict(made["sentiment"], TEXTS, settings=FP32, progress=False).probabilities).max() \
        > 0.05


def test_every_route(server, adapters):
    status, listed = server.get("/adapters")
    assert status == 200
    by_name = {a["name"]: a for a in listed["adapters"]}
    assert set(by_name) == {"sentiment", "nli", "similarity", "peft"}
    assert (by_name["peft"]["method"], by_name["peft"]["rank"], by_name["peft"]["pairs"]) == ("lora", 2, None)
    assert (by_name["nli"]["method"], by_name["nli"]["labels"], by_name["nli"]["pairs"]) == \
        ("dora", ["entailment", "neutral", "contradiction"], True)
    assert (by_name["similarity"]["method"], by_name["similarity"]["task"]) == ("vera", "regression")
    assert by_name["sentiment"]["rank"] == 4 and by_name["sentiment"]["trainable_params"] > 0
    refused = {r["name"]: r["reason"] for r in listed["refused"]}
    assert "truncated or corrupted" in refused["damaged"]
    assert "pickle" in refused["pickled"]  # nothing from an adapter folder is executed
    assert server.get("/adapters/nli") == (200, by_name["nli"])
    assert server.get("/health") == (200, {"status": "ok", "adapters": 4})
    status, metrics = server.get("/metrics")
    assert status == 200 and "loralab_requests_total" in metrics and "loralab_queue_wait_seconds" in metrics
    status, schema = server.get("/openapi.json")
    assert status == 200 and {"/predict", "/adapters", "/admin/adapters/{name}", "/health"} <= set(schema["paths"])
    status, page = server.get("/")
    assert status == 200 and "<title>loralab serve</title>" in page


@pytest.mark.parametrize("body, status, says", [
    (b'{"adapter": "sentiment", "inputs": ', 422, "not valid JSON"),
    ({"adapter": "sentiment", "inputs": "x", "temperature": 1}, 422, "temperature: no such field"),
    ({"inputs": "a text"}, 422, "adapter: Field required"),
    ({"adapter": "sentiment", "inputs": 3}, 422, "inputs"),
    ({"adapter": "sentiment", "inputs": "   "}, 422, "inputs: an empty text"),
    ({"adapter": "sentiment", "inputs": [["fine"], [""]]}, 422, "inputs[1]: an empty text"),
    ({"adapter": "sentiment", "inputs": []}, 422, "inputs: an empty list"),
    ({"adapter": "sentiment", "inputs": ["a", "b", "c"]}, 422, "a list of 3 texts"),
    ({"adapter": "sentiment", "inputs": "x" * 301}, 413, "a text of 301 characters; at most 300"),
    ({"adapter": "sentiment", "inputs": [["x"]] * 9}, 413, "9 texts; a request holds at most 8"),
    ({"adapter": "sentiment", "inputs": ["first", "second"]}, 422, "reads single texts"),
    ({"adapter": "nli", "inputs": "one text"}, 422, "reads pairs"),
    ({"adapter": "nope", "inputs": "x"}, 404, "unknown adapter 'nope'; served: nli, peft, sentiment, similarity"),
])
def test_bad_input_gets_a_4xx_naming_the_field(server, body, status, says):
    raw = body if isinstance(body, bytes) else None
    got, answer = server.post("/predict", None if raw else body, raw=raw)
    assert got == status, answer
    assert says in answer["error"], answer
    assert server.post("/predict", {"adapter": "sentiment", "inputs": "still serving"})[0] == 200


def test_load_and_unload_under_traffic_fail_no_other_request(server, adapters, tiny_model_dir):
    folder, _ = adapters
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert server.request("POST", "/admin/adapters/extra")[0] == 401
    assert server.request("POST", "/admin/adapters/extra", headers={"Authorization": "Bearer wrong"})[0] == 401
    make_adapter(tiny_model_dir, folder / "extra", "ia3", ("a", "b", "c", "d"), seed=7)
    failures, done = [], threading.Event()

    def traffic():
        while not done.is_set():
            for name, inputs in (("sentiment", TEXTS[0]), ("nli", list(PAIRS[0]))):
                status, answer = server.post("/predict", {"adapter": name, "inputs": inputs})
                if status != 200:
                    failures.append((status, answer))

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        for _ in range(3):
            status, loaded = server.request("POST", "/admin/adapters/extra", headers=auth)[:2]
            assert status == 200 and loaded["method"] == "ia3" and loaded["labels"] == ["a", "b", "c", "d"]
            status, answer = server.post("/predict", {"adapter": "extra", "inputs": TEXTS[1]})
            assert status == 200 and len(answer) == 4
            assert server.request("DELETE", "/admin/adapters/extra", headers=auth)[:2] == (200, {"unloaded": "extra"})
            assert server.post("/predict", {"adapter": "extra", "inputs": TEXTS[1]})[0] == 404
        status, answer = server.request("POST", "/admin/adapters/damaged", headers=auth)[:2]
        assert status == 422 and "truncated or corrupted" in answer["error"]
        assert server.request("POST", "/admin/adapters/missing", headers=auth)[0] == 404
        assert server.request("POST", "/admin/adapters/..%2Fsecrets", headers=auth)[0] in (404, 422)
    finally:
        done.set()
        for w in workers:
            w.join()
    assert failures == []
    alone = predict(folder / "extra", [TEXTS[1]], settings=FP32, progress=False)  # what was served was the adapter
    assert alone.probabilities.shape == (1, 4)


@pytest.mark.slow  # processes of their own, started and signalled: the slow tier
def test_sigterm_drains_the_requests_in_flight_and_admin_is_off_without_a_token(adapters, tiny_model_dir):
    server = Server(adapters[0], tiny_model_dir, "--max-batch", "2")
    try:
        status, answer = server.request("POST", "/admin/adapters/sentiment")[:2]
        assert status == 403 and "LORALAB_SERVE_TOKEN" in answer["error"]
        long_texts = [[" ".join(TEXTS) * 6]] * 100  # 50 passes of 2 rows each: a while on a CPU

        def ask():
            answer = server.post("/predict", {"adapter": "sentiment", "inputs": long_texts})
            return answer, time.monotonic()

        with ThreadPoolExecutor(4) as pool:
            asked = [pool.submit(ask) for _ in range(4)]
            time.sleep(0.3)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in asked]
        assert [status for (status, _), _ in answers] == [200] * 4, answers
        assert all(len(a) == 100 for (_, a), _ in answers)
        assert max(done for _, done in answers) > signalled + 0.1  # answered after the signal: drained
        # Drained, it ends by the signal it was sent, as uvicorn ends (supervisors see a SIGTERM'd process).
        assert server.proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        server.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_the_page_predicts_in_headless_chromium(server, tmp_path):
    url = f"{server.url}/?adapter=sentiment&text=A%20wonderful%20film"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                           url], capture_output=True, text=True, timeout=120)
    assert 'data-predicted="sentiment"' in proc.stdout, proc.stderr[-2000:]
    shown = dict(re.findall(r'data-label="(\w+)" data-score="([0-9.e-]+)"', proc.stdout))
    assert set(shown) == {"negative", "positive"}
    assert float(shown["negative"]) + float(shown["positive"]) == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("mixing", ["segments", "gather"])
def test_both_ways_of_mixing_equal_each_adapters_predict(adapters, tiny_model_dir, tmp_path, mixing):
    # In-process, every method: LoRA, DoRA, VeRA (the three above), IA3 (its feed-forward layers
    # go the segments' way in gather), PiSSA on every linear layer.
    from loralab.serve import MixedModel

    folder, made = adapters
    made = dict(made, ia3=make_adapter(tiny_model_dir, tmp_path / "ia3", "ia3", seed=4),
                pissa=make_adapter(tiny_model_dir, tmp_path / "pissa", "pissa", ("a", "b", "c", "d"), seed=5,
                                   targets="all-linear"))
    mixed = MixedModel(tiny_model_dir, FP32, mixing)
    for name, path in made.items():
        mixed.add(mixed.read(name, path))
    asks = [(n, t) for i in range(4) for n, t in
            [(n, PAIRS[i] if n in ("nli", "similarity") else TEXTS[i]) for n in made]]
    got = mixed.logits([(n, mixed.encode(t)) for n, t in asks])
    for name, path in made.items():
        alone = predict(path, [t for n, t in asks if n == name], settings=FP32, progress=False)
        mine = np.stack([g for (n, _), g in zip(asks, got) if n == name])
        if alone.scores is not None:
            np.testing.assert_allclose(mine[:, 0], alone.scores, atol=1e-4)
        else:
            e = np.exp(mine - mine.max(1, keepdims=True))
            np.testing.assert_allclose(e / e.sum(1, keepdims=True), alone.probabilities, atol=1e-4)
