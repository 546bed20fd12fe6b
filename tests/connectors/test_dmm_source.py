from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
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
    InFlightCall,
    MalformedAnswer,
    OutcomeKind,
    RemoteError,
    RetriableError,
    Source,
    SourcePage,
    TaskSource,
    registry,
)
from connectors.dmm import (
    DmmDeleteTarget,
    DmmOutputsSource,
    DmmSourceSettings,
    DmmTargetSettings,
    build_source,
    record_name,
)
from connectors.dmm.emulator import ALREADY_RUNNING, DmmEmulator, Knobs, demo_entities
from connectors.dmm.logs import format_deleted, format_failed, format_line
from connectors.emulation.kit import Faults
from connectors.kit.http import HttpClient, RetryPolicy
from connectors.kit.jobs import JobSpec
from connectors.kit.serving import serve
from tests.connectors.test_dmm_target import API, OTP, TOKEN, connection

STEP = 0.05
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
EXTRA = {
    "Contact": {"key": "Id", "rows": [{"Id": n, "Email": f"c{n}@x.it"} for n in range(1, 11)]},
    "Order": {"key": "Id", "rows": [{"Id": n, "Total": n * 10} for n in range(1, 121)]},
}

MakeSource = Callable[..., DmmOutputsSource]


def frozen() -> float:
    """Time stands still unless a test steps it, so no state changes between two reads."""
    return 1_795_000_000.0


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[DmmEmulator, str]]:
    emu = DmmEmulator(
        tokens=[TOKEN], otps=[OTP], step_seconds=STEP, connections=["Dest"], clock=frozen
    )
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[DmmEmulator, str]) -> DmmEmulator:
    emu = shared[0]
    emu.reset()
    emu.faults.update(asdict(Faults()))
    emu.knobs.update(asdict(Knobs(step_seconds=STEP, chunk_size=10)))
    emu.seed(demo_entities())
    emu.seed(EXTRA)
    return emu


@pytest.fixture
async def admin(
    shared: tuple[DmmEmulator, str], emulator: DmmEmulator
) -> AsyncIterator[httpx.AsyncClient]:
    """The emulator's admin API, as an operator's script would call it: no token."""
    async with httpx.AsyncClient(base_url=shared[1] + "/_admin", timeout=5) as client:
        yield client


@pytest.fixture
async def make_source(
    shared: tuple[DmmEmulator, str], emulator: DmmEmulator
) -> AsyncIterator[MakeSource]:
    made: list[DmmOutputsSource] = []

    def make(
        *executions: str, conn: dict[str, Any] | None = None, **settings: Any
    ) -> DmmOutputsSource:
        block = DmmSourceSettings.model_validate({"executions": list(executions), **settings})
        source = DmmOutputsSource("dmm", connection(shared[1], **(conn or {})), block)
        made.append(source)
        return source

    yield make
    for source in made:
        await source.aclose()


async def operator_execution(
    admin: httpx.AsyncClient, entity: str, where: str | None, **extra: Any
) -> str:
    response = await admin.post(
        "/start_execution", json={"entity": entity, "where": where, **extra}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["MainExecutionTrackerId"])


async def ground_truth(admin: httpx.AsyncClient, execution: str) -> list[tuple[str, str]]:
    """(entity, key as text) of what the emulator deleted for this execution, in order."""
    deleted = (await admin.get("/deleted")).json()
    return [(d["entity"], str(d["key"])) for d in deleted if str(d["execution"]) == execution]


def finish(emulator: DmmEmulator) -> None:
    emulator.step(STEP * 40)


async def read(
    source: DmmOutputsSource, execution: str, cursor: dict[str, Any] | None = None
) -> SourcePage:
    """One pull step as the engine makes it: plan from the stream and cursor, then fetch."""
    call = source.plan(source.task_stream(execution), cursor, None, NOW)
    assert call.params["execution"] == execution
    return await source.fetch(call)


async def read_all(source: DmmOutputsSource, execution: str) -> list[SourcePage]:
    """Pages as the engine reads them: follow `more`, each from the journaled cursor."""
    pages = [await read(source, execution)]
    while pages[-1].more:
        assert len(pages) < 100
        pages.append(await read(source, execution, dict(pages[-1].cursor)))
    return pages


def keys(page: SourcePage) -> list[str]:
    return [r.key for r in page.records]


def ended(got: SourcePage, status: str, deleted: int, failed: int, **extra: Any) -> None:
    assert got.cursor == {
        "finished": True,
        "status": status,
        "deleted": deleted,
        "failed": failed,
        **extra,
    }
    assert not got.more


