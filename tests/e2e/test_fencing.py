"""Two daemons on one PostgreSQL store: the lease passes on, and a paused holder that
lost it sends and records nothing more.

Each test has its own database (the `pg_url` fixture) and a short lease (2 s) so
takeovers happen within the test; every wait is a functional one with a generous
bound, never a timing assertion.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from state import Store
from state.models import DeliveryStatus, PipelineLock
from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env

CONTACTS = [f"0-{i}" for i in range(1, 13)]
EXPECTED = sorted(PEOPLE[i][0] for i in range(12))


def configure(e2e: Env, pg_url: str) -> Path:
    e2e.write_config(every="0.3s")
    text = e2e.config.read_text()
    sqlite_state = f'state: {{url: "sqlite:///{e2e.tmp / "state.db"}"}}'
    assert sqlite_state in text
    e2e.config.write_text(text.replace(sqlite_state, f'state: {{url: "{pg_url}", lease: 2s}}'))
    return e2e.config


@contextmanager
def daemon(e2e: Env, name: str) -> Iterator[subprocess.Popen[str]]:
    """A daemon whose log goes to a file, so it can be read while it runs."""
    log = (e2e.tmp / f"{name}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "syncengine", "run", "-c", str(e2e.config)],
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
        env=e2e.env(),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(timeout=30)
        log.close()


def events(e2e: Env, name: str) -> list[dict[str, Any]]:
    found = []
    for line in (e2e.tmp / f"{name}.log").read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened within {timeout:g}s: {what}")


def done(store: Store) -> int:
    return sum(d.status == DeliveryStatus.DONE for d, _ in store.deliveries(pipeline="contacts"))


def lease(store: Store) -> PipelineLock | None:
    from sqlmodel import Session

    with Session(store.engine) as s:
        return s.get(PipelineLock, "contacts")


def check_each_row_deleted_once(e2e: Env, store: Store) -> None:
    deliveries = store.deliveries(pipeline="contacts")
    assert len(deliveries) == 12
    assert {d.status for d, _ in deliveries} == {DeliveryStatus.DONE}
    deleted = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert deleted == EXPECTED, "each row deleted exactly once, nothing else"


def test_a_holder_paused_past_its_lease_sends_and_records_nothing_more(
    e2e: Env, pg_url: str
) -> None:
    configure(e2e, pg_url)
    e2e.faults(e2e.box.mongoose_url, latency=0.5)
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    store = Store.open(pg_url)
    try:
        with daemon(e2e, "first") as first:
            wait_for("the first daemon delivers a batch", lambda: done(store) >= 3)
            first.send_signal(signal.SIGSTOP)
            assert done(store) < 12, "paused in the middle of its run"
            paused_at = lease(store)
            assert paused_at is not None
            with daemon(e2e, "second") as second:
                wait_for("the second daemon delivers everything", lambda: done(store) == 12)
                taken = lease(store)
                assert taken is not None and taken.epoch > paused_at.epoch
                first.send_signal(signal.SIGCONT)
                wait_for(
                    "the first daemon notices it lost the lease",
                    lambda: any(
                        e.get("event", "").startswith("lease_lost") for e in events(e2e, "first")
                    ),
                )
                first.send_signal(signal.SIGTERM)
                first.wait(timeout=30)
                second.send_signal(signal.SIGTERM)
                second.wait(timeout=30)
        check_each_row_deleted_once(e2e, store)
        first_events = [e.get("event", "") for e in events(e2e, "first")]
        lost_at = next(i for i, e in enumerate(first_events) if e.startswith("lease_lost"))
        assert "batch_sent" not in first_events[lost_at:], "no outcome after the lease was lost"
        stale = [d for d, _ in store.deliveries(pipeline="contacts") if d.claim_epoch is not None]
        assert all(d.claim_epoch <= taken.epoch for d in stale)
        assert any(d.claim_epoch == taken.epoch for d in stale), "the new owner sent the rest"
    finally:
        store.close()


def test_a_killed_holder_is_taken_over_and_nothing_is_lost(e2e: Env, pg_url: str) -> None:
    configure(e2e, pg_url)
    e2e.faults(e2e.box.mongoose_url, latency=0.5)
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)
    store = Store.open(pg_url)
    try:
        with daemon(e2e, "first") as first, daemon(e2e, "second") as second:
            wait_for("a daemon delivers a batch", lambda: done(store) >= 3)
            held = lease(store)
            assert held is not None
            holder = first if str(first.pid) in held.owner.split(":")[1:2] else second
            other = second if holder is first else first
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
            wait_for("the other daemon delivers everything", lambda: done(store) == 12)
            other.send_signal(signal.SIGTERM)
            assert other.wait(timeout=30) == 0
        check_each_row_deleted_once(e2e, store)
    finally:
        store.close()
