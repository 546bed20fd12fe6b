"""Alerts sent to real receivers: one per opening and one per recovery, signed, retried
with backoff, never blocking another sink, never carrying a secret.

Conditions are opened and resolved with `store.sync_conditions` directly, as the
health checks do; each receiver is a real HTTP server on a free loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from structlog.testing import capture_logs

from connectors.kit.redact import secret_forms
from state import Store
from state.alerts import Condition, backoff
from state.models import AlertNotice, utcnow
from syncengine.alerts import Notifier, sink_names
from syncengine.api import run_pipelines
from syncengine.config.loader import collect_secrets
from syncengine.config.models import AlertsSettings, Config, LoggingSettings, StateSettings
from syncengine.daemon import Daemon
from syncengine.engine import StopToken
from syncengine.engine.runtime import Runtime
from tests.e2e.alert_receiver import Receiver, closed_port

HOOK_SECRET = "whsec-3f9a1c2e7b5d4a60"
SLACK_TOKEN = "T0ALERTS/B0ALERTS/xoxq7RkV2mB9pLs4"
HANG_GUARD = 30.0
"""Seconds before a wait that should end at once is called a failure (never a timing check)."""


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(**options: Any) -> Receiver:
        receiver = Receiver(**options)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.close()


def make_config(tmp_path: Path, sinks: list[dict[str, Any]], **delivery: Any) -> Config:
    alerts = AlertsSettings.model_validate(
        {"sinks": sinks, "delivery": {"timeout": 5, "backoff": 60, **delivery}}
    )
    return Config(
        path=str(tmp_path / "config.yaml"),
        state=StateSettings(),
        logging=LoggingSettings(),
        connections={},
        pipelines={},
        alerts=alerts,
        secrets=collect_secrets([alerts]),
    )


def stalled(
    pipeline: str = "erp_users", target: str = "mongoose", message: str = "", command: str = ""
) -> Condition:
    return Condition(
        key=f"target_stalled:{pipeline}/{target}",
        kind="target_stalled",
        pipeline=pipeline,
        target=target,
        since=utcnow() - timedelta(minutes=20),
        message=message or "every send failed for 20 min: ConnectError: connection refused",
        command=command or f"syncengine status -p {pipeline}",
    )


def open_(store: Store, config: Config, *conditions: Condition) -> None:
    store.sync_conditions(list(conditions), pipelines=None, sinks=sink_names(config))


def resolve_all(store: Store, config: Config) -> None:
    store.sync_conditions([], pipelines=None, sinks=sink_names(config))


def make_due(store: Store) -> None:
    """The backoff waited out, without waiting."""
    with store.engine.begin() as conn:
        conn.execute(update(AlertNotice).values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def notice_rows(store: Store, sink: str | None = None) -> list[AlertNotice]:
    return [n for n in store.notices() if sink is None or n.sink == sink]


async def until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


async def test_each_sink_gets_one_alert_when_opened_and_one_when_resolved(
    store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook, slack = receivers(), receivers()
    ran = tmp_path / "command.jsonl"
    script = f"import sys; open({str(ran)!r}, 'a').write(sys.stdin.read() + '\\n')"
    config = make_config(
        tmp_path,
        [
            {"type": "webhook", "url": f"{hook.url}/alerts", "secret": HOOK_SECRET},
            {"type": "slack", "url": f"{slack.url}/services/{SLACK_TOKEN}"},
            {"type": "command", "name": "pager", "command": [sys.executable, "-c", script]},
        ],
    )
    notifier = Notifier(store, config)
    open_(store, config, stalled())
    await notifier.flush(30)
    open_(store, config, stalled())  # found again by another run: the same episode
    await notifier.flush(30)

    assert [b["event"] for b in hook.bodies()] == ["opened"]
    assert len(slack.requests) == 1
    assert len(ran.read_text().splitlines()) == 1

    resolve_all(store, config)
    await notifier.flush(30)
    await notifier.flush(30)

    assert [(b["event"], b["status"]) for b in hook.bodies()] == [
        ("opened", "firing"),
        ("resolved", "resolved"),
    ]
    assert [b["key"] for b in hook.bodies()] == ["target_stalled:erp_users/mongoose"] * 2
    assert "RECOVERED" in hook.bodies()[1]["text"]
    assert slack.requests[0].path == f"/services/{SLACK_TOKEN}"
    opened, recovered = slack.bodies()
    assert "syncengine status -p erp_users" in json.dumps(opened["blocks"])
    assert "Recovered" in json.dumps(recovered["blocks"]) and "RECOVERED" in recovered["text"]
    commanded = [json.loads(line) for line in ran.read_text().splitlines()]
    assert [c["event"] for c in commanded] == ["opened", "resolved"]
    assert all(n.sent_at is not None and n.attempts == 1 for n in notice_rows(store))


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300) -> bool:
    """What a receiver does, as the README shows it."""
    timestamp = headers["x-syncengine-timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    given = headers["x-syncengine-signature"].removeprefix("sha256=")
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return fresh and hmac.compare_digest(expected.hexdigest(), given)


async def test_webhook_is_signed_so_a_receiver_can_trust_it(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook, plain = receivers(), receivers()
    config = make_config(
        tmp_path,
        [
            {
                "type": "webhook",
                "url": hook.url,
                "secret": HOOK_SECRET,
                "headers": {"Authorization": "Bearer tok-9d8c7b6a5f4e"},
            },
            {"type": "webhook", "url": plain.url},
        ],
    )
    open_(sqlite_store, config, stalled())
    await Notifier(sqlite_store, config).flush(30)

    (signed,) = hook.requests
    assert verify(HOOK_SECRET, signed.headers, signed.body)
    assert signed.headers["authorization"] == "Bearer tok-9d8c7b6a5f4e"
    assert not verify(HOOK_SECRET, signed.headers, signed.body.replace(b"opened", b"resolved"))
    assert not verify("another-secret", signed.headers, signed.body)
    replayed = {**signed.headers, "x-syncengine-timestamp": str(int(time.time()) - 3600)}
    assert not verify(HOOK_SECRET, replayed, signed.body)
    (unsigned,) = plain.requests
    assert "x-syncengine-signature" not in unsigned.headers


@pytest.mark.parametrize("trouble", ["down", "answers 500"])
async def test_a_failing_receiver_is_retried_with_backoff_and_sent_once_it_recovers(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver], trouble: str
) -> None:
    port = closed_port()
    broken = receivers(status=500, answer="upstream exploded") if trouble != "down" else None
    url = broken.url if broken is not None else f"http://127.0.0.1:{port}"
    config = make_config(tmp_path, [{"type": "webhook", "url": url}], backoff=60, max_backoff=600)
    notifier = Notifier(sqlite_store, config)
    open_(sqlite_store, config, stalled())

    before = utcnow()
    with capture_logs() as events:
        await notifier.flush(30)
    (row,) = notice_rows(sqlite_store)
    assert (row.sent_at, row.gave_up_at, row.attempts) == (None, None, 1)
    assert row.next_attempt_at >= before + backoff(1, 60, 600)
    assert ("500" if broken else "Connect") in row.last_error
    assert [e["event"] for e in events] == ["notification_failed"]
    assert events[0]["retry_in"] == 60

    await notifier.flush(30)  # not due yet: no new attempt
    assert notice_rows(sqlite_store)[0].attempts == 1

    make_due(sqlite_store)
    before = utcnow()
    await notifier.flush(30)
    (row,) = notice_rows(sqlite_store)
    assert row.attempts == 2 and row.next_attempt_at >= before + backoff(2, 60, 600)

    if broken is not None:
        broken.status = 200
        receiver = broken
    else:
        receiver = receivers(port=port)
    make_due(sqlite_store)
    await notifier.flush(30)
    await notifier.flush(30)
    (row,) = notice_rows(sqlite_store)
    assert row.sent_at is not None and row.attempts == 3
    assert len(receiver.requests) == (3 if broken else 1)
    assert receiver.bodies()[-1]["event"] == "opened"


async def test_a_slow_receiver_times_out_and_another_sink_is_not_held_up(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    slow, quick = receivers(hold=threading.Event()), receivers()
    config = make_config(
        tmp_path,
        [{"type": "webhook", "url": slow.url}, {"type": "webhook", "url": quick.url}],
        timeout=0.5,
    )
    open_(sqlite_store, config, stalled())
    await Notifier(sqlite_store, config).flush(30)

    assert len(quick.requests) == 1
    assert notice_rows(sqlite_store, "webhook-1")[0].sent_at is not None
    (late,) = notice_rows(sqlite_store, "webhook-0")
    assert late.sent_at is None and late.attempts == 1
    assert "timeout" in late.last_error


async def test_the_daemon_task_sends_beside_a_receiver_that_hangs(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    """A receiver that has not answered holds only its own lane: the other sink's alert
    arrives while that request is still hanging, and both are sent in the end."""
    hold = threading.Event()
    slow, quick = receivers(hold=hold), receivers()
    config = make_config(
        tmp_path,
        [{"type": "webhook", "url": slow.url}, {"type": "webhook", "url": quick.url}],
        timeout=HANG_GUARD,
    )
    notifier = Notifier(sqlite_store, config)
    stop = StopToken()
    task = asyncio.create_task(notifier.run(stop))
    open_(sqlite_store, config, stalled())
    notifier.wake()
    try:
        await until(lambda: bool(quick.requests) and bool(slow.requests), "both sinks reached")
        assert not hold.is_set()  # the slow sink's request is still unanswered
        await until(
            lambda: notice_rows(sqlite_store, "webhook-1")[0].sent_at is not None,
            "the quick sink's alert marked sent",
        )
        assert notice_rows(sqlite_store, "webhook-0")[0].sent_at is None
        hold.set()
        await until(
            lambda: all(n.sent_at is not None for n in notice_rows(sqlite_store)), "both sent"
        )
    finally:
        hold.set()
        stop.request("test over")
        await task
    assert len(slow.requests) == len(quick.requests) == 1


async def test_gives_up_after_max_attempts(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    broken = receivers(status=500)
    config = make_config(
        tmp_path, [{"type": "webhook", "url": broken.url}], backoff=0, max_attempts=3
    )
    open_(sqlite_store, config, stalled())
    with capture_logs() as events:
        await Notifier(sqlite_store, config).flush(30)
        await Notifier(sqlite_store, config).flush(30)

    assert len(broken.requests) == 3
    (row,) = notice_rows(sqlite_store)
    assert row.gave_up_at is not None and row.sent_at is None and row.attempts == 3
    given_up = [e for e in events if e["event"] == "alert_given_up"]
    assert len(given_up) == 1
    assert given_up[0]["log_level"] == "error" and given_up[0]["attempts"] == 3
    assert given_up[0]["condition"] == "target_stalled:erp_users/mongoose"


async def test_two_daemons_on_one_store_send_each_alert_once(
    store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook = receivers()
    config = make_config(tmp_path, [{"type": "webhook", "url": hook.url}])
    other_store = Store.open(store.url)
    try:
        first, second = Notifier(store, config), Notifier(other_store, config)
        for round_ in range(3):
            open_(store, config, *(stalled(target=f"t{i}") for i in range(30)))
            await asyncio.gather(first.flush(30), second.flush(30))
            resolve_all(other_store, config)
            stops = [StopToken(), StopToken()]
            tasks = [
                asyncio.create_task(n.run(s)) for n, s in zip((first, second), stops, strict=True)
            ]
            first.wake()
            second.wake()
            expected = 60 * (round_ + 1)
            await until(lambda n=expected: len(hook.requests) == n, "every alert sent")
            for s in stops:
                s.request("test over")
            await asyncio.gather(*tasks)
    finally:
        other_store.close()
    ids = [b["alert_id"] for b in hook.bodies()]
    assert len(ids) == len(set(ids)) == 180


async def test_no_secret_reaches_a_log_a_payload_or_the_store(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    slack_url_token = f"/services/{SLACK_TOKEN}"
    echo = base64.b64encode(slack_url_token.encode()).decode()
    slack = receivers(status=500, answer=f"no such hook {slack_url_token} ({echo})")
    hook = receivers(status=500, answer=f"bad signature, expected secret {HOOK_SECRET}")
    config = make_config(
        tmp_path,
        [
            {"type": "slack", "url": f"{slack.url}{slack_url_token}"},
            {"type": "webhook", "url": hook.url, "secret": HOOK_SECRET},
        ],
        backoff=0,
        max_attempts=2,
    )
    # A target that echoed the secrets back, quoted in the condition's message.
    message = f"HTTP 401: key {HOOK_SECRET} refused at {slack.url}{slack_url_token}"
    open_(sqlite_store, config, stalled(message=message))
    with capture_logs() as events:
        await Notifier(sqlite_store, config).flush(30)
        slack.status = hook.status = 200
        resolve_all(sqlite_store, config)
        await Notifier(sqlite_store, config).flush(30)

    sent = [r.body.decode() for r in [*slack.requests, *hook.requests]]
    stored = [n.last_error for n in notice_rows(sqlite_store)]
    logged = json.dumps(events, default=str)
    assert "alert_given_up" in logged and "HTTP 500" in logged
    assert len(hook.requests) == 3  # two failed opened-attempts, then the resolution
    for secret in (HOOK_SECRET, f"{slack.url}{slack_url_token}", slack_url_token):
        for form in secret_forms(secret):
            for where, text in [("log", logged), *(("payload", s) for s in sent)]:
                assert form not in text, (where, form)
            assert not any(form in e for e in stored), form
    assert "***" in hook.bodies()[0]["message"]


async def test_command_sink_gets_the_alert_on_stdin(sqlite_store: Store, tmp_path: Path) -> None:
    out = tmp_path / "alert.json"
    script = (
        "import json, os, sys; alert = json.load(sys.stdin); "
        "alert['env'] = {k: v for k, v in os.environ.items() if k.startswith('SYNCENGINE_ALERT')}; "
        f"open({str(out)!r}, 'w').write(json.dumps(alert))"
    )
    config = make_config(
        tmp_path,
        [
            {"type": "command", "command": [sys.executable, "-c", script]},
            {"type": "command", "name": "fails", "command": [sys.executable, "-c", FAILING]},
            {"type": "command", "name": "missing", "command": [str(tmp_path / "no-such")]},
        ],
    )
    open_(sqlite_store, config, stalled())
    await Notifier(sqlite_store, config).flush(30)

    alert = json.loads(out.read_text())
    assert alert["env"] == {
        "SYNCENGINE_ALERT_EVENT": "opened",
        "SYNCENGINE_ALERT_KIND": "target_stalled",
        "SYNCENGINE_ALERT_KEY": "target_stalled:erp_users/mongoose",
    }
    assert alert["pipeline"] == "erp_users" and alert["target"] == "mongoose"
    assert "syncengine status -p erp_users" in alert["text"]
    assert notice_rows(sqlite_store, "command-0")[0].sent_at is not None
    (failed,) = notice_rows(sqlite_store, "fails")
    assert failed.sent_at is None and failed.last_error == "exit status 3: pager is down"
    (missing,) = notice_rows(sqlite_store, "missing")
    assert missing.sent_at is None and "cannot start" in missing.last_error


FAILING = "import sys; sys.stdin.read(); sys.stderr.write('pager is down'); sys.exit(3)"


async def test_a_command_that_does_not_end_is_killed_at_the_timeout(
    sqlite_store: Store, tmp_path: Path
) -> None:
    script = "import sys, time; sys.stdin.read(); time.sleep(600)"
    config = make_config(
        tmp_path, [{"type": "command", "command": [sys.executable, "-c", script]}], timeout=0.5
    )
    open_(sqlite_store, config, stalled())
    await Notifier(sqlite_store, config).flush(30)
    (row,) = notice_rows(sqlite_store)
    assert row.sent_at is None and "timeout" in row.last_error and "killed" in row.last_error


KINDS = [
    ("pipeline_failing", None, "syncengine trace -p erp_users"),
    ("pipeline_stopped", None, "syncengine check --connection mongoose_prod"),
    ("pipeline_overdue", None, "syncengine status -p erp_users"),
    ("target_stalled", "mongoose", "syncengine status -p erp_users"),
    ("source_beyond_retention", None, 'syncengine backfill -p erp_users --from "2025-01-01"'),
    ("slo_breached", "mongoose", "syncengine status -p erp_users"),
    (
        "deliveries_held",
        "mongoose",
        "syncengine approve --pipeline erp_users --target mongoose --count 5 "
        "(or: syncengine reject --pipeline erp_users --target mongoose --reason ...)",
    ),
    ("dead_letters", "mongoose", "syncengine dlq list -p erp_users -t mongoose"),
]


@pytest.mark.parametrize(("kind", "target", "command"), KINDS, ids=[k[0] for k in KINDS])
async def test_each_kind_of_alert_says_what_where_since_and_the_command(
    sqlite_store: Store,
    tmp_path: Path,
    receivers: Callable[..., Receiver],
    kind: str,
    target: str | None,
    command: str,
) -> None:
    hook, slack = receivers(), receivers()
    config = make_config(
        tmp_path,
        [{"type": "webhook", "url": hook.url}, {"type": "slack", "url": f"{slack.url}/x"}],
    )
    where = f"erp_users/{target}" if target else "erp_users"
    condition = Condition(
        key=f"{kind}:{where}",
        kind=kind,
        pipeline="erp_users",
        target=target,
        since=utcnow() - timedelta(hours=2),
        message=f"what went wrong with {kind}",
        command=command,
    )
    open_(sqlite_store, config, condition)
    await Notifier(sqlite_store, config).flush(30)

    (body,) = hook.bodies()
    (message,) = slack.bodies()
    since = condition.since.strftime("%Y-%m-%d %H:%M:%S UTC")
    for text in (body["text"], message["text"], json.dumps(message["blocks"])):
        assert command.replace('"', '\\"') in text or command in text
        assert f"what went wrong with {kind}" in text
        assert where in text and since in text
    assert f"`{command}`" in "".join(b["text"]["text"] for b in message["blocks"][:3])
    if kind == "deliveries_held":
        assert "approve" in body["text"] and "reject" in body["text"]


async def test_an_alert_without_a_command_gets_one(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook = receivers()
    config = make_config(tmp_path, [{"type": "webhook", "url": hook.url}])
    held = Condition(
        "deliveries_held:erp_users/mongoose",
        "deliveries_held",
        "erp_users",
        "mongoose",
        utcnow(),
        "5 deliveries held by the guard",
    )
    open_(sqlite_store, config, held)
    await Notifier(sqlite_store, config).flush(30)
    (body,) = hook.bodies()
    assert body["command"] == f"syncengine held -p erp_users -c {config.path}"
    assert body["command"] in body["text"]


async def test_no_sinks_no_work(sqlite_store: Store, tmp_path: Path) -> None:
    """Notices left for sinks since removed from the file are not touched by a
    configuration without sinks."""
    config = make_config(tmp_path, [])
    sqlite_store.sync_conditions([stalled()], pipelines=None, sinks=["old"])
    await Notifier(sqlite_store, config).flush(30)
    (row,) = notice_rows(sqlite_store)
    assert row.attempts == 0 and row.sent_at is None


async def test_run_once_sends_the_alerts_its_runs_queued(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook = receivers()
    config = make_config(tmp_path, [{"type": "webhook", "url": hook.url}])
    runtime = Runtime(config=config, store=sqlite_store, pipelines={})
    open_(sqlite_store, config, stalled())

    stopped = StopToken()
    stopped.request("SIGTERM received")
    await run_pipelines(runtime, stopped, job_wait=0)
    assert hook.requests == []  # a stopped run leaves them to the next

    await run_pipelines(runtime, StopToken(), job_wait=0)
    assert [b["event"] for b in hook.bodies()] == ["opened"]


async def test_the_daemon_sends_alerts_and_stops_its_notifier_with_it(
    sqlite_store: Store, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    hook = receivers()
    config = make_config(tmp_path, [{"type": "webhook", "url": hook.url}])
    daemon = Daemon(Runtime(config=config, store=sqlite_store, pipelines={}))
    serving = asyncio.create_task(daemon.serve())
    open_(sqlite_store, config, stalled())
    daemon.notifier.wake()
    await until(lambda: len(hook.requests) == 1, "the daemon sent the alert")
    resolve_all(sqlite_store, config)
    daemon.stop.request("test over")  # queued just before the stop: sent in the grace
    assert await serving == 0
    assert [b["event"] for b in hook.bodies()] == ["opened", "resolved"]