async def settled_paths(emulator: DmmEmulator) -> list[str]:
    """The emulator logs a request just after answering it; let the last entry land."""
    await asyncio.sleep(0.03)
    return [e.path.rsplit("/", 1)[-1] for e in emulator.log.entries]


# --- settings -------------------------------------------------------------------------


def test_source_settings() -> None:
    default = DmmSourceSettings()
    assert (default.executions, default.logs_from, default.log_records) == ([], "outputs", 500)
    assert (default.destination, default.entities) == (None, [])
    given = DmmSourceSettings.model_validate(
        {
            "executions": [" 12 ", "007", "T-9"],
            "logs_from": "status",
            "log_records": 50,
            "destination": " Dest ",
            "entities": [" Customer", "Contact"],
        }
    )
    assert given.executions == ["12", "7", "T-9"]
    assert (given.logs_from, given.log_records, given.destination) == ("status", 50, "Dest")
    assert given.entities == ["Customer", "Contact"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"executions": [""]}, "an execution id is blank; write the MainExecutionTrackerId"),
        ({"executions": ["  "]}, "an execution id is blank"),
        ({"executions": ["1\x00"]}, "execution id '1\\x00' holds a control character"),
        ({"executions": ["3", "4", "03"]}, "executions listed more than once: 3"),
        ({"executions": 3}, "Input should be a valid list"),
        ({"executions": [3]}, "Input should be a valid string"),
        ({"logs_from": "zip"}, "Input should be 'outputs' or 'status'"),
        ({"log_records": 0}, "greater than or equal to 1"),
        ({"log_records": 100001}, "less than or equal to 100000"),
        ({"destination": " "}, "is blank; leave it out to use the Runtime Connection"),
        ({"entities": [""]}, "an entity name is blank; write an OSEntityName"),
        ({"entities": ["Customer", "customer"]}, "entities listed more than once: Customer"),
        ({"entities": ["A\nB"]}, "holds a control character"),
        ({"execution": ["1"]}, "Extra inputs are not permitted"),
    ],
)
def test_source_settings_rejected(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        DmmSourceSettings.model_validate(block)
    assert message in str(info.value)


def test_registered_and_built_from_settings() -> None:
    info = registry.get("dmm")
    assert info.task_source is True
    assert info.source_settings is DmmSourceSettings
    assert info.build_source is build_source
    assert info.target_settings is DmmTargetSettings and info.build_target is not None
    settings = info.source_settings.model_validate({"executions": ["5", "T-9"]})
    source = info.build_source("dmm", connection("http://h:1"), settings)
    assert isinstance(source, DmmOutputsSource)
    assert isinstance(source, Source) and isinstance(source, TaskSource)
    assert source.streams() == ["execution-5", "execution-T-9"]
    assert source.connection.url == "http://h:1/DMM_API/rest/DMMAPI"


def test_public_names_are_sorted() -> None:
    import connectors.dmm

    assert connectors.dmm.__all__ == sorted(connectors.dmm.__all__)
    assert {"DmmOutputsSource", "DmmSourceSettings", "build_source"} <= set(connectors.dmm.__all__)


# --- pure parts -----------------------------------------------------------------------


async def test_task_stream_finished_and_plan(make_source: MakeSource) -> None:
    source = make_source("5")
    assert source.task_stream("17") == "execution-17"
    assert source.task_stream("0017") == "execution-17"
    assert source.task_stream("T-9") == "execution-T-9"
    assert source.execution_id("execution-17") == "17"
    for bad in ("", " 5", "5\n"):
        with pytest.raises(ValueError, match="dmm: "):
            source.task_stream(bad)
    for stream in ("5", "execution-", "execution-007", "task-5"):
        with pytest.raises(ValueError, match="is not a DMM execution stream"):
            source.plan(stream, None, None, NOW)
    assert not source.finished(None)
    assert not source.finished({})
    assert not source.finished({"finished": False, "status": "InProgress"})
    assert not source.finished({"finished": "true"})
    assert source.finished({"finished": True, "status": "Complete", "deleted": 0, "failed": 0})
    interrupted = InFlightCall(started_at=NOW, params={"execution": "5"})
    call = source.plan("execution-5", {"finished": False}, interrupted, NOW)
    assert call.params == {"execution": "5"} and not call.recovery
    assert call.stream == "execution-5" and call.started_at == NOW

    paged = make_source(logs_from="status", log_records=20)
    first = paged.plan("execution-5", None, None, NOW)
    counters = {"deleted": 0, "failed": 0, "logged": 0}
    assert first.params == {"execution": "5", "page": 1, "log_records": 20, **counters}
    cursor = {"finished": False, "status": "Complete", "page": 3, "log_records": 7}
    later = paged.plan("execution-5", {**cursor, "deleted": 9, "failed": 1, "logged": 9}, None, NOW)
    # The page size the stream started with is kept: other boundaries would skip lines.
    assert later.params == {
        "execution": "5",
        "page": 3,
        "log_records": 7,
        "deleted": 9,
        "failed": 1,
        "logged": 9,
    }
    for params in (call.params, first.params, later.params):
        text = json.dumps(dict(params))
        assert TOKEN not in text and OTP not in text


# --- the contract against the emulator ------------------------------------------------


async def test_complete_execution_yields_exactly_the_deleted_records(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient
) -> None:
    execution = await operator_execution(
        admin, "Customer", "[ExternalId] IN ('0-3', '0-1', '0-2', '0-99')"
    )
    source = make_source(execution)
    assert source.streams() == [f"execution-{execution}"]
    queued = await read(source, execution)
    assert queued.records == [] and queued.cursor == {"finished": False, "status": "Queued"}
    assert not source.finished(queued.cursor) and queued.problem == ""
    emulator.step(STEP)
    running = await read(source, execution)
    assert running.records == [] and running.cursor == {"finished": False, "status": "InProgress"}
    assert "GetExecutionOutputs" not in await settled_paths(emulator)
    finish(emulator)
    page = await read(source, execution)
    assert source.finished(page.cursor) and page.problem == ""
    ended(page, "Complete", deleted=3, failed=0)
    truth = await ground_truth(admin, execution)
    assert [("Customer", f"0-{n}") for n in (1, 2, 3)] == truth
    assert keys(page) == [f"Customer.ExternalId={key}" for _, key in truth]
    record = page.records[0]
    assert record.stream == f"execution-{execution}"
    assert record.fields == {
        "entity": "Customer",
        "attribute": "ExternalId",
        "value": "0-1",
        "key": "0-1",
        "execution": execution,
        "at": record.fields["at"],
        "raw": f"{record.fields['at']} | INFO | Customer | Deleted record ExternalId='0-1'",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record.fields["at"])
    assert record.origin == record_name(
        source.connection.url, None, "Customer", "ExternalId", "0-1"
    )
    assert record.origin.endswith(":Runtime Connection:customer:externalid=0-1")
    again = await read(source, execution)
    assert again.records == page.records and again.cursor == page.cursor
    assert TOKEN not in json.dumps(page.cursor) + json.dumps([dict(r.fields) for r in page.records])
    (started,) = (await admin.get("/executions")).json()
    assert started["started_by"] == "operator"


async def test_integer_keys_in_plain_form(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient
) -> None:
    execution = await operator_execution(admin, "Contact", "Id = 7 OR Id = 3")
    finish(emulator)
    page = await read(make_source(), execution)
    assert keys(page) == ["Contact.Id=3", "Contact.Id=7"]
    assert [r.fields["key"] for r in page.records] == ["3", "7"]


@pytest.mark.parametrize("logs_from", ["outputs", "status"])
async def test_in_error_yields_what_was_deleted_and_names_the_failures(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient, logs_from: str
) -> None:
    assert (await admin.post("/protect", json={"entity": "Contact", "keys": [2, 3]})).is_success
    execution = await operator_execution(admin, "Contact", "[Id] IN (1, 2, 3, 4)")
    finish(emulator)
    pages = await read_all(make_source(logs_from=logs_from, log_records=500), execution)
    (page,) = pages
    assert keys(page) == ["Contact.Id=1", "Contact.Id=4"]
    assert [key for _, key in await ground_truth(admin, execution)] == ["1", "4"]
    extra = {"page": 1, "logged": 2} if logs_from == "status" else {}
    ended(page, "InError", deleted=2, failed=2, **extra)
    assert page.problem == (
        f"execution {execution} ended InError: 2 records could not be deleted; 2 records "
        "deleted and reported, 2 could not be deleted"
    )


async def test_in_error_counts_failures_the_log_does_not_name(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient
) -> None:
    """Without a line per record, the ErrorReport still says how many could not go."""
    emulator.knobs.update({"log_record_lines": False})
    emulator.protect("Contact", [1])
    execution = await operator_execution(admin, "Contact", "[Id] IN (1, 2)")
    finish(emulator)
    page = await read(make_source(), execution)
    assert page.records == []
    ended(page, "InError", deleted=0, failed=1)
    assert page.problem == (
        f"execution {execution} ended InError: 1 records could not be deleted; 0 records "
        "deleted and reported, 1 could not be deleted; its logs name no deleted record "
        "although its report counts 1; none is reported (re-reading would not help)"
    )


async def test_a_stopped_execution_yields_what_it_deleted(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient
) -> None:
    emulator.knobs.update({"chunk_size": 2})
    execution = await operator_execution(admin, "Contact", "[Id] IN (1, 2, 3, 4, 5, 6)")
    emulator.step(STEP * 2)
    async with httpx.AsyncClient(base_url=str(admin.base_url).replace("/_admin", API)) as api:
        stopped = await api.post(
            "/StopExecution",
            json={"MainExecutionTrackerId": int(execution)},
            headers={"X-DMM-Token": TOKEN},
        )
    assert stopped.json()["Success"] is True
    finish(emulator)
    page = await read(make_source(), execution)
    assert keys(page) == ["Contact.Id=1", "Contact.Id=2"]
    assert page.problem.startswith(
        f"execution {execution} ended InError: Execution stopped by the user; 2 records"
    )


async def test_entities_filter(
    make_source: MakeSource, emulator: DmmEmulator, shared: tuple[DmmEmulator, str]
) -> None:
    """An execution deleting two entities, started through the API as any client would."""
    body = {
        "Type": "Delete",
        "Configuration": {
            "DestinationDBConnection": None,
            "EntitiesToDelete": [
                {"OSEntityName": "Customer", "WhereClause": "[ExternalId] IN ('0-1')"},
                {"OSEntityName": "Contact", "WhereClause": "[Id] IN (5, 6)"},
            ],
        },
    }
    emulator.protect("Customer", ["0-1"])
    async with httpx.AsyncClient(base_url=shared[1] + API) as api:
        started = await api.post(
            "/StartExecution", json=body, headers={"X-DMM-Token": TOKEN, "X-DMM-Token-OTP": OTP}
        )
    execution = str(started.json()["MainExecutionTrackerId"])
    finish(emulator)
    everything = await read(make_source(), execution)
    assert keys(everything) == ["Contact.Id=5", "Contact.Id=6"]
    ended(everything, "InError", deleted=2, failed=1)
    contacts = await read(make_source(entities=["contact"]), execution)
    assert keys(contacts) == ["Contact.Id=5", "Contact.Id=6"]
    ended(contacts, "InError", deleted=2, failed=0)
    customers = await read(make_source(entities=["Customer"]), execution)
    assert customers.records == []
    ended(customers, "InError", deleted=0, failed=1)
    assert "0 records deleted and reported, 1 could not be deleted" in customers.problem
    # The other entity's deletions are in the log: not a log that names nothing.
    assert "its logs name" not in customers.problem


async def test_status_mode_pages_through_a_long_log(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient
) -> None:
    execution = await operator_execution(admin, "Order", None)
    source = make_source(logs_from="status", log_records=20)
    running = await read(source, execution)
    assert running.cursor == {"finished": False, "status": "Queued"} and not running.more
    finish(emulator)
    truth = await ground_truth(admin, execution)
    assert len(truth) == 120
    emulator.log.clear()
    pages = await read_all(source, execution)
    # 120 record lines, 12 chunk lines, queued, started and finished: 135 lines.
    assert len(pages) == 7
    assert await settled_paths(emulator) == ["GetExecutionStatus"] * 7
    assert [p.more for p in pages] == [True] * 6 + [False]
    assert [p.cursor.get("page") for p in pages] == [2, 3, 4, 5, 6, 7, 7]
    assert all(not source.finished(p.cursor) for p in pages[:-1])
    assert all(p.problem == "" for p in pages)
    got = [key for p in pages for key in keys(p)]
    assert got == [f"{entity}.Id={key}" for entity, key in truth]
    assert pages[2].cursor == {
        "finished": False,
        "status": "Complete",
        "page": 4,
        "log_records": 20,
        "deleted": sum(len(p.records) for p in pages[:3]),
        "failed": 0,
        "logged": sum(len(p.records) for p in pages[:3]),
    }
    ended(pages[-1], "Complete", deleted=120, failed=0, page=7, logged=120)
    whole = await read(make_source(), execution)
    assert keys(whole) == got and [r.origin for r in whole.records] == [
        r.origin for p in pages for r in p.records
    ]


async def test_a_page_read_again_after_a_crash_gives_the_same_records(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient
) -> None:
    execution = await operator_execution(admin, "Order", "[Id] IN (1, 2, 3, 4, 5, 6, 7, 8)")
    finish(emulator)
    source = make_source(logs_from="status", log_records=4)
    first = await read(source, execution)
    journaled = dict(first.cursor)
    sent = source.plan(source.task_stream(execution), journaled, None, NOW)
    second = await source.fetch(sent)
    # The process died before journaling `second`: its call is still marked in flight.
    restarted = make_source(logs_from="status", log_records=50)
    interrupted = InFlightCall(started_at=NOW, params=dict(sent.params))
    call = restarted.plan(restarted.task_stream(execution), journaled, interrupted, NOW)
    assert not call.recovery and call.params["log_records"] == 4
    replayed = await restarted.fetch(call)
    assert replayed.records == second.records and replayed.cursor == second.cursor
    assert keys(second) and replayed.more == second.more


async def test_outputs_zip_with_several_files(
    make_source: MakeSource,
    emulator: DmmEmulator,
    admin: httpx.AsyncClient,
    shared: tuple[DmmEmulator, str],
) -> None:
    emulator.knobs.update({"log_file_lines": 3})
    execution = await operator_execution(admin, "Contact", None)
    finish(emulator)
    async with httpx.AsyncClient(base_url=shared[1] + API) as api:
        answer = await api.post(
            "/GetExecutionOutputs",
            json={"MainExecutionTrackerId": int(execution), "IncludeLogs": True},
            headers={"X-DMM-Token": TOKEN},
        )
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(answer.json()["Logs"]))) as archive:
        assert len(archive.namelist()) > 4
    page = await read(make_source(), execution)
    assert keys(page) == [f"Contact.Id={n}" for n in range(1, 11)]
    ended(page, "Complete", deleted=10, failed=0)


