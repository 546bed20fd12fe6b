"""A streamed answer journaled page by page: a crash between pages loses nothing and
creates nothing twice, and a key repeated across a page boundary is one deletion."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import connectors.goose.source as goose_source
from connectors.goose.emulator import GooseEmulator
from connectors.goose.settings import GooseSourceSettings
from connectors.goose.source import GooseSource, classify
from connectors.kit.http import HttpClient
from connectors.kit.serving import serve
from connectors.kit.settings import RetrySettings
from state import Store
from syncengine import failpoints
from syncengine.config.models import PipelineConfig, Schedule, SourceConfig
from syncengine.engine.pull import PullReport, pull
from syncengine.engine.runtime import PipelineRuntime
from syncengine.engine.stop import StopToken
from tests.connectors.test_goose_source import CODE, KEY, TINY_RETRY, USER_KEY, connection

PAGE = 5


class Crash(BaseException):
    """The process dying at a failpoint: nothing after it runs, commits stay."""


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(goose_source, "CHUNK_RECORDS", PAGE)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    yield opened
    opened.close()


def runtime(src: GooseSource) -> PipelineRuntime:
    config = PipelineConfig(
        name="p",
        schedule=Schedule(every=60),
        enabled=True,
        source=SourceConfig(connection="g", connection_type="goose", settings=src.settings),
        targets={},
    )
    return PipelineRuntime("p", config, source=src)


def run_pull(store: Store, src: GooseSource) -> PullReport:
    """One run in its own event loop, as one process would (the source closed after)."""

    async def once() -> PullReport:
        try:
            return await pull(store, runtime(src), 1, StopToken(), targets=["t"])
        finally:
            await src.aclose()

    return asyncio.run(once())


def journal(store: Store) -> tuple[list[str], list[str]]:
    """Journaled keys, and the key of each delivery to target t."""
    url = str(store.engine.url).removeprefix("sqlite:///")
    with sqlite3.connect(url) as db:
        keys = [k for (k,) in db.execute("SELECT record_key FROM deletion ORDER BY id")]
        sent = [
            k
            for (k,) in db.execute(
                "SELECT d.record_key FROM delivery AS v JOIN deletion AS d "
                "ON v.deletion_id = d.id WHERE v.target = 't'"
            )
        ]
    return keys, sent


def assert_recovered_once(store: Store, contacts: list[str], report: PullReport) -> None:
    """After the recovery read: every deletion journaled and sent once, the first page's
    records taken for duplicates, the call no longer in flight."""
    keys, sent = journal(store)
    assert sorted(keys) == sorted(contacts), "every deletion journaled exactly once"
    assert sorted(sent) == sorted(contacts), "one delivery per deletion, none twice"
    assert report.recoveries == 1 and report.duplicates == PAGE
    assert store.cursor("p", "CON_TRO").in_flight is None


def test_a_crash_between_pages_loses_nothing_and_creates_nothing_twice(
    store: Store, small_pages: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    contacts = [f"0-{i}" for i in range(1, 13)]
    emulator = GooseEmulator(timezone="Europe/Rome")
    emulator.seed({CODE: [KEY, USER_KEY]}, {"CON_TRO": [{"RECORD_ID": c} for c in contacts]})
    emulator.delete("CON_TRO", contacts)

    def crash_between_pages(name: str) -> None:
        if name == "between_chunks":
            raise Crash(name)

    with serve(emulator.app) as running:
        settings = GooseSourceSettings.model_validate({"tables": ["CON_TRO"]})
        src = GooseSource("g", connection(f"{running.url}/deleted/"), settings)
        monkeypatch.setattr(failpoints, "hit", crash_between_pages)
        with pytest.raises(Crash):
            run_pull(store, src)
        keys, sent = journal(store)
        assert keys == contacts[:PAGE] and sorted(sent) == sorted(keys), "the first page"
        assert store.cursor("p", "CON_TRO").in_flight is not None, "the call is still in flight"

        monkeypatch.undo()
        monkeypatch.setattr(goose_source, "CHUNK_RECORDS", PAGE)
        restarted = GooseSource("g", connection(f"{running.url}/deleted/"), settings)
        report = run_pull(store, restarted)

    assert_recovered_once(store, contacts, report)
    assert report.pulled == len(contacts) - PAGE


def test_a_key_repeated_across_a_page_boundary_is_one_deletion(
    store: Store, small_pages: None
) -> None:
    rows = [{"RECORD_ID": k} for k in ["a", "b", "c", "d", "e", "a", "f", "b"]]
    body = json.dumps({"status": "OK", "result": {"total": len(rows), "data": rows}})

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body)

    http = HttpClient(
        connection="g",
        retry=RetrySettings.model_validate(TINY_RETRY).policy(),
        classify=classify,
        transport=httpx.MockTransport(answer),
    )
    settings = GooseSourceSettings.model_validate({"tables": ["CON_TRO"]})
    src = GooseSource("g", connection(), settings, http=http)
    report = run_pull(store, src)
    keys, sent = journal(store)
    assert keys == ["a", "b", "c", "d", "e", "f"]
    assert sorted(sent) == keys
    assert report.pulled == 6 and report.duplicates == 2


def test_a_stop_mid_answer_leaves_the_rest_to_a_recovery_read(
    store: Store, small_pages: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during a huge answer is honoured at the next page, not at the answer's
    end: the marker stays, and the next run re-reads and journals the rest once."""
    contacts = [f"0-{i}" for i in range(1, 23)]
    emulator = GooseEmulator(timezone="Europe/Rome")
    emulator.seed({CODE: [KEY, USER_KEY]}, {"CON_TRO": [{"RECORD_ID": c} for c in contacts]})
    emulator.delete("CON_TRO", contacts)
    daemon = StopToken()
    stop = daemon.child()
    pages: list[str] = []

    def sigterm_after_the_first_page(name: str) -> None:
        if name == "between_chunks":
            pages.append(name)
            daemon.request("SIGTERM received")

    with serve(emulator.app) as running:
        settings = GooseSourceSettings.model_validate({"tables": ["CON_TRO"]})
        src = GooseSource("g", connection(f"{running.url}/deleted/"), settings)
        monkeypatch.setattr(failpoints, "hit", sigterm_after_the_first_page)

        async def stopped() -> PullReport:
            try:
                return await pull(store, runtime(src), 1, stop, targets=["t"])
            finally:
                await src.aclose()

        report = asyncio.run(stopped())
        assert pages == ["between_chunks"], "no page is journaled after the stop"
        assert report.pulled == PAGE
        keys, _ = journal(store)
        assert keys == contacts[:PAGE]
        assert store.cursor("p", "CON_TRO").in_flight is not None, "the call is still in flight"

        monkeypatch.undo()
        monkeypatch.setattr(goose_source, "CHUNK_RECORDS", PAGE)
        restarted = GooseSource("g", connection(f"{running.url}/deleted/"), settings)
        again = run_pull(store, restarted)

    assert_recovered_once(store, contacts, again)
