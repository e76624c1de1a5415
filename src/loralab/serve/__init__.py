"""`loralab serve`: many task adapters on one base model behind one HTTP server, requests
for different adapters computed in one batch (`loralab.serve.mixed`), the server itself in
`loralab.serve.app` (FastAPI, uvicorn, the Prometheus client: the `serve` extra)."""

from .mixed import MixedModel, Served

__all__ = ["MixedModel", "Served"]