@pytest.mark.parametrize("logs_from", ["outputs", "status"])
async def test_logs_naming_no_record_finish_with_a_problem(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient, logs_from: str
) -> None:
    emulator.knobs.update({"log_record_lines": False})
    execution = await operator_execution(admin, "Contact", "[Id] IN (1, 2)")
    finish(emulator)
    assert len(await ground_truth(admin, execution)) == 2
    source = make_source(logs_from=logs_from)
    (page,) = await read_all(source, execution)
    assert page.records == [] and source.finished(page.cursor)
    assert page.problem == (
        f"execution {execution} ended Complete but its logs name no deleted record although "
        "its report counts 2; none is reported (re-reading would not help)"
    )


async def test_an_execution_that_deleted_nothing_finishes_quietly(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient
) -> None:
    execution = await operator_execution(admin, "Contact", "[Id] IN (99)")
    finish(emulator)
    page = await read(make_source(), execution)
    assert page.records == [] and page.problem == ""
    ended(page, "Complete", deleted=0, failed=0)


@pytest.mark.parametrize("logs_from", ["outputs", "status"])
async def test_unknown_execution_is_finished_with_a_problem(
    make_source: MakeSource, logs_from: str
) -> None:
    source = make_source("404", logs_from=logs_from)
    page = await read(source, "404")
    assert page.records == [] and source.finished(page.cursor)
    extra = {"page": 1} if logs_from == "status" else {}
    ended(page, "NotFound", deleted=0, failed=0, **extra)
    assert page.problem == "DMM knows no execution 404; nothing read — check the tracker id"


