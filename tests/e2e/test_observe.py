"""/metrics, /healthz and /readyz of the daemon answer; readiness follows runs that
succeed and fail, liveness only the process."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import httpx

from connectors.kit.serving import free_port
from tests.e2e.conftest import Env


def start_daemon_with_metrics(e2e: Env, **options: object) -> tuple[object, str]:
    e2e.write_config(**options)
    port = free_port()
    with e2e.config.open("a") as config:
        config.write(f"metrics: {{host: 127.0.0.1, port: {port}, stale_after_periods: 2}}\n")
    return e2e.popen("run", "-c", str(e2e.config)), f"http://127.0.0.1:{port}"


def wait_for(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def metric(base: str, line_start: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stop(daemon: object) -> None:
    daemon.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    daemon.communicate(timeout=30)  # type: ignore[attr-defined]


def test_metrics_and_health_follow_good_runs(e2e: Env) -> None:
    daemon, base = start_daemon_with_metrics(e2e)
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200)
        e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
        wait_for(
            lambda: metric(base, 'syncengine_deletions_pulled_total{pipeline="contacts"}') == 2
        )
        wait_for(
            lambda: (
                metric(
                    base,
                    'syncengine_deliveries{pipeline="contacts",status="done",target="erp_users"}',
                )
                == 2
            )
        )
        assert metric(base, 'syncengine_http_request_seconds_count{connection="goose"') > 0
        assert (
            metric(base, 'syncengine_cursor_age_seconds{pipeline="contacts",stream="CON_TRO"}') >= 0
        )
        ready = httpx.get(f"{base}/readyz", timeout=5).json()
        assert ready["ok"] is True and ready["reasons"] == [] and ready["warnings"] == []
        live = httpx.get(f"{base}/healthz", timeout=5)
        assert live.status_code == 200 and live.json()["live"] is True
    finally:
        stop(daemon)


def test_readiness_fails_when_a_pipeline_keeps_failing_and_liveness_does_not(
    e2e: Env,
) -> None:
    daemon, base = start_daemon_with_metrics(e2e)
    text = e2e.config.read_text().replace("tables: [CON_TRO]", "tables: [NOPE]")
    e2e.config.write_text(text)
    stop(daemon)
    daemon = e2e.popen("run", "-c", str(e2e.config))

    def reasons() -> set[str]:
        answer = httpx.get(f"{base}/readyz", timeout=5)
        assert answer.status_code == (503 if answer.json()["reasons"] else 200)
        return {reason["kind"] for reason in answer.json()["reasons"]}

    try:
        wait_for(lambda: {"pipeline_failing", "pipeline_overdue"} <= reasons())
        body = httpx.get(f"{base}/health", timeout=5).json()
        failing = next(r for r in body["reasons"] if r["kind"] == "pipeline_failing")
        assert failing["message"].startswith("pipeline contacts: its last 3 runs failed")
        assert failing["command"] == f"syncengine status -c {e2e.config} -p contacts"
        overdue = next(r for r in body["reasons"] if r["kind"] == "pipeline_overdue")
        assert overdue["message"].startswith("pipeline contacts: no good run for")
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert metric(base, 'syncengine_runs_total{outcome="failed",pipeline="contacts"}') >= 1
    finally:
        stop(daemon)


def test_the_metrics_port_can_be_moved_from_the_command_line_and_the_environment(
    e2e: Env,
) -> None:
    """Two daemons on one host share a file but not a port."""
    e2e.write_config()
    written = free_port()
    with e2e.config.open("a") as config:
        config.write(f"metrics: {{host: 127.0.0.1, port: {written}}}\n")
    by_option, by_env = free_port(), free_port()
    first = e2e.popen("run", "-c", str(e2e.config), "--metrics-port", str(by_option))
    second = e2e.popen("run", "-c", str(e2e.config), SYNCENGINE_METRICS_PORT=str(by_env))
    try:
        for port in (by_option, by_env):
            url = f"http://127.0.0.1:{port}/healthz"
            wait_for(lambda url=url: httpx.get(url, timeout=5).status_code == 200)
        assert first.poll() is None and second.poll() is None, "neither lost its port"
    finally:
        stop(first)
        stop(second)
