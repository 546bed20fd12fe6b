"""Prometheus metrics: the daemon's /metrics, and the file `run --once --metrics-file` writes.

Counters and the lag histogram move as runs report; gauges are read from the store at
scrape time, so they are right even after a restart. Imported only where metrics are
asked for: prometheus_client is not needed by any other command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    write_to_textfile,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from state import LAG_BOUNDS, DeliveryStatus, LagCounts, Store
from state.models import utcnow
from syncengine.engine import RunReport
from syncengine.logs import get_logger

LAG = "syncengine_propagation_lag_seconds"


def lease_labels(pipeline: str, owner: str, epoch: int) -> list[str]:
    """`pipeline, host, pid, epoch` of a lease whose owner is `host:pid:nonce:boot:pidns`
    (an owner of another shape is shown whole as the host)."""
    parts = owner.split(":")
    host, pid = (parts[0], parts[1]) if len(parts) == 5 else (owner, "")
    return [pipeline, host, pid, str(epoch)]


class StoreCollector(Collector):
    """Gauges computed from the store on each scrape."""

    def __init__(self, store: Store, stall_after: float) -> None:
        self.store = store
        self.stall_after = stall_after

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        deliveries = GaugeMetricFamily(
            "syncengine_deliveries",
            "Deliveries by status; every status of a target is shown, 0 included, so "
            'status="held" and status="dead" are the held and dead counts',
            labels=["pipeline", "target", "status"],
        )
        targets: list[tuple[str, str]] = []
        for counts in self.store.delivery_counts():
            targets.append((counts.pipeline, counts.target))
            for status in DeliveryStatus:
                deliveries.add_metric(
                    [counts.pipeline, counts.target, status.value], counts.counts.get(status, 0)
                )
        yield deliveries
        yield from self._queue_ages(targets, now)
        yield self._stalled(now)
        yield self._lease_holders()
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
        for cursor in self.store.cursors():
            if cursor.last_success_at is not None:
                age.add_metric(
                    [cursor.pipeline, cursor.stream], (now - cursor.last_success_at).total_seconds()
                )
        yield age

    def _queue_ages(self, targets: Iterable[tuple[str, str]], now: datetime) -> Iterator[Metric]:
        """0 for a target with nothing waiting, so an alert on `> SLO` sees the series
        and a recovery, rather than a series that vanished."""
        pending = GaugeMetricFamily(
            "syncengine_oldest_pending_age_seconds",
            "Seconds since the oldest delivery still to be done (pending, failed, in "
            "flight) was journaled; 0 when none waits",
            labels=["pipeline", "target"],
        )
        held = GaugeMetricFamily(
            "syncengine_oldest_held_age_seconds",
            "Seconds the oldest delivery held by a guard has waited for an operator; "
            "0 when none is held",
            labels=["pipeline", "target"],
        )
        ages = {(a.pipeline, a.target): a for a in self.store.queue_ages()}
        for key in targets:
            found = ages.get(key)
            waiting = found.oldest_waiting if found is not None else None
            oldest_held = found.oldest_held if found is not None else None
            pending.add_metric(list(key), _seconds_since(now, waiting))
            held.add_metric(list(key), _seconds_since(now, oldest_held))
        yield pending
        yield held

    def _stalled(self, now: datetime) -> Metric:
        stalled = GaugeMetricFamily(
            "syncengine_target_stalled",
            "1 when every send to the target has failed for longer than health.stall_after",
            labels=["pipeline", "target"],
        )
        for health in self.store.target_health():
            failing = _seconds_since(now, health.failing_since)
            stalled.add_metric(
                [health.pipeline, health.target],
                1.0 if health.failing_since is not None and failing > self.stall_after else 0.0,
            )
        return stalled

    def _lease_holders(self) -> Metric:
        holders = GaugeMetricFamily(
            "syncengine_lease_holder",
            "1 per pipeline lease held now, naming the process that holds it",
            labels=["pipeline", "host", "pid", "epoch"],
        )
        for lease in self.store.leases():
            holders.add_metric(lease_labels(lease.pipeline, lease.owner, lease.epoch), 1.0)
        return holders


def _seconds_since(now: datetime, then: datetime | None) -> float:
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


class LagHistogram(Collector):
    """The propagation lag, from the bucket counts the runs report: a run adds its
    counts whole (a backfill of a million is one addition, not a million observations)."""

    def __init__(self) -> None:
        self._lags: dict[tuple[str, str], LagCounts] = {}
        self._lock = threading.Lock()

    def add(self, pipeline: str, target: str, lag: LagCounts) -> None:
        with self._lock:
            self._lags.setdefault((pipeline, target), LagCounts()).add(lag)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            LAG,
            "Seconds from a deletion's journaling to its target's done, per delivery",
            labels=["pipeline", "target"],
        )
        with self._lock:
            lags = [(key, list(lag.buckets), lag.seconds) for key, lag in self._lags.items()]
        for (pipeline, target), buckets, seconds in sorted(lags):
            cumulative, running = [], 0
            for bound, count in zip((*map(_le, LAG_BOUNDS), "+Inf"), buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric([pipeline, target], cumulative, seconds)
        yield family


def _le(bound: float) -> str:
    return f"{float(bound)}"


class Metrics:
    def __init__(self, store: Store, stall_after: float = 900.0) -> None:
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
        self.failures = Counter(
            "syncengine_send_failures",
            "Deliveries whose send failed, by class of reason",
            ["pipeline", "target", "reason"],
            registry=self.registry,
        )
        self.last_run = Gauge(
            "syncengine_last_run_timestamp_seconds",
            "When the pipeline's last run ended (Unix time)",
            ["pipeline"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "syncengine_last_run_success",
            "1 when the pipeline's last run succeeded (as run --once's exit code says), else 0",
            ["pipeline"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "syncengine_http_request_seconds",
            "Requests to external systems",
            ["connection", "method", "status"],
            registry=self.registry,
        )
        self.lag = LagHistogram()
        self.registry.register(self.lag)
        self.registry.register(StoreCollector(store, stall_after))

    def record_run(self, report: RunReport, ok: bool | None = None) -> None:
        """`ok`: whether the run succeeded, when the caller judges it (run --once, by
        its exit code); else a run that neither failed nor was cancelled."""
        self.runs.labels(report.pipeline, report.outcome.value).inc()
        self.pulled.labels(report.pipeline).inc(report.pull.pulled)
        for target, push in report.targets.items():
            for outcome, count in (
                ("done", push.done),
                ("retried", push.retried),
                ("dead", push.dead),
            ):
                self.outcomes.labels(report.pipeline, target, outcome).inc(count)
            for reason, count in push.failures.items():
                self.failures.labels(report.pipeline, target, reason).inc(count)
            self.lag.add(report.pipeline, target, push.lag)
        if ok is None:
            ok = not report.failed and not report.cancelled
        self.last_run.labels(report.pipeline).set(time.time())
        self.last_success.labels(report.pipeline).set(1.0 if ok else 0.0)

    def record_request(self, connection: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(connection, method, str(status)).observe(seconds)

    def resume(self, text: str) -> None:
        """Carry on from the file an earlier run wrote: its counters, lag histogram and
        other pipelines' last runs, so each cron run adds to them (rate() and increase()
        work across runs) instead of starting again from zero."""
        counters = {"syncengine_" + c: getattr(self, a) for c, a in _COUNTERS}
        gauges = {g: getattr(self, a) for g, a in _LAST_RUN}
        lags: dict[tuple[str, str], dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if family.name in counters and sample.name.endswith("_total"):
                    counters[family.name].labels(**sample.labels).inc(sample.value)
                elif family.name in gauges:
                    gauges[family.name].labels(**sample.labels).set(sample.value)
                elif family.name == LAG:
                    key = (sample.labels.get("pipeline", ""), sample.labels.get("target", ""))
                    suffix = sample.name.removeprefix(LAG)
                    name = sample.labels.get("le", "") if suffix == "_bucket" else suffix
                    lags.setdefault(key, {})[name] = sample.value
        for (pipeline, target), found in lags.items():
            lag = _lag_counts(found)
            if lag is not None:
                self.lag.add(pipeline, target, lag)


_COUNTERS = (
    ("deletions_pulled", "pulled"),
    ("delivery_outcomes", "outcomes"),
    ("runs", "runs"),
    ("send_failures", "failures"),
)
_LAST_RUN = (
    ("syncengine_last_run_timestamp_seconds", "last_run"),
    ("syncengine_last_run_success", "last_success"),
)


def _lag_counts(found: dict[str, float]) -> LagCounts | None:
    """Bucket counts back from a histogram's cumulative samples; None when its buckets
    are not this version's (its counts cannot be carried on)."""
    bounds = [*map(_le, LAG_BOUNDS), "+Inf"]
    if any(bound not in found for bound in bounds):
        return None
    lag, below = LagCounts(), 0
    for index, bound in enumerate(bounds):
        cumulative = int(found[bound])
        lag.buckets[index] = max(0, cumulative - below)
        below = cumulative
    lag.seconds = found.get("_sum", 0.0)
    return lag


def write_run_file(
    path: Path,
    store: Store,
    reports: Sequence[RunReport],
    ok: dict[str, bool],
    stall_after: float,
) -> None:
    """The metrics of `run --once` in the text format, for node_exporter's textfile
    collector: written whole to a temporary file then renamed, so the collector never
    reads half a file. Counters carry on from the file the previous run left, so
    their `_created` samples (this process's start) would be false: left out."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
    metrics = Metrics(store, stall_after)
    try:
        metrics.resume(path.read_text())
    except FileNotFoundError:
        pass
    except ValueError as exc:  # not a metrics file: start again from zero, and say so
        get_logger("syncengine.metrics").warning(
            "metrics_file_unreadable", path=str(path), error=str(exc), counters="from zero"
        )
    for report in reports:
        metrics.record_run(report, ok=ok.get(report.pipeline))
    write_to_textfile(str(path), metrics.registry)
