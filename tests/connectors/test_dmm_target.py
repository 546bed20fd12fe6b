from __future__ import annotations

import asyncio
import base64
import io
import json
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from connectors.contract import (
    AmbiguousError,
    Delivery,
    FatalError,
    Outcome,
    OutcomeKind,
    Previewable,
    RemoteError,
    RetriableError,
    registry,
)
from connectors.dmm import DmmConnection, DmmDeleteTarget, DmmTargetSettings, build_target
from connectors.dmm.emulator import STOPPED, DmmEmulator, Knobs, demo_entities
from connectors.dmm.logs import format_deleted, format_failed, format_line, read_log_zip
from connectors.dmm.settings import record_name
from connectors.dmm.target import STATUS, check_key, sql_literal, where_clause
from connectors.emulation.kit import Faults
from connectors.kit.http import HttpClient, RetryPolicy
from connectors.kit.jobs import AsyncTarget, JobHandle, JobProgress, JobSpec, JobState, map_status
from connectors.kit.serving import serve
from connectors.kit.sql import Dialect

TOKEN, OTP = "dmm-key-5e4d3c", "dmm-otp-8a7b6c"
STEP = 0.05
FAST_RETRY = {"max_attempts": 2, "base_delay": 0.001, "max_delay": 0.005}
API = "/DMM_API/rest/DMMAPI"
EXTRA = {
    "Contact": {"key": "Id", "rows": [{"Id": n, "Email": f"c{n}@x.it"} for n in range(1, 11)]},
    "Tag": {
        "key": "Label",
        "rows": [{"Label": v} for v in ("o'brien", "x", "1", "Zoë", "zoë", "plain")],
    },
}

MakeTarget = Callable[..., DmmDeleteTarget]


def connection(server: str, **changes: Any) -> DmmConnection:
    data: dict[str, Any] = {
        "type": "dmm",
        "url": f"{server}{API}",
        "token": TOKEN,
        "otp": OTP,
        "timeout": 5,
        "retry": FAST_RETRY,
    }
    data.update(changes)
    return DmmConnection.model_validate({k: v for k, v in data.items() if v is not None})


def settings(**changes: Any) -> DmmTargetSettings:
    data: dict[str, Any] = {
        "entity": {"name": "Customer"},
        "key_attribute": "ExternalId",
        "key": "{RECORD_ID}",
        "poll_interval": STEP,
    }
    data.update(changes)
    return DmmTargetSettings.model_validate({k: v for k, v in data.items() if v is not None})


CONTACT = {"entity": {"name": "Contact"}, "key_attribute": "Id", "key_type": "integer"}
TAG = {"entity": {"name": "Tag"}, "key_attribute": "Label"}


def records(*values: Any, start: int = 1) -> list[Delivery]:
    return [Delivery(start + i, "T", str(v), {"RECORD_ID": v}) for i, v in enumerate(values)]


def spec(items: Sequence[Delivery], job_id: int = 1) -> JobSpec:
    return JobSpec(job_id=job_id, client_id=f"job-{job_id}", items=list(items))


def kinds(outcomes: Sequence[Outcome]) -> list[tuple[str, str]]:
    return [(o.kind.value, o.detail or o.reason) for o in outcomes]


def restored(handle: JobHandle) -> JobHandle:
    """The handle as the engine rebuilds it from its store after a restart."""
    return JobHandle(handle.remote_id, handle.state, json.loads(json.dumps(dict(handle.detail))))


def check_outcomes(job: JobSpec, outcomes: Sequence[Outcome]) -> None:
    assert [o.delivery_id for o in outcomes] == [d.delivery_id for d in job.items]
    for outcome in outcomes:
        for secret in (TOKEN, OTP):
            assert secret not in outcome.reason and secret not in outcome.detail


async def finish(
    target: DmmDeleteTarget, emulator: DmmEmulator, job: JobSpec, handle: JobHandle
) -> JobProgress:
    for _ in range(30):
        progress = await target.poll(job, restored(handle))
        if progress.state.terminal:
            check_outcomes(job, progress.outcomes)
            json.dumps(dict(progress.detail))
            return progress
        assert progress.poll_after == STEP
        emulator.step(STEP)
    raise AssertionError("the execution never ended")


async def run(
    target: DmmDeleteTarget, emulator: DmmEmulator, job: JobSpec
) -> tuple[JobHandle, JobProgress]:
    handle = restored(await target.submit(job))
    return handle, await finish(target, emulator, job, handle)


async def settled_requests(emulator: DmmEmulator) -> list[str]:
    """The emulator logs a request just after answering it; let the last entry land."""
    await asyncio.sleep(0.03)
    return [e.path.rsplit("/", 1)[-1] for e in emulator.log.entries]


def where_sent(emulator: DmmEmulator) -> list[str]:
    return [
        e["configuration"]["Configuration"]["EntitiesToDelete"][0]["WhereClause"]
        for e in emulator.executions()
    ]


