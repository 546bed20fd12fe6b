from __future__ import annotations

import asyncio
import json
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
from connectors.emulation.kit import Faults, LoggedRequest
from connectors.kit.http import HttpClient, RetryPolicy
from connectors.kit.jobs import JobSpec
from connectors.kit.serving import serve
from connectors.reltio import (
    ReltioDeleteTarget,
    ReltioSourceSettings,
    ReltioTargetSettings,
    ReltioTaskSource,
    build_source,
    entity_name,
)
from connectors.reltio.emulator import (
    DELETE_TASK_TYPE,
    INDIVIDUAL,
    BadTaskRequest,
    Knobs,
    ReltioEmulator,
)
from tests.connectors.test_reltio_target import CLIENT, DEMO, SECRET, connection, uri

STEP = 0.05
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

MakeSource = Callable[..., ReltioTaskSource]


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ReltioEmulator, str]]:
    # A frozen clock: only step() moves a task on, however slow the machine is.
    emu = ReltioEmulator(clients={CLIENT: SECRET}, step_seconds=STEP, clock=lambda: 1.7e9)
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[ReltioEmulator, str]) -> ReltioEmulator:
    emu = shared[0]
    emu.reset()
    emu.faults.update(asdict(Faults()))
    emu.knobs.update(asdict(Knobs(step_seconds=STEP)))
    emu.seed(DEMO)
    return emu


@pytest.fixture
async def admin(
    shared: tuple[ReltioEmulator, str], emulator: ReltioEmulator
) -> AsyncIterator[httpx.AsyncClient]:
    """The emulator's admin API, as an operator's script would call it: no token."""
    async with httpx.AsyncClient(base_url=shared[1], timeout=5) as client:
        yield client


@pytest.fixture
async def make_source(
    shared: tuple[ReltioEmulator, str], emulator: ReltioEmulator
) -> AsyncIterator[MakeSource]:
    made: list[ReltioTaskSource] = []

    def make(*tasks: str, **conn: Any) -> ReltioTaskSource:
        settings = ReltioSourceSettings(tasks=list(tasks))
        source = ReltioTaskSource("mdm", connection(shared[1], **conn), settings)
        made.append(source)
        return source

    yield make
    for source in made:
        await source.aclose()


async def operator_task(admin: httpx.AsyncClient, **body: Any) -> str:
    response = await admin.post("/_admin/delete_task", json=body)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["id"]
    return task_id


async def read(source: ReltioTaskSource, task_id: str) -> SourcePage:
    """One pull step as the engine makes it: plan from the stream, then fetch."""
    call = source.plan(source.task_stream(task_id), None, None, NOW)
    assert call.params == {"task": task_id}
    return await source.fetch(call)


async def settled_log(emulator: ReltioEmulator) -> list[LoggedRequest]:
    """The emulator logs a request just after answering it; let the last entry land."""
    await asyncio.sleep(0.03)
    return list(emulator.log.entries)


async def entity_reads(emulator: ReltioEmulator) -> int:
    return sum(
        1
        for e in await settled_log(emulator)
        if e.method == "GET" and e.path.split("/")[-2] == "entities"
    )


def keys(page: SourcePage) -> list[str]:
    return [r.key for r in page.records]


def ended(page: SourcePage, status: str, deleted: int, failed: int) -> None:
    assert page.cursor == {"finished": True, "status": status, "deleted": deleted, "failed": failed}
    assert not page.more


# --- settings -------------------------------------------------------------------------