@pytest.mark.parametrize(
    ("logs_from", "message"),
    [
        ("outputs", "cannot read its log: the outputs' Logs: the logs are not a zip archive"),
        ("status", "cannot read its log: log page 1 is not base64"),
    ],
)
async def test_unreadable_logs_are_remote_errors(
    make_source: MakeSource,
    emulator: DmmEmulator,
    admin: httpx.AsyncClient,
    logs_from: str,
    message: str,
) -> None:
    execution = await operator_execution(admin, "Contact", "[Id] IN (1)")
    finish(emulator)
    emulator.knobs.update({"corrupt_logs": True})
    source = make_source(logs_from=logs_from)
    with pytest.raises(RemoteError) as info:
        await read(source, execution)
    assert message in str(info.value)
    assert "nothing reported, read again next run" in str(info.value)
    assert TOKEN not in str(info.value)
    emulator.knobs.update({"corrupt_logs": False})
    assert keys(await read(source, execution)) == ["Contact.Id=1"]


@pytest.mark.parametrize("logs_from", ["outputs", "status"])
async def test_a_persistent_5xx_is_retriable(
    make_source: MakeSource, emulator: DmmEmulator, admin: httpx.AsyncClient, logs_from: str
) -> None:
    execution = await operator_execution(admin, "Contact", "[Id] IN (1)")
    finish(emulator)
    emulator.faults.update({"error_rate": 1.0})
    with pytest.raises(RetriableError) as info:
        await read(make_source(logs_from=logs_from), execution)
    assert type(info.value) is RetriableError
    assert not isinstance(info.value, AmbiguousError)
    assert "dmm: POST /GetExecutionStatus: HTTP 500" in str(info.value)


