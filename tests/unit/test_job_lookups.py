"""Look-ups an asynchronous target makes before it submits (Reltio crosswalks) are made
once per job: a key whose look-up fails is looked up again alone, and a restart between
the look-ups and the submission reuses those already made, so a target under faults and
frequent restarts makes steady progress (issue 18 item 10).

Each test runs the engine's job runner over a real store (SQLite and PostgreSQL) against
the Reltio emulator, and counts the look-ups in the emulator's request log. A "crash" is
a BaseException raised inside the run, where SIGKILL would stop the process: the store
keeps what was committed, memory is lost, and the next life is a new target and runner.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.kit.serving import serve
from connectors.reltio import ReltioDeleteTarget
from connectors.reltio.emulator import GOOSE, ReltioEmulator
from connectors.reltio.reads import CONCURRENCY
from state import NewRecord, Store
from state.models import DeliveryStatus, utcnow
from syncengine.engine import jobs as engine_jobs
from syncengine.engine.jobs import JobPolicy, _fresh, run_jobs
from syncengine.engine.stop import StopToken
from tests.connectors.test_reltio_target import CLIENT, CROSSWALK, SECRET, connection, settings
from tests.unit.fake_runtime import fake_runtime

LOOKUP = "/_byCrosswalk/"


class Crash(BaseException):
    """The process dies here (SIGKILL in production): nothing after it runs."""


@pytest.fixture(autouse=True)
def retry_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose look-ups could not all be made is due again at once, not in 30 s."""
    monkeypatch.setattr(engine_jobs, "RETRY_SUBMIT_AFTER", 0.0)


@pytest.fixture
def reltio() -> Iterator[tuple[ReltioEmulator, str]]:
    emu = ReltioEmulator(clients={CLIENT: SECRET}, step_seconds=0.01)
    with serve(emu.app) as running:
        yield emu, running.url


def values(n: int) -> list[str]:
    return [f"L-{i}" for i in range(n)]


def seed(emu: ReltioEmulator, store: Store, n: int) -> list[str]:
    """n entities in Reltio, each with a GOOSE crosswalk, and a deletion of each journaled."""
    keys = values(n)
    emu.seed(
        [{"id": f"L{i}", "crosswalks": [{"type": GOOSE, "value": v}]} for i, v in enumerate(keys)]
    )
    records = [NewRecord(v, {"RECORD_ID": v}) for v in keys]
    store.journal("p", "s", records, cursor={}, targets=["t"], run_id=None)
    return keys


def lookups(emu: ReltioEmulator) -> Counter[str]:
    """Look-up requests per crosswalk value, every request the emulator answered."""
    return Counter(e.path.rsplit(LOOKUP, 1)[1] for e in emu.log.entries if LOOKUP in e.path)


def posts(emu: ReltioEmulator) -> int:
    return sum(1 for e in emu.log.entries if e.mutating)


def life(
    store: Store,
    url: str,
    tmp: Path,
    *,
    wait: float,
    crash_post: bool = False,
    crash_at_lookup: int | None = None,
    retry: dict[str, Any] | None = None,
) -> bool:
    """One life of the engine: a new target and runner over the store. True when it
    crashed (a Crash raised where the process would have been killed)."""
    changes = {"retry": retry} if retry is not None else {}
    target = ReltioDeleteTarget("mdm", connection(url, **changes), settings(**CROSSWALK))
    real = target.api.call
    seen = 0

    async def call(method: str, path: str, **kwargs: Any) -> Any:
        nonlocal seen
        if crash_post and method == "POST":
            raise Crash
        if LOOKUP in path:
            seen += 1
            if seen == crash_at_lookup:
                raise Crash
        return await real(method, path, **kwargs)

    target.api.call = call  # type: ignore[method-assign]
    pipe, runtime = fake_runtime(target)
    policy = JobPolicy(wait=wait, artifacts_dir=tmp)

    async def run() -> None:
        try:
            await run_jobs(store, pipe, runtime, 1, utcnow(), StopToken(), policy)
        finally:
            # Look-ups still under way when the crash came die with the process.
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await target.aclose()

    try:
        asyncio.run(run())
    except Crash:
        return True
    return False


def statuses(store: Store) -> Counter[str]:
    return Counter(str(d.status) for d, _ in store.deliveries(pipeline="p", limit=10_000))


