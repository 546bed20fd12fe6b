"""The daemon's Prometheus metrics.

Counters move as runs report; gauges are read from the store at scrape time, so
they are right even after a restart. Imported only by a daemon that serves
/metrics: prometheus_client is not needed by any other command.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from state import Store
from state.models import utcnow
from syncengine.engine import RunReport


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
