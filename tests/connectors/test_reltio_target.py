from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, replace
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.contract import (
    AmbiguousError,
    ConnectorError,
    Countable,
    Delivery,
    FatalError,
    Outcome,
    OutcomeKind,
    RetriableError,
    registry,
)
from connectors.emulation.kit import Faults, LoggedRequest
from connectors.kit.jobs import AsyncTarget, JobHandle, JobSpec, JobState, map_status
from connectors.kit.serving import serve
from connectors.reltio import (
    ReltioConnection,
    ReltioDeleteTarget,
    ReltioTargetSettings,
    build_target,
    entity_name,
)
from connectors.reltio.emulator import GOOSE, Knobs, ReltioEmulator, demo_entities
from connectors.reltio.target import STATUS, current_state, entity_uri, task_object, task_uris

CLIENT, SECRET = "syncengine", "cl-secret-5e4d3c"
USER, PASSWORD = "jdoe", "user-pw-8a7b6c"
STEP = 0.05
FAST_RETRY = {"max_attempts": 3, "base_delay": 0.001, "max_delay": 0.005}
DEMO = demo_entities()

MakeTarget = Callable[..., ReltioDeleteTarget]


def uri(n: int) -> str:
    return f"entities/{DEMO[n - 1]['id']}"


def connection(url: str, **changes: Any) -> ReltioConnection:
    data: dict[str, Any] = {
        "type": "reltio",
        "tenant_url": f"{url}/reltio/api/TENANT",
        "auth_url": f"{url}/oauth/token",
        "client_id": CLIENT,
        "client_secret": SECRET,
        "timeout": 5,
        "retry": FAST_RETRY,
    }
    data.update(changes)
    return ReltioConnection.model_validate({k: v for k, v in data.items() if v is not None})


def settings(**changes: Any) -> ReltioTargetSettings:
    data: dict[str, Any] = {"entity": "entities/{RELTIO_ID}", "poll_interval": STEP}
    data.update(changes)
    return ReltioTargetSettings.model_validate({k: v for k, v in data.items() if v is not None})


CROSSWALK = {"entity": None, "crosswalk": {"type": GOOSE, "value": "{RECORD_ID}"}}


def by_id(*numbers: int, start: int = 1) -> list[Delivery]:
    return [
        Delivery(start + i, "CON_TRO", f"0-{n}", {"RELTIO_ID": DEMO[n - 1]["id"]})
        for i, n in enumerate(numbers)
    ]


def by_record(*records: Any, start: int = 1) -> list[Delivery]:
    return [Delivery(start + i, "CON_TRO", str(r), {"RECORD_ID": r}) for i, r in enumerate(records)]


def spec(items: Sequence[Delivery], job_id: int = 1) -> JobSpec:
    return JobSpec(job_id=job_id, client_id=f"job-{job_id}", items=list(items))


def kinds(outcomes: Sequence[Outcome]) -> list[tuple[str, str]]:
    return [(o.kind.value, o.detail or o.reason) for o in outcomes]


def check_outcomes(job: JobSpec, outcomes: Sequence[Outcome]) -> None:
    assert [o.delivery_id for o in outcomes] == [d.delivery_id for d in job.items]
    for outcome in outcomes:
        assert SECRET not in outcome.reason and PASSWORD not in outcome.reason


async def settled_log(emulator: ReltioEmulator) -> list[LoggedRequest]:
    """The emulator logs a request just after answering it; let the last entry land."""
    await asyncio.sleep(0.03)
    return list(emulator.log.entries)


def restored(handle: JobHandle) -> JobHandle:
    """The handle as the engine rebuilds it from its store after a restart."""
    detail = json.loads(json.dumps(dict(handle.detail)))
    return JobHandle(handle.remote_id, handle.state, detail)


async def run(
    target: ReltioDeleteTarget, emulator: ReltioEmulator, job: JobSpec
) -> tuple[JobHandle, list[Outcome], dict[str, Any]]:
    """Submit, then poll (moving the emulator's clock) until the task ends."""
    handle = restored(await target.submit(job))
    for _ in range(10):
        progress = await target.poll(job, handle)
        if progress.state.terminal:
            check_outcomes(job, progress.outcomes)
            return handle, list(progress.outcomes), dict(progress.detail)
        assert progress.poll_after == STEP
        emulator.step(STEP)
    raise AssertionError("the task never ended")


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ReltioEmulator, str]]:
    # A frozen clock: tasks move only when a test steps it, never because the machine
    # was slow between two calls.
    emu = ReltioEmulator(
        clients={CLIENT: SECRET}, users={USER: PASSWORD}, step_seconds=STEP, clock=lambda: 1.7e9
    )
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
async def make_target(
    shared: tuple[ReltioEmulator, str], emulator: ReltioEmulator
) -> AsyncIterator[MakeTarget]:
    made: list[ReltioDeleteTarget] = []

    def make(conn: dict[str, Any] | None = None, **changes: Any) -> ReltioDeleteTarget:
        target = ReltioDeleteTarget(
            "mdm", connection(shared[1], **(conn or {})), settings(**changes)
        )
        made.append(target)
        return target

    yield make
    for target in made:
        await target.aclose()


def remaining(emulator: ReltioEmulator) -> set[str]:
    return {e["uri"] for e in emulator.entities()}


