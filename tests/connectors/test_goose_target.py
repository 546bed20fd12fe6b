"""Contract of the Goose delete target (OPERATION DELETE), against the emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import ValidationError

import connectors.goose
from connectors.contract import (
    Delivery,
    FatalError,
    Outcome,
    OutcomeKind,
    Previewable,
    Target,
    registry,
)
from connectors.goose.emulator import GooseEmulator
from connectors.goose.settings import (
    GooseConnection,
    GooseSourceSettings,
    GooseTargetSettings,
    record_name,
)
from connectors.goose.source import GooseSource, classify
from connectors.goose.target import GooseDeleteTarget, build_target, until_midnight
from connectors.kit.http import HttpClient, RetryPolicy
from connectors.kit.serving import serve
from syncengine.config import ConfigError, parse_config

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

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


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
def base_url(emulator: GooseEmulator, shared: tuple[GooseEmulator, str]) -> str:
    return shared[1]


def connection(base_url: str = "http://127.0.0.1:9", **extra: Any) -> GooseConnection:
    return GooseConnection.model_validate(
        {
            "type": "goose",
            "url": f"{base_url}/deleted/",
            "code": CODE,
            "key": KEY,
            "timezone": "Europe/Rome",
            "retry": TINY_RETRY,
            "calls_per_second": 1000,
            **extra,
        }
    )


def target_settings(**extra: Any) -> GooseTargetSettings:
    return GooseTargetSettings.model_validate({"table": "CON_TRO", "id": "{RECORD_ID}", **extra})


@pytest.fixture
async def make_target(base_url: str) -> AsyncIterator[Callable[..., GooseDeleteTarget]]:
    """Builds targets bound to the emulator and closes them after the test."""
    built: list[GooseDeleteTarget] = []

    def make(
        conn: dict[str, Any] | None = None, http: HttpClient | None = None, **target: Any
    ) -> GooseDeleteTarget:
        made = GooseDeleteTarget(
            "goose", connection(base_url, **(conn or {})), target_settings(**target), http=http
        )
        built.append(made)
        return made

    yield make
    for made in built:
        await made.aclose()


def delivery(delivery_id: int, record_id: Any = None, **fields: Any) -> Delivery:
    values = {"RECORD_ID": record_id, **fields} if record_id is not None else fields
    return Delivery(delivery_id, "CON_TRO", str(record_id), values)


def batch(*record_ids: str) -> list[Delivery]:
    return [delivery(n, rid) for n, rid in enumerate(record_ids, start=1)]


def operation_calls(emulator: GooseEmulator) -> list[dict[str, Any]]:
    return [r for r in emulator.log.as_json() if r["path"] == "/operation/"]


def kinds(outcomes: list[Outcome]) -> list[OutcomeKind]:
    return [o.kind for o in outcomes]


def remaining(emulator: GooseEmulator) -> set[str]:
    return {r["RECORD_ID"] for r in emulator.records("CON_TRO")}


# --- sending ----------------------------------------------------------------------


async def test_deletes_each_record_and_names_it_as_the_effect(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    target = make_target()
    outcomes = await target.send(batch("0-1", "0-5", "0-9"))
    assert outcomes == [
        Outcome.done(1, "deleted", "goose:DEV001:CON_TRO:0-1"),
        Outcome.done(2, "deleted", "goose:DEV001:CON_TRO:0-5"),
        Outcome.done(3, "deleted", "goose:DEV001:CON_TRO:0-9"),
    ]
    truth = emulator.deletions()
    assert [(d["table"], d["RECORD_ID"], d["by_key"]) for d in truth] == [
        ("CON_TRO", "0-1", KEY),
        ("CON_TRO", "0-5", KEY),
        ("CON_TRO", "0-9", KEY),
    ], "exactly those records, attributed to the engine's key"
    assert remaining(emulator) == {f"0-{i}" for i in range(1, 13)} - {"0-1", "0-5", "0-9"}
    calls = operation_calls(emulator)
    assert [(c["method"], c["status"], c["mutating"]) for c in calls] == [("POST", 200, True)] * 3


async def test_unmappable_and_too_long_ids_are_dead_and_never_sent(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    target = make_target()
    deliveries = [
        delivery(1, SYKEY="user1"),
        Delivery(2, "CON_TRO", "k", {"RECORD_ID": None}),
        Delivery(3, "CON_TRO", "k", {"RECORD_ID": "   "}),
        delivery(4, "x" * 26),
        delivery(5, "y" * 25),
        delivery(6, "0-4"),
    ]
    outcomes = await target.send(deliveries)
    assert kinds(outcomes) == [OutcomeKind.DEAD] * 4 + [OutcomeKind.DONE] * 2
    assert outcomes[0].reason.startswith("no key: field 'RECORD_ID' is missing")
    assert outcomes[1].reason == "no key: field 'RECORD_ID' is null"
    assert outcomes[2].reason == "no key: field 'RECORD_ID' is blank"
    assert "26 characters" in outcomes[3].reason and "at most 25" in outcomes[3].reason
    assert outcomes[4].detail == "absent", "25 characters is a valid RECORD_ID, just not there"
    assert outcomes[5].detail == "deleted"
    assert len(operation_calls(emulator)) == 2, "dead deliveries are never sent"


async def test_deliveries_naming_the_same_record_share_one_call(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    target = make_target(id="0-{N}")
    deliveries = [delivery(n, None, N=i) for n, i in enumerate([3, 4, 3, 3, 4], start=1)]
    outcomes = await target.send(deliveries)
    assert [o.delivery_id for o in outcomes] == [1, 2, 3, 4, 5]
    assert {(o.kind, o.detail) for o in outcomes} == {(OutcomeKind.DONE, "deleted")}
    assert [o.effect for o in outcomes] == [
        record_name(CODE, "CON_TRO", f"0-{i}") for i in [3, 4, 3, 3, 4]
    ]
    assert len(operation_calls(emulator)) == 2


async def test_the_key_travels_in_the_body_and_nowhere_else(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    target = make_target(table="NOPE")
    outcomes = await target.send(batch("0-1"))
    assert KEY in target._http.secrets, "registered for scrubbing"
    assert all(KEY not in repr(o) for o in outcomes)
    assert KEY not in repr(target.settings) and KEY not in target.url


async def test_goose_text_that_echoes_the_key_is_scrubbed() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body == {
            "code": CODE,
            "key": KEY,
            "operation": "DELETE",
            "table": "CON_TRO",
            "id": "0-1",
        }
        text = f"Unknown column in 'where clause' for key {KEY}"
        return httpx.Response(
            200,
            json={"status": "error", "error": {"code": "120", "description": text, "query": KEY}},
        )

    http = HttpClient(
        connection="goose",
        retry=RetryPolicy(max_attempts=1),
        classify=classify,
        transport=httpx.MockTransport(answer),
    )
    target = GooseDeleteTarget("goose", connection(), target_settings(), http=http)
    try:
        (outcome,) = await target.send(batch("0-1"))
    finally:
        await target.aclose()
    assert outcome.kind is OutcomeKind.RETRY
    assert KEY not in outcome.reason and "***" in outcome.reason
    assert "Unknown column" in outcome.reason


# --- Goose's errors ----------------------------------------------------------------


def answering(code: Any, description: str) -> HttpClient:
    """A client whose every call gets one Goose error answer (codes the emulator never
    gives the target, since it refuses such requests before sending them)."""

    def answer(request: httpx.Request) -> httpx.Response:
        error = {"code": code, "description": description}
        return httpx.Response(200, json={"status": "error", "error": error})

    return HttpClient(
        connection="goose",
        retry=RetryPolicy(max_attempts=1),
        classify=classify,
        transport=httpx.MockTransport(answer),
    )


@pytest.mark.parametrize("code", [104, "104", 108])
async def test_a_record_format_error_is_dead(code: Any) -> None:
    target = GooseDeleteTarget(
        "goose",
        connection(),
        target_settings(),
        http=answering(code, "Format field 'id' not valid"),
    )
    try:
        outcomes = await target.send(batch("0-1", "0-2"))
    finally:
        await target.aclose()
    assert kinds(outcomes) == [OutcomeKind.DEAD, OutcomeKind.DEAD]
    assert "Format field 'id' not valid" in outcomes[0].reason


@pytest.mark.parametrize(
    ("code", "field", "setting"),
    [
        (100, "operation", "connections.goose.operation_url"),
        ("101", "code", "connections.goose.code"),
        (102, "key", "connections.goose.key"),
        ("103", "table", "the target's table"),
    ],
)
async def test_a_format_error_about_the_configuration_is_fatal(
    code: Any, field: str, setting: str
) -> None:
    """Every call sends these fields alike: no delivery can succeed until the
    configuration changes, so none is declared dead."""
    description = f"Format field '{field}' not valid"
    target = GooseDeleteTarget(
        "goose", connection(), target_settings(), http=answering(code, description)
    )
    try:
        with pytest.raises(FatalError) as info:
            await target.send(batch("0-1"))
    finally:
        await target.aclose()
    assert setting in str(info.value) and description in str(info.value)
    assert KEY not in str(info.value)


async def test_an_unknown_error_is_retried() -> None:
    target = GooseDeleteTarget(
        "goose", connection(), target_settings(), http=answering(99, "JSON format not valid")
    )
    try:
        (outcome,) = await target.send(batch("0-1"))
    finally:
        await target.aclose()
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.reason.endswith("Goose error 99 JSON format not valid")


@pytest.mark.parametrize("as_strings", [False, True])
async def test_a_rejected_key_stops_the_pipeline_without_showing_it(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget], as_strings: bool
) -> None:
    emulator.codes_as_strings = as_strings
    wrong = "wrong-key-5eb1f0a7c3d2"
    target = make_target({"key": wrong})
    with pytest.raises(FatalError) as info:
        await target.send(batch("0-1", "0-2"))
    message = str(info.value)
    assert "110" in message and "connections.goose.key" in message
    assert wrong not in message and KEY not in message
    assert info.value.connection == "goose"
    assert len(operation_calls(emulator)) == 1, "the batch stops at the first refusal"
    assert emulator.deletions() == []


@pytest.mark.parametrize("as_strings", [False, True])
async def test_a_refused_ip_names_the_allow_list(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget], as_strings: bool
) -> None:
    emulator.codes_as_strings = as_strings
    emulator.allowed_ips = ["10.9.9.9"]
    with pytest.raises(FatalError) as info:
        await make_target().send(batch("0-1"))
    message = str(info.value)
    assert "111" in message and "allow-list" in message and "connections.goose.key" in message
    assert KEY not in message


@pytest.mark.parametrize("as_strings", [False, True])
async def test_an_unknown_table_is_retried_with_gooses_message(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget], as_strings: bool
) -> None:
    emulator.codes_as_strings = as_strings
    outcomes = await make_target(table="NOPE").send(batch("0-1", "0-2"))
    assert kinds(outcomes) == [OutcomeKind.RETRY, OutcomeKind.RETRY]
    reason = outcomes[0].reason
    assert "Table 'client_goose_DEV001.NOPE' doesn't exist'" in reason
    assert "query: DELETE FROM client_goose_DEV001.NOPE" in reason
    assert "table NOPE" in reason and KEY not in reason
    assert outcomes[0].effect == ""


@pytest.mark.parametrize("as_strings", [False, True])
async def test_the_daily_limit_stops_the_batch_until_midnight(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget], as_strings: bool
) -> None:
    emulator.codes_as_strings = as_strings
    emulator.daily_limit = 1
    outcomes = await make_target().send(batch("0-1", "0-2", "0-3", "0-2"))
    assert kinds(outcomes) == [OutcomeKind.DONE] + [OutcomeKind.RETRY] * 3
    limited, skipped = outcomes[1], outcomes[2]
    assert "daily call limit" in limited.reason and "51" in limited.reason
    assert limited.retry_after is not None and 0 < limited.retry_after <= 86400 + 60
    assert skipped.reason.startswith("not attempted: ") and skipped.retry_after == (
        limited.retry_after
    )
    assert outcomes[3].reason == limited.reason, "the same record shares the verdict"
    assert len(operation_calls(emulator)) == 2
    assert [d["RECORD_ID"] for d in emulator.deletions()] == ["0-1"]


async def test_the_per_second_limit_is_waited_out_in_line(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    """Error 50 is retried by the client after the wait Goose's limit implies; the
    emulator's clock moves with the client's sleeps, so no real time passes."""
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    emulator.clock = clock
    emulator.rate_limit_per_second = 2

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    http = HttpClient(
        connection="goose",
        retry=RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.002),
        classify=classify,
        sleep=sleep,
    )
    outcomes = await make_target(http=http).send(batch("0-1", "0-2", "0-3", "0-4"))
    assert {o.detail for o in outcomes} == {"deleted"}
    assert len(operation_calls(emulator)) == 5, "one call refused with 50, then re-sent"


async def test_a_per_second_limit_that_never_lifts_stops_the_batch(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    emulator.rate_limit_per_second = 0

    async def sleep(seconds: float) -> None:
        return None

    http = HttpClient(
        connection="goose", retry=RetryPolicy(max_attempts=3), classify=classify, sleep=sleep
    )
    outcomes = await make_target(http=http).send(batch("0-1", "0-2"))
    assert kinds(outcomes) == [OutcomeKind.RETRY, OutcomeKind.RETRY]
    assert "error 50" in outcomes[0].reason and outcomes[0].retry_after == 1.0
    assert outcomes[1].reason.startswith("not attempted: ")
    assert len(operation_calls(emulator)) == 3, "three attempts for the first, none after"


@pytest.mark.parametrize(
    "faults",
    [
        {"error_rate": 1.0},
        {"throttle_rate": 1.0, "retry_after": 0},
        {"drop_after_apply_rate": 1.0},
    ],
    ids=["500", "429", "applied-then-500"],
)
async def test_faults_end_in_retry_outcomes_never_an_exception(
    emulator: GooseEmulator,
    make_target: Callable[..., GooseDeleteTarget],
    faults: dict[str, Any],
) -> None:
    target = make_target()
    emulator.faults.update(faults)
    outcomes = await target.send(batch("0-1", "0-2", "0-3"))
    assert kinds(outcomes) == [OutcomeKind.RETRY] * 3
    assert [o.reason.startswith("not attempted: ") for o in outcomes] == [False, True, True]
    assert len(operation_calls(emulator)) == TINY_RETRY["max_attempts"], "retried in-line, capped"
    emulator.faults.update({name: 0.0 for name in faults if name.endswith("_rate")})
    again = await target.send(batch("0-1", "0-2", "0-3"))
    assert [o.kind for o in again] == [OutcomeKind.DONE] * 3
    applied = "drop_after_apply_rate" in faults
    assert again[0].detail == ("absent" if applied else "deleted"), "a lost answer is harmless"
    assert [d["RECORD_ID"] for d in emulator.deletions()] == ["0-1", "0-2", "0-3"]


async def test_timeouts_end_in_retry_outcomes(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    hang = 0.3
    target = make_target({"timeout": 0.05})
    emulator.faults.update({"timeout_rate": 1.0, "hang_seconds": hang})
    outcomes = await target.send(batch("0-1", "0-2"))
    assert kinds(outcomes) == [OutcomeKind.RETRY, OutcomeKind.RETRY]
    assert "no complete answer" in outcomes[0].reason
    assert outcomes[1].reason.startswith("not attempted: ")
    await asyncio.sleep(hang + 0.2)  # let the held requests finish before the next test
    assert emulator.deletions() == []


async def test_a_wrong_operation_url_is_fatal_and_names_it(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget], base_url: str
) -> None:
    target = make_target({"operation_url": f"{base_url}/operations/"})
    with pytest.raises(FatalError) as info:
        await target.send(batch("0-1"))
    assert "HTTP 404" in str(info.value) and "connections.goose.operation_url" in str(info.value)


# --- the loop the engine must not echo --------------------------------------------


async def test_the_source_names_a_record_as_the_target_does(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget], base_url: str
) -> None:
    """A record this engine deleted comes back through DELETED only with imc: true, and
    then its origin equals the effect the target reported, so the engine can refuse to
    propagate it again (Goose -> elsewhere -> Goose)."""
    emulator.delete("CON_TRO", ["0-7"], by_key=USER_KEY)
    (ours,) = await make_target().send(batch("0-2"))
    assert ours.kind is OutcomeKind.DONE

    async def read(imc: bool) -> dict[str, str]:
        source = GooseSource(
            "goose",
            connection(base_url),
            GooseSourceSettings.model_validate(
                {"tables": ["CON_TRO"], "from": "watermark", "imc": imc}
            ),
        )
        try:
            now = datetime.now(UTC)
            page = await source.fetch(source.plan("CON_TRO", None, None, now))
        finally:
            await source.aclose()
        return {r.key: r.origin for r in page.records}

    assert await read(imc=False) == {"0-7": "goose:DEV001:CON_TRO:0-7"}, "ours is left out"
    with_ours = await read(imc=True)
    assert with_ours == {"0-7": "goose:DEV001:CON_TRO:0-7", "0-2": "goose:DEV001:CON_TRO:0-2"}
    assert with_ours["0-2"] == ours.effect


def test_record_name() -> None:
    assert record_name("DEV001", "CON_TRO", "0-1") == "goose:DEV001:CON_TRO:0-1"


# --- preview ------------------------------------------------------------------------


async def test_preview_makes_no_call(
    emulator: GooseEmulator, make_target: Callable[..., GooseDeleteTarget]
) -> None:
    target = make_target()
    deliveries = [*batch("0-1", "no-such-id"), delivery(3, SYKEY="x"), delivery(4, "z" * 30)]
    outcomes = await target.preview(deliveries)
    assert [(o.kind, o.detail) for o in outcomes[:2]] == [
        (OutcomeKind.DONE, "would delete CON_TRO 0-1"),
        (OutcomeKind.DONE, "would delete CON_TRO no-such-id"),
    ]
    assert outcomes[2].kind is OutcomeKind.DEAD and outcomes[2].reason.startswith("no key: ")
    assert outcomes[3].kind is OutcomeKind.DEAD and "at most 25" in outcomes[3].reason
    assert emulator.log.as_json() == []
    assert len(emulator.records("CON_TRO")) == 12


# --- settings and registry -----------------------------------------------------------


def test_settings_defaults_and_bounds() -> None:
    settings = target_settings()
    assert (settings.table, settings.id, settings.batch_size) == ("CON_TRO", "{RECORD_ID}", 20)
    assert target_settings(batch_size=500).batch_size == 500
    for bad in (
        {"table": "TOOLONGX", "id": "{RECORD_ID}"},
        {"table": "", "id": "{RECORD_ID}"},
        {"table": "CON-TRO", "id": "{RECORD_ID}"},
        {"table": "CON_TRO", "id": ""},
        {"table": "CON_TRO", "id": "fixed"},
        {"table": "CON_TRO", "id": "{RECORD_ID!r}"},
        {"table": "CON_TRO", "id": "{RECORD_ID}", "batch_size": 0},
        {"table": "CON_TRO", "id": "{RECORD_ID}", "batch_size": 501},
        {"table": "CON_TRO", "id": "{RECORD_ID}", "colour": "red"},
        {"id": "{RECORD_ID}"},
    ):
        with pytest.raises(ValidationError):
            GooseTargetSettings.model_validate(bad)
    with pytest.raises(ValidationError, match="Goose table names are 1 to 7"):
        GooseTargetSettings.model_validate({"table": "TOOLONGX", "id": "{RECORD_ID}"})


def test_a_target_needs_a_known_operation_url() -> None:
    unguessable = connection(url="http://h/api/x")
    assert unguessable.operation_url is None
    block = {"table": "CON_TRO", "id": "{RECORD_ID}"}
    context = {"connection": unguessable, "connection_name": "gs"}
    with pytest.raises(ValidationError) as info:
        GooseTargetSettings.model_validate(block, context=context)
    assert "connections.gs.operation_url" in str(info.value)
    assert GooseTargetSettings.model_validate(block, context={"connection": connection()})
    explicit = connection(url="http://h/api/x", operation_url="http://h/api/op")
    assert GooseTargetSettings.model_validate(block, context={"connection": explicit})
    with pytest.raises(FatalError, match=r"connections\.gs\.operation_url"):
        GooseDeleteTarget("gs", unguessable, target_settings())


def test_the_config_loader_reports_the_operation_url_at_the_target() -> None:
    text = textwrap.dedent(
        """
        connections:
          gs: {type: goose, url: "http://127.0.0.1:8701/api/x", code: DEV001, key: k}
          goose: {type: goose, url: "http://127.0.0.1:8701/deleted/", code: DEV001, key: k}
        pipelines:
          contacts:
            schedule: {every: 60s}
            source: {connection: goose, tables: [CON_TRO]}
            targets:
              back: {connection: gs, table: CON_TRO, id: "{RECORD_ID}"}
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "my.yaml", {})
    messages = [issue.render("my.yaml") for issue in info.value.issues]
    assert any("connections.gs.operation_url" in m for m in messages), messages


