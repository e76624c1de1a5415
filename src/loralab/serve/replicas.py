"""`loralab serve --replicas N`: the same server as replicas on Ray Serve, past one machine.

Each replica holds the base model once and up to `adapters_per_replica` adapters, loaded on
first use and dropped least recently used first: Ray Serve's model multiplexing
(`serve.multiplexed`) routes each request to a replica that holds its adapter, named by the
request's `serve_multiplexed_model_id` header (or, without it, by its body's `adapter`, on
any replica). Within a replica, requests for any of its adapters share each batch
(`serve.batch` into `MixedModel.logits`), as in the single server. The request and answer
are the single server's `/predict` (text-embeddings-inference's shapes), at the route `/`
of Ray Serve's proxy, with `X-Loralab-Replica` and `X-Loralab-Node` saying which replica
answered, on which node.

    loralab serve ADAPTERS_DIR --replicas 2 --address auto    # a Ray cluster already started
"""

import asyncio
import json
import logging
from pathlib import Path

from ..config import ServeConfig
from ..errors import LoralabError
from ..settings import TrainSettings
from .app import NAME, Rejected, _answer, _check_texts, _parse_inputs
from .mixed import MixedModel, Served

logger = logging.getLogger("loralab")

MODEL_ID_HEADER = "serve_multiplexed_model_id"  # Ray Serve's routing header


class _Held:
    """An adapter a replica holds for Ray Serve's multiplexing. Dropped (`__del__`, called by
    Ray's eviction), it leaves the model once no request of its own is in flight, in the
    replica's event loop, between batches."""

    def __init__(self, mixed: MixedModel, served: Served, loop: asyncio.AbstractEventLoop):
        self.mixed, self.served, self.loop = mixed, served, loop
        self.users, self.dropped = 0, False

    def release(self) -> None:
        self.users -= 1
        self._leave_if_unused()

    def _leave_if_unused(self) -> None:
        if self.dropped and self.users == 0 and self.mixed.adapters.get(self.served.name) is self.served:
            self.mixed.remove(self.served.name)

    def __del__(self):
        if not self.dropped:
            self.dropped = True
            self.loop.call_soon_threadsafe(self._leave_if_unused)


def application(adapters_dir: str | Path, model: str, settings: ServeConfig, train: TrainSettings):
    """A Ray Serve application of `settings.replicas` replicas serving `adapters_dir` on `model`."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    folder = Path(adapters_dir)

    @serve.deployment(name="loralab", num_replicas=settings.replicas, max_ongoing_requests=settings.max_batch,
                      ray_actor_options={"num_cpus": settings.replica_cpus})
    class Replica:
        def __init__(self):
            import torch

            torch.set_num_threads(max(1, int(settings.replica_cpus)))
            self.mixed = MixedModel(model, train, settings.mixing)
            self.name = serve.get_replica_context().replica_id.unique_id
            self.node = ray.get_runtime_context().get_node_id()

        @serve.multiplexed(max_num_models_per_replica=settings.adapters_per_replica)
        async def adapter(self, name: str) -> _Held:
            loop = asyncio.get_running_loop()
            served = await loop.run_in_executor(None, self.mixed.read, name, folder / name)
            self.mixed.add(served)  # in the event loop: between batches
            return _Held(self.mixed, served, loop)

        @serve.batch(max_batch_size=settings.max_batch, batch_wait_timeout_s=settings.max_wait_ms / 1000)
        async def rows(self, rows: list) -> list:
            return self.mixed.logits(rows)

        async def __call__(self, request: Request):
            try:
                body = json.loads(await request.body())
                if not isinstance(body, dict):
                    raise Rejected(422, "the body must be a JSON object with adapter and inputs")
                name = serve.get_multiplexed_model_id() or body.get("adapter")
                if not isinstance(name, str) or not NAME.match(name):
                    raise Rejected(422, f"adapter: {name!r} is no adapter's name (send it in the body or the "
                                        f"{MODEL_ID_HEADER} header)")
                if not (folder / name / "adapter_config.json").exists():
                    raise Rejected(404, f"unknown adapter {name!r}: no such folder in {folder}", "NotFound")
                try:
                    held = await self.adapter(name)
                except LoralabError as err:
                    raise Rejected(422, f"adapter {name!r} refused: {err}") from err
                held.users += 1
                try:
                    texts, batched = _parse_inputs(body.get("inputs"))
                    _check_texts(texts, held.served, settings)
                    values = await asyncio.gather(*(self.rows((name, self.mixed.encode(t))) for t in texts))
                finally:
                    held.release()
            except json.JSONDecodeError as err:
                return JSONResponse({"error": f"the body is not valid JSON: {err}", "error_type": "Validation"}, 422)
            except Rejected as err:
                return JSONResponse({"error": err.message, "error_type": err.kind}, err.status)
            answers = [_answer(v, held.served, bool(body.get("raw_scores"))) for v in values]
            return JSONResponse(answers if batched else answers[0],
                                headers={"X-Loralab-Adapter": name, "X-Loralab-Replica": self.name,
                                         "X-Loralab-Node": self.node})

    return Replica.bind()


def serve_replicas(adapters_dir: str | Path, model: str, settings: ServeConfig, train: TrainSettings,
                   address: str = "") -> None:
    """Run the application on the Ray cluster at `address` ("" = one started here) until interrupted."""
    import time

    import ray
    from ray import serve

    ray.init(address=address or None, logging_level=logging.WARNING)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(adapters_dir, model, settings, train), name="loralab", route_prefix="/")
    logger.warning("loralab serve: %d replica(s) on Ray Serve at http://%s:%d (adapters from %s)", settings.replicas,
                   settings.host, settings.port, adapters_dir)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
