"""Failures show: each reason falls in one class, a failing target logs a warning once
per interval (not per batch), the run's report counts what did not get through, the
summary exits 1 for a target that had work and got none of it through, and the store
keeps when a target started failing, across runs, until something gets through."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
import pytest
import structlog
from structlog.testing import capture_logs

from connectors.contract import (
    EXACT_KEYS,
    Delivery,
    InFlightCall,
    Outcome,
    RemoteError,
    RetriableError,
    SourceCall,
    SourcePage,
    SourceRecord,
)
from connectors.kit.http import _Limits, _transport_failure, remote_error
from connectors.kit.jobs import JobHandle, JobSpec
from state import RetryRule, Store
from syncengine.api import summarize
from syncengine.engine import failures
from syncengine.engine.failures import FailureLog, classify, log_send_failed
from syncengine.engine.pipeline import RunReport, run_pipeline
from syncengine.engine.stop import StopToken
from syncengine.logs import SECRETS
from tests.unit.fake_runtime import fake_runtime
from tests.unit.test_job_lifecycle import FakeApi, FakeTarget

UNREACHABLE = "erp: POST /deleteitems: cannot connect (ConnectError)"


def transport(exc: Exception) -> str:
    _, why = _transport_failure(exc)
    return f"erp: GET /x: {why}"


def refused(status: int) -> str:
    """The kit's text for an answer its retry loop refused (`HttpClient._once`)."""
    return f"erp: POST /x: HTTP {status}: <html>busy</html>"


async def late() -> str:
    return str(_Limits("erp", "GET /x", 5.0, 1024).late(10))


async def too_large() -> str:
    return str(_Limits("erp", "GET /x", 5.0, 1024).too_large())


def rejected(status: int) -> str:
    response = httpx.Response(status, request=httpx.Request("POST", "http://h/x"))
    return str(remote_error("erp", "POST /x", response, "no such table", code="E12"))


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (transport(httpx.ConnectError("refused")), "unreachable"),
        (transport(httpx.ConnectTimeout("syn")), "unreachable"),
        (transport(httpx.PoolTimeout("pool")), "unreachable"),
        (transport(httpx.ReadTimeout("slow")), "timeout"),
        (transport(httpx.WriteTimeout("slow")), "timeout"),
        (transport(httpx.RemoteProtocolError("eof")), "answer_lost"),
        (transport(httpx.ReadError("reset")), "answer_lost"),
        (transport(httpx.DecodingError("gzip")), "answer_lost"),
        (asyncio.run(late()), "timeout"),
        (asyncio.run(too_large()), "answer_lost"),
        ("erp: GET /x: the answer broke off after 12 bytes (RemoteProtocolError)", "answer_lost"),
        (refused(429), "throttled"),
        (refused(408), "timeout"),
        (refused(500), "server_error"),
        (refused(502), "server_error"),
        (refused(503), "server_error"),
        (refused(504), "timeout"),
        ("mdm: POST /x: HTTP 503 backpressure (errorCode 2001): {}", "throttled"),
        ("goose: delete CON_TRO 1: Goose rate limit (error 50)", "throttled"),
        (rejected(400), "rejected"),
        (rejected(404), "rejected"),
        ("goose: delete CON_TRO 1: Goose error 17 (no such thing)", "rejected"),
        ("target returned no outcome", "answer_lost"),
        ("something nobody foresaw", "other"),
    ],
)
def test_each_reason_of_the_kit_falls_in_its_class(reason: str, expected: str) -> None:
    assert classify(reason) == expected
    assert expected in failures.CLASSES


def test_the_first_failure_is_logged_then_one_per_interval_saying_how_many_were_kept_back() -> None:
    now = [0.0]
    limiter = FailureLog(interval=60.0, clock=lambda: now[0])

    assert limiter.admit("p", "t") == 0
    assert limiter.admit("p", "t") is None
    assert limiter.admit("p", "t") is None
    assert limiter.admit("p", "other") == 0, "each target has its own window"
    now[0] = 60.0
    assert limiter.admit("p", "t") == 2
    assert limiter.admit("p", "t") is None


