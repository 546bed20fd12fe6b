"""Contract of the Goose source against the Goose emulator, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from connectors.contract import (
    AmbiguousError,
    FatalError,
    InFlightCall,
    RemoteError,
    RetriableError,
    SourcePage,
)
from connectors.goose.emulator import GooseEmulator
from connectors.goose.settings import GooseConnection, GooseSourceSettings
from connectors.goose.source import GooseSource
from connectors.kit.serving import RunningServer, serve

KEY = "engine-key-0123456789"
USER_KEY = "user-key-9876543210"
FAST = {"max_attempts": 4, "base_delay": 0.01, "max_delay": 0.02}


@pytest.fixture
def emulator() -> GooseEmulator:
    emu = GooseEmulator(timezone="Europe/Rome")
    emu.seed(
        {"DEV001": [KEY, USER_KEY]},
        {"CON_TRO": [{"RECORD_ID": f"0-{i}", "SYKEY": f"user{i}"} for i in range(1, 11)]},
    )
    return emu


@pytest.fixture
def server(emulator: GooseEmulator) -> Iterator[RunningServer]:
    with serve(emulator.app) as running:
        yield running


def connection(server: RunningServer, key: str = KEY, **extra: Any) -> GooseConnection:
    return GooseConnection.model_validate(
        {
            "type": "goose",
            "url": f"{server.url}/deleted/",
            "code": "DEV001",
            "key": key,
            "timezone": "Europe/Rome",
            "retry": FAST,
            "calls_per_second": 100,
            **extra,
        }
    )


def source_settings(**extra: Any) -> GooseSourceSettings:
    return GooseSourceSettings.model_validate({"tables": ["CON_TRO"], **extra})


@pytest.fixture
async def source(server: RunningServer) -> AsyncIterator[GooseSource]:
    src = GooseSource("goose", connection(server), source_settings(overlap=5))
    yield src
    await src.aclose()


def now() -> datetime:
    return datetime.now(UTC)


async def read(
    src: GooseSource, cursor: dict[str, Any] | None = None, interrupted: InFlightCall | None = None
) -> SourcePage:
    return await src.fetch(src.plan("CON_TRO", cursor, interrupted, now()))


def keys(page: SourcePage) -> set[str]:
    return {r.key for r in page.records}


async def test_latest_returns_each_deletion_once(
    emulator: GooseEmulator, source: GooseSource
) -> None:
    emulator.delete("CON_TRO", ["0-1", "0-2"])
    first = await read(source)
    assert keys(first) == {"0-1", "0-2"}
    assert first.records[0].fields["SYKEY"] == "user1"
    assert first.cursor["last_ok_started_at"]
    emulator.delete("CON_TRO", ["0-3"])
    assert keys(await read(source, first.cursor)) == {"0-3"}
    assert keys(await read(source, first.cursor)) == set()


async def test_imc_false_excludes_own_key_and_true_includes_it(
    emulator: GooseEmulator, server: RunningServer
) -> None:
    emulator.delete("CON_TRO", ["0-1"])
    emulator.delete("CON_TRO", ["0-2"], by_key=KEY)
    emulator.delete("CON_TRO", ["0-3"], by_key=USER_KEY)
    without = GooseSource("g", connection(server), source_settings(imc=False))
    with_mine = GooseSource(
        "g", connection(server), source_settings(imc=True, **{"from": "watermark"})
    )
    try:
        assert keys(await read(without)) == {"0-1", "0-3"}
        assert keys(await read(with_mine)) == {"0-1", "0-2", "0-3"}
    finally:
        await without.aclose()
        await with_mine.aclose()


async def test_watermark_rereads_the_overlap_and_never_misses(
    emulator: GooseEmulator, server: RunningServer
) -> None:
    src = GooseSource("g", connection(server), source_settings(**{"from": "watermark"}, overlap=30))
    try:
        emulator.delete("CON_TRO", ["0-1"])
        first = await read(src)
        assert keys(first) == {"0-1"}
        emulator.delete("CON_TRO", ["0-2"])
        second = await read(src, first.cursor)
        assert keys(second) == {"0-1", "0-2"}, "the overlap repeats; the journal de-duplicates"
        assert second.more is False
    finally:
        await src.aclose()


def test_plan_latest_and_recovery_windows(server: RunningServer) -> None:
    src = GooseSource(
        "g", connection(server), source_settings(overlap=60, start="2024-05-01 10:00:00")
    )
    t = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)  # 13:00 in Rome
    normal = src.plan("CON_TRO", None, None, t)
    assert dict(normal.params) == {"table": "CON_TRO", "from": "latest", "imc": False}
    assert not normal.recovery
    last_ok = {"last_ok_started_at": "2026-03-01T11:00:00+00:00"}
    lost = InFlightCall(started_at=t - timedelta(minutes=5), params={"from": "latest"})
    recovery = src.plan("CON_TRO", last_ok, lost, t)
    assert recovery.recovery
    assert recovery.params["from"] == "2026-03-01 11:59:00", (
        "last journaled call, Rome time, minus overlap"
    )
    first_ever = src.plan("CON_TRO", None, lost, t)
    assert first_ever.params["from"] == "2024-05-01 10:00:00"
    no_start = GooseSource("g", connection(server), source_settings())
    assert no_start.plan("CON_TRO", None, lost, t).params["from"] == "1970-01-01 00:00:00"
    for call in (normal, recovery, first_ever):
        assert "key" not in call.params and "code" not in call.params


async def test_lost_answer_is_ambiguous_and_recovery_returns_the_window(
    emulator: GooseEmulator, source: GooseSource
) -> None:
    emulator.delete("CON_TRO", ["0-1"])
    first = await read(source)
    emulator.delete("CON_TRO", ["0-2"])  # between the good call and the lost one
    lost_call = source.plan("CON_TRO", first.cursor, None, now())
    emulator.drop_next(1)
    with pytest.raises(AmbiguousError):
        await source.fetch(lost_call)
    emulator.delete("CON_TRO", ["0-3"])
    assert keys(await read(source, first.cursor)) == {"0-3"}, "the server's cursor did move"
    interrupted = InFlightCall(started_at=lost_call.started_at, params=lost_call.params)
    recovered = await read(source, first.cursor, interrupted)
    assert {"0-2", "0-3"} <= keys(recovered)
    assert recovered.more, "after a recovery read the engine returns to latest"


async def test_truncated_answer_is_ambiguous() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"status": "OK", "result": {"total": 3, "data": [{"RECORD_ID": "1"}]}}
        )

    src = GooseSource(
        "g",
        GooseConnection.model_validate(
            {"type": "goose", "url": "http://127.0.0.1:9/deleted/", "code": "D", "key": KEY}
        ),
        source_settings(),
    )
    src.http._client._transport = httpx.MockTransport(handler)
    with pytest.raises(AmbiguousError, match="truncated"):
        await read(src)
    src.http._client._transport = httpx.MockTransport(
        lambda r: httpx.Response(200, text='{"status":"OK","res')
    )
    with pytest.raises(AmbiguousError, match="complete JSON"):
        await read(src)
    await src.aclose()


@pytest.mark.parametrize("as_strings", [False, True])
async def test_error_codes_are_told_apart(
    server: RunningServer, emulator: GooseEmulator, as_strings: bool
) -> None:
    emulator.codes_as_strings = as_strings
    bad_key = GooseSource("g", connection(server, key="wrong-key-555"), source_settings())
    with pytest.raises(FatalError) as info:
        await read(bad_key)
    assert "110" in str(info.value) and "connections.g.key" in str(info.value)
    assert "wrong-key-555" not in str(info.value)
    await bad_key.aclose()
    unknown = GooseSource("g", connection(server), source_settings(tables=["NOPE"]))
    with pytest.raises(RemoteError) as remote:
        await unknown.fetch(unknown.plan("NOPE", None, None, now()))
    assert remote.value.code == "120"
    await unknown.aclose()


async def test_ip_not_allowed_is_fatal(server: RunningServer, emulator: GooseEmulator) -> None:
    emulator.allowed_ips = ["10.9.9.9"]
    src = GooseSource("g", connection(server), source_settings())
    with pytest.raises(FatalError, match="111"):
        await read(src)
    await src.aclose()


async def test_rate_limit_50_is_retried_inline_and_51_is_not(
    server: RunningServer, emulator: GooseEmulator
) -> None:
    emulator.rate_limit_per_second = 1
    src = GooseSource("g", connection(server), source_settings())
    src.http.retry = src.http.retry.__class__(max_attempts=10, base_delay=0.3, max_delay=0.6)
    await read(src)
    page = await read(src)  # the second call in the same second gets code 50, then succeeds
    assert page.records == []
    assert len(emulator.log.as_json()) >= 3
    emulator.rate_limit_per_second = None
    emulator.daily_limit = 0
    with pytest.raises(RetriableError, match="51"):
        await read(src)
    await src.aclose()


async def test_client_side_rate_limit_spaces_calls(server: RunningServer) -> None:
    slow = GooseSource("g", connection(server, calls_per_second=4), source_settings())
    fast = GooseSource("g", connection(server, calls_per_second=1000), source_settings())
    try:
        import time

        began = time.monotonic()
        for _ in range(8):
            await read(fast)
        fast_took = time.monotonic() - began
        began = time.monotonic()
        for _ in range(8):
            await read(slow)
        slow_took = time.monotonic() - began
        assert slow_took > fast_took * 2, (slow_took, fast_took)
    finally:
        await slow.aclose()
        await fast.aclose()


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        GooseConnection.model_validate(
            {
                "type": "goose",
                "url": "http://x/deleted/",
                "code": "D",
                "key": "k",
                "timezone": "Mars/Base",
            }
        )
    with pytest.raises(ValidationError, match="1 to 7"):
        GooseSourceSettings.model_validate({"tables": ["TOOLONGNAME"]})
    with pytest.raises(ValidationError, match="yyyy-mm-dd"):
        GooseSourceSettings.model_validate({"tables": ["T"], "start": "yesterday"})
    assert (
        GooseSourceSettings.model_validate({"tables": ["T"], "from": "watermark"}).mode
        == "watermark"
    )


async def test_operation_service_deletes_as_the_calling_key(
    server: RunningServer, emulator: GooseEmulator
) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{server.url}/operation/",
            json={
                "code": "DEV001",
                "key": KEY,
                "operation": "DELETE",
                "table": "CON_TRO",
                "id": "0-4",
            },
        )
        assert answer.json()["status"] == "OK"
        again = await client.post(
            f"{server.url}/operation/",
            json={
                "code": "DEV001",
                "key": KEY,
                "operation": "DELETE",
                "table": "CON_TRO",
                "id": "0-4",
            },
        )
        assert again.json()["error"]["code"] == 120, "a number unless codes_as_strings"
        bad = await client.post(f"{server.url}/deleted/", content=b"{code: 'DEV001'}")
        assert bad.json()["error"]["code"] == 99
    assert emulator.deletions()[-1]["by_key"] == KEY
    assert next(r for r in emulator.log.as_json() if r["mutating"])["path"] == "/operation/"
