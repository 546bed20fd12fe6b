"""Contract of the Goose source, against the Goose emulator over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import ValidationError

import connectors.goose
from connectors.contract import (
    AmbiguousError,
    ConnectorError,
    FatalError,
    InFlightCall,
    MalformedAnswer,
    RemoteError,
    RetriableError,
    SourceCall,
    SourcePage,
    registry,
)
from connectors.goose.emulator import GooseEmulator, RawJSON
from connectors.goose.settings import GooseConnection, GooseSourceSettings
from connectors.goose.source import (
    GooseSource,
    _row_problem,
    build_source,
    classify,
    goose_time,
)
from connectors.kit.http import HttpClient
from connectors.kit.serving import serve
from connectors.kit.settings import RetrySettings

CODE = "DEV001"
KEY = "engine-key-0123456789abcdef"
USER_KEY = "user-key-9876543210"
TINY_RETRY = {"max_attempts": 4, "base_delay": 0.001, "max_delay": 0.002}
ROME = ZoneInfo("Europe/Rome")


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> datetime:
        self.current += timedelta(seconds=seconds)
        return self.current


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[GooseEmulator, str]]:
    """One server per module: starting uvicorn costs more than most of these tests."""
    emu = GooseEmulator(timezone="Europe/Rome")
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[GooseEmulator, str]) -> GooseEmulator:
    emu = shared[0]
    emu.reset()
    emu.seed(
        {CODE: [KEY, USER_KEY]},
        {"CON_TRO": [{"RECORD_ID": f"0-{i}", "SYKEY": f"user{i}"} for i in range(1, 13)]},
    )
    return emu


@pytest.fixture
def url(emulator: GooseEmulator, shared: tuple[GooseEmulator, str]) -> str:
    return f"{shared[1]}/deleted/"


def connection(url: str = "http://127.0.0.1:9/deleted/", **extra: Any) -> GooseConnection:
    return GooseConnection.model_validate(
        {
            "type": "goose",
            "url": url,
            "code": CODE,
            "key": KEY,
            "timezone": "Europe/Rome",
            "retry": TINY_RETRY,
            "calls_per_second": 1000,
            **extra,
        }
    )


def settings(**extra: Any) -> GooseSourceSettings:
    return GooseSourceSettings.model_validate({"tables": ["CON_TRO"], **extra})


@pytest.fixture
async def make_source(url: str) -> AsyncIterator[Callable[..., GooseSource]]:
    """Builds sources bound to the emulator and closes them after the test."""
    built: list[GooseSource] = []

    def make(conn: dict[str, Any] | None = None, **source: Any) -> GooseSource:
        src = GooseSource("goose", connection(url, **(conn or {})), settings(**source))
        built.append(src)
        return src

    yield make
    for src in built:
        await src.aclose()


def now() -> datetime:
    return datetime.now(UTC)


async def read(
    src: GooseSource,
    cursor: dict[str, Any] | None = None,
    interrupted: InFlightCall | None = None,
    at: datetime | None = None,
) -> SourcePage:
    return await src.fetch(src.plan("CON_TRO", cursor, interrupted, at or now()))


def keys(page: SourcePage) -> list[str]:
    return [r.key for r in page.records]


def deleted_calls(emulator: GooseEmulator) -> list[int]:
    return [r["status"] for r in emulator.log.as_json() if r["path"] == "/deleted/"]


# --- plan: pure --------------------------------------------------------------

T = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)  # 13:00 in Rome
LAST_OK = {"last_ok_started_at": "2026-03-01T11:00:00+00:00"}  # 12:00 in Rome
LOST = InFlightCall(
    started_at=T - timedelta(minutes=5), params={"table": "CON_TRO", "from": "latest"}
)


def planner(**source: Any) -> GooseSource:
    return GooseSource("g", connection(), settings(**source))


def test_plan_latest_without_an_interrupted_call() -> None:
    call = planner(imc=True).plan("CON_TRO", LAST_OK, None, T.astimezone(ROME))
    assert dict(call.params) == {"table": "CON_TRO", "from": "latest", "imc": True}
    assert call.recovery is False
    assert call.started_at == T and call.started_at.utcoffset() == timedelta(0)


def test_plan_recovery_starts_from_the_last_good_call_minus_overlap() -> None:
    call = planner(overlap="1m").plan("CON_TRO", LAST_OK, LOST, T)
    assert call.recovery is True
    assert call.params["from"] == "2026-03-01 11:59:00", "12:00 Rome minus one minute"
    lost_start = goose_time(LOST.started_at - timedelta(minutes=1), ROME)
    assert call.params["from"] != lost_start, "never from the start of the lost call"
    assert call.params["imc"] is False


def test_plan_recovery_without_a_cursor_sends_a_timestamp_anyway() -> None:
    with_start = planner(start="2024-05-01 10:00:00").plan("CON_TRO", None, LOST, T)
    assert with_start.params["from"] == "2024-05-01 10:00:00" and with_start.recovery
    bare = planner().plan("CON_TRO", None, LOST, T)
    assert bare.params["from"] == "1970-01-01 00:00:00"
    assert planner().plan("CON_TRO", {}, LOST, T).params["from"] == "1970-01-01 00:00:00"


def test_plan_watermark_reads_by_timestamp_and_flags_recovery() -> None:
    src = planner(**{"from": "watermark"}, overlap=120, start="2025-01-01 00:00:00")
    first = src.plan("CON_TRO", None, None, T)
    assert first.params["from"] == "2025-01-01 00:00:00" and not first.recovery
    later = src.plan("CON_TRO", LAST_OK, None, T)
    assert later.params["from"] == "2026-03-01 11:58:00" and not later.recovery
    again = src.plan("CON_TRO", LAST_OK, LOST, T)
    assert again.params == later.params and again.recovery


def test_plan_reads_a_cursor_without_offset_as_utc() -> None:
    naive = {"last_ok_started_at": "2026-03-01T11:00:00"}
    assert planner(overlap=0).plan("CON_TRO", naive, LOST, T).params["from"] == (
        "2026-03-01 12:00:00"
    )


def test_plan_never_puts_credentials_in_params() -> None:
    src = planner()
    for call in (
        src.plan("CON_TRO", None, None, T),
        src.plan("CON_TRO", LAST_OK, LOST, T),
        planner(**{"from": "watermark"}).plan("CON_TRO", LAST_OK, None, T),
    ):
        assert set(call.params) == {"table", "from", "imc"}
        assert KEY not in repr(call) and CODE not in repr(call.params)


def test_goose_time_never_skips_the_repeated_hour() -> None:
    """Rome goes from 03:00 CEST back to 02:00 CET at 01:00 UTC on 2025-10-26."""
    before = datetime(2025, 10, 26, 0, 50, tzinfo=UTC)  # 02:50 CEST
    assert goose_time(before, ROME) == "2025-10-26 01:50:00", "the smaller offset's wall time"
    ordinary = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    assert goose_time(ordinary, ROME) == "2026-03-01 12:00:00"
    spring = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 CET, clocks go forward at 01:00
    assert goose_time(spring, ROME) == "2026-03-29 01:30:00"


def test_each_call_says_which_span_of_time_its_answer_covers() -> None:
    """Successive `latest` calls share a boundary and never overlap; a recovery read
    overlaps the call before the lost one and the `latest` call after it."""
    src = planner(overlap="1m")
    first = src.plan("CON_TRO", None, None, T)
    assert (first.window_start, first.window_end) == (None, T), "the first latest: everything"
    after = {"last_ok_started_at": T.isoformat(), "latest_since": T.isoformat()}
    later = T + timedelta(minutes=10)
    second = src.plan("CON_TRO", after, None, later)
    assert (second.window_start, second.window_end) == (T, later)
    recovery = src.plan("CON_TRO", after, LOST, later)
    assert recovery.params["from"] == "2026-03-01 12:59:00", "13:00 Rome minus one minute"
    assert recovery.window_start == T - timedelta(minutes=1) and recovery.window_end == later
    assert recovery.window_start < T, "overlaps the call before the lost one"


async def test_a_latest_call_after_a_recovery_starts_at_the_last_latest_call() -> None:
    """The recovery's cursor keeps where Goose's `latest` answers from, so the call
    after it overlaps the recovery but not the `latest` call before the lost one."""
    src, _ = mocked(lambda request: ok([], 0), overlap=60)
    previous = {"last_ok_started_at": T.isoformat(), "latest_since": T.isoformat()}
    recovered_at = T + timedelta(minutes=10)
    recovery = src.plan("CON_TRO", previous, LOST, recovered_at)
    page = await src.fetch(recovery)
    assert page.cursor == {
        "last_ok_started_at": recovered_at.isoformat(),
        "latest_since": T.isoformat(),
    }
    back = src.plan("CON_TRO", page.cursor, None, recovered_at + timedelta(seconds=1))
    assert back.params["from"] == "latest"
    assert back.window_start == T, "from the start of the last latest call"
    assert recovery.window_start is not None and recovery.window_start < T < recovery.started_at
    assert (await src.fetch(back)).cursor["latest_since"] == back.started_at.isoformat()
    await src.aclose()


def test_a_backfill_covers_from_its_time_in_the_connection_zone() -> None:
    call = planner().plan_backfill("CON_TRO", "2026-03-01 12:00:00", T)
    assert call.window_start == datetime(2026, 3, 1, 11, 0, tzinfo=UTC) and call.window_end == T


# --- fetch against the emulator ------------------------------------------------


async def test_latest_returns_each_deletion_once(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    src = make_source()
    emulator.delete("CON_TRO", ["0-1", "0-2"])
    first = await read(src)
    assert keys(first) == ["0-1", "0-2"]
    assert dict(first.records[0].fields) == {
        "TABLE": "CON_TRO",
        "RECORD_ID": "0-1",
        "SYKEY": "user1",
    }
    assert first.records[0].stream == "CON_TRO"
    assert [r.origin for r in first.records] == [
        "goose:DEV001:CON_TRO:0-1",
        "goose:DEV001:CON_TRO:0-2",
    ], "named as a Goose target names what it deletes"
    assert datetime.fromisoformat(first.cursor["last_ok_started_at"]).utcoffset() == timedelta(0)
    assert first.more is False
    emulator.delete("CON_TRO", ["0-3"])
    second = await read(src, first.cursor)
    assert keys(second) == ["0-3"]
    assert keys(await read(src, second.cursor)) == []
    assert src.streams() == ["CON_TRO"]


async def test_imc_false_leaves_out_the_engines_own_deletions(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    emulator.delete("CON_TRO", ["0-1"])
    emulator.delete("CON_TRO", ["0-2"], by_key=KEY)
    emulator.delete("CON_TRO", ["0-3"], by_key=USER_KEY)
    without, including = make_source(imc=False), make_source(imc=True)
    assert keys(await read(without)) == ["0-1", "0-3"]
    assert keys(await read(including)) == [], "the same key shares Goose's latest cursor"
    emulator.delete("CON_TRO", ["0-4"], by_key=KEY)
    assert keys(await read(including)) == ["0-4"]
    watermark = make_source(imc=True, **{"from": "watermark"})
    assert keys(await read(watermark)) == ["0-1", "0-2", "0-3", "0-4"]


async def test_watermark_rereads_the_overlap_and_never_misses(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    emulator.clock = clock
    src = make_source(**{"from": "watermark"}, overlap=60)
    emulator.delete("CON_TRO", ["0-1"])
    first = await read(src, at=clock.advance(10))
    assert keys(first) == ["0-1"] and first.more is False
    # Goose's clock runs 30 s behind ours: this deletion, made after our call,
    # carries an earlier time than the call's start. The overlap catches it.
    clock.advance(-30)
    emulator.delete("CON_TRO", ["0-2"])
    clock.advance(60)
    emulator.delete("CON_TRO", ["0-3"])
    second = await read(src, first.cursor, at=clock.current)
    assert keys(second) == ["0-1", "0-2", "0-3"], (
        "the overlap repeats 0-1; the journal de-duplicates"
    )
    third = await read(src, second.cursor, at=clock.advance(120))
    assert keys(third) == ["0-1", "0-2", "0-3"], "still within a minute of the last call"
    assert keys(await read(src, third.cursor, at=clock.advance(10))) == []


async def test_a_timestamp_read_survives_the_night_the_clocks_go_back(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    clock = FakeClock(datetime(2025, 10, 26, 0, 50, tzinfo=UTC))  # 02:50 CEST
    emulator.clock = clock
    src = make_source(**{"from": "watermark"}, overlap=0)
    first = await read(src, at=clock.current)
    clock.advance(20 * 60)  # 01:10 UTC, 02:10 CET: earlier on the wall than the last call
    emulator.delete("CON_TRO", ["0-1"])
    second = await read(src, first.cursor, at=clock.advance(60))
    assert keys(second) == ["0-1"]


async def test_a_lost_latest_answer_is_recovered_from_the_last_good_call(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    src = make_source(overlap=5)
    emulator.delete("CON_TRO", ["0-1"])
    good = await read(src)
    emulator.delete("CON_TRO", ["0-2"])  # between the last good call and the lost one
    lost_call = src.plan("CON_TRO", good.cursor, None, now())
    emulator.drop_next(1)
    emulator.log.clear()
    with pytest.raises(AmbiguousError):
        await src.fetch(lost_call)
    assert deleted_calls(emulator) == [500], "a latest call is never re-sent after a lost answer"
    emulator.delete("CON_TRO", ["0-3"])
    interrupted = InFlightCall(started_at=lost_call.started_at, params=lost_call.params)
    recovery = src.plan("CON_TRO", good.cursor, interrupted, now())
    assert recovery.recovery and recovery.params["from"] != "latest"
    recovered = await src.fetch(recovery)
    assert keys(recovered) == ["0-1", "0-2", "0-3"], "0-1 again (overlap), 0-2 and 0-3 saved"
    assert recovered.more, "after a recovery read the engine goes back to latest"
    back = await read(src, recovered.cursor)
    assert keys(back) == ["0-3"], "Goose's cursor stopped at the lost call; the journal de-dups"
    assert keys(await read(src, back.cursor)) == []


async def test_a_row_without_record_id_is_handed_back_and_the_rest_goes_on(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    src = make_source()
    emulator.delete("CON_TRO", ["0-1"])
    emulator.add_raw_deletion("CON_TRO", {"TABLE": "CON_TRO", "SYKEY": "ghost"})
    emulator.delete("CON_TRO", ["0-2"])
    page = await read(src)
    assert keys(page) == ["0-1", "0-2"]
    [rejected] = page.rejected
    assert rejected.reason == "a record without RECORD_ID"
    assert dict(rejected.fields) == {"TABLE": "CON_TRO", "SYKEY": "ghost"}
    assert rejected.stream == "CON_TRO"
    assert page.cursor["last_ok_started_at"], "the cursor moves past the bad row"
    assert keys(await read(src, page.cursor)) == [] and not (await read(src)).rejected


async def test_a_server_that_says_ok_then_error_after_a_page_of_rows_sends_nothing(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    """The reproduction: 5,000 rows read while the status said OK, then a second status
    saying error. The answer is malformed, and its one page is never handed on."""
    emulator.seed({CODE: [KEY]}, {"BIG": [{"RECORD_ID": f"b-{i}"} for i in range(5000)]})
    emulator.delete("BIG", [f"b-{i}" for i in range(5000)])
    emulator.answer_tail = ',"status":"error","error":{"code":120,"description":"x"}'
    src = make_source(tables=["BIG"])
    got: list[SourcePage] = []
    with pytest.raises(MalformedAnswer, match="'status' given twice"):
        async with aclosing(src.fetch_pages(src.plan("BIG", None, None, now()))) as pages:
            async for page in pages:
                got.append(page)
    assert got == []


async def test_hostile_rows_from_the_server_are_rejects_and_the_rest_goes_on(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    emulator.delete("CON_TRO", ["0-1"])
    for text in [
        '{"TABLE":"CON_TRO","RECORD_ID":"0-2","\\udc00x":1}',
        '{"TABLE":"CON_TRO","\\ud800":"0-3"}',
        '{"TABLE":"CON_TRO","RECORD_ID":"0-4","N":1e999}',
        '{"TABLE":"CON_TRO","RECORD_ID":"0-5","N":' + "9" * 5000 + "}",
    ]:
        emulator.add_raw_deletion("CON_TRO", RawJSON(text))
    emulator.delete("CON_TRO", ["0-6"])
    page = await read(make_source())
    assert keys(page) == ["0-1", "0-6"]
    assert [r.reason for r in page.rejected] == [
        "a lone surrogate (\\udc00) in a string",
        "a lone surrogate (\\ud800) in a string",
        "a number beyond a float's range (1E+999)",
        "a number written with more than 4300 characters",
    ]
    assert page.cursor["last_ok_started_at"], "the table goes on"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"TABLE": "CON_TRO", "RECORD_ID": "", "SYKEY": "x"}, "a record without RECORD_ID"),
        ({"TABLE": "CON_TRO", "RECORD_ID": None}, "a record without RECORD_ID"),
        ({"RECORD_ID": "   "}, "a record without RECORD_ID"),
        ({"RECORD_ID": {"id": "0-1"}}, "RECORD_ID is a dict, not a string"),
        ({"RECORD_ID": True}, "RECORD_ID is a bool, not a string"),
        ({"TABLE": "AGE_FAM", "RECORD_ID": "0-1"}, "TABLE 'AGE_FAM' is not the table read"),
        ("0-1", "a row that is not an object (str)"),
    ],
    ids=["empty", "null", "blank", "object", "bool", "other-table", "not-an-object"],
)
async def test_every_malformed_row_is_a_reject_with_its_reason(row: Any, reason: str) -> None:
    good = {"TABLE": "con_tro", "RECORD_ID": 7, "SYKEY": "a"}
    src, _ = mocked(lambda request: ok([good, row], 2))
    page = await read(src)
    assert keys(page) == ["7"], "a number is a key as written; the table's case is Goose's"
    [rejected] = page.rejected
    assert rejected.reason.startswith(reason)
    assert dict(rejected.fields) == (row if isinstance(row, dict) else {"row": row})
    await src.aclose()


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"RECORD_ID": "0-1", "TABLE": "CON_TRO"}, None),
        ({"RECORD_ID": 0}, None),  # a falsy number is still a key
        ({"RECORD_ID": "0"}, None),
        ({"RECORD_ID": "0-1", "TABLE": " con_tro "}, None),
        ({"RECORD_ID": "0-1", "TABLE": "  "}, None),
        ({"RECORD_ID": "0-1", "TABLE": 5}, None),
        ({}, "a record without RECORD_ID"),
        ({"RECORD_ID": "\t"}, "a record without RECORD_ID"),
        ({"RECORD_ID": 1.0}, "RECORD_ID is a float, not a string"),
        ({"RECORD_ID": False}, "RECORD_ID is a bool, not a string"),
        ({"RECORD_ID": ["0-1"]}, "RECORD_ID is a list, not a string"),
        ({"RECORD_ID": 7, "TABLE": "CON"}, "TABLE 'CON' is not the table read (CON_TRO)"),
        (None, "a row that is not an object (NoneType)"),
    ],
)
def test_row_problem_names_what_makes_a_row_no_record(row: Any, reason: str | None) -> None:
    assert _row_problem(row, "CON_TRO") == reason


async def test_a_lost_timestamp_answer_is_retried_in_line(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    src = make_source(**{"from": "watermark"})
    emulator.delete("CON_TRO", ["0-1"])
    emulator.drop_next(1)
    assert keys(await read(src)) == ["0-1"]
    assert deleted_calls(emulator) == [500, 200]


async def test_one_call_per_run_stops_after_the_recovery_read(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    src = make_source(max_calls_per_run=1)
    page = await read(src, None, LOST)
    assert page.more is False


# --- answers that cannot be trusted, and error answers ---------------------------------


def mocked(
    handler: Callable[[httpx.Request], httpx.Response], attempts: int = 4, **source: Any
) -> tuple[GooseSource, list[httpx.Request]]:
    """A source whose HTTP goes to `handler`, for answers the emulator never gives."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    conn = connection()
    http = HttpClient(
        connection="g",
        retry=RetrySettings.model_validate({**TINY_RETRY, "max_attempts": attempts}).policy(),
        secrets=[KEY],
        classify=classify,
        transport=httpx.MockTransport(record),
    )
    return GooseSource("g", conn, settings(**source), http=http), seen