async def test_bad_credentials_are_fatal_and_secret(
    make_source: MakeSource, admin: httpx.AsyncClient
) -> None:
    execution = await operator_execution(admin, "Contact", "[Id] IN (1)")
    with pytest.raises(FatalError) as info:
        await read(make_source(conn={"token": "wrong-key-123"}), execution)
    assert "connections.dmm.token" in str(info.value)
    assert "wrong-key-123" not in str(info.value)


async def test_origin_of_a_record_is_the_effect_the_target_gave(
    make_source: MakeSource, emulator: DmmEmulator, shared: tuple[DmmEmulator, str]
) -> None:
    """The engine recognises the deletions its own target caused by these strings."""
    target = DmmDeleteTarget(
        "dmm",
        connection(shared[1], url=f"{shared[1]}{API}/"),
        DmmTargetSettings.model_validate(
            {
                "destination": "Dest",
                "entity": {"name": "Contact"},
                "key_attribute": "id",
                "key": "{ID}",
                "key_type": "integer",
                "poll_interval": STEP,
            }
        ),
    )
    items = [Delivery(n, "T", str(n), {"ID": value}) for n, value in ((1, "0004"), (2, "9"))]
    job = JobSpec(job_id=1, client_id="job-1", items=items)
    try:
        handle = await target.submit(job)
        finish(emulator)
        progress = await target.poll(job, handle)
    finally:
        await target.aclose()
    assert [o.kind for o in progress.outcomes] == [OutcomeKind.DONE] * 2
    source = make_source(destination="Dest")
    page = await read(source, handle.remote_id)
    assert [r.origin for r in page.records] == [o.effect for o in progress.outcomes]
    assert page.records[0].origin == f"dmm:{shared[1]}{API}:Dest:contact:id=4"
    # Without the destination the names differ: the echo would not be recognised.
    other = await read(make_source(), handle.remote_id)
    assert other.records[0].origin != page.records[0].origin


