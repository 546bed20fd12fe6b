"""A run's memory does not grow with the deletions it delivers.

Goose -> Mongoose with Mongoose holding every row, so each delivery is looked up,
deleted and recorded done. The emulators run in a process of their own (the
benchmark's `bench.serve`), so what tracemalloc sees here is the engine's alone.
Both runs read pages of the same size, so a bigger answer only means more pages;
whatever the engine keeps per delivery for the run (a list of outcomes, a set of
ids, a log context, a session's identity map) shows as a higher peak.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.scenario import config_text
from bench.throughput import Urls, emulators
from connectors.goose import source as goose_source
from state import OutcomeCounts, RunOutcome, Store
from syncengine.config import load_config
from syncengine.engine import StopToken, build_runtime, run_pipeline

SMALL, LARGE = 2_000, 20_000
PAGE = 500
BYTES_PER_DELIVERY = 40
"""What the peak may grow by per extra delivery: about a tenth of what one held
delivery costs (its id alone in a Python list or set is 36-100 bytes with the int,
an outcome or a log line several hundred), far above the noise of a bounded run
(a few hundred KB either way, wherever the allocator happens to stand)."""


@pytest.fixture(scope="module")
def urls() -> Iterator[Urls]:
    with emulators() as found:
        yield found


def held_at_the_last_batch(
    urls: Urls, records: int, where: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Bytes allocated (tracemalloc) as the run records its last batch, above what was
    allocated when it began; every record's row is in Mongoose. At that point both
    runs hold the same transient state (one batch, the pull over), so what differs
    is what the run kept from the deliveries before."""
    httpx.post(
        f"{urls.control}/round", json={"records": records, "rows": True}, timeout=120
    ).raise_for_status()
    where.mkdir()
    path = where / "config.yaml"
    path.write_text(config_text(urls.goose, urls.mongoose, where / "state.db", 100))
    config = load_config(path)
    held = [0]
    record = Store.record_outcomes

    def recording(self: Store, *args: Any, **kwargs: Any) -> OutcomeCounts:
        held[0] = tracemalloc.get_traced_memory()[0]
        return record(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_outcomes", recording)

    async def go() -> int:
        store = Store.open(config.state.url)
        runtime = build_runtime(config, store)
        try:
            tracemalloc.start()
            began = tracemalloc.get_traced_memory()[0]
            report = await run_pipeline(store, runtime.pipelines["bench"], StopToken())
        finally:
            tracemalloc.stop()
            await runtime.aclose()
            store.close()
        assert report.outcome == RunOutcome.OK, report.error
        assert report.targets["erp"].done == records
        return held[0] - began

    return asyncio.run(go())


def test_what_a_run_holds_does_not_grow_with_deliveries(
    urls: Urls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(goose_source, "CHUNK_RECORDS", PAGE)
    small = held_at_the_last_batch(urls, SMALL, tmp_path / "small", monkeypatch)
    large = held_at_the_last_batch(urls, LARGE, tmp_path / "large", monkeypatch)
    tally = httpx.get(f"{urls.control}/tally", timeout=30).raise_for_status().json()
    assert tally["rows_left"] == 0  # every lookup found its row and deleted it

    grown = large - small
    assert grown < BYTES_PER_DELIVERY * (LARGE - SMALL), (
        f"{small:,} B held at {SMALL:,} deletions, {large:,} B at {LARGE:,}: "
        f"{grown / (LARGE - SMALL):.0f} B more per extra delivery"
    )