def ok(data: list[dict[str, Any]], total: Any) -> httpx.Response:
    return httpx.Response(200, json={"status": "OK", "result": {"total": total, "data": data}})


@pytest.mark.parametrize(
    "answer",
    [
        ok([{"RECORD_ID": "1"}], 3),
        ok([{"RECORD_ID": "1"}], None),
        ok([{"RECORD_ID": "1"}], "many"),
        httpx.Response(200, json={"status": "OK", "result": {"total": 0}}),
        httpx.Response(200, text='{"status":"OK","result":{"total":2,"data":[{"RECORD_ID":"1"'),
        httpx.Response(200, text="<html>gateway</html>"),
        httpx.Response(200, json=["OK"]),
    ],
    ids=["short", "no-total", "bad-total", "no-data", "cut", "html", "array"],
)
async def test_an_untrustworthy_answer_is_ambiguous(answer: httpx.Response) -> None:
    src, seen = mocked(lambda request: answer)
    with pytest.raises(AmbiguousError):
        await read(src)
    assert len(seen) == 1
    await src.aclose()


async def test_the_request_body_carries_credentials_and_params() -> None:
    src, seen = mocked(lambda request: ok([], 0), imc=True)
    await read(src)
    assert json.loads(seen[0].content) == {
        "code": CODE,
        "key": KEY,
        "table": "CON_TRO",
        "from": "latest",
        "imc": True,
    }
    assert seen[0].method == "POST" and seen[0].url.path == "/deleted/"
    await src.aclose()