def test_registered_and_built_from_settings() -> None:
    info = registry.get("goose")
    assert info.target_settings is GooseTargetSettings
    assert info.build_target is build_target
    assert connectors.goose.__all__ == sorted(connectors.goose.__all__)
    assert {"GooseDeleteTarget", "GooseTargetSettings", "record_name"} <= set(
        connectors.goose.__all__
    )
    built = info.build_target("g", connection(), target_settings(batch_size=7))
    assert isinstance(built, GooseDeleteTarget)
    assert isinstance(built, Target) and isinstance(built, Previewable)
    assert built.batch_size == 7
    assert built.url == "http://127.0.0.1:9/operation/"
    with pytest.raises(TypeError):
        build_target("g", target_settings(), connection())


def test_the_client_keeps_to_five_calls_per_second_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    original = GooseConnection.http_client

    def spy(self: GooseConnection, name: str, **kwargs: Any) -> HttpClient:
        seen.update(kwargs, calls_per_second=self.calls_per_second)
        return original(self, name, **kwargs)

    monkeypatch.setattr(GooseConnection, "http_client", spy)
    conn = connection().model_copy(update={"calls_per_second": None})
    built = GooseDeleteTarget("g", conn, target_settings())
    assert seen["default_calls_per_second"] == 5.0 and seen["calls_per_second"] is None
    assert seen["classify"] is classify
    assert KEY in built._http.secrets


def test_until_midnight_counts_a_dst_change() -> None:
    spring = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 CET on the 29th
    assert until_midnight(spring, ROME) == 23 * 3600 + 60, "that day has 23 hours"
    evening = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)  # 23:30 in Rome
    assert until_midnight(evening, ROME) == 30 * 60 + 60