def frozen() -> float:
    """Time stands still unless a test steps it, so no state changes between two reads."""
    return 1_795_000_000.0


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[DmmEmulator, str]]:
    emu = DmmEmulator(tokens=[TOKEN], otps=[OTP], step_seconds=STEP, clock=frozen)
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[DmmEmulator, str]) -> Iterator[DmmEmulator]:
    emu = shared[0]
    emu.reset()
    emu.faults.update(asdict(Faults()))
    emu.knobs.update(asdict(Knobs(step_seconds=STEP, chunk_size=50)))
    emu.seed(demo_entities())
    emu.seed(EXTRA)
    yield emu
    # Whatever a test did, the target never asked DMM to delete a whole entity.
    for where in where_sent(emu):
        assert isinstance(where, str) and " IN (" in where


@pytest.fixture
async def make_target(
    shared: tuple[DmmEmulator, str], emulator: DmmEmulator
) -> AsyncIterator[MakeTarget]:
    made: list[DmmDeleteTarget] = []

    def make(conn: dict[str, Any] | None = None, **changes: Any) -> DmmDeleteTarget:
        target = DmmDeleteTarget("dmm", connection(shared[1], **(conn or {})), settings(**changes))
        made.append(target)
        return target

    yield make
    for target in made:
        await target.aclose()


def remaining(emulator: DmmEmulator, entity: str = "Customer") -> list[Any]:
    key = {"Customer": "ExternalId", "Contact": "Id", "Tag": "Label"}[entity]
    return [row[key] for row in emulator.rows(entity)]


# --- settings -------------------------------------------------------------------------------


def test_connection_defaults_and_secrets() -> None:
    conn = connection("http://h:1", url="http://h:1/DMM_API/rest/DMMAPI/ ")
    assert conn.url == "http://h:1/DMM_API/rest/DMMAPI"
    assert (conn.paths.start, conn.paths.stop) == ("/StartExecution", "/StopExecution")
    assert (conn.paths.status, conn.paths.outputs) == (
        "/GetExecutionStatus",
        "/GetExecutionOutputs",
    )
    assert conn.secret_values() == [TOKEN, OTP]
    assert TOKEN not in repr(conn) and OTP not in repr(conn)
    custom = connection("http://h", paths={"start": "/v2/Start"})
    assert (custom.paths.start, custom.paths.stop) == ("/v2/Start", "/StopExecution")
    assert conn.dialect is Dialect.SQLSERVER
    assert connection("http://h", dialect="mysql").dialect is Dialect.MYSQL


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token": ""}, "'token' is empty"),
        ({"token": "  "}, "'token' is empty"),
        ({"otp": ""}, "'otp' is empty"),
        ({"url": "ftp://h/x"}, "is not an http(s) URL"),
        ({"url": "myenv/DMM_API"}, "is not an http(s) URL"),
        ({"url": "https://h/x?a=1"}, "no query string"),
        ({"paths": {"start": "StartExecution"}}, "is not a path"),
        ({"paths": {"stop": "/a/../b"}}, "is not a path"),
        ({"paths": {"status": "/a b"}}, "is not a path"),
        ({"paths": {"list": "/x"}}, "Extra inputs are not permitted"),
        ({"type": "reltio"}, "Input should be 'dmm'"),
        ({"apikey": "x"}, "Extra inputs are not permitted"),
        (
            {"dialect": "mssql"},
            "Input should be 'sqlserver', 'oracle', 'postgresql', 'mysql' or 'mariadb'",
        ),
    ],
)
def test_connection_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        connection("http://h", **changes)
    assert message in str(info.value)
    assert TOKEN not in str(info.value) and OTP not in str(info.value)


def test_a_source_needs_no_otp_but_a_target_does() -> None:
    conn = connection("http://h", otp=None)
    assert conn.secret_values() == [TOKEN]
    block = {"entity": {"name": "Customer"}, "key_attribute": "ExternalId", "key": "{K}"}
    with pytest.raises(ValidationError) as info:
        DmmTargetSettings.model_validate(
            block, context={"connection": conn, "connection_name": "crm"}
        )
    assert "set connections.crm.otp" in str(info.value)
    settings = DmmTargetSettings.model_validate(block)
    with pytest.raises(FatalError, match=r"set connections\.crm\.otp"):
        DmmDeleteTarget("crm", conn, settings)


def test_target_settings() -> None:
    default = settings()
    assert (default.destination, default.key_type, default.batch_size) == (None, "text", 200)
    assert (default.poll_interval, default.log_records) == (STEP, 500)
    assert (default.entity.ss_key, default.entity.espace_ss_key) == (None, None)
    full = settings(
        destination=" Dest ",
        entity={"name": "Contact", "ss_key": "a1", "espace_ss_key": "b2"},
        poll_interval="1m",
    )
    assert (full.destination, full.entity.ss_key, full.poll_interval) == ("Dest", "a1", 60)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"entity": None}, "Field required"),
        ({"entity": "Contact"}, "valid dictionary"),
        ({"entity": {"name": ""}}, "at least 1 character"),
        ({"entity": {"name": " "}}, "is blank"),
        ({"entity": {"name": "C", "sskey": "x"}}, "Extra inputs are not permitted"),
        ({"key_attribute": "E-mail"}, "is not an attribute name"),
        ({"key_attribute": "[Id]"}, "is not an attribute name"),
        ({"key_attribute": "Id; DROP"}, "is not an attribute name"),
        ({"key": "RECORD_ID"}, "uses no field"),
        ({"key": "{RECORD_ID:>5}"}, "format specs"),
        ({"key_type": "number"}, "'integer' or 'text'"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"batch_size": 5001}, "less than or equal to 5000"),
        ({"poll_interval": 0}, "greater than 0"),
        ({"log_records": 0}, "greater than or equal to 1"),
        ({"destination": ""}, "at least 1 character"),
        ({"destination": "a\nb"}, "control character"),
        ({"where": "1=1"}, "Extra inputs are not permitted"),
    ],
)
def test_target_settings_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        settings(**changes)
    assert message in str(info.value)


