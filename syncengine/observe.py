"""The daemon's /metrics (Prometheus) and /healthz, on a loopback port.

Counters move as runs report; gauges are read from the store at scrape
time, so they are right even after a restart. /healthz fails when the
store cannot be written or a pipeline has gone too long without a good run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.emulator_kit import RunningServer
from connectors.http import observers
from state import Store
from state.models import utcnow
from syncengine.config import Config
from syncengine.daemon import job_wait_for
from syncengine.engine import RunReport
from syncengine.logs import get_logger

CRON_PERIOD = 3600.0


class StoreCollector(Collector):
    """Gauges computed from the store on each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        deliveries = GaugeMetricFamily(
            "syncengine_deliveries", "Deliveries by status", labels=["pipeline", "target", "status"]
        )
        for counts in self.store.delivery_counts():
            for status, count in counts.counts.items():
                deliveries.add_metric([counts.pipeline, counts.target, status], count)
        yield deliveries
        jobs = GaugeMetricFamily(
            "syncengine_jobs_open", "Open asynchronous jobs", labels=["pipeline", "target"]
        )
        open_jobs: dict[tuple[str, str], int] = {}
        for job in self.store.jobs(open_only=True):
            open_jobs[(job.pipeline, job.target)] = open_jobs.get((job.pipeline, job.target), 0) + 1
        for (pipeline, target), count in open_jobs.items():
            jobs.add_metric([pipeline, target], count)
        yield jobs
        age = GaugeMetricFamily(
            "syncengine_cursor_age_seconds",
            "Seconds since a stream's cursor last advanced",
            labels=["pipeline", "stream"],
        )
        now = utcnow()
        for cursor in self.store.cursors():
            if cursor.last_success_at is not None:
                age.add_metric(
                    [cursor.pipeline, cursor.stream], (now - cursor.last_success_at).total_seconds()
                )
        yield age


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.pulled = Counter(
            "syncengine_deletions_pulled",
            "Deletions journaled",
            ["pipeline"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            "syncengine_delivery_outcomes",
            "Delivery outcomes recorded",
            ["pipeline", "target", "outcome"],
            registry=self.registry,
        )
        self.runs = Counter(
            "syncengine_runs",
            "Pipeline runs by outcome",
            ["pipeline", "outcome"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "syncengine_http_request_seconds",
            "Requests to external systems",
            ["connection", "method", "status"],
            registry=self.registry,
        )
        self.registry.register(StoreCollector(store))

    def record_run(self, report: RunReport) -> None:
        self.runs.labels(report.pipeline, report.outcome.value).inc()
        self.pulled.labels(report.pipeline).inc(report.pull.pulled)
        for target, push in report.targets.items():
            for outcome, count in (
                ("done", push.done),
                ("retried", push.retried),
                ("dead", push.dead),
            ):
                self.outcomes.labels(report.pipeline, target, outcome).inc(count)

    def record_request(self, connection: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(connection, method, str(status)).observe(seconds)


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
    settings = config.metrics
    metrics = Metrics(store)
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