def deleted(emulator: ReltioEmulator) -> list[str]:
    return sorted(d.uri for d in emulator.deleted())


# --- settings -------------------------------------------------------------------------


def test_connection_defaults_and_secrets() -> None:
    conn = connection("http://h:1", tenant_url="http://h:1/reltio/api/TENANT/ ")
    assert conn.tenant_url == "http://h:1/reltio/api/TENANT"
    assert conn.grant == "client_credentials"
    assert conn.secret_values() == [SECRET]
    user = connection("http://h", grant="password", username=USER, password=PASSWORD)
    assert user.secret_values() == [SECRET, PASSWORD]
    assert SECRET not in repr(conn) and PASSWORD not in repr(user)
    plain = ReltioConnection.model_validate(
        {
            "type": "reltio",
            "tenant_url": "https://x/reltio/api/T",
            "client_id": "c",
            "client_secret": "s",
        }
    )
    assert plain.auth_url == "https://auth.reltio.com/oauth/token"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"grant": "password"}, "grant 'password' needs 'username' and 'password'"),
        ({"grant": "password", "username": USER}, "needs 'username' and 'password'"),
        ({"grant": "password", "username": USER, "password": ""}, "'password' is empty"),
        ({"username": USER, "password": PASSWORD}, "only used with grant: password"),
        ({"grant": "implicit"}, "'client_credentials' or 'password'"),
        ({"client_secret": ""}, "'client_secret' is empty"),
        ({"client_id": ""}, "at least 1 character"),
        ({"tenant_url": "ftp://h/reltio/api/T"}, "is not an http(s) URL"),
        ({"auth_url": "auth.reltio.com/oauth/token"}, "is not an http(s) URL"),
        ({"secret": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_connection_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        connection("http://h", **changes)
    assert message in str(info.value)
    assert SECRET not in str(info.value) and PASSWORD not in str(info.value)


def test_target_settings() -> None:
    default = settings()
    assert (default.mode, default.send_mail, default.batch_size) == ("soft", False, 100)
    crosswalk = settings(**CROSSWALK)
    assert crosswalk.crosswalk is not None and crosswalk.crosswalk.type == GOOSE
    short = settings(entity=None, crosswalk={"type": "GOOSE", "value": "{RECORD_ID}"})
    assert short.crosswalk is not None and short.crosswalk.type == GOOSE
    assert settings(poll_interval="1m").poll_interval == 60


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"entity": None}, "set exactly one of 'entity'"),
        ({"crosswalk": {"type": GOOSE, "value": "{RECORD_ID}"}}, "set exactly one of 'entity'"),
        ({"entity": "entities/X"}, "uses no field"),
        ({"entity": "{ID!r}"}, "conversions"),
        ({"entity": None, "crosswalk": {"type": GOOSE, "value": "x"}}, "uses no field"),
        ({"entity": None, "crosswalk": {"type": "a/b", "value": "{R}"}}, "not a crosswalk source"),
        ({"entity": None, "crosswalk": {"type": GOOSE}}, "Field required"),
        ({"mode": "purge"}, "'soft' or 'hard'"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"batch_size": 1001}, "less than or equal to 1000"),
        ({"poll_interval": 0}, "greater than 0"),
        ({"sendMail": True}, "Extra inputs are not permitted"),
    ],
)
def test_target_settings_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        settings(**changes)
    assert message in str(info.value)


def test_registered() -> None:
    info = registry.get("reltio")
    assert info.connection_settings is ReltioConnection
    assert info.target_settings is ReltioTargetSettings
    assert info.build_target is build_target
    target = build_target("mdm", connection("http://h"), settings(batch_size=7))
    assert isinstance(target, AsyncTarget)
    assert (target.batch_size, target.kind) == (7, "reltio_delete")


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "state"), sorted(STATUS.items()))
def test_status_table(raw: str, state: JobState) -> None:
    assert map_status(raw, STATUS) is state
    assert map_status(f" {raw.lower()} ", STATUS) is state