async def test_a_wrong_url_is_fatal() -> None:
    for status in (301, 404):
        src, _ = mocked(lambda request, status=status: httpx.Response(status, text="nope"))
        with pytest.raises(FatalError, match=r"connections\.g\.url"):
            await read(src)
        await src.aclose()


@pytest.mark.parametrize("as_strings", [False, True])
async def test_error_codes_are_told_apart(
    emulator: GooseEmulator,
    make_source: Callable[..., GooseSource],
    as_strings: bool,
) -> None:
    emulator.codes_as_strings = as_strings
    bad_key = make_source({"key": "wrong-key-555"})
    unknown = make_source(tables=["NOPE"])
    with pytest.raises(FatalError) as rejected:
        await read(bad_key)
    message = str(rejected.value)
    assert "110" in message and "connections.goose.key" in message
    assert "wrong-key-555" not in message
    assert rejected.value.connection == "goose"
    with pytest.raises(RemoteError) as remote:
        await unknown.fetch(unknown.plan("NOPE", None, None, now()))
    assert remote.value.code == "120" and "NOPE" in str(remote.value)
    assert KEY not in str(remote.value)
    emulator.allowed_ips = ["10.9.9.9"]
    with pytest.raises(FatalError, match="111") as refused:
        await read(make_source())
    assert "IP" in str(refused.value) and KEY not in str(refused.value)


