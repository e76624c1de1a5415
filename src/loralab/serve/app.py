"""The HTTP server of `loralab serve` (FastAPI, run by uvicorn; metrics by the Prometheus client).

    POST   /predict                  {"adapter": NAME, "inputs": ...}: text-embeddings-inference's /predict,
                                     plus the adapter's name
    GET    /adapters                 every adapter served, with its metadata; folders refused, with why
    GET    /adapters/{name}          one adapter
    POST   /admin/adapters/{name}    load (or reload) ADAPTERS_DIR/NAME     } a bearer token, and only where
    DELETE /admin/adapters/{name}    stop serving it                        } LORALAB_SERVE_TOKEN is set
    GET    /health, /metrics, /      liveness, Prometheus' text format, a page to try the adapters

Requests wait in one queue. A batcher takes what has arrived (up to `max_batch` rows, waiting
at most `max_wait_ms` for the first batch to fill, and whatever else is queued), sorts it
longest first as `loralab predict` batches, and runs each batch through the model in one
thread (`MixedModel.logits`): rows of different adapters share every batch. Adapters are
read in another thread and put in between batches, so loading or unloading one never fails a
request for another. Nothing from an adapter folder is executed: weights are read from
safetensors only, the tokenizer is the base model's.
"""


import asyncio
import gc
import hmac
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..config import ServeConfig
from ..errors import LoralabError
from .mixed import MixedModel, Served

logger = logging.getLogger("loralab")

TOKEN_ENV = "LORALAB_SERVE_TOKEN"  # the admin routes' bearer token; unset: the routes are off
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # an adapter's name: a folder name, no path


def adapter_folders(directory: Path) -> dict[str, Path]:
    """The adapter folders directly under `directory`, by name (a folder with adapter_config.json)."""
    return {p.name: p for p in sorted(directory.iterdir())
            if p.is_dir() and NAME.match(p.name) and (p / "adapter_config.json").exists()}


def _freeze() -> None:
    """Keep the model's and the adapters' Python objects out of the garbage collector's passes
    (`gc.freeze`): with 100 adapters their module trees are tens of thousands of objects, which
    every full collection walked while requests allocate."""
    gc.collect()
    gc.freeze()