def test_source_settings() -> None:
    assert ReltioSourceSettings().tasks == []
    given = ReltioSourceSettings.model_validate({"tasks": [" t-1 ", "f3d47316-c249"]})
    assert given.tasks == ["t-1", "f3d47316-c249"]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"tasks": [""]}, "a task id is blank; write the id Reltio gave the task"),
        ({"tasks": ["  "]}, "a task id is blank"),
        ({"tasks": ["tasks/abc"]}, "task id 'tasks/abc' contains '/'; write the id alone"),
        ({"tasks": [".."]}, "task id '..' holds a dot segment ('.' or '..')"),
        ({"tasks": ["%2e%2e"]}, "task id '%2e%2e' holds a dot segment"),
        ({"tasks": ["a", "b", "a"]}, "tasks listed more than once: a"),
        ({"tasks": "abc"}, "Input should be a valid list"),
        ({"tasks": [1]}, "Input should be a valid string"),
        ({"task": ["a"]}, "Extra inputs are not permitted"),
    ],
)
def test_source_settings_rejected(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ReltioSourceSettings.model_validate(block)
    assert message in str(info.value)


def test_registered_and_built_from_settings() -> None:
    info = registry.get("reltio")
    assert info.source_settings is ReltioSourceSettings
    assert info.build_source is build_source
    assert info.build_target is not None and info.target_settings is ReltioTargetSettings
    settings = info.source_settings.model_validate({"tasks": ["t1", "t2"]})
    conn = connection("http://h:1", tenant_url="http://h:1/reltio/api/TENANT/")
    source = info.build_source("mdm", conn, settings)
    assert isinstance(source, ReltioTaskSource)
    assert isinstance(source, Source) and isinstance(source, TaskSource)
    assert source.streams() == ["task-t1", "task-t2"]
    assert source.connection.tenant_url == "http://h:1/reltio/api/TENANT"


def test_entity_name() -> None:
    assert entity_name("https://eu-360.reltio.com/reltio/api/T", "entities/a1") == (
        "reltio:https://eu-360.reltio.com/reltio/api/T:entities/a1"
    )
    assert entity_name("https://x/reltio/api/T/", "entities/a1") == (
        "reltio:https://x/reltio/api/T:entities/a1"
    )


# --- pure parts -----------------------------------------------------------------------


async def test_task_stream_finished_and_plan(make_source: MakeSource) -> None:
    source = make_source("abc")
    assert source.task_stream("f3d4-77") == "task-f3d4-77"
    assert source.task_id("task-f3d4-77") == "f3d4-77"
    for bad in ("", "a/b", " x"):
        with pytest.raises(ValueError, match="mdm: "):
            source.task_stream(bad)
    for stream in ("abc", "task-", "task-a/b"):
        with pytest.raises(ValueError, match="is not a Reltio task stream"):
            source.plan(stream, None, None, NOW)
    assert not source.finished(None)
    assert not source.finished({})
    assert not source.finished({"finished": False, "status": "PROCESSING"})
    assert not source.finished({"finished": "true"})
    assert source.finished({"finished": True, "status": "COMPLETED", "deleted": 0, "failed": 0})
    interrupted = InFlightCall(started_at=NOW, params={"task": "abc"})
    call = source.plan("task-abc", {"finished": False}, interrupted, NOW)
    assert call.params == {"task": "abc"} and not call.recovery
    assert call.stream == "task-abc" and call.started_at == NOW
    assert SECRET not in json.dumps(dict(call.params))


# --- the contract against the emulator ------------------------------------------------


async def test_finished_list_task_yields_exactly_the_deleted_entities(
    make_source: MakeSource, emulator: ReltioEmulator, admin: httpx.AsyncClient
) -> None:
    task_id = await operator_task(admin, uris=[uri(3), uri(1), uri(2), uri(3)], mode="hard")
    source = make_source(task_id)
    assert source.streams() == [f"task-{task_id}"]
    first = await read(source, task_id)
    assert first.records == [] and first.cursor == {"finished": False, "status": "SCHEDULED"}
    assert not source.finished(first.cursor) and first.problem == ""
    emulator.step(STEP)
    running = await read(source, task_id)
    assert running.cursor == {"finished": False, "status": "PROCESSING"}
    emulator.step(STEP)
    emulator.log.clear()
    page = await read(source, task_id)
    assert source.finished(page.cursor) and page.problem == ""
    ended(page, "COMPLETED", deleted=3, failed=0)
    assert keys(page) == [uri(3), uri(1), uri(2)]
    record = page.records[0]
    assert record.stream == f"task-{task_id}"
    assert record.fields == {
        "uri": uri(3),
        "entity_id": DEMO[2]["id"],
        "task": task_id,
        "mode": "hard",
        "task_status": "COMPLETED",
    }
    assert record.origin == entity_name(source.connection.tenant_url, uri(3))
    assert await entity_reads(emulator) == 0
    again = await read(source, task_id)
    assert again.records == page.records and again.cursor == page.cursor


async def test_protected_entities_are_not_reported(
    make_source: MakeSource, emulator: ReltioEmulator, admin: httpx.AsyncClient
) -> None:
    emulator.protect([uri(2)])
    task_id = await operator_task(admin, uris=[uri(1), uri(2), uri(3), "entities/gone"])
    emulator.step(2 * STEP)
    emulator.log.clear()
    page = await read(make_source(), task_id)
    assert keys(page) == [uri(1), uri(3)]
    ended(page, "COMPLETED_WITH_ERRORS", deleted=2, failed=2)
    assert page.problem == ""
    assert await entity_reads(emulator) == 0


async def test_failure_list_cut_at_100_is_read_back_one_by_one(
    make_source: MakeSource, emulator: ReltioEmulator
) -> None:
    protected = [f"p{n:03d}" for n in range(150)]
    emulator.seed([{"id": p} for p in protected])
    emulator.protect(f"entities/{p}" for p in protected)
    asked = [*(f"entities/{p}" for p in protected), *(uri(n) for n in range(1, 11))]
    task_id = emulator.create_task(uris=asked)["id"]
    emulator.step(2 * STEP)
    (task,) = emulator.tasks()
    assert task["currentState"]["objectsFailedToDeleteCount"] == 150
    assert len(task["currentState"]["objectsFailedToDelete"]) == 100
    emulator.log.clear()
    page = await read(make_source(), task_id)
    assert keys(page) == [uri(n) for n in range(1, 11)]
    ended(page, "COMPLETED_WITH_ERRORS", deleted=10, failed=150)
    assert await entity_reads(emulator) == 60


async def test_missing_failure_fields_are_read_back(
    make_source: MakeSource, emulator: ReltioEmulator
) -> None:
    emulator.knobs.update({"failure_fields": "when_failed"})
    task_id = emulator.create_task(uris=[uri(1), uri(2)])["id"]
    emulator.step(2 * STEP)
    task = emulator.task(task_id)
    assert task is not None and "objectsFailedToDeleteCount" not in task["currentState"]
    emulator.log.clear()
    page = await read(make_source(), task_id)
    assert keys(page) == [uri(1), uri(2)]
    ended(page, "COMPLETED", deleted=2, failed=0)
    assert await entity_reads(emulator) == 2


async def test_task_failed_before_deleting_reports_nothing(
    make_source: MakeSource, emulator: ReltioEmulator, admin: httpx.AsyncClient
) -> None:
    task_id = await operator_task(admin, uris=[uri(1), uri(2)])
    forced = await admin.post(
        "/_admin/task_status", json={"id": task_id, "status": "FAILED", "error": "Storage down"}
    )
    assert forced.json()["error"] == "Storage down"
    emulator.log.clear()
    page = await read(make_source(), task_id)
    assert page.records == []
    ended(page, "FAILED", deleted=0, failed=2)
    assert page.problem == (
        f"task {task_id} ended FAILED: Storage down; 0 of 2 entities are gone and reported"
    )
    assert await entity_reads(emulator) == 2


async def test_task_failed_half_way_reports_what_is_gone(
    make_source: MakeSource, emulator: ReltioEmulator, admin: httpx.AsyncClient
) -> None:
    task_id = await operator_task(admin, uris=[uri(1), uri(2), uri(3)])
    forced = await admin.post(
        "/_admin/task_status",
        json={"id": task_id, "status": "PLATFORM_TASK_FAILED", "processed": 2},
    )
    assert forced.status_code == 200
    assert forced.json()["currentState"]["numberOfProcessedObjects"] == 2
    page = await read(make_source(), task_id)
    assert keys(page) == [uri(1), uri(2)]
    ended(page, "PLATFORM_TASK_FAILED", deleted=2, failed=1)
    assert page.problem == (
        f"task {task_id} ended PLATFORM_TASK_FAILED; 2 of 3 entities are gone and reported"
    )


async def test_task_canceled_after_deleting_is_read_back(
    make_source: MakeSource, emulator: ReltioEmulator
) -> None:
    task_id = emulator.create_task(uris=[uri(1), uri(2)])["id"]
    emulator.step(2 * STEP)
    emulator.force_status(task_id, "CANCELED", error="Canceled by jdoe")
    emulator.log.clear()
    page = await read(make_source(), task_id)
    assert keys(page) == [uri(1), uri(2)]
    ended(page, "CANCELED", deleted=2, failed=0)
    assert page.problem == (
        f"task {task_id} ended CANCELED: Canceled by jdoe; 2 of 2 entities are gone and reported"
    )
    assert await entity_reads(emulator) == 2


async def test_filter_task_reports_nothing_and_says_why(
    make_source: MakeSource, emulator: ReltioEmulator, admin: httpx.AsyncClient
) -> None:
    task_id = await operator_task(
        admin, filter=f"equals(type,'{INDIVIDUAL}')", excludeList=[uri(1)], mode="hard"
    )
    source = make_source()
    emulator.step(2 * STEP)
    assert len(emulator.entities()) == 1
    page = await read(source, task_id)
    assert page.records == [] and source.finished(page.cursor)
    ended(page, "COMPLETED", deleted=0, failed=0)
    assert page.problem == (
        f"task {task_id} deleted the entities matching a filter (equals(type,'{INDIVIDUAL}'), "
        f"excludeList ['{uri(1)}']); Reltio's task does not list which entities it removed, "
        "so none are reported (a guess could propagate deletions that never happened)"
    )


async def test_unknown_task_is_finished_with_a_problem(make_source: MakeSource) -> None:
    source = make_source("no-such-task")
    page = await read(source, "no-such-task")
    assert page.records == [] and source.finished(page.cursor)
    ended(page, "NOT_FOUND", deleted=0, failed=0)
    assert page.problem == (
        "Reltio does not know task no-such-task (HTTP 404); nothing read — check the task id"
    )


@pytest.mark.parametrize("status", [400, 500])
async def test_a_read_back_error_reports_nothing(
    make_source: MakeSource, emulator: ReltioEmulator, status: int
) -> None:
    emulator.knobs.update({"failure_fields": "when_failed", "read_errors": {uri(2): status}})
    task_id = emulator.create_task(uris=[uri(1), uri(2), uri(3)])["id"]
    emulator.step(2 * STEP)
    with pytest.raises(RetriableError) as info:
        await read(make_source(), task_id)
    assert not isinstance(info.value, AmbiguousError)
    assert f"GET /{uri(2)}" in str(info.value)
    assert SECRET not in str(info.value)
    if status == 400:
        assert "cannot tell whether 1 entities are gone" in str(info.value)
    emulator.knobs.update({"read_errors": {}})
    page = await read(make_source(), task_id)
    assert keys(page) == [uri(1), uri(2), uri(3)]


async def test_task_read_errors_are_raised(
    make_source: MakeSource, emulator: ReltioEmulator
) -> None:
    task_id = emulator.create_task(uris=[uri(1)])["id"]
    source = make_source()
    await read(source, task_id)
    emulator.faults.update({"error_rate": 1.0})
    with pytest.raises(RetriableError) as info:
        await read(source, task_id)
    assert not isinstance(info.value, AmbiguousError)
    assert f"mdm: GET /tasks/{task_id}: HTTP 500" in str(info.value)


async def test_task_params_with_string_encoded_lists(
    make_source: MakeSource, emulator: ReltioEmulator
) -> None:
    emulator.knobs.update({"task_params_field": "taskParams"})
    emulator.protect([uri(2)])
    task_id = emulator.create_task(uris=[uri(1), uri(2), uri(3)], mode="hard")["id"]
    emulator.step(2 * STEP)
    task = emulator.task(task_id)
    assert task is not None and isinstance(task["taskParams"]["entityUriList"], str)
    page = await read(make_source(), task_id)
    assert keys(page) == [uri(1), uri(3)]
    assert page.records[0].fields["mode"] == "hard"
    ended(page, "COMPLETED_WITH_ERRORS", deleted=2, failed=1)


async def test_origin_of_a_record_is_the_effect_the_target_gave(
    make_source: MakeSource, emulator: ReltioEmulator, shared: tuple[ReltioEmulator, str]
) -> None:
    """The engine recognises the deletions its own target caused by these strings."""
    target = ReltioDeleteTarget(
        "mdm",
        connection(shared[1], tenant_url=f"{shared[1]}/reltio/api/TENANT/"),
        ReltioTargetSettings(entity="entities/{RELTIO_ID}", poll_interval=STEP),
    )
    items = [Delivery(n, "CON_TRO", f"0-{n}", {"RELTIO_ID": DEMO[n - 1]["id"]}) for n in (1, 2)]
    job = JobSpec(job_id=1, client_id="job-1", items=items)
    try:
        handle = await target.submit(job)
        emulator.step(2 * STEP)
        progress = await target.poll(job, handle)
    finally:
        await target.aclose()
    assert [o.kind for o in progress.outcomes] == [OutcomeKind.DONE] * 2
    source = make_source()
    page = await read(source, handle.remote_id)
    assert [r.origin for r in page.records] == [o.effect for o in progress.outcomes]
    assert page.records[0].origin == f"reltio:{shared[1]}/reltio/api/TENANT:{uri(1)}"


async def test_token_renewal_and_no_secret_in_cursor(
    make_source: MakeSource, emulator: ReltioEmulator
) -> None:
    task_id = emulator.create_task(uris=[uri(1)])["id"]
    source = make_source()
    await read(source, task_id)
    emulator.expire_tokens()
    emulator.step(2 * STEP)
    page = await read(source, task_id)
    assert keys(page) == [uri(1)]
    assert SECRET not in json.dumps(page.cursor)


# --- answer shapes the emulator does not give -----------------------------------------


def mocked_source(answer: Any, status: int = 200) -> ReltioTaskSource:
    """A source whose tenant answers `GET tasks/t1` with `answer` (strict: any other
    call fails the test)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "tok-5e1f", "expires_in": 3600})
        assert request.method == "GET" and request.url.path == "/reltio/api/T/tasks/t1"
        if isinstance(answer, bytes):  # written as is: JSON the json module would not write
            return httpx.Response(status, content=answer)
        return httpx.Response(status, json=answer)

    conn = connection("http://reltio.test", tenant_url="http://reltio.test/reltio/api/T")
    http = HttpClient(
        connection="mdm",
        base_url=conn.tenant_url,
        retry=RetryPolicy(max_attempts=1),
        secrets=conn.secret_values(),
        transport=httpx.MockTransport(handler),
    )
    return ReltioTaskSource("mdm", conn, ReltioSourceSettings(tasks=["t1"]), http=http)


def task_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "t1",
        "type": DELETE_TASK_TYPE,
        "status": "COMPLETED",
        "parameters": {"entityUriList": ["entities/a", "b", "relations/x"]},
        "currentState": json.dumps(
            {"objectsFailedToDeleteCount": 1, "objectsFailedToDelete": ["b"]}
        ),
    }
    body.update(changes)
    return body


async def fetch_mocked(answer: Any, status: int = 200) -> SourcePage:
    source = mocked_source(answer, status)
    try:
        return await source.fetch(source.plan("task-t1", None, None, NOW))
    finally:
        await source.aclose()


async def test_one_element_array_and_string_state() -> None:
    page = await fetch_mocked([task_body()])
    assert keys(page) == ["entities/a"]
    assert page.records[0].fields["mode"] is None
    ended(page, "COMPLETED", deleted=1, failed=1)


async def test_status_only_in_current_state() -> None:
    page = await fetch_mocked(task_body(status=None, currentState={"status": "Processing"}))
    assert page.cursor == {"finished": False, "status": "Processing"}


async def test_not_a_delete_entities_task() -> None:
    relations = "com.reltio.businesslogic.tasks.delete.DeleteRelationsTask"
    page = await fetch_mocked(task_body(type=relations))
    assert page.records == []
    ended(page, "COMPLETED", deleted=0, failed=0)
    assert page.problem == (
        f"task t1 is a {relations}, not a DeleteEntitiesTask: it deletes no entities this "
        "source can name; nothing read"
    )


@pytest.mark.parametrize(
    ("answer", "status", "message"),
    [
        (task_body(status=None), 200, "a task without status"),
        (task_body(id="t2"), 200, "answered task 't2'"),
        ({"no": "task"}, 200, "HTTP 200"),
        ({"errorMessage": "Boom", "errorCode": 119}, 400, "HTTP 400 errorCode 119: Boom"),
    ],
)
async def test_unreadable_tasks_are_remote_errors(answer: Any, status: int, message: str) -> None:
    with pytest.raises(RemoteError, match=message):
        await fetch_mocked(answer, status)


# --- the emulator's operator routes ---------------------------------------------------


async def test_operator_task_routes(emulator: ReltioEmulator, admin: httpx.AsyncClient) -> None:
    created = await admin.post("/_admin/delete_task", json={"uris": [uri(1)], "created_by": "ops"})
    task = created.json()
    assert task["createdBy"] == "ops" and task["parameters"]["entityUriList"] == [uri(1)]
    assert task["parameters"]["mode"] == "soft"
    bad: dict[str, Any]
    for bad in (
        {},
        {"uris": [uri(1)], "filter": "equals(type,'X')"},
        {"uris": []},
        {"uris": "x"},
        {"filter": "startsWith(attributes.LastName, 'Ind')"},
        {"uris": [uri(1)], "mode": "purge"},
    ):
        refused = await admin.post("/_admin/delete_task", json=bad)
        assert refused.status_code == 400 and refused.json()["error"], bad
    forced = await admin.post(
        "/_admin/task_status", json={"id": task["id"], "status": "PAUSED", "processed": 1}
    )
    assert forced.status_code == 400 and "processed" in forced.json()["error"]
    typed = await admin.post("/_admin/task_status", json={"id": task["id"], "error": 3})
    assert typed.status_code == 400
    with pytest.raises(BadTaskRequest, match=r"objects\.list is empty"):
        emulator.create_task(uris=[])
    with pytest.raises(ValueError, match="bad value for read_errors"):
        emulator.knobs.update({"read_errors": {uri(1): 200}})
    failed = await admin.post(
        "/_admin/task_status", json={"id": task["id"], "status": "FAILED", "error": "x"}
    )
    assert failed.json()["error"] == "x"
    back = await admin.post("/_admin/task_status", json={"id": task["id"], "status": None})
    assert "error" not in back.json() and back.json()["status"] == "SCHEDULED"


# --- hostile answers ----------------------------------------------------------------------


async def test_a_task_answer_giving_a_key_twice_is_malformed() -> None:
    """Two statuses (or two entity lists): which one counts is a guess, so none does."""
    body = json.dumps(task_body(status="FAILED")).encode()
    body = body[:-1] + b', "status": "COMPLETED"}'
    with pytest.raises(MalformedAnswer, match="'status' given twice"):
        await fetch_mocked(body)


async def test_a_task_answer_nested_too_deep_is_a_remote_error_not_a_crash() -> None:
    body = json.dumps(task_body()).encode()
    body = body[:-1] + b', "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with pytest.raises(RemoteError):
        await fetch_mocked(body)


async def test_a_task_with_json_in_a_string_nested_too_deep_is_read_not_a_crash() -> None:
    deep = "[" * 50_000 + "]" * 50_000
    page = await fetch_mocked(task_body(parameters={"entityUriList": deep}))
    assert page.records == [] and page.cursor["finished"] is True