@pytest.mark.parametrize("code", [99, "105", 108, 777])
async def test_other_errors_are_remote_errors_with_their_code(code: Any) -> None:
    answer = {"status": "error", "error": {"code": code, "description": f"boom with {KEY}"}}
    src, seen = mocked(lambda request: httpx.Response(200, json=answer))
    with pytest.raises(RemoteError) as info:
        await read(src)
    assert info.value.code == str(code)
    assert "boom" in str(info.value) and KEY not in str(info.value)
    assert len(seen) == 1
    await src.aclose()


async def test_rate_limit_50_is_retried_in_line_until_it_passes(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    emulator.rate_limit_per_second = 1
    src = make_source()
    await read(src)
    emulator.delete("CON_TRO", ["0-1"])
    page = await read(src)  # refused with 50 in the same second, then served
    assert keys(page) == ["0-1"]
    codes = deleted_calls(emulator)
    assert len(codes) == 3 and codes == [200, 200, 200]
    assert len(emulator.deletions()) == 1


async def test_rate_limit_50_that_persists_is_retriable_not_ambiguous(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    emulator.rate_limit_per_second = 0
    src = make_source({"retry": {**TINY_RETRY, "max_attempts": 1}})
    with pytest.raises(RetriableError) as info:
        await read(src)
    assert not isinstance(info.value, AmbiguousError)
    assert "50" in str(info.value) and KEY not in str(info.value)


async def test_daily_limit_51_waits_for_the_next_run(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    emulator.daily_limit = 0
    src = make_source()
    with pytest.raises(RetriableError, match="51") as info:
        await read(src)
    assert not isinstance(info.value, AmbiguousError)
    assert len(deleted_calls(emulator)) == 1, "no in-line retry for the daily limit"


async def test_transport_failures_propagate_classified(
    make_source: Callable[..., GooseSource],
) -> None:
    src = GooseSource(
        "goose",
        connection("http://127.0.0.1:9/deleted/", retry={**TINY_RETRY, "max_attempts": 1}),
        settings(),
    )
    with pytest.raises(RetriableError, match="cannot connect") as info:
        await read(src)
    assert not isinstance(info.value, AmbiguousError)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, text=f"crash while handling key {KEY}"),
        httpx.Response(400, text=f"bad request for key {KEY}"),
        httpx.Response(200, text=f'{{"status":"OK","key":"{KEY}"'),
        httpx.Response(
            200, json={"status": "error", "error": {"code": 110, "description": f"key {KEY}"}}
        ),
        httpx.Response(
            200, json={"status": "error", "error": {"code": "50", "description": f"key {KEY}"}}
        ),
    ],
    ids=["500", "400", "cut", "110", "50"],
)
async def test_the_key_never_reaches_a_message(answer: httpx.Response) -> None:
    src, _ = mocked(lambda request: answer, attempts=1, **{"from": "watermark"})
    with pytest.raises(ConnectorError) as info:
        await read(src)
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)
    await src.aclose()


