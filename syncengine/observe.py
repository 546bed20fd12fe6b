"""The daemon's /metrics (Prometheus) and /healthz, on a loopback port.

/healthz fails when the store cannot be written or a pipeline has gone too
long without a good run. The web server and Prometheus are imported only
when `metrics:` is configured, so no other command pays for loading them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from connectors.kit.http import observers
from state import Store
from state.models import utcnow
from syncengine.config import Config
from syncengine.daemon import job_wait_for
from syncengine.logs import get_logger

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from syncengine.metrics import Metrics

CRON_PERIOD = 3600.0


def period_of(config: Config, pipeline: str) -> float:
    schedule = config.pipelines[pipeline].schedule
    return schedule.every if schedule.every is not None else CRON_PERIOD


def health(store: Store, config: Config, started: datetime) -> tuple[bool, dict[str, object]]:
    problems: list[str] = []
    try:
        store.check_writable()
    except Exception as exc:
        problems.append(f"store not writable: {type(exc).__name__}")
    assert config.metrics is not None
    now = utcnow()
    for name, pipe in config.pipelines.items():
        if not pipe.enabled:
            continue
        allowed = config.metrics.stale_after_periods * period_of(config, name) + job_wait_for(
            pipe.schedule
        )
        last = store.last_good_run_at(name)
        since = max(last, started) if last is not None else started
        if (now - since).total_seconds() > allowed:
            problems.append(
                f"pipeline {name}: no good run for {int((now - since).total_seconds())}s"
            )
    return not problems, {"ok": not problems, "problems": problems}


def build_app(store: Store, config: Config, metrics: Metrics, started: datetime) -> Starlette:
    from prometheus_client import CONTENT_TYPE_LATEST
    from prometheus_client.exposition import generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def metrics_endpoint(request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        ok, body = await asyncio.to_thread(health, store, config, started)
        return JSONResponse(body, status_code=200 if ok else 503)

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


class ObservabilityError(Exception):
    """The metrics port cannot be used; the message names the setting."""


@contextlib.contextmanager
def serve_observability(store: Store, config: Config) -> Iterator[Metrics | None]:
    """Serve /metrics and /healthz while the daemon runs (nothing when not configured).

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
    app = build_app(store, config, metrics, utcnow())
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
