"""The daemon's /metrics (Prometheus), /healthz and /readyz, on a loopback port.

/healthz is liveness: it answers 200 while the process serves, because a restart
cures nothing else. /readyz (and its alias /health) is whether the daemon does its
job: 503, with a JSON body naming each reason and the command that unsticks it,
when the store cannot be written or a condition that blocks readiness is found
(see `syncengine.health`); 200 with the same body when all is well. The web
server and Prometheus are imported only when `metrics:` is configured, so no other
command pays for loading them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from connectors.kit.http import observers
from state import Store
from state.models import utcnow
from syncengine.config import Config
from syncengine.health import readiness
from syncengine.logs import get_logger

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from syncengine.metrics import Metrics

LIVE = {
    "ok": True,
    "live": True,
    "note": "liveness only: this process serves; /readyz says whether it does its job",
}


def build_app(
    store: Store,
    config: Config | Callable[[], Config],
    metrics: Metrics,
    started: datetime,
    pipelines: Collection[str] | None = None,
) -> Starlette:
    """`pipelines`: those this daemon runs (None: every pipeline of `config`), the
    ones its readiness answers for. `config` may be a getter: the daemon's live
    configuration, so readiness judges by what a SIGHUP reload applied."""
    current = config if callable(config) else (lambda: config)
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client.exposition import generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def metrics_endpoint(request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse(LIVE | {"checked_at": utcnow().isoformat()})

    async def readyz(request: Request) -> Response:
        ok, body = await asyncio.to_thread(
            readiness, store, current(), started, pipelines=pipelines
        )
        return JSONResponse(body, status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/health", readyz, methods=["GET"]),
        ]
    )


class ObservabilityError(Exception):
    """The metrics port cannot be used; the message names the setting."""


@contextlib.contextmanager
def serve_observability(
    store: Store, config: Config, only: str | None = None, live: Callable[[], Config] | None = None
) -> Iterator[Metrics | None]:
    """Serve /metrics, /healthz and /readyz while the daemon runs (nothing when not
    configured); `only` is the one pipeline a `run -p` daemon runs, `live` gives the
    configuration in force (a reload changes it; the metrics port is not reloaded).

    The server runs in its own thread so it never takes the daemon's signals.
    """
    if config.metrics is None:
        yield None
        return
    # The web server and Prometheus are loaded only here, where a daemon serves them.
    from connectors.kit.serving import RunningServer
    from syncengine.metrics import Metrics

    settings = config.metrics
    metrics = Metrics(store, config.health.stall_after)
    app = build_app(store, live or config, metrics, utcnow(), None if only is None else [only])
    try:
        server = RunningServer(app, settings.host, settings.port).start()
    except (RuntimeError, OSError):
        raise ObservabilityError(
            f"{config.path}: metrics: cannot listen on {settings.host}:{settings.port} "
            "(in use?); change metrics.port"
        ) from None
    observers.append(metrics.record_request)
    get_logger("syncengine.observe").info("metrics_listening", url=f"{server.url}/metrics")
    try:
        yield metrics
    finally:
        observers.remove(metrics.record_request)
        server.stop()