def test_status_table_is_complete_and_unknown_is_running() -> None:
    queued = {"SCHEDULED", "WAITING_FOR_QUEUE", "WAITING_FOR_RESOURCE", "THROTTLING"}
    assert {k for k, v in STATUS.items() if v is JobState.QUEUED} == queued | {
        "PAUSING",
        "PAUSED",
    }
    assert {k for k, v in STATUS.items() if v is JobState.RUNNING} == {"PROCESSING"}
    assert {k for k, v in STATUS.items() if v is JobState.SUCCEEDED} == {
        "COMPLETED",
        "COMPLETED_WITH_ERRORS",
    }
    assert {k for k, v in STATUS.items() if v is JobState.FAILED} == {
        "FAILED",
        "PLATFORM_TASK_FAILED",
        "ERROR",
    }
    assert {k for k, v in STATUS.items() if v is JobState.CANCELLED} == {"CANCELING", "CANCELED"}
    assert map_status("SCHEDULED_POLL", STATUS) is JobState.RUNNING
    assert map_status("SOMETHING_NEW", STATUS) is JobState.RUNNING


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("entities/1AlLNjPS", "entities/1AlLNjPS"),
        ("1AlLNjPS", "entities/1AlLNjPS"),
        (" 8C06vMB ", "entities/8C06vMB"),
        ("entities/", None),
        ("", None),
        ("relations/abc", None),
        ("entities/a/b", None),
        ("a b", None),
        ("x?y", None),
        ("..", None),
        ("entities/..", None),
        ("entities/.", None),
        ("%2e%2e", None),
        ("entities/...", "entities/..."),
    ],
)
def test_entity_uri(text: str, expected: str | None) -> None:
    assert entity_uri(text) == expected


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            {
                "type": "com.reltio.businesslogic.tasks.delete.DeleteEntitiesTask",
                "parameters": {"entityUriList": ["entities/a", "b"]},
            },
            {"entities/a", "entities/b"},
        ),
        (
            {"type": "DeleteEntitiesTask", "taskParams": {"entityUriList": '["entities/a"]'}},
            {"entities/a"},
        ),
        (
            {"type": "DeleteEntitiesTask", "taskParams": {"entityUriList": "[entities/a, b]"}},
            {"entities/a", "entities/b"},
        ),
        ({"type": "DeleteEntitiesTask", "parameters": {"filter": "equals(type,'X')"}}, None),
        ({"type": "com.reltio.export.Task", "parameters": {"entityUriList": ["a"]}}, None),
        ({"parameters": {"entityUriList": ["a"]}}, None),
    ],
)
def test_task_uris(task: dict[str, Any], expected: set[str] | None) -> None:
    assert task_uris(task) == expected


def test_a_task_whose_id_would_change_the_poll_path_is_no_task() -> None:
    kind = "com.reltio.businesslogic.tasks.delete.DeleteEntitiesTask"
    assert task_object({"id": "t-1", "type": kind}) == {"id": "t-1", "type": kind}
    assert task_object([{"id": "..", "type": kind}]) is None
    assert task_object({"id": "", "type": kind}) is None


def test_current_state_shapes() -> None:
    assert current_state({"currentState": {"objectsFailedToDeleteCount": 2}}) == {
        "objectsFailedToDeleteCount": 2
    }
    assert current_state({"currentState": '{"status": "Completed"}'}) == {"status": "Completed"}
    assert current_state({"currentState": "not json"}) == {}
    assert current_state({}) == {}


# --- the contract against the emulator ------------------------------------------------


