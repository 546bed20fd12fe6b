"""DMM log zips and Reltio tasks journaled page by page: a crash between pages loses
nothing and creates nothing twice, and a record named again across a page boundary is
one deletion."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import connectors.dmm.source as dmm_source
import connectors.reltio.source as reltio_source
from connectors.contract import Source
from state import Store
from syncengine import failpoints
from syncengine.config.models import PipelineConfig, Schedule, SourceConfig
from syncengine.engine.pull import PullReport, pull
from syncengine.engine.runtime import PipelineRuntime
from syncengine.engine.stop import StopToken
from tests.connectors.test_dmm_source import api, log_zip, scripted
from tests.connectors.test_task_source_pages import Tenant, deleted, tenant_source
from tests.unit.test_pull_chunks import Crash, journal

PAGE = 2
DMM_STREAM = "execution-5"
RELTIO_STREAM = "task-t1"


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmm_source, "CHUNK_RECORDS", PAGE)
    monkeypatch.setattr(reltio_source, "CHUNK_RECORDS", PAGE)


def dmm(*keys: str) -> Source:
    outputs = {"Logs": log_zip([deleted(k) for k in keys])}
    return scripted(api(outputs=outputs), executions=["5"])


def reltio(*ids: str) -> Source:
    return tenant_source(Tenant([f"entities/{i}" for i in ids]))


def dmm_key(key: str) -> str:
    return f"Customer.ExternalId={key}"


def reltio_key(key: str) -> str:
    return f"entities/{key}"


SOURCES: dict[str, tuple[Callable[..., Source], str, str, Callable[[str], str]]] = {
    "dmm": (dmm, "dmm", DMM_STREAM, dmm_key),
    "reltio": (reltio, "reltio", RELTIO_STREAM, reltio_key),
}


def run_pull(store: Store, src: Source, kind: str) -> PullReport:
    """One run in its own event loop, as one process would (the source closed after)."""
    config = PipelineConfig(
        name="p",
        schedule=Schedule(every=60),
        enabled=True,
        source=SourceConfig(connection="c", connection_type=kind, settings=src.settings),  # type: ignore[attr-defined]
        targets={},
    )

    async def once() -> PullReport:
        try:
            return await pull(
                store, PipelineRuntime("p", config, source=src), 1, StopToken(), targets=["t"]
            )
        finally:
            await src.aclose()

    return asyncio.run(once())


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_crash_between_pages_loses_nothing_and_creates_nothing_twice(
    sqlite_store: Store, small_pages: None, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    store = sqlite_store
    make, kind, stream, key = SOURCES[name]
    ids = ["a", "b", "c", "d", "e"]
    expected = [key(i) for i in ids]

    def crash_between_pages(point: str) -> None:
        if point == "between_chunks":
            raise Crash(point)

    monkeypatch.setattr(failpoints, "hit", crash_between_pages)
    with pytest.raises(Crash):
        run_pull(store, make(*ids), kind)
    keys, sent = journal(store)
    assert keys == expected[:PAGE] and sorted(sent) == sorted(keys), "the first page"
    state = store.cursor("p", stream)
    assert state.in_flight is not None and state.value is None, "the call is still in flight"

    monkeypatch.setattr(failpoints, "hit", lambda point: None)
    report = run_pull(store, make(*ids), kind)
    keys, sent = journal(store)
    assert keys == expected, "every deletion journaled exactly once"
    assert sorted(sent) == sorted(expected), "one delivery per deletion, none twice"
    assert (report.pulled, report.duplicates) == (len(ids) - PAGE, PAGE)
    state = store.cursor("p", stream)
    assert state.in_flight is None and state.value is not None
    assert state.value["finished"] is True


@pytest.mark.parametrize(
    ("name", "duplicates"),
    # A DMM log may name a record twice and a page forgets the one before; Reltio's
    # entityUriList is read as a set, so the journal never sees its repeats.
    [("dmm", 2), ("reltio", 0)],
)
def test_a_record_named_again_across_a_page_boundary_is_one_deletion(
    sqlite_store: Store, small_pages: None, name: str, duplicates: int
) -> None:
    store = sqlite_store
    make, kind, _, key = SOURCES[name]
    report = run_pull(store, make("a", "b", "c", "a", "d", "b"), kind)
    keys, sent = journal(store)
    expected = [key(i) for i in ["a", "b", "c", "d"]]
    assert keys == expected
    assert sorted(sent) == sorted(expected)
    assert (report.pulled, report.duplicates) == (4, duplicates)