# --- rate limit on our side ---------------------------------------------------------------


async def test_the_documented_rate_is_the_default_client_limit(
    emulator: GooseEmulator, make_source: Callable[..., GooseSource]
) -> None:
    default = make_source({"calls_per_second": None})
    fast = make_source({"calls_per_second": 1000})

    async def elapsed(src: GooseSource, calls: int) -> float:
        began = time.monotonic()
        for _ in range(calls):
            await read(src)
        return time.monotonic() - began

    fast_took = await elapsed(fast, 8)
    default_took = await elapsed(default, 8)
    # 5 per second with a burst of 5: the last 3 of 8 calls wait 0.2 s each
    assert default_took >= 0.45, default_took
    assert default_took > 2 * fast_took, (default_took, fast_took)
    assert set(deleted_calls(emulator)) == {200}


# --- settings and registration ------------------------------------------------------------


def test_connection_settings() -> None:
    conn = connection("https://api.gooseapp.com/deleted/", calls_per_second=None)
    assert conn.operation_url == "https://api.gooseapp.com/operation/"
    assert conn.calls_per_second is None
    assert KEY not in repr(conn) and KEY not in conn.model_dump_json()
    assert connection("http://h/api/deleted").operation_url == "http://h/api/operation"
    assert connection("http://h/x/", operation_url="http://h/op/").operation_url == "http://h/op/"
    assert connection("http://h/x/").operation_url is None
    with pytest.raises(ValidationError, match="Mars/Base"):
        connection(timezone="Mars/Base")
    with pytest.raises(ValidationError, match="http"):
        connection("ftp://h/deleted/")
    with pytest.raises(ValidationError):
        connection(code="TOOLONG")
    with pytest.raises(ValidationError):
        connection(code="")