async def test_a_batch_is_deleted_and_all_done(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target(mode="hard", send_mail=True)
    job = spec(by_id(1, 2, 3))
    first = await target.submit(job)
    assert first.state is JobState.QUEUED and first.remote_id
    assert first.detail["uris"] == {"1": uri(1), "2": uri(2), "3": uri(3)}
    progress = await target.poll(job, first)
    assert progress.state is JobState.QUEUED and not progress.outcomes
    assert progress.poll_after == STEP and progress.message == "SCHEDULED"
    emulator.step(STEP)
    assert (await target.poll(job, first)).state is JobState.RUNNING
    emulator.step(STEP)
    final = await target.poll(job, restored(first))
    assert final.state is JobState.SUCCEEDED
    check_outcomes(job, final.outcomes)
    assert kinds(final.outcomes) == [("done", f"deleted by task {first.remote_id}")] * 3
    assert final.detail["numberOfProcessedObjects"] == 3
    assert final.detail["objectsFailedToDeleteCount"] == 0
    assert final.detail["checked"] == 0
    assert deleted(emulator) == sorted([uri(1), uri(2), uri(3)])
    assert {d.mode for d in emulator.deleted()} == {"hard"}
    (task,) = emulator.tasks()
    assert task["parameters"]["sendMail"] is True
    calls = [(e.method, e.path.rsplit("/", 1)[-1]) for e in await settled_log(emulator)]
    assert calls.count(("POST", "token")) == 1
    assert calls.count(("POST", "_delete")) == 1
    assert ("GET", DEMO[0]["id"]) not in calls


async def test_answer_as_a_bare_object(make_target: MakeTarget, emulator: ReltioEmulator) -> None:
    emulator.knobs.update({"answer_as_array": False})
    _, outcomes, _ = await run(make_target(), emulator, spec(by_id(4)))
    assert kinds(outcomes) == [("done", outcomes[0].detail)]
    assert deleted(emulator) == [uri(4)]


async def test_duplicates_share_one_entity(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    job = spec([*by_id(5), *by_id(5, start=2)])
    _, outcomes, _ = await run(make_target(), emulator, job)
    assert [o.kind for o in outcomes] == [OutcomeKind.DONE] * 2
    assert emulator.tasks()[0]["parameters"]["entityUriList"] == [uri(5)]


async def test_unmappable_keys_are_dead_and_not_sent(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    job = spec(
        [
            *by_id(1),
            Delivery(2, "CON_TRO", "x", {"RELTIO_ID": None}),
            Delivery(3, "CON_TRO", "y", {"OTHER": 1}),
            Delivery(4, "CON_TRO", "z", {"RELTIO_ID": "a/b"}),
        ]
    )
    _, outcomes, _ = await run(make_target(), emulator, job)
    assert kinds(outcomes)[1:] == [
        ("dead", "no key: field 'RELTIO_ID' is null"),
        ("dead", "no key: field 'RELTIO_ID' is missing (fields: OTHER)"),
        ("dead", "no key: 'entities/a/b' is not a Reltio entity URI or id (entities/<id>)"),
    ]
    assert outcomes[0].kind is OutcomeKind.DONE
    assert emulator.tasks()[0]["parameters"]["entityUriList"] == [uri(1)]


async def test_keys_that_would_change_the_path_are_dead_and_never_sent(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    """`GET {tenant}/entities/..` is `GET {tenant}/`: an entity id is one path segment or
    nothing is sent for it."""
    unsafe = ["..", "entities/..", ".", "a/../b", "%2e%2e"]
    job = spec(
        [*by_id(1), *(Delivery(2 + i, "T", k, {"RELTIO_ID": k}) for i, k in enumerate(unsafe))]
    )
    target = make_target(entity="{RELTIO_ID}")
    _, outcomes, _ = await run(target, emulator, job)
    assert outcomes[0].kind is OutcomeKind.DONE
    for outcome, key in zip(outcomes[1:], unsafe, strict=True):
        assert outcome.kind is OutcomeKind.DEAD
        assert outcome.reason.startswith("unsafe key: "), (key, outcome.reason)
        assert "dot segment" in outcome.reason
    assert emulator.tasks()[0]["parameters"]["entityUriList"] == [uri(1)]
    paths = {e.path for e in await settled_log(emulator)}
    base = "/reltio/api/TENANT"
    assert paths <= {"/oauth/token", f"{base}/entities/_delete", f"{base}/{uri(1)}"} | {
        f"{base}/tasks/{t['id']}" for t in emulator.tasks()
    }


async def test_crosswalk_values_that_would_change_the_path_are_dead_and_never_looked_up(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    """A crosswalk value `..` made `GET {tenant}/entities`, a listing a lookup can read
    as a match. Other characters are encoded into the one segment and still found."""
    emulator.seed([{"id": "slashy", "crosswalks": [{"type": GOOSE, "value": "x/y?z#1"}]}])
    unsafe = ["..", ".", "a/../b", "%2e%2e", "..%2Fentities", "..;x"]
    job = spec(by_record("0-3", "x/y?z#1", *unsafe))
    handle, outcomes, _ = await run(make_target(**CROSSWALK), emulator, job)
    assert kinds(outcomes)[:2] == [("done", f"deleted by task {handle.remote_id}")] * 2
    for outcome in outcomes[2:]:
        assert outcome.kind is OutcomeKind.DEAD
        assert outcome.reason.startswith("unsafe key: ") and "dot segment" in outcome.reason
    assert deleted(emulator) == sorted([uri(3), "entities/slashy"])
    base = "/reltio/api/TENANT/entities"
    lookups = sorted(e.path for e in await settled_log(emulator) if e.method == "GET")
    assert [p for p in lookups if "/tasks/" not in p] == [
        f"{base}/_byCrosswalk/0-3",
        f"{base}/_byCrosswalk/x/y?z#1",
    ]


async def test_template_without_prefix(make_target: MakeTarget, emulator: ReltioEmulator) -> None:
    _, outcomes, _ = await run(make_target(entity="{RELTIO_ID}"), emulator, spec(by_id(6)))
    assert outcomes[0].kind is OutcomeKind.DONE
    assert deleted(emulator) == [uri(6)]


async def test_crosswalk_absent_is_done_without_being_sent(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target(**CROSSWALK)
    job = spec(by_record("0-1", "9-99", None, "0-2"))
    handle, outcomes, _ = await run(target, emulator, job)
    assert kinds(outcomes) == [
        ("done", f"deleted by task {handle.remote_id}"),
        ("done", "absent"),
        ("dead", "no key: field 'RECORD_ID' is null"),
        ("done", f"deleted by task {handle.remote_id}"),
    ]
    assert emulator.tasks()[0]["parameters"]["entityUriList"] == [uri(1), uri(2)]
    assert deleted(emulator) == sorted([uri(1), uri(2)])


async def test_crosswalk_answered_as_a_bare_entity(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    emulator.knobs.update({"crosswalk_answer": "entity"})
    _, outcomes, _ = await run(make_target(**CROSSWALK), emulator, spec(by_record("0-7")))
    assert outcomes[0].kind is OutcomeKind.DONE
    assert deleted(emulator) == [uri(7)]


async def test_crosswalk_held_by_two_entities_is_dead(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    emulator.seed([{"id": "twin", "crosswalks": [{"type": GOOSE, "value": "0-1"}]}])
    _, outcomes, _ = await run(make_target(**CROSSWALK), emulator, spec(by_record("0-1", "0-2")))
    assert outcomes[0].kind is OutcomeKind.DEAD
    assert outcomes[0].reason.startswith(f"ambiguous: 2 entities have crosswalk {GOOSE} '0-1'")
    assert deleted(emulator) == [uri(2)]


async def test_everything_resolved_before_submission_makes_no_task(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target(**CROSSWALK)
    job = spec([*by_record("9-1", "9-2"), Delivery(3, "CON_TRO", "k", {})])
    handle = await target.submit(job)
    assert handle.remote_id == "" and handle.state is JobState.SUCCEEDED
    before = len(await settled_log(emulator))
    progress = await target.poll(job, restored(handle))
    assert progress.state is JobState.SUCCEEDED
    assert kinds(progress.outcomes) == [
        ("done", "absent"),
        ("done", "absent"),
        ("dead", "no key: field 'RECORD_ID' is missing (fields: none)"),
    ]
    assert len(await settled_log(emulator)) == before
    assert emulator.tasks() == []


async def test_protected_entities_are_retried_only_those(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    emulator.protect([uri(2), uri(4)])
    handle, outcomes, detail = await run(make_target(), emulator, spec(by_id(1, 2, 3, 4)))
    assert [o.kind for o in outcomes] == [
        OutcomeKind.DONE,
        OutcomeKind.RETRY,
        OutcomeKind.DONE,
        OutcomeKind.RETRY,
    ]
    assert outcomes[1].reason == (
        f"Reltio task {handle.remote_id} (COMPLETED_WITH_ERRORS) could not delete {uri(2)}: "
        "listed in objectsFailedToDelete (2 failed in all)"
    )
    assert detail["objectsFailedToDeleteCount"] == 2 and detail["checked"] == 2
    assert detail["status"] == "COMPLETED_WITH_ERRORS"
    assert remaining(emulator) >= {uri(2), uri(4)}


async def test_no_failure_count_means_every_entity_is_read_back(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    emulator.knobs.update({"failure_fields": "when_failed"})
    handle, outcomes, detail = await run(make_target(), emulator, spec(by_id(1, 2)))
    assert "objectsFailedToDeleteCount" not in detail and detail["checked"] == 2
    assert kinds(outcomes) == [("done", f"absent after task {handle.remote_id}")] * 2


async def test_already_absent_entity_listed_as_failed_is_done(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    job = spec([*by_id(1), Delivery(2, "CON_TRO", "g", {"RELTIO_ID": "gone"})])
    _, outcomes, detail = await run(make_target(), emulator, job)
    assert kinds(outcomes)[1] == ("done", "absent")
    assert detail["objectsFailedToDeleteCount"] == 1


async def test_failure_list_cut_at_100_is_checked_one_by_one(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    protected = [f"p{n:03d}" for n in range(150)]
    emulator.seed([{"id": p} for p in protected])
    emulator.protect(f"entities/{p}" for p in protected)
    items = [
        Delivery(n, "CON_TRO", key, {"RELTIO_ID": key})
        for n, key in enumerate([*protected, *(str(e["id"]) for e in DEMO[:10])], start=1)
    ]
    job = spec(items)
    emulator.log.clear()
    handle, outcomes, detail = await run(make_target(batch_size=200), emulator, job)
    retried = {o.delivery_id for o in outcomes if o.kind is OutcomeKind.RETRY}
    assert retried == set(range(1, 151))
    assert [o.kind for o in outcomes[150:]] == [OutcomeKind.DONE] * 10
    assert detail["objectsFailedToDeleteCount"] == 150
    assert detail["objectsFailedToDeleteListed"] == 100
    assert detail["checked"] == 160
    unlisted = [o for o in outcomes[:150] if "still present" in o.reason]
    assert len(unlisted) == 50
    assert f"after Reltio task {handle.remote_id} (COMPLETED_WITH_ERRORS" in unlisted[0].reason
    assert {o.detail for o in outcomes[150:]} == {f"absent after task {handle.remote_id}"}
    reads = [
        e
        for e in await settled_log(emulator)
        if e.method == "GET" and e.path.split("/")[-2] == "entities"
    ]
    assert len(reads) == 160


async def test_done_outcomes_name_the_gone_entity_in_effect(
    make_target: MakeTarget, emulator: ReltioEmulator, shared: tuple[ReltioEmulator, str]
) -> None:
    """`effect` is what a Reltio task source gives the same entity as `origin`."""
    tenant = f"{shared[1]}/reltio/api/TENANT"
    emulator.protect([uri(2)])
    job = spec(
        [
            *by_id(1, 2),
            Delivery(3, "CON_TRO", "g", {"RELTIO_ID": "gone"}),
            Delivery(4, "CON_TRO", "n", {"RELTIO_ID": None}),
        ]
    )
    handle, outcomes, _ = await run(make_target(), emulator, job)
    assert [(o.kind.value, o.effect) for o in outcomes] == [
        ("done", entity_name(tenant, uri(1))),
        ("retry", ""),
        ("done", f"reltio:{tenant}:entities/gone"),
        ("dead", ""),
    ]
    assert outcomes[0].detail == f"deleted by task {handle.remote_id}"
    assert outcomes[2].detail == "absent"


async def test_effect_after_a_read_back_and_with_crosswalks(
    make_target: MakeTarget, emulator: ReltioEmulator, shared: tuple[ReltioEmulator, str]
) -> None:
    tenant = f"{shared[1]}/reltio/api/TENANT"
    emulator.knobs.update({"failure_fields": "when_failed"})
    _, outcomes, _ = await run(make_target(), emulator, spec(by_id(1)))
    assert outcomes[0].detail.startswith("absent after task ")
    assert outcomes[0].effect == entity_name(tenant, uri(1))
    emulator.knobs.update({"failure_fields": "always"})
    crosswalk = make_target({"tenant_url": f"{tenant}/"}, **CROSSWALK)
    _, outcomes, _ = await run(crosswalk, emulator, spec(by_record("0-2", "9-9")))
    assert [(o.detail.split(" ")[0], o.effect) for o in outcomes] == [
        ("deleted", entity_name(tenant, uri(2))),
        ("absent", ""),
    ]


async def test_preview_names_only_entities_already_gone(make_target: MakeTarget) -> None:
    target = make_target()
    batch = [*by_id(1), Delivery(2, "CON_TRO", "g", {"RELTIO_ID": "gone"})]
    assert [o.effect for o in await target.preview(batch)] == [
        "",
        entity_name(target.tenant_url, "entities/gone"),
    ]


async def test_lost_submit_answer_then_find_adopts_the_task(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    job = spec(by_id(1, 2, 3))
    await target.find(spec(by_id(9)))
    emulator.faults.update({"drop_after_apply_rate": 1.0})
    with pytest.raises(AmbiguousError):
        await target.submit(job)
    emulator.faults.update({"drop_after_apply_rate": 0.0})
    (task,) = emulator.tasks()
    found = await target.find(job)
    assert found is not None and found.remote_id == task["id"]
    assert found.detail["adopted"] is True
    assert await target.find(spec(by_id(1, 2))) is None
    assert await target.find(spec(by_id(1, 2, 3, 4))) is None
    emulator.step(2 * STEP)
    progress = await target.poll(job, restored(found))
    assert [o.kind for o in progress.outcomes] == [OutcomeKind.DONE] * 3
    assert len(emulator.tasks()) == 1
    posts = [e for e in await settled_log(emulator) if e.mutating]
    assert len(posts) == 1 and posts[0].fault == "drop_after_apply"


async def test_find_adopts_the_newest_matching_task(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    job = spec(by_id(1))
    older = await target.submit(job)
    emulator.step(0.01)
    newer = await target.submit(job)
    emulator.knobs.update({"task_params_field": "taskParams"})
    found = await target.find(job)
    assert found is not None and found.remote_id == newer.remote_id != older.remote_id


async def test_find_with_crosswalks_after_the_task_ran(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    """The process died after the POST: entities the task deleted no longer resolve."""
    target = make_target(**CROSSWALK)
    decoy = await target.submit(spec(by_record("0-5")))
    emulator.step(2 * STEP)
    job = spec(by_record("0-1", "0-2", "0-3", "9-9"))
    emulator.protect([uri(3)])
    lost = await target.submit(job)
    assert lost.remote_id != decoy.remote_id
    emulator.step(2 * STEP)
    found = await target.find(job)
    assert found is not None and found.remote_id == lost.remote_id
    assert found.detail["uris"] == {"3": uri(3)}
    progress = await target.poll(job, restored(found))
    assert kinds(progress.outcomes)[:2] == [("done", "absent"), ("done", "absent")]
    assert progress.outcomes[2].kind is OutcomeKind.RETRY
    assert kinds(progress.outcomes)[3] == ("done", "absent")
    assert len(emulator.tasks()) == 2


async def test_find_with_crosswalks_when_all_are_gone_resubmits_nothing(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target(**CROSSWALK)
    job = spec(by_record("0-1"))
    await run(target, emulator, job)
    assert await target.find(job) is None
    again = await target.submit(job)
    assert again.remote_id == "" and len(emulator.tasks()) == 1


async def test_lookup_errors_before_submission_are_plainly_retriable(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target(**CROSSWALK)
    assert await target.find(spec(by_record("9-9"))) is None
    emulator.faults.update({"error_rate": 1.0})
    with pytest.raises(RetriableError) as info:
        await target.submit(spec(by_record("0-1")))
    assert not isinstance(info.value, AmbiguousError)
    assert "GET /entities/_byCrosswalk/0-1" in str(info.value)
    assert emulator.tasks() == []


def looked_up(log: Sequence[LoggedRequest]) -> list[str]:
    """The crosswalk values looked up, in the order the emulator answered them."""
    return sorted(e.path.rsplit("/_byCrosswalk/", 1)[1] for e in log if "/_byCrosswalk/" in e.path)


async def test_resolve_keeps_each_look_up_and_a_failed_one_is_made_again_alone(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target(**CROSSWALK)
    job = spec(by_record("0-1", "0-2", "0-3", "9-9", "0-1"))
    kept: dict[str, Any] = {}

    async def keep(key: str, value: Any) -> None:
        kept[key] = json.loads(json.dumps(value))

    emulator.knobs.update({"lookup_errors": {"0-2": 503}})
    with pytest.raises(RetriableError, match="_byCrosswalk/0-2"):
        await target.resolve(job, keep)
    assert kept == {"0-1": {"uris": [uri(1)]}, "0-3": {"uris": [uri(3)]}, "9-9": {"uris": []}}
    emulator.knobs.update({"lookup_errors": {}})
    emulator.log.clear()
    await target.resolve(replace(job, resolved=dict(kept)), keep)
    assert looked_up(await settled_log(emulator)) == ["0-2"]
    assert kept["0-2"] == {"uris": [uri(2)]}

    emulator.log.clear()
    handle, outcomes, _ = await run(target, emulator, replace(job, resolved=dict(kept)))
    assert looked_up(await settled_log(emulator)) == [], "submit uses the kept look-ups"
    assert handle.detail["uris"] == {"1": uri(1), "2": uri(2), "3": uri(3), "5": uri(1)}
    assert [o.kind for o in outcomes] == [OutcomeKind.DONE] * 5
    assert deleted(emulator) == sorted([uri(1), uri(2), uri(3)])


async def test_a_kept_look_up_that_cannot_be_read_is_made_again(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target(**CROSSWALK)
    kept = {"0-1": {"uris": ["entities/../x"]}, "0-2": ["entities/a"], "0-3": {"uris": [uri(3)]}}
    job = replace(spec(by_record("0-1", "0-2", "0-3")), resolved=kept)
    await target.resolve(job, lambda key, value: asyncio.sleep(0))
    handle = await target.submit(job)
    assert looked_up(await settled_log(emulator)) == ["0-1", "0-2"]
    assert handle.detail["uris"] == {"1": uri(1), "2": uri(2), "3": uri(3)}


async def test_a_look_up_the_api_refuses_is_left_to_submit(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    """Not retriable: resolve lets submit answer that delivery (retry), the rest go."""
    target = make_target(**CROSSWALK)
    emulator.knobs.update({"lookup_errors": {"0-2": 400}})
    kept: dict[str, Any] = {}

    async def keep(key: str, value: Any) -> None:
        kept[key] = value

    job = spec(by_record("0-1", "0-2"))
    await target.resolve(job, keep)
    assert set(kept) == {"0-1"}
    _, outcomes, _ = await run(target, emulator, replace(job, resolved=kept))
    assert [o.kind for o in outcomes] == [OutcomeKind.DONE, OutcomeKind.RETRY]
    assert looked_up(await settled_log(emulator)) == ["0-1", "0-2", "0-2"]


async def test_find_uses_the_kept_look_ups(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    """The task is recognised by exactly the entities it was given, looked up before it."""
    target = make_target(**CROSSWALK)
    kept = {"0-1": {"uris": [uri(1)]}, "0-2": {"uris": [uri(2)]}}
    job = replace(spec(by_record("0-1", "0-2")), resolved=kept)
    await target.population()  # a token first: its request would lose its answer too
    emulator.faults.update({"drop_after_apply_rate": 1.0})
    with pytest.raises(AmbiguousError):
        await target.submit(job)
    emulator.faults.update({"drop_after_apply_rate": 0.0})
    emulator.step(2 * STEP)
    found = await target.find(job)
    assert found is not None and found.remote_id == emulator.tasks()[0]["id"]
    assert looked_up(await settled_log(emulator)) == []


async def test_find_errors_are_retriable(make_target: MakeTarget, emulator: ReltioEmulator) -> None:
    target = make_target()
    emulator.faults.update({"error_rate": 1.0})
    with pytest.raises(RetriableError):
        await target.find(spec(by_id(1)))


async def test_token_renewed_once_after_expiry(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    job = spec(by_id(1, 2))
    handle = await target.submit(job)
    assert emulator.expire_tokens() == 1
    emulator.step(2 * STEP)
    progress = await target.poll(job, handle)
    assert progress.state is JobState.SUCCEEDED
    log = await settled_log(emulator)
    assert sum(e.path == "/oauth/token" for e in log) == 2
    assert [e.status for e in log if e.path.endswith(handle.remote_id)] == [401, 200]


async def test_password_grant(make_target: MakeTarget, emulator: ReltioEmulator) -> None:
    target = make_target({"grant": "password", "username": USER, "password": PASSWORD})
    await run(target, emulator, spec(by_id(1)))
    assert emulator.tasks()[0]["createdBy"] == USER


@pytest.mark.parametrize(
    ("conn", "settings_named"),
    [
        (
            {"client_secret": "wrong-secret-1234"},
            "client_id and client_secret (grant: client_credentials)",
        ),
        (
            {"grant": "password", "username": USER, "password": "wrong-pw-5678"},
            "client_id and client_secret, username and password (grant: password)",
        ),
    ],
)
async def test_rejected_credentials_are_fatal_without_secrets(
    make_target: MakeTarget, emulator: ReltioEmulator, conn: dict[str, Any], settings_named: str
) -> None:
    target = make_target(conn)
    with pytest.raises(FatalError) as info:
        await target.submit(spec(by_id(1)))
    message = str(info.value)
    assert "reltio connection 'mdm': credentials rejected" in message
    assert f"connections.mdm.auth_url, {settings_named}" in message
    for secret in (*conn.values(), SECRET, PASSWORD):
        if secret not in (USER, "password"):
            assert secret not in message
    assert emulator.tasks() == []


async def test_forbidden_tenant_is_fatal(
    make_target: MakeTarget, emulator: ReltioEmulator, shared: tuple[ReltioEmulator, str]
) -> None:
    target = make_target({"tenant_url": f"{shared[1]}/reltio/api/OTHER"})
    with pytest.raises(FatalError, match=r"HTTP 403 .*Security error"):
        await target.submit(spec(by_id(1)))


async def test_wrong_tenant_path_is_fatal_not_absent(
    make_target: MakeTarget, emulator: ReltioEmulator, shared: tuple[ReltioEmulator, str]
) -> None:
    target = make_target({"tenant_url": f"{shared[1]}/api/TENANT"}, **CROSSWALK)
    with pytest.raises(FatalError, match=r"404 without a Reltio error; check connections\.mdm"):
        await target.submit(spec(by_record("0-1")))


async def test_backpressure_on_submit_is_sent_again(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    await target.find(spec(by_id(9)))
    emulator.knobs.update({"backpressure_next": 1})
    handle = await target.submit(spec(by_id(1)))
    assert handle.remote_id and len(emulator.tasks()) == 1
    statuses = [e.status for e in await settled_log(emulator) if e.mutating]
    assert statuses == [503, 200]


async def test_throttled_without_retry_after_is_sent_again(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    await target.find(spec(by_id(9)))
    emulator.faults.update({"throttle_rate": 1.0})
    with pytest.raises(RetriableError) as info:
        await target.submit(spec(by_id(1)))
    assert not isinstance(info.value, AmbiguousError) and info.value.retry_after is None
    assert emulator.tasks() == []
    emulator.faults.update({"throttle_rate": 0.0})
    assert (await target.submit(spec(by_id(1)))).remote_id


async def test_unknown_task_reads_every_entity_back(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    job = spec(by_id(1))
    handle = await target.submit(job)
    missing = JobHandle("no-such-task", JobState.RUNNING, handle.detail)
    progress = await target.poll(job, missing)
    assert progress.state is JobState.FAILED
    assert progress.message == (
        "task no-such-task NOT_FOUND: Reltio does not know this task (HTTP 404)"
    )
    assert progress.detail["status"] == "NOT_FOUND"
    assert progress.outcomes[0].kind is OutcomeKind.RETRY
    assert "still present after Reltio task no-such-task" in progress.outcomes[0].reason


async def test_failed_task_checks_every_entity(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    job = spec(by_id(1, 2))
    handle = await target.submit(job)
    emulator.force_status(handle.remote_id, "FAILED")
    progress = await target.poll(job, handle)
    assert progress.state is JobState.FAILED and progress.message.startswith("task ")
    assert [o.kind for o in progress.outcomes] == [OutcomeKind.RETRY] * 2
    assert progress.detail["checked"] == 2
    assert progress.outcomes[0].reason == (
        f"{uri(1)} still present after Reltio task {handle.remote_id} ended FAILED"
    )


@pytest.mark.parametrize("status", ["CANCELED", "PLATFORM_TASK_FAILED"])
async def test_task_ended_badly_after_deleting_is_done(
    make_target: MakeTarget, emulator: ReltioEmulator, status: str
) -> None:
    target = make_target()
    job = spec(by_id(1, 2))
    handle = await target.submit(job)
    emulator.step(2 * STEP)
    emulator.force_status(handle.remote_id, status)
    progress = await target.poll(job, handle)
    assert progress.state is map_status(status, STATUS)
    assert kinds(progress.outcomes) == [("done", f"absent after task {handle.remote_id}")] * 2


async def test_unknown_status_keeps_polling(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    job = spec(by_id(1))
    handle = await target.submit(job)
    emulator.force_status(handle.remote_id, "REBALANCING")
    progress = await target.poll(job, handle)
    assert progress.state is JobState.RUNNING and progress.message == "REBALANCING"
    assert progress.poll_after == STEP


async def test_preview_reads_only(make_target: MakeTarget, emulator: ReltioEmulator) -> None:
    target = make_target()
    batch = [*by_id(1), Delivery(2, "CON_TRO", "g", {"RELTIO_ID": "gone"}), *by_record(3, start=3)]
    assert kinds(await target.preview(batch)) == [
        ("done", f"would delete {uri(1)}"),
        ("done", "absent"),
        ("dead", "no key: field 'RELTIO_ID' is missing (fields: RECORD_ID)"),
    ]
    crosswalk = make_target(**CROSSWALK)
    assert kinds(await crosswalk.preview(by_record("0-2", "9-9"))) == [
        ("done", f"would delete {uri(2)}"),
        ("done", "absent"),
    ]
    emulator.faults.update({"error_rate": 1.0})
    assert [o.kind for o in await target.preview(by_id(1))] == [OutcomeKind.RETRY]
    assert not any(e.mutating for e in await settled_log(emulator))
    assert emulator.tasks() == []


async def test_remote_errors_carry_reltios_message(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    response = await target.api.call("GET", "/entities/_byCrosswalk/0-1", idempotent=True)
    error = target.api.remote("GET /entities/_byCrosswalk/0-1", response)
    assert str(error) == (
        "mdm: GET /entities/_byCrosswalk/0-1: HTTP 400 errorCode 100: Parameter 'type' is required"
    )
    assert error.code == "100"


async def test_population_is_the_tenants_entity_total(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    target = make_target()
    assert isinstance(target, Countable)
    assert await target.population() == len(DEMO)
    job = spec(by_id(1, 2))
    await target.submit(job)
    emulator.step(STEP * 2)
    assert await target.population() == len(DEMO) - 2
    assert ("GET", "_total") in [
        (e.method, e.path.rsplit("/", 1)[-1]) for e in await settled_log(emulator)
    ]


async def test_population_fails_loudly_when_the_count_cannot_be_read(
    make_target: MakeTarget, emulator: ReltioEmulator
) -> None:
    emulator.faults.update({"error_rate": 1.0})
    with pytest.raises(ConnectorError):
        await make_target().population()