def test_the_warning_names_the_request_and_never_carries_a_secret() -> None:
    SECRETS.add("s3cr3t-Passw0rd")
    with capture_logs() as logs:
        log_send_failed(
            structlog.get_logger(),
            "p",
            "t",
            reason="erp: GET /token/s3cr3t-Passw0rd: cannot connect (ConnectError)",
            deliveries=3,
            request={"batch_size": 3, "first_key": "K1"},
            limiter=FailureLog(),
        )
    [line] = logs
    assert line["event"] == "send_failed" and line["log_level"] == "warning"
    assert line["failure"] == "unreachable" and line["deliveries"] == 3
    assert line["batch_size"] == 3 and line["first_key"] == "K1"
    assert "s3cr3t-Passw0rd" not in line["reason"] and "cannot connect" in line["reason"]


# --- whole runs, with fake targets -------------------------------------------------------


class Source:
    """Each run reads the records queued for it."""

    def __init__(self) -> None:
        self.queued: list[SourceRecord] = []

    def add(self, *keys: str) -> None:
        self.queued.extend(SourceRecord("T", k, {"K": k}) for k in keys)

    def streams(self) -> Sequence[str]:
        return ["T"]

    def plan(
        self, stream: str, cursor: Any, interrupted: InFlightCall | None, now: datetime
    ) -> SourceCall:
        return SourceCall(stream, {"from": "latest"}, now)

    async def fetch(self, call: SourceCall) -> SourcePage:
        answer, self.queued = self.queued, []
        return SourcePage(answer, cursor={"read": True})

    async def aclose(self) -> None:
        return None


class Target:
    """Answers each batch as `mode` says: raise for the whole batch, or per delivery."""

    key_match = EXACT_KEYS

    def __init__(self, mode: str) -> None:
        self.batch_size = 2
        self.mode = mode

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        if self.mode == "down":
            raise RetriableError(UNREACHABLE, connection="erp")
        if self.mode == "refuses":
            raise RemoteError("erp: POST /x: HTTP 400 E1: bad filter", connection="erp")
        if self.mode == "dead":
            return [Outcome.dead(d.delivery_id, "no key: field 'K' is blank") for d in batch]
        if self.mode == "half":
            return [
                Outcome.done(d.delivery_id)
                if i % 2
                else Outcome.retry(d.delivery_id, "erp: POST /x: HTTP 429: slow down")
                for i, d in enumerate(batch)
            ]
        return [Outcome.done(d.delivery_id) for d in batch]

    async def aclose(self) -> None:
        return None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The process's limiter, fresh and on a clock the test moves."""
    now = [0.0]
    monkeypatch.setattr(failures, "LIMITER", FailureLog(clock=lambda: now[0]))
    return now


def run(store: Store, source: Source, target: Any) -> RunReport:
    pipe = fake_runtime(target, RetryRule(base_delay=0, max_delay=0), source=source)[0]
    return asyncio.run(run_pipeline(store, pipe, StopToken()))


def sent_failed(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in logs if line["event"] == "send_failed"]


def test_a_target_that_is_down_is_counted_logged_once_and_fails_the_summary(
    store: Store, clock: list[float]
) -> None:
    source = Source()
    source.add(*(str(i) for i in range(7)))  # four batches of at most two
    with capture_logs() as logs:
        report = run(store, source, Target("down"))

    push = report.targets["t"]
    assert push.failures == {"unreachable": 7} and push.first_error == UNREACHABLE
    assert push.nothing_through and push.answered == 0
    [warning] = sent_failed(logs)
    assert warning["target"] == "t" and warning["pipeline"] == "p"
    assert warning["batch_size"] == 2 and warning["first_key"] == "0"
    assert warning["suppressed"] == 0 and warning["failure"] == "unreachable"

    summary = summarize([report], store)
    assert summary.exit_code == 1 and not summary.ok
    [target] = summary.pipelines[0].targets
    assert target.failed == 7 and target.failures == {"unreachable": 7}
    assert target.first_error == UNREACHABLE and target.nothing_through
    assert summary.nothing_through() == [
        f"p/t: nothing got through: 7 retry later: unreachable: {UNREACHABLE}"
    ]
    assert summary.as_dict()["pipelines"][0]["targets"][0]["failures"] == {"unreachable": 7}

    clock[0] += failures.INTERVAL
    source.add("7")
    with capture_logs() as logs:
        run(store, source, Target("down"))
    [warning] = sent_failed(logs)
    assert warning["suppressed"] == 3, "the three batches kept back in the first run"