def test_registered() -> None:
    info = registry.get("dmm")
    assert info.connection_settings is DmmConnection
    assert info.target_settings is DmmTargetSettings
    assert info.build_target is build_target
    target = build_target("dmm", connection("http://h"), settings(batch_size=7))
    assert isinstance(target, AsyncTarget) and isinstance(target, Previewable)
    assert (target.batch_size, target.kind) == (7, "dmm_delete")


# --- pure helpers ---------------------------------------------------------------------------


def test_status_table() -> None:
    for raw, state in [
        ("Queued", JobState.QUEUED),
        ("InProgress", JobState.RUNNING),
        ("Complete", JobState.SUCCEEDED),
        ("InError", JobState.FAILED),
        ("NotFound", JobState.FAILED),
        (" complete ", JobState.SUCCEEDED),
        ("Running", JobState.RUNNING),
        ("SomethingNew", JobState.RUNNING),
    ]:
        assert map_status(raw, STATUS) is state
    assert all(key == key.upper() for key in STATUS)


@pytest.mark.parametrize(
    ("text", "key_type", "expected"),
    [
        ("17", "integer", ("17", "")),
        ("-3", "integer", ("-3", "")),
        ("007", "integer", ("7", "")),
        ("9223372036854775807", "integer", ("9223372036854775807", "")),
        ("9223372036854775808", "integer", (None, "outside the 64-bit integer range")),
        ("1.5", "integer", (None, "is not an integer")),
        (" 1", "integer", (None, "is not an integer")),
        ("١٢", "integer", (None, "is not an integer")),
        ("1 OR 1=1", "integer", (None, "is not an integer")),
        ("12\n", "integer", (None, "is not an integer")),
        ("-12\n", "integer", (None, "is not an integer")),
        ("o'brien", "text", ("o'brien", "")),
        (" padded ", "text", (" padded ", "")),
        ("a\nb", "text", (None, "holds a control character")),
        ("a\x00b", "text", (None, "holds a control character")),
    ],
)
def test_check_key(text: str, key_type: str, expected: tuple[str | None, str]) -> None:
    key, problem = check_key(text, key_type)
    assert key == expected[0]
    assert expected[1] in problem and bool(problem) == bool(expected[1])


def test_literals_and_where_clause() -> None:
    assert sql_literal("o'brien", "text") == "'o''brien'"
    assert sql_literal("Zoë", "text") == "N'Zoë'"
    assert sql_literal("-3", "integer") == "-3"
    assert where_clause("Id", ["10", "9", "-1", "9"], "integer") == "[Id] IN (-1, 9, 10)"
    assert where_clause("Label", ["b", "a''", "b"], "text") == "[Label] IN ('a''''', 'b')"
    assert where_clause("Id", [], "integer") is None


# --- the contract against the emulator --------------------------------------------------------