async def test_operator_start_route(
    emulator: DmmEmulator, admin: httpx.AsyncClient, make_source: MakeSource
) -> None:
    bad: Any
    for bad in (
        {},
        {"entity": "Contact"},
        {"entity": 3, "where": None},
        {"entity": "Contact", "where": 1},
        {"entity": "Contact", "where": None, "destination": 1},
        [1],
    ):
        refused = await admin.post("/start_execution", json=bad)
        assert refused.status_code == 400 and "send" in refused.json()["error"], bad
    for body, message in (
        ({"entity": "Nope", "where": None}, "Entity not found: Nope"),
        ({"entity": "Contact", "where": None, "destination": "X"}, "Connection not found: X"),
    ):
        refused = await admin.post("/start_execution", json=body)
        assert (refused.status_code, refused.json()["error"]) == (400, message)
    execution = await operator_execution(admin, "Contact", "[Id] IN (1)", destination="Dest")
    emulator.knobs.update({"one_at_a_time": True})
    busy = await admin.post("/start_execution", json={"entity": "Contact", "where": "Id = 2"})
    assert busy.json()["error"] == ALREADY_RUNNING
    finish(emulator)
    (started,) = emulator.executions()
    assert started["configuration"]["Configuration"]["DestinationDBConnection"] == "Dest"
    page = await read(make_source(destination="Dest"), execution)
    assert page.records[0].origin.endswith(":Dest:contact:id=1")
    settings = (await admin.get("/settings")).json()
    assert settings["log_record_lines"] is True and settings["corrupt_logs"] is False
    assert (await admin.put("/settings", json={"corrupt_logs": "yes"})).status_code == 400


# --- answer shapes the emulator does not give -----------------------------------------

Handler = Callable[[str, dict[str, Any]], httpx.Response]
AT = datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC)