def test_target_health_keeps_failing_since_across_runs_and_clears_it_on_success(
    store: Store, clock: list[float]
) -> None:
    source = Source()
    source.add("1")
    run(store, source, Target("down"))
    [first] = store.target_health("p")
    assert first.failing_since is not None and first.failed_runs == 1
    assert first.last_error == UNREACHABLE

    source.add("2")
    run(store, source, Target("refuses"))
    [second] = store.target_health("p")
    assert second.failing_since == first.failing_since and second.failed_runs == 2
    assert "HTTP 400" in second.last_error

    run(store, source, Target("ok"))  # no new deletion, but the retries are due
    [healed] = store.target_health("p")
    assert healed.failing_since is None and healed.failed_runs == 0
    assert healed.last_ok_at is not None and healed.last_error == ""


def test_a_target_with_nothing_to_send_has_no_news(store: Store, clock: list[float]) -> None:
    report = run(store, Source(), Target("down"))
    assert not report.targets["t"].had_work
    assert store.target_health("p") == []
    assert summarize([report], store).exit_code == 0


def test_dead_verdicts_are_answers_and_part_failures_are_counted_without_failing(
    store: Store, clock: list[float]
) -> None:
    source = Source()
    source.add("1", "2")
    dead = run(store, source, Target("dead")).targets["t"]
    assert dead.dead == 2 and dead.failures == {} and not dead.nothing_through
    [health] = store.target_health("p")
    assert health.failing_since is None, "the target answered: it is reachable"

    source.add("3", "4")
    report = run(store, source, Target("half"))
    half = report.targets["t"]
    assert half.done == 1 and half.failures == {"throttled": 1}
    assert not half.nothing_through
    assert summarize([report], store).exit_code == 0


class DownJobTarget(FakeTarget):
    """A job API that cannot be reached while `api.refuse` is set."""

    async def submit(self, job: JobSpec) -> JobHandle:
        if self.api.refuse:
            raise RetriableError(UNREACHABLE, connection="erp", retry_after=0)
        return await super().submit(job)


def test_a_job_target_refusing_submission_is_reported_the_same_way(
    store: Store, clock: list[float]
) -> None:
    api = FakeApi(refuse=True, refuse_items=frozenset())
    source = Source()
    source.add(*(str(i) for i in range(5)))  # two jobs of at most three
    with capture_logs() as logs:
        report = run(store, source, DownJobTarget(api))

    push = report.targets["t"]
    assert push.failures == {"unreachable": 5} and push.first_error == UNREACHABLE
    assert push.nothing_through
    [warning] = sent_failed(logs)
    assert warning["client_id"] and warning["batch_size"] == 3 and "job" in warning
    assert summarize([report], store).exit_code == 1
    [health] = store.target_health("p")
    assert health.failing_since is not None and health.last_error == UNREACHABLE

    api.refuse = False
    report = run(store, source, DownJobTarget(api))
    assert report.targets["t"].failures == {}, "submitted now: nothing failed"
    for job in api.jobs.values():
        job.done = True
    report = run(store, source, DownJobTarget(api))
    assert report.targets["t"].done == 5 and not report.targets["t"].nothing_through
    [health] = store.target_health("p")
    assert health.failing_since is None