class Rejected(Exception):
    """A request refused, with its HTTP status and message (TEI's error body)."""

    def __init__(self, status: int, message: str, kind: str = "Validation"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class _Row:
    adapter: str
    features: dict
    length: int
    queued: float
    future: asyncio.Future = field(repr=False)


class Engine:
    """The model, its adapters, the queue and the batcher: everything but HTTP."""

    def __init__(self, mixed: MixedModel, adapters_dir: Path, settings: ServeConfig, metrics):
        self.mixed = mixed
        self.dir = adapters_dir
        self.settings = settings
        self.metrics = metrics
        self.refused: dict[str, str] = {}
        self.queue: asyncio.Queue[_Row] | None = None
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="loralab-model")
        self.load_thread = ThreadPoolExecutor(1, thread_name_prefix="loralab-load")
        self._task: asyncio.Task | None = None

    # adapters ----------------------------------------------------------------------------

    def load_all(self) -> None:
        """Every adapter folder under the directory; a damaged one is refused with its reason
        (logged, listed by GET /adapters), the others are served."""
        for name, folder in adapter_folders(self.dir).items():
            try:
                self.mixed.add(self.mixed.read(name, folder))
            except LoralabError as err:
                self.refused[name] = str(err)
                logger.warning("adapter %s refused: %s", name, err)
        self.metrics.adapters.set(len(self.mixed.adapters))
        _freeze()

    async def load(self, name: str) -> Served:
        folder = self.dir / name
        if not folder.is_dir():
            raise Rejected(404, f"no adapter folder {name!r} in {self.dir}", "NotFound")
        loop = asyncio.get_running_loop()
        try:
            served = await loop.run_in_executor(self.load_thread, self.mixed.read, name, folder)
        except LoralabError as err:
            self.refused[name] = str(err)
            raise Rejected(422, f"adapter {name!r} refused: {err}") from err
        await loop.run_in_executor(self.model_thread, self.mixed.add, served)
        self.refused.pop(name, None)
        self.metrics.adapters.set(len(self.mixed.adapters))
        _freeze()
        return served

    async def unload(self, name: str) -> None:
        self.served(name)
        await asyncio.get_running_loop().run_in_executor(self.model_thread, self.mixed.remove, name)
        self.metrics.adapters.set(len(self.mixed.adapters))

    def served(self, name: str) -> Served:
        served = self.mixed.adapters.get(name)
        if served is None:
            raise Rejected(404, f"unknown adapter {name!r}; served: {', '.join(sorted(self.mixed.adapters)) or 'none'}",
                           "NotFound")
        return served

    # requests ----------------------------------------------------------------------------

    async def predict(self, adapter: str, texts: list) -> list[np.ndarray]:
        served = self.served(adapter)
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        rows = []
        for text in texts:
            features = self.mixed.encode(text)
            rows.append(_Row(served.name, features, len(features["input_ids"]), now, loop.create_future()))
        for row in rows:
            self.queue.put_nowait(row)
        return await asyncio.gather(*(row.future for row in rows))

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._batcher())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.model_thread.shutdown(wait=True)
        self.load_thread.shutdown(wait=True)

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        limit, wait = self.settings.max_batch, self.settings.max_wait_ms / 1000
        while True:
            rows = [await self.queue.get()]
            deadline = loop.time() + wait
            while len(rows) < limit:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    rows.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            while not self.queue.empty() and len(rows) < 8 * limit:  # what else has arrived meanwhile
                rows.append(self.queue.get_nowait())
            rows.sort(key=lambda r: -r.length)  # longest first: little padding per batch
            for start in range(0, len(rows), limit):
                await self._run(rows[start:start + limit])

    async def _run(self, rows: list[_Row]) -> None:
        live = [r for r in rows if not r.future.done()]  # a client that went away leaves done futures
        gone = [r for r in live if r.adapter not in self.mixed.adapters]
        for r in gone:
            r.future.set_exception(Rejected(404, f"adapter {r.adapter!r} was unloaded", "NotFound"))
        live = [r for r in live if r.adapter in self.mixed.adapters]
        if not live:
            return
        started = time.perf_counter()
        for r in live:
            self.metrics.queue_wait.labels(r.adapter).observe(started - r.queued)
        self.metrics.batch_size.observe(len(live))
        self.metrics.batch_adapters.observe(len({r.adapter for r in live}))
        try:
            values = await asyncio.get_running_loop().run_in_executor(
                self.model_thread, self.mixed.logits, [(r.adapter, r.features) for r in live])
        except KeyError as err:  # unloaded between the check and the pass
            values = [Rejected(404, f"adapter {err.args[0]!r} was unloaded", "NotFound")] * len(live)
        except Exception as err:  # noqa: BLE001 - every request of the batch hears of it
            logger.exception("a batch failed")
            values = [Rejected(500, f"the batch failed: {type(err).__name__}: {err}", "Backend")] * len(live)
        for r, v in zip(live, values):
            if not r.future.done():
                r.future.set_exception(v) if isinstance(v, Exception) else r.future.set_result(v)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        seconds = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
        self.requests = Counter("loralab_requests", "Prediction requests, by adapter and HTTP status",
                                ["adapter", "status"], registry=self.registry)
        self.texts = Counter("loralab_texts", "Texts (or pairs) predicted, by adapter", ["adapter"],
                             registry=self.registry)
        self.latency = Histogram("loralab_request_latency_seconds", "Time from a request's arrival to its answer",
                                 ["adapter"], buckets=seconds, registry=self.registry)
        self.queue_wait = Histogram("loralab_queue_wait_seconds", "Time a text waited in the queue for its batch",
                                    ["adapter"], buckets=seconds, registry=self.registry)
        self.batch_size = Histogram("loralab_batch_size", "Rows per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_adapters = Histogram("loralab_batch_adapters", "Distinct adapters per forward pass",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.adapters = Gauge("loralab_adapters", "Adapters served", registry=self.registry)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(description="the adapter to predict with (GET /adapters lists them)")
    inputs: Union[str, list[str], list[list[str]]] = Field(
        description="a text; a pair [text, text]; or a batch of them [[text], [text, text], ...]")
    raw_scores: bool = Field(False, description="the logits instead of the probabilities")
    truncate: bool = Field(True, description="cut texts longer than the model takes (false: refuse them)")
    truncation_direction: Literal["Right", "right"] = Field("Right", description="where texts are cut")


class Prediction(BaseModel):
    label: str
    score: float


def _parse_inputs(inputs) -> tuple[list, bool]:
    """TEI's `inputs` -> (texts, batched): a string; a pair [a, b]; a batch [[a], [a, b], ...]."""
    if isinstance(inputs, str):
        return [inputs], False
    if not inputs:
        raise Rejected(422, "inputs: an empty list; give a text, a pair [text, text] or a batch [[text], ...]")
    if all(isinstance(x, str) for x in inputs):
        if len(inputs) == 1:
            return [inputs[0]], False
        if len(inputs) == 2:
            return [(inputs[0], inputs[1])], False
        raise Rejected(422, f"inputs: a list of {len(inputs)} texts; a pair is [text, text], a batch "
                            "[[text], [text], ...] (each text in its own list)")
    texts = []
    for i, item in enumerate(inputs):
        if not isinstance(item, list) or not 1 <= len(item) <= 2 or not all(isinstance(x, str) for x in item):
            raise Rejected(422, f"inputs[{i}]: each item of a batch is [text] or [text, text]")
        texts.append(item[0] if len(item) == 1 else (item[0], item[1]))
    return texts, True


def _check_texts(texts: list, served: Served, settings: ServeConfig) -> None:
    if len(texts) > settings.max_texts:
        raise Rejected(413, f"inputs: {len(texts)} texts; a request holds at most {settings.max_texts} "
                            "([serve] max_texts)")
    for i, text in enumerate(texts):
        parts = text if isinstance(text, tuple) else (text,)
        where = f"inputs[{i}]" if len(texts) > 1 else "inputs"
        if any(not p.strip() for p in parts):
            raise Rejected(422, f"{where}: an empty text")
        longest = max(len(p) for p in parts)
        if longest > settings.max_chars:
            raise Rejected(413, f"{where}: a text of {longest:,} characters; at most {settings.max_chars:,} "
                                "([serve] max_chars)")
        if served.pairs is not None and isinstance(text, tuple) != served.pairs:
            wants = "pairs [text, text]" if served.pairs else "single texts"
            raise Rejected(422, f"{where}: adapter {served.name!r} reads {wants}")


def _answer(values: np.ndarray, served: Served, raw: bool) -> list[dict]:
    """TEI's predictions of one text: each class with its probability (or logit, `raw`), most
    likely first; a regression head's one score."""
    if served.task == "regression":
        return [{"label": served.labels[0], "score": float(values[0])}]
    scores = values if raw else np.exp(values - values.max()) / np.exp(values - values.max()).sum()
    return sorted(({"label": label, "score": float(s)} for label, s in zip(served.labels, scores)),
                  key=lambda p: -p["score"])


def create_app(adapters_dir: str | Path, model: str = "minilm", settings: ServeConfig | None = None,
               train=None, token: str | None = None):
    """The FastAPI app serving every adapter folder under `adapters_dir` on base `model`.

    Args:
        settings: the [serve] table (batching, request limits, mixing).
        train: a `TrainSettings` for precision, device and the longest input.
        token: the admin routes' bearer token (default: $LORALAB_SERVE_TOKEN); none: the
            routes answer 403.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from ..version import __version__

    settings = settings or ServeConfig()
    adapters_dir = Path(adapters_dir)
    if not adapters_dir.is_dir():
        raise LoralabError(f"{adapters_dir}: no such folder of adapters.")
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    metrics = Metrics()
    engine = Engine(MixedModel(model, train, settings.mixing), adapters_dir, settings, metrics)
    engine.load_all()

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="loralab serve", version=__version__, lifespan=lifespan,
                  description="Many task adapters on one base model; requests for different adapters share "
                              "each batch. `/predict` speaks text-embeddings-inference's `/predict`, plus "
                              "the adapter's name.")
    app.state.engine = engine

    def error(status: int, message: str, kind: str = "Validation") -> JSONResponse:
        return JSONResponse({"error": message, "error_type": kind}, status_code=status)

    @app.exception_handler(Rejected)
    async def rejected(request: Request, err: Rejected):
        return error(err.status, err.message, err.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return error(422, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "extra_forbidden":
            return error(422, f"{where}: no such field (fields: adapter, inputs, raw_scores, truncate, "
                              "truncation_direction)")
        return error(422, f"{where}: {first['msg']}")

    @app.post("/predict", response_model=Union[list[Prediction], list[list[Prediction]]],
              summary="Predict with one adapter: a text, a pair, or a batch of them")
    async def predict(body: PredictRequest, response: Response):
        arrived = time.perf_counter()
        status = 200
        try:
            served = engine.served(body.adapter)
            texts, batched = _parse_inputs(body.inputs)
            _check_texts(texts, served, settings)
            if not body.truncate:
                for i, text in enumerate(texts):
                    n = len(engine.mixed.tokenizer(*(text if isinstance(text, tuple) else (text,)))["input_ids"])
                    if n > engine.mixed.max_tokens:
                        raise Rejected(413, f"inputs[{i}]: {n} tokens, the model takes {engine.mixed.max_tokens} "
                                            "(send truncate: true to cut it)")
            values = await engine.predict(served.name, texts)
        except Rejected as err:
            status = err.status
            raise
        finally:
            metrics.requests.labels(body.adapter if body.adapter in engine.mixed.adapters else "", str(status)).inc()
        metrics.texts.labels(served.name).inc(len(texts))
        metrics.latency.labels(served.name).observe(time.perf_counter() - arrived)
        response.headers["X-Loralab-Adapter"] = served.name
        answers = [_answer(v, served, body.raw_scores) for v in values]
        return answers if batched else answers[0]

    @app.get("/adapters", summary="Every adapter served, with its metadata, and the folders refused")
    async def adapters():
        return {"model": engine.mixed.name, "adapters": [s.describe() for s in engine.mixed.adapters.values()],
                "refused": [{"name": n, "reason": r} for n, r in sorted(engine.refused.items())]}

    @app.get("/adapters/{name}", summary="One adapter's metadata")
    async def adapter(name: str):
        return engine.served(name).describe()

    def admin(request: Request) -> None:
        if token is None:
            raise Rejected(403, f"the admin routes are off: start the server with {TOKEN_ENV} set", "Forbidden")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Rejected(401, "a wrong or missing token: send Authorization: Bearer TOKEN", "Unauthorized")

    def check_name(name: str) -> None:
        if not NAME.match(name):
            raise Rejected(422, f"{name!r}: an adapter's name is a folder name of letters, digits, '.', '_', '-'")

    @app.post("/admin/adapters/{name}", summary="Load (or reload) the adapter folder ADAPTERS_DIR/NAME")
    async def load(name: str, request: Request):
        admin(request)
        check_name(name)
        return (await engine.load(name)).describe()

    @app.delete("/admin/adapters/{name}", summary="Stop serving an adapter")
    async def unload(name: str, request: Request):
        admin(request)
        await engine.unload(name)
        return {"unloaded": name}

    @app.get("/health", summary="200 while the server serves")
    async def health():
        return {"status": "ok", "adapters": len(engine.mixed.adapters)}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        from importlib import resources

        return (resources.files("loralab.serve") / "page.html").read_text("utf-8")

    return app


def serve(adapters_dir: str | Path, model: str = "minilm", settings: ServeConfig | None = None, train=None) -> None:
    """Run the server until SIGINT or SIGTERM; requests in flight get `drain_seconds` to finish."""
    import uvicorn

    settings = settings or ServeConfig()
    app = create_app(adapters_dir, model, settings, train)
    engine = app.state.engine
    logger.warning("loralab serve: %d adapter(s) on %s at http://%s:%d (%d refused)", len(engine.mixed.adapters),
                   engine.mixed.name, settings.host, settings.port, len(engine.refused))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                timeout_graceful_shutdown=settings.drain_seconds)