def test_a_failed_look_up_is_retried_alone(
    reltio: tuple[ReltioEmulator, str], store: Store, tmp_path: Path
) -> None:
    emu, url = reltio
    keys = seed(emu, store, 20)
    broken = keys[3]
    emu.knobs.update({"lookup_errors": {broken: 500}})
    assert not life(store, url, tmp_path, wait=0)
    assert posts(emu) == 0, "nothing is submitted while a look-up is missing"
    first = lookups(emu)
    assert first[broken] >= 3, "the failing look-up was tried (with the client's retries)"
    assert {k: n for k, n in first.items() if k != broken} == dict.fromkeys(keys[:3] + keys[4:], 1)

    emu.knobs.update({"lookup_errors": {}})
    emu.log.clear()
    assert not life(store, url, tmp_path, wait=10)
    assert lookups(emu) == {broken: 1}, "only the key that failed is looked up again"
    assert posts(emu) == 1
    assert statuses(store) == {DeliveryStatus.DONE: 20}
    assert emu.entities() == []


def test_a_restart_between_look_ups_and_submit_reuses_them(
    reltio: tuple[ReltioEmulator, str], store: Store, tmp_path: Path
) -> None:
    emu, url = reltio
    keys = seed(emu, store, 20)
    assert life(store, url, tmp_path, wait=0, crash_post=True)
    assert lookups(emu) == dict.fromkeys(keys, 1) and posts(emu) == 0

    emu.log.clear()
    assert not life(store, url, tmp_path, wait=10)
    assert lookups(emu) == {}, "the look-ups kept with the job are used after the restart"
    assert posts(emu) == 1
    assert statuses(store) == {DeliveryStatus.DONE: 20}
    assert emu.entities() == []
    (job,) = store.jobs(pipeline="p")
    assert job.resolved is None, "the look-ups are dropped with the job they served"


def test_a_crash_during_look_ups_keeps_those_already_made(
    reltio: tuple[ReltioEmulator, str], store: Store, tmp_path: Path
) -> None:
    emu, url = reltio
    keys = seed(emu, store, 40)
    assert life(store, url, tmp_path, wait=0, crash_at_lookup=25)
    (job,) = store.open_jobs("p", "t")
    kept = set(_fresh(job.resolved))
    assert len(kept) >= 24 - CONCURRENCY, "each look-up is stored as it completes"
    made = lookups(emu)

    emu.log.clear()
    assert not life(store, url, tmp_path, wait=10)
    again = lookups(emu)
    assert not set(again) & kept, "a look-up stored before the crash is not made again"
    assert set(again) == set(keys) - kept and set(again.values()) == {1}
    assert sum(made.values()) + sum(again.values()) <= len(keys) + CONCURRENCY
    assert statuses(store) == {DeliveryStatus.DONE: 40}


def test_stale_look_ups_are_made_again(
    reltio: tuple[ReltioEmulator, str], store: Store, tmp_path: Path
) -> None:
    """A look-up is used for a bounded time only: a crosswalk may move to another entity."""
    emu, url = reltio
    keys = seed(emu, store, 5)
    assert life(store, url, tmp_path, wait=0, crash_post=True)
    (job,) = store.open_jobs("p", "t")
    assert job.resolved is not None and len(_fresh(job.resolved)) == 5
    past = (utcnow() - timedelta(seconds=1)).isoformat()
    stale = {k: {**v, "until": past} for k, v in job.resolved.items()}
    store.record_resolved(job.id, stale)
    emu.log.clear()
    assert not life(store, url, tmp_path, wait=10)
    assert lookups(emu) == dict.fromkeys(keys, 2), "find and submit each look them up afresh"
    assert statuses(store) == {DeliveryStatus.DONE: 5}


def test_steady_progress_under_faults_and_frequent_crashes(
    reltio: tuple[ReltioEmulator, str], store: Store, tmp_path: Path
) -> None:
    """20% of requests fail and every life is killed after a dozen look-ups, fewer than a
    batch needs: each life still adds its look-ups, so the batch reaches its task."""
    emu, url = reltio
    n = 60
    seed(emu, store, n)
    emu.faults.update({"error_rate": 0.2, "seed": 7})
    retry = {"max_attempts": 6, "base_delay": 0.001, "max_delay": 0.005}
    lives = 0
    while statuses(store)[DeliveryStatus.DONE] < n and lives < 40:
        lives += 1
        life(store, url, tmp_path, wait=10, crash_at_lookup=12, retry=retry)
    assert statuses(store) == {DeliveryStatus.DONE: n}
    assert emu.entities() == []
    made = sum(lookups(emu).values())
    assert made <= 2 * n, f"{made} look-up requests for {n} entities over {lives} lives"