async def test_a_batch_is_deleted_and_all_done(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    target = make_target()
    job = spec(records("0-3", "0-1", "0-2"))
    handle = await target.submit(job)
    assert (handle.remote_id, handle.state) == ("1", JobState.QUEUED)
    assert handle.detail["keys"] == {"1": "0-3", "2": "0-1", "3": "0-2"}
    assert handle.detail["where"] == "[ExternalId] IN ('0-1', '0-2', '0-3')"
    assert handle.detail["entity"] == "Customer" and handle.detail["tracker"] == 1
    queued = await target.poll(job, restored(handle))
    assert (queued.state, queued.message, queued.outcomes) == (JobState.QUEUED, "Queued", ())
    emulator.step(STEP)
    running = await target.poll(job, restored(handle))
    assert running.state is JobState.RUNNING and running.detail["TotalRecords"] == 3
    progress = await finish(target, emulator, job, handle)
    assert progress.state is JobState.SUCCEEDED and progress.message == ""
    assert kinds(progress.outcomes) == [("done", "deleted by execution 1")] * 3
    assert (progress.detail["deleted"], progress.detail["absent"]) == (3, 0)
    assert progress.detail["report"]["NRecords"] == 3
    assert sorted(d.key for d in emulator.deleted()) == ["0-1", "0-2", "0-3"]
    assert remaining(emulator) == [f"0-{n}" for n in range(4, 16)]
    assert len(remaining(emulator, "Contact")) == 10
    (execution,) = emulator.executions()
    assert execution["configuration"] == {
        "Type": "Delete",
        "Configuration": {
            "DestinationDBConnection": None,
            "EntitiesToDelete": [
                {
                    "OSEntityName": "Customer",
                    "OSEntitySSKey": None,
                    "ESpaceSsKey": None,
                    "WhereClause": "[ExternalId] IN ('0-1', '0-2', '0-3')",
                }
            ],
            "ApplicationDeletionMode": False,
            "ApplicationsToDelete": [],
            "FilterTenants": False,
            "TenantsList": [],
            "IncludeProtectedApplications": False,
        },
    }
    calls = await settled_requests(emulator)
    assert calls.count("StartExecution") == 1 and calls.count("GetExecutionOutputs") == 1


async def test_done_outcomes_name_the_record_they_leave_gone(
    make_target: MakeTarget, emulator: DmmEmulator, shared: tuple[DmmEmulator, str]
) -> None:
    emulator.protect("Contact", [2])
    job = spec(records(1, 2, 99))
    _, progress = await run(make_target(**CONTACT), emulator, job)
    base = f"dmm:{shared[1]}{API}:Runtime Connection:contact:id="
    assert [o.effect for o in progress.outcomes] == [f"{base}1", "", ""]
    assert record_name(f"{shared[1]}{API}/", None, "Contact", "Id", "1") == f"{base}1"
    assert (
        record_name("https://h/x", "Archive", "C", "K", "a'b") == "dmm:https://h/x:Archive:c:k=a'b"
    )
    _, complete = await run(make_target(**CONTACT), emulator, spec(records(1, 3), job_id=2))
    assert [o.effect for o in complete.outcomes] == [f"{base}1", f"{base}3"]
    assert kinds(complete.outcomes) == [("done", "absent"), ("done", "deleted by execution 2")]


async def test_absent_keys_are_done_as_absent(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    _, progress = await run(make_target(), emulator, spec(records("0-1", "9-99", "0-1")))
    assert kinds(progress.outcomes) == [
        ("done", "deleted by execution 1"),
        ("done", "absent"),
        ("done", "deleted by execution 1"),
    ]
    assert (progress.detail["deleted"], progress.detail["absent"]) == (1, 1)
    assert where_sent(emulator) == ["[ExternalId] IN ('0-1', '9-99')"]


async def test_protected_rows_are_retried_with_the_reference_reason(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    emulator.protect("Customer", ["0-2"])
    job = spec(records("0-1", "0-2", "0-3", "9-9"))
    _, progress = await run(make_target(), emulator, job)
    assert progress.state is JobState.FAILED
    done, failed, also_done, unknown = progress.outcomes
    assert (done.kind, also_done.kind) == (OutcomeKind.DONE, OutcomeKind.DONE)
    assert failed.kind is OutcomeKind.RETRY
    assert failed.reason.startswith("DMM execution 1 could not delete Customer ExternalId=0-2: ")
    assert "REFERENCE constraint" in failed.reason
    assert unknown.kind is OutcomeKind.RETRY
    assert unknown.reason == (
        "execution 1 ended InError before confirming this key: 1 records could not be deleted"
    )
    assert progress.message == "execution 1 InError: 1 records could not be deleted"
    assert progress.detail["error_report"]["entries"] == 1
    assert "0-2" in remaining(emulator)


async def test_unmappable_and_non_integer_keys_are_dead_and_never_sent(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    target = make_target(**CONTACT)
    job = spec(
        [
            *records(1, "abc", "1.5", "99999999999999999999", "007", " 2"),
            Delivery(7, "T", "x", {"RECORD_ID": None}),
            Delivery(8, "T", "y", {"OTHER": 1}),
            Delivery(9, "T", "z", {"RECORD_ID": 2.0}),
        ]
    )
    _, progress = await run(target, emulator, job)
    assert kinds(progress.outcomes) == [
        ("done", "deleted by execution 1"),
        ("dead", "no key: 'abc' is not an integer (digits, optionally a leading minus)"),
        ("dead", "no key: '1.5' is not an integer (digits, optionally a leading minus)"),
        ("dead", "no key: '99999999999999999999' is outside the 64-bit integer range"),
        ("done", "deleted by execution 1"),
        ("dead", "no key: ' 2' is not an integer (digits, optionally a leading minus)"),
        ("dead", "no key: field 'RECORD_ID' is null"),
        ("dead", "no key: field 'RECORD_ID' is missing (fields: OTHER)"),
        ("dead", "no key: field 'RECORD_ID' holds a float; only text and integers make keys"),
    ]
    assert where_sent(emulator) == ["[Id] IN (1, 7)"]
    assert remaining(emulator, "Contact") == [2, 3, 4, 5, 6, 8, 9, 10]


async def test_quotes_are_safe(make_target: MakeTarget, emulator: DmmEmulator) -> None:
    job = spec(records("o'brien", "x') OR ('1'='1", "Zoë"))
    _, progress = await run(make_target(**TAG), emulator, job)
    assert kinds(progress.outcomes) == [
        ("done", "deleted by execution 1"),
        ("done", "absent"),
        ("done", "deleted by execution 1"),
    ]
    assert where_sent(emulator) == ["[Label] IN (N'Zoë', 'o''brien', 'x'') OR (''1''=''1')"]
    assert remaining(emulator, "Tag") == ["x", "1", "zoë", "plain"]


async def test_backslashes_are_escaped_for_a_backslash_escaping_destination(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    """On MySQL, quote doubling alone lets `a\\') OR ... -- ` close the literal and widen
    the delete; with the connection's dialect the key is one literal again."""
    emulator.knobs.update({"backslash_escapes": True})
    rows = [{"Id": n, "Email": f"a{n}@x.it"} for n in range(1, 6)]
    emulator.seed({"Account": {"key": "Email", "rows": rows}})

    def ids() -> list[int]:
        return [row["Id"] for row in emulator.rows("Account")]

    key = "a\\') OR [Id] IN (1, 2) -- "
    account = {"entity": {"name": "Account"}, "key_attribute": "Email"}
    target = make_target({"dialect": "mysql"}, **account)
    _, progress = await run(target, emulator, spec(records(key, "a3@x.it")))
    assert kinds(progress.outcomes) == [("done", "absent"), ("done", "deleted by execution 1")]
    assert where_sent(emulator) == ["[Email] IN ('a3@x.it', 'a\\\\'') OR [Id] IN (1, 2) -- ')"]
    assert ids() == [1, 2, 4, 5]
    # The same key under the SQL Server dialect, on this destination, widens the delete:
    # what the dialect setting is for.
    await run(make_target(**account), emulator, spec(records(key), job_id=2))
    assert ids() == [4, 5]


async def test_integer_keys_with_a_trailing_newline_are_dead(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    _, progress = await run(make_target(**CONTACT), emulator, spec(records("12\n", "2", "3\n")))
    assert kinds(progress.outcomes) == [
        ("dead", "no key: '12\\n' is not an integer (digits, optionally a leading minus)"),
        ("done", "deleted by execution 1"),
        ("dead", "no key: '3\\n' is not an integer (digits, optionally a leading minus)"),
    ]
    assert where_sent(emulator) == ["[Id] IN (2)"]
    assert 3 in remaining(emulator, "Contact")


async def test_a_batch_without_keys_starts_nothing(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    target = make_target(**CONTACT)
    job = spec([*records("abc"), Delivery(2, "T", "k", {})])
    handle = await target.submit(job)
    assert (handle.remote_id, handle.state) == ("", JobState.SUCCEEDED)
    progress = await target.poll(job, restored(handle))
    assert progress.state is JobState.SUCCEEDED
    assert [o.kind for o in progress.outcomes] == [OutcomeKind.DEAD] * 2
    await target.cancel(restored(handle))
    assert await settled_requests(emulator) == []
    assert emulator.executions() == [] and len(remaining(emulator, "Contact")) == 10


async def test_a_lost_answer_is_ambiguous_and_the_batch_is_sent_again(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    target = make_target()
    job = spec(records("0-1", "0-2"))
    emulator.faults.update({"drop_after_apply_rate": 1.0})
    with pytest.raises(AmbiguousError):
        await target.submit(job)
    assert await target.find(job) is None
    emulator.faults.update({"drop_after_apply_rate": 0.0})
    _, progress = await run(target, emulator, job)
    assert [o.kind for o in progress.outcomes] == [OutcomeKind.DONE] * 2
    assert where_sent(emulator) == ["[ExternalId] IN ('0-1', '0-2')"] * 2
    assert sorted((d.key, d.execution) for d in emulator.deleted()) == [("0-1", 1), ("0-2", 1)]
    assert kinds(progress.outcomes) == [("done", "absent")] * 2


async def test_cancel_stops_the_execution(make_target: MakeTarget, emulator: DmmEmulator) -> None:
    emulator.knobs.update({"chunk_size": 2})
    target = make_target()
    job = spec(records(*(f"0-{n}" for n in range(1, 7))))
    handle = restored(await target.submit(job))
    emulator.step(STEP * 2)
    assert (await target.poll(job, handle)).detail["CompletedRecords"] == 2
    await target.cancel(handle)
    progress = await finish(target, emulator, job, handle)
    assert progress.state is JobState.FAILED
    assert kinds(progress.outcomes)[:2] == [("done", "deleted by execution 1")] * 2
    stopped = f"execution 1 ended InError before confirming this key: {STOPPED}"
    assert kinds(progress.outcomes)[2:] == [("retry", stopped)] * 4
    assert progress.detail["unconfirmed"] == 4
    assert remaining(emulator)[:4] == ["0-3", "0-4", "0-5", "0-6"]
    with pytest.raises(RemoteError, match="not running"):
        await target.cancel(handle)


async def test_another_execution_running_is_retriable(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    emulator.knobs.update({"one_at_a_time": True})
    target = make_target()
    await target.submit(spec(records("0-1")))
    with pytest.raises(RetriableError) as info:
        await target.submit(spec(records("0-2"), job_id=2))
    assert not isinstance(info.value, AmbiguousError)
    assert "There is already an execution running" in str(info.value)
    assert len(emulator.executions()) == 1


async def test_an_unknown_entity_is_a_remote_error(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    with pytest.raises(RemoteError, match="Entity not found: Nope"):
        await make_target(entity={"name": "Nope"}).submit(spec(records("0-1")))


async def test_destination_and_ss_keys_are_sent(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    emulator.connections.add("Archive DB")
    target = make_target(
        destination="Archive DB", entity={"name": "Customer", "ss_key": "s", "espace_ss_key": "e"}
    )
    await target.submit(spec(records("0-1")))
    (execution,) = emulator.executions()
    config = execution["configuration"]["Configuration"]
    assert config["DestinationDBConnection"] == "Archive DB"
    assert config["EntitiesToDelete"][0]["OSEntitySSKey"] == "s"
    assert config["EntitiesToDelete"][0]["ESpaceSsKey"] == "e"


@pytest.mark.parametrize(
    ("conn", "setting"), [({"token": "wrong-key"}, "token"), ({"otp": "wrong-otp"}, "otp")]
)
async def test_bad_credentials_are_fatal_and_secret(
    make_target: MakeTarget, emulator: DmmEmulator, conn: dict[str, str], setting: str
) -> None:
    target = make_target(conn)
    with pytest.raises(FatalError) as info:
        await target.submit(spec(records("0-1")))
    message = str(info.value)
    assert f"connections.dmm.{setting}" in message
    for secret in (TOKEN, OTP, "wrong-key", "wrong-otp"):
        assert secret not in message
    assert emulator.executions() == []


async def test_a_reused_otp_is_fatal(make_target: MakeTarget, emulator: DmmEmulator) -> None:
    emulator.knobs.update({"otp_single_use": True})
    target = make_target()
    await target.submit(spec(records("0-1")))
    with pytest.raises(FatalError, match=r"HTTP 403 .* connections\.dmm\.otp"):
        await target.submit(spec(records("0-2"), job_id=2))


@pytest.mark.parametrize(
    ("url", "paths"),
    [(API.replace("DMMAPI", "Wrong"), {}), (API, {"start": "/Start"})],
)
async def test_a_wrong_url_or_path_is_fatal(
    make_target: MakeTarget, shared: tuple[DmmEmulator, str], url: str, paths: dict[str, str]
) -> None:
    target = make_target({"url": shared[1] + url, "paths": paths})
    with pytest.raises(FatalError) as info:
        await target.submit(spec(records("0-1")))
    assert "answered 404 without a DMM answer" in str(info.value)
    assert "connections.dmm.url" in str(info.value)
    assert "connections.dmm.paths.start" in str(info.value)


async def test_artifacts(make_target: MakeTarget, emulator: DmmEmulator) -> None:
    emulator.knobs.update({"log_file_lines": 2})
    emulator.protect("Customer", ["0-2"])
    _, progress = await run(make_target(), emulator, spec(records("0-1", "0-2", "0-3")))
    files = dict(progress.artifacts)
    assert sorted(files) == [
        "dmm-execution-1-error-report.json",
        "dmm-execution-1-logs.zip",
        "dmm-execution-1-report.json",
    ]
    logs = read_log_zip(files["dmm-execution-1-logs.zip"])
    assert len(logs) > 2 and [name for name, _ in logs] == progress.detail["log_files"]
    report = json.loads(files["dmm-execution-1-report.json"])
    assert (report["ConfigurationType"], report["NRecords"]) == ("Delete", 2)
    (entry,) = json.loads(files["dmm-execution-1-error-report.json"])
    assert entry["Count"] == 1 and "REFERENCE" in entry["FinalReportError"]
    with zipfile.ZipFile(io.BytesIO(files["dmm-execution-1-logs.zip"])) as archive:
        assert archive.testzip() is None


async def test_preview_makes_no_call(make_target: MakeTarget, emulator: DmmEmulator) -> None:
    target = make_target(**CONTACT)
    outcomes = await target.preview(records(3, "abc", 1, 3))
    assert kinds(outcomes) == [
        ("done", "would delete Contact where [Id] IN (1, 3) matches 3"),
        ("dead", "no key: 'abc' is not an integer (digits, optionally a leading minus)"),
        ("done", "would delete Contact where [Id] IN (1, 3) matches 1"),
        ("done", "would delete Contact where [Id] IN (1, 3) matches 3"),
    ]
    many = await make_target().preview(records(*(f"k-{n:04d}" for n in range(100))))
    assert many[0].detail == "would delete Customer where [ExternalId] IN (100 keys) matches k-0000"
    assert await settled_requests(emulator) == []


async def test_unknown_execution_retries_every_key(
    make_target: MakeTarget, emulator: DmmEmulator
) -> None:
    target = make_target()
    job = spec(records("0-1"))
    handle = JobHandle("42", JobState.QUEUED, {"keys": {"1": "0-1"}, "tracker": 42})
    progress = await target.poll(job, handle)
    assert progress.state is JobState.FAILED
    assert kinds(progress.outcomes) == [
        ("retry", "execution 42 ended NotFound before confirming this key: Execution not found")
    ]
    assert progress.detail["logs"] == "unavailable: DMM does not know this execution"
    assert "GetExecutionOutputs" not in await settled_requests(emulator)


# --- edge cases against a scripted API ----------------------------------------------------------

Handler = Callable[[str, dict[str, Any]], httpx.Response]


def scripted(handler: Handler, **changes: Any) -> DmmDeleteTarget:
    def respond(request: httpx.Request) -> httpx.Response:
        return handler(request.url.path.rsplit("/", 1)[-1], json.loads(request.content))

    http = HttpClient(
        connection="dmm",
        base_url="http://dmm.test" + API,
        retry=RetryPolicy(max_attempts=1),
        transport=httpx.MockTransport(respond),
    )
    return DmmDeleteTarget("dmm", connection("http://dmm.test"), settings(**changes), http=http)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def log_zip(*lines: str) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.log", "".join(line + "\n" for line in lines))
    return b64(buffer.getvalue())


AT = datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC)
HANDLE = JobHandle(
    "5",
    JobState.QUEUED,
    {
        "keys": {"1": "a", "2": "b", "3": "c"},
        "tracker": 5,
        "entity": "Customer",
        "attribute": "ExternalId",
        "key_type": "text",
    },
)
JOB = spec(records("a", "b", "c"))


def api(
    status: str,
    outputs: dict[str, Any] | None,
    pages: list[list[str]] | None = None,
    error: str = "",
) -> Handler:
    def handle(operation: str, body: dict[str, Any]) -> httpx.Response:
        if operation == "GetExecutionStatus" and body.get("IncludeLogs"):
            if pages is None:
                return httpx.Response(200, json={"Success": False, "ErrorMessage": "no logs"})
            page = pages[body["LogPage"] - 1] if pages else []
            return httpx.Response(
                200,
                json={
                    "Status": status,
                    "Success": True,
                    "LogNumPages": len(pages),
                    "Logs": b64("".join(line + "\n" for line in page).encode()),
                },
            )
        if operation == "GetExecutionStatus":
            return httpx.Response(
                200, json={"Status": status, "Success": True, "ErrorMessage": error}
            )
        assert operation == "GetExecutionOutputs"
        return httpx.Response(200, json=outputs or {"Success": False, "ErrorMessage": "later"})

    return handle


async def test_complete_with_unreadable_logs_is_still_done() -> None:
    target = scripted(api("Complete", {"Success": True, "Logs": "%%%", "Report": {"NRecords": 1}}))
    progress = await target.poll(JOB, HANDLE)
    assert progress.state is JobState.SUCCEEDED
    assert (
        kinds(progress.outcomes)
        == [("done", "done: execution 5 completed (its logs are unavailable)")] * 3
    )
    assert progress.detail["logs"].startswith("unavailable: the outputs' Logs are not base64")
    assert progress.detail["report"] == {"NRecords": 1}
    assert list(progress.artifacts) == ["dmm-execution-5-report.json"]
    await target.aclose()


async def test_in_error_with_unreadable_logs_retries_every_key() -> None:
    outputs = {"Success": True, "Logs": b64(b"not a zip"), "ErrorMessage": "boom"}
    target = scripted(api("InError", outputs, error="boom"))
    progress = await target.poll(JOB, HANDLE)
    assert progress.state is JobState.FAILED
    assert (
        kinds(progress.outcomes)
        == [("retry", "execution 5 ended InError before confirming this key: boom")] * 3
    )
    assert "not a zip archive" in progress.detail["logs"]
    assert list(progress.artifacts) == ["dmm-execution-5-logs.zip"]
    await target.aclose()


async def test_status_pages_stand_in_for_missing_outputs() -> None:
    pages = [
        [
            format_line(AT, "INFO", "-", "Execution started"),
            format_deleted(AT, "Customer", "ExternalId", "a"),
        ],
        [format_failed(AT, "Customer", "ExternalId", "b", "locked")],
    ]
    target = scripted(api("InError", None, pages=pages, error="1 failed"), log_records=2)
    progress = await target.poll(JOB, HANDLE)
    assert kinds(progress.outcomes) == [
        ("done", "deleted by execution 5"),
        ("retry", "DMM execution 5 could not delete Customer ExternalId=b: locked"),
        ("retry", "execution 5 ended InError before confirming this key: 1 failed"),
    ]
    assert progress.detail["logs"] == ("from GetExecutionStatus pages (GetExecutionOutputs: later)")
    assert list(progress.artifacts) == ["dmm-execution-5-status-logs.txt"]
    await target.aclose()


async def test_an_empty_log_confirms_nothing_as_absent() -> None:
    target = scripted(api("Complete", {"Success": True, "Logs": log_zip()}, pages=[]))
    progress = await target.poll(JOB, HANDLE)
    assert {o.detail for o in progress.outcomes} == {
        "done: execution 5 completed (its logs are unavailable)"
    }
    assert progress.detail["logs"] == (
        "unavailable: the log zip holds no line; the status log pages hold no line"
    )
    assert progress.detail["log_files"] == ["a.log"]
    await target.aclose()


async def test_outputs_refused_by_http_fall_back_to_status_pages() -> None:
    def handle(operation: str, body: dict[str, Any]) -> httpx.Response:
        if operation == "GetExecutionOutputs":
            return httpx.Response(400, json={"Errors": ["nope"], "StatusCode": 400})
        return api("InError", None, pages=[[format_deleted(AT, "Customer", "ExternalId", "c")]])(
            operation, body
        )

    target = scripted(handle)
    progress = await target.poll(JOB, HANDLE)
    assert [o.kind for o in progress.outcomes] == [OutcomeKind.RETRY] * 2 + [OutcomeKind.DONE]
    assert progress.detail["logs"].startswith(
        "from GetExecutionStatus pages (GetExecutionOutputs failed: dmm: POST "
        "/GetExecutionOutputs: HTTP 400"
    )
    await target.aclose()


async def test_a_failed_line_is_retried_even_when_complete() -> None:
    lines = [
        format_deleted(AT, "customer", "externalid", "a"),
        format_failed(AT, "Customer", "ExternalId", "b", "deadlock victim"),
        format_deleted(AT, "Customer", "ExternalId", "zzz"),
        format_deleted(AT, "Order", "Id", 4),
    ]
    target = scripted(api("Complete", {"Success": True, "Logs": log_zip(*lines)}))
    progress = await target.poll(JOB, HANDLE)
    assert kinds(progress.outcomes) == [
        ("done", "deleted by execution 5"),
        ("retry", "DMM execution 5 could not delete Customer ExternalId=b: deadlock victim"),
        ("done", "absent"),
    ]
    assert progress.detail["unexpected_deleted"] == 1
    assert progress.detail["other_entities_deleted"] == {"Order": 1}
    assert progress.message == "execution 5 deleted 1 Customer records not in this batch (zzz)"
    await target.aclose()


async def test_a_log_naming_another_attribute_confirms_nothing_as_absent() -> None:
    lines = [format_deleted(AT, "Customer", "Id", 7)]
    target = scripted(api("Complete", {"Success": True, "Logs": log_zip(*lines)}))
    progress = await target.poll(JOB, HANDLE)
    assert {o.detail for o in progress.outcomes} == {
        "done: execution 5 completed (its log names Customer records by another attribute "
        "than ExternalId)"
    }
    await target.aclose()


async def test_integer_keys_match_the_log_in_normal_form() -> None:
    handle = JobHandle(
        "5",
        JobState.QUEUED,
        {
            "keys": {"1": "7", "2": "-3"},
            "key_type": "integer",
            "entity": "Contact",
            "attribute": "Id",
        },
    )
    lines = [
        format_line(AT, "INFO", "Contact", "Deleted record Id='007'"),
        format_deleted(AT, "Contact", "Id", -3),
    ]
    target = scripted(api("Complete", {"Success": True, "Logs": log_zip(*lines)}), **CONTACT)
    progress = await target.poll(spec(records(7, -3)), handle)
    assert kinds(progress.outcomes) == [("done", "deleted by execution 5")] * 2
    await target.aclose()


def start_answer(answer: Any, status: int = 200) -> Handler:
    def handle(operation: str, body: dict[str, Any]) -> httpx.Response:
        assert operation == "StartExecution"
        if isinstance(answer, bytes):
            return httpx.Response(status, content=answer)
        return httpx.Response(status, json=answer)

    return handle


@pytest.mark.parametrize(
    ("answer", "status", "error", "message"),
    [
        ({"Success": True}, 200, AmbiguousError, "without a usable MainExecutionTrackerId"),
        ({"Success": True, "MainExecutionTrackerId": True}, 200, AmbiguousError, "usable"),
        (b"<html>ok</html>", 200, AmbiguousError, "not a JSON object"),
        ({"error": "x"}, 500, AmbiguousError, "HTTP 500"),
        ({"Success": False}, 200, RemoteError, "no ErrorMessage"),
        ({"Success": "true", "MainExecutionTrackerId": 1}, 200, RemoteError, "Success is not"),
        (
            {"Success": False, "ErrorMessage": "Execution already running"},
            200,
            RetriableError,
            "already running",
        ),
        ({"Errors": ["bad"], "StatusCode": 400}, 400, RemoteError, "HTTP 400"),
        (
            {"Success": False, "ErrorMessage": f"token {TOKEN} refused"},
            401,
            FatalError,
            "token *** refused",
        ),
    ],
)
async def test_start_answers(
    answer: Any, status: int, error: type[Exception], message: str
) -> None:
    target = scripted(start_answer(answer, status))
    with pytest.raises(error) as info:
        await target.submit(spec(records("a")))
    assert type(info.value) is error
    assert message in str(info.value) and TOKEN not in str(info.value)
    await target.aclose()


async def test_a_tracker_given_as_text_is_sent_back_as_given() -> None:
    seen: list[Any] = []

    def handle(operation: str, body: dict[str, Any]) -> httpx.Response:
        if operation == "StartExecution":
            return httpx.Response(200, json={"Success": True, "MainExecutionTrackerId": "T-9"})
        seen.append(body["MainExecutionTrackerId"])
        return httpx.Response(200, json={"Success": True, "Status": "InProgress"})

    target = scripted(handle)
    handle_ = restored(await target.submit(spec(records("a"))))
    assert handle_.remote_id == "T-9"
    assert (await target.poll(spec(records("a")), handle_)).state is JobState.RUNNING
    assert seen == ["T-9"]
    await target.aclose()


async def test_a_status_without_status_is_a_remote_error() -> None:
    target = scripted(
        lambda op, body: httpx.Response(200, json={"Success": False, "ErrorMessage": "busy"})
    )
    with pytest.raises(RemoteError, match="an answer without Status: busy"):
        await target.poll(JOB, HANDLE)
    await target.aclose()