def scripted(handler: Handler, **settings: Any) -> DmmOutputsSource:
    """A source whose DMM answers through `handler(operation, body)`; strict: a handler
    fails the test on a call it does not expect."""

    def respond(request: httpx.Request) -> httpx.Response:
        return handler(request.url.path.rsplit("/", 1)[-1], json.loads(request.content))

    http = HttpClient(
        connection="dmm",
        base_url="http://dmm.test" + API,
        retry=RetryPolicy(max_attempts=1),
        transport=httpx.MockTransport(respond),
    )
    block = DmmSourceSettings.model_validate(settings)
    return DmmOutputsSource("dmm", connection("http://dmm.test"), block, http=http)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def log_zip(*files: list[str]) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for number, lines in enumerate(files, 1):
            archive.writestr(f"{number}.log", "".join(line + "\n" for line in lines))
    return b64(buffer.getvalue())


def api(
    status: str = "Complete",
    outputs: dict[str, Any] | None = None,
    pages: list[list[str]] | None = None,
    seen: list[dict[str, Any]] | None = None,
    **answer: Any,
) -> Handler:
    def handle(operation: str, body: dict[str, Any]) -> httpx.Response:
        if seen is not None:
            seen.append({"operation": operation, **body})
        if operation == "GetExecutionStatus":
            reply: dict[str, Any] = {"Status": status, "Success": True, "ErrorMessage": ""}
            if pages is not None:
                lines = pages[body["LogPage"] - 1] if body["LogPage"] <= len(pages) else []
                reply.update(
                    LogNumPages=len(pages), Logs=b64("".join(f"{x}\n" for x in lines).encode())
                )
            reply.update(answer)
            return httpx.Response(200, json=reply)
        assert operation == "GetExecutionOutputs" and outputs is not None
        return httpx.Response(200, json={"Status": status, "Success": True, **outputs})

    return handle


async def fetch(source: DmmOutputsSource, cursor: dict[str, Any] | None = None) -> SourcePage:
    try:
        return await source.fetch(source.plan("execution-5", cursor, None, NOW))
    finally:
        await source.aclose()


DELETED_A = format_deleted(AT, "Customer", "ExternalId", "a")


async def test_logs_across_files_duplicates_and_noise() -> None:
    first = [format_line(AT, "INFO", "-", "Execution started"), DELETED_A, "garbage | line"]
    second = [
        DELETED_A,
        format_deleted(AT, "Customer", "ExternalId", "o'b"),
        format_failed(AT, "Customer", "ExternalId", "c", "locked"),
    ]
    outputs = {"Logs": log_zip(first, second), "Report": {"NRecords": 2}}
    page = await fetch(scripted(api(outputs=outputs)))
    assert keys(page) == ["Customer.ExternalId=a", "Customer.ExternalId=o'b"]
    assert page.records[1].fields["raw"] == (
        "2026-11-29 10:00:01 | INFO | Customer | Deleted record ExternalId='o''b'"
    )
    ended(page, "Complete", deleted=2, failed=1)
    assert page.problem == (
        "execution 5 ended Complete; 2 records deleted and reported, 1 could not be deleted"
    )


async def test_a_log_naming_fewer_records_than_the_report_says_so() -> None:
    outputs = {"Logs": log_zip([DELETED_A]), "Report": {"NRecords": 3}}
    page = await fetch(scripted(api(outputs=outputs)))
    assert keys(page) == ["Customer.ExternalId=a"]
    assert page.problem == (
        "execution 5 ended Complete but its logs name 1 deleted records although its report "
        "counts 3; only those named are reported"
    )


async def test_error_report_counts_and_an_unreadable_one() -> None:
    failed = format_failed(AT, "Customer", "ExternalId", "c", "locked")
    report = [
        {"FinalReportEntity": "Customer", "FinalReportError": "locked", "Count": 2},
        {"FinalReportEntity": "Order", "FinalReportError": "x", "Count": 4},
    ]
    outputs = {
        "Logs": log_zip([DELETED_A, failed]),
        "ErrorReport": b64(json.dumps(report).encode()),
        "ErrorMessage": f"boom {TOKEN}",
    }
    page = await fetch(scripted(api("InError", outputs=outputs)))
    ended(page, "InError", deleted=1, failed=6)
    assert page.problem == (
        "execution 5 ended InError: boom ***; 1 records deleted and reported, 6 could not be "
        "deleted"
    )
    only = await fetch(scripted(api("InError", outputs=outputs), entities=["customer"]))
    assert only.cursor["failed"] == 2
    unreadable = await fetch(scripted(api(outputs={**outputs, "ErrorReport": "%%"})))
    ended(unreadable, "Complete", deleted=1, failed=1)
    assert unreadable.problem.endswith("1 could not be deleted; its ErrorReport is unreadable")