def test_source_settings() -> None:
    defaults = GooseSourceSettings.model_validate({"tables": ["CON_TRO"]})
    assert (defaults.mode, defaults.imc, defaults.start, defaults.overlap) == (
        "latest",
        False,
        None,
        120.0,
    )
    assert defaults.max_calls_per_run == 10
    assert settings(**{"from": "watermark"}).mode == "watermark"
    assert GooseSourceSettings(tables=["A"], mode="watermark").mode == "watermark"
    assert settings(overlap="2m").overlap == 120.0
    for bad in (
        {"tables": []},
        {"tables": ["TOOLONGX"]},
        {"tables": [""]},
        {"tables": ["A", "A"]},
        {"tables": ["A"], "from": "earliest"},
        {"tables": ["A"], "start": "2024-05-01"},
        {"tables": ["A"], "overlap": -1},
        {"tables": ["A"], "max_calls_per_run": 0},
        {"tables": ["A"], "max_calls_per_run": 1001},
        {"tables": ["A"], "colour": "red"},
    ):
        with pytest.raises(ValidationError):
            GooseSourceSettings.model_validate(bad)


def test_registered_as_goose() -> None:
    info = registry.get("goose")
    assert info.connection_settings is GooseConnection
    assert info.source_settings is GooseSourceSettings
    assert info.build_source is build_source
    assert set(connectors.goose.__all__) >= {
        "GooseConnection",
        "GooseSource",
        "GooseSourceSettings",
    }
    assert connectors.goose.__all__ == sorted(connectors.goose.__all__)
    source = build_source("g", connection(), settings())
    assert isinstance(source, GooseSource)
    with pytest.raises(TypeError):
        build_source("g", settings(), connection())


def test_a_source_call_is_plain_data() -> None:
    call = planner().plan("CON_TRO", None, None, T)
    assert isinstance(call, SourceCall)
    assert all(isinstance(v, str | bool) for v in call.params.values())