async def test_a_tracker_given_as_text_is_sent_as_text() -> None:
    seen: list[dict[str, Any]] = []
    source = scripted(api("InProgress", seen=seen))
    call = source.plan("execution-T-9", None, None, NOW)
    page = await source.fetch(call)
    await source.aclose()
    assert page.cursor == {"finished": False, "status": "InProgress"}
    assert seen == [
        {
            "operation": "GetExecutionStatus",
            "MainExecutionTrackerId": "T-9",
            "IncludeReports": True,
            "IncludeLogs": False,
        }
    ]
    numbered: list[dict[str, Any]] = []
    await fetch(scripted(api("Queued", seen=numbered)))
    assert numbered[0]["MainExecutionTrackerId"] == 5


async def test_an_unknown_status_is_still_running() -> None:
    page = await fetch(scripted(api("Paused")))
    assert page.cursor == {"finished": False, "status": "Paused"} and page.records == []


@pytest.mark.parametrize(
    ("handler", "settings", "message"),
    [
        (api(Status=None, ErrorMessage="busy"), {}, "an answer without Status: busy"),
        (api(Success=False, ErrorMessage="db down"), {}, "POST /GetExecutionStatus: db down"),
        (
            api(outputs={"Success": False, "ErrorMessage": "later"}),
            {},
            "POST /GetExecutionOutputs: later",
        ),
        (api(outputs={"Logs": None}), {}, "GetExecutionOutputs returned no Logs"),
        (api(outputs={"Logs": "%%%"}), {}, "the outputs' Logs: not base64"),
        (api(outputs={"Logs": b64(b"PK\x03\x04 cut")}), {}, "not a zip archive"),
        (api(pages=[[DELETED_A]], LogNumPages="1"), {"logs_from": "status"}, "LogNumPages"),
        (api(pages=[[DELETED_A]], Logs=None), {"logs_from": "status"}, "page 1 holds no Logs"),
        (api(pages=[[]]), {"logs_from": "status"}, "log page 1 holds no Logs"),
    ],
)
async def test_unreadable_answers_are_remote_errors(
    handler: Handler, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(RemoteError) as info:
        await fetch(scripted(handler, **settings))
    assert message in str(info.value)


async def test_a_page_past_the_end_is_a_remote_error() -> None:
    cursor = {"finished": False, "status": "Complete", "page": 3, "log_records": 2}
    with pytest.raises(RemoteError, match="log page 3 was asked but DMM now counts 2 pages"):
        await fetch(scripted(api(pages=[[DELETED_A], [DELETED_A]]), logs_from="status"), cursor)


async def test_an_empty_paged_log_finishes() -> None:
    page = await fetch(scripted(api(pages=[]), logs_from="status"))
    ended(page, "Complete", deleted=0, failed=0, page=1, logged=0)
    assert page.problem == ""


# --- hostile answers ----------------------------------------------------------------------


def raw_outputs(body: bytes) -> Handler:
    """GetExecutionStatus as usual; GetExecutionOutputs answers with `body` as written."""
    status = api()

    def handle(operation: str, request: dict[str, Any]) -> httpx.Response:
        if operation == "GetExecutionOutputs":
            return httpx.Response(200, content=body)
        return status(operation, request)

    return handle


async def test_an_outputs_answer_giving_a_key_twice_is_malformed() -> None:
    logs = log_zip([DELETED_A]).encode()
    body = b'{"Status":"Complete","Success":true,"Logs":"' + logs + b'","Success":false}'
    with pytest.raises(MalformedAnswer, match="'Success' given twice"):
        await fetch(scripted(raw_outputs(body)))


@pytest.mark.parametrize("depth", [100, 20_000, 100_000])
async def test_an_outputs_answer_nested_too_deep_is_a_remote_error_not_a_crash(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"Status":"Complete","Success":true,"Report":' + nested + b',"Logs":""}'
    with pytest.raises(RemoteError, match="nested more than 64 levels"):
        await fetch(scripted(raw_outputs(body)))


async def test_a_status_answer_nested_too_deep_is_a_remote_error_not_a_crash() -> None:
    def handle(operation: str, request: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, content=b'{"Status":' + b"[" * 50_000 + b"]" * 50_000 + b"}")

    with pytest.raises(RemoteError):
        await fetch(scripted(handle))
