from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from connectors.adt import (
    AdtConnection,
    AdtPurgeSettings,
    AdtPurgeTarget,
    AdtTargetSettings,
    build_target,
    check_purge_confirmation,
)
from connectors.adt.emulator import API_VERSION, AdtEmulator, demo_graph
from connectors.adt.purge import STATUS
from connectors.contract import (
    AmbiguousError,
    Delivery,
    FatalError,
    OutcomeKind,
    RemoteError,
    RetriableError,
)
from connectors.emulation.kit import Faults, LoggedRequest
from connectors.kit.jobs import AsyncTarget, JobHandle, JobSpec, JobState, map_status
from connectors.kit.serving import serve

TOKEN = "purge-token-3f2e-secret"
FAST_RETRY = {"max_attempts": 2, "base_delay": 0.001, "max_delay": 0.005}
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
STEP = 60.0

MakeTarget = Callable[..., AdtPurgeTarget]


def connection(url: str, **changes: Any) -> AdtConnection:
    data: dict[str, Any] = {
        "type": "adt",
        "url": url,
        "token": TOKEN,
        "timeout": 5,
        "retry": FAST_RETRY,
    }
    data.update(changes)
    return AdtConnection.model_validate(data)


def host_of(url: str) -> str:
    return url.removeprefix("http://")


def purge_block(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "purge",
        "confirm_purge": "127.0.0.1:8704",
        "trigger_keys": ["PURGE-*", "wipe"],
        "poll_interval": "50ms",
        **changes,
    }


def purge_settings(**changes: Any) -> AdtPurgeSettings:
    return AdtPurgeSettings.model_validate(purge_block(**changes))


def spec(*keys: str, client_id: str = "syncengine-job-1", job_id: int = 1) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        client_id=client_id,
        items=[Delivery(i, "CON_TRO", key, {"RECORD_ID": key}) for i, key in enumerate(keys, 1)],
    )


async def settled_log(emulator: AdtEmulator) -> list[LoggedRequest]:
    await asyncio.sleep(0.05)
    return list(emulator.log.entries)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[AdtEmulator, str]]:
    emulator = AdtEmulator(tokens=[TOKEN], step_seconds=STEP, clock=lambda: T0)
    with serve(emulator.app) as running:
        yield emulator, running.url


@pytest.fixture
def emulator(shared: tuple[AdtEmulator, str]) -> AdtEmulator:
    emulator = shared[0]
    emulator.reset()
    emulator.faults.update(asdict(Faults()))
    emulator.seed(demo_graph())
    return emulator


@pytest.fixture
async def make_target(
    shared: tuple[AdtEmulator, str], emulator: AdtEmulator
) -> AsyncIterator[MakeTarget]:
    made: list[AdtPurgeTarget] = []

    def make(conn: dict[str, Any] | None = None, **changes: Any) -> AdtPurgeTarget:
        url = shared[1]
        settings = purge_settings(**{"confirm_purge": host_of(url), **changes})
        target = AdtPurgeTarget("twinsprod", connection(url, **(conn or {})), settings)
        made.append(target)
        return target

    yield make
    for target in made:
        await target.aclose()


# --- configuration: the purge must be confirmed ---------------------------------------------


PROD = "https://myinstance.api.weu.digitaltwins.azure.net"


def test_confirmation_names_the_host() -> None:
    conn = connection(PROD)
    good = purge_settings(confirm_purge="MyInstance.api.weu.digitaltwins.azure.net")
    assert check_purge_confirmation(conn, good) is None
    assert (
        check_purge_confirmation(
            conn,
            AdtTargetSettings.model_validate(
                purge_block(confirm_purge="myinstance.api.weu.digitaltwins.azure.net")
            ),
        )
        is None
    )
    wrong = purge_settings(confirm_purge="127.0.0.1:8704")
    assert check_purge_confirmation(conn, wrong, "twinsprod") == (
        "connections.twinsprod points at myinstance.api.weu.digitaltwins.azure.net; to allow a "
        "delete job that wipes every model, twin and relationship of that instance, set "
        "confirm_purge: myinstance.api.weu.digitaltwins.azure.net on this target "
        "(it says '127.0.0.1:8704')"
    )
    twins = AdtTargetSettings.model_validate({"kind": "twins", "twin_id": "{RECORD_ID}"})
    assert check_purge_confirmation(conn, twins) is None


def test_confirmation_checked_when_the_loader_gives_the_connection() -> None:
    conn = connection("http://127.0.0.1:8704")
    ok = AdtTargetSettings.model_validate(purge_block(), context={"connection": conn})
    assert isinstance(ok.root, AdtPurgeSettings)
    for block, shown in (
        (purge_block(confirm_purge="127.0.0.1:8705"), "(it says '127.0.0.1:8705')"),
        ({k: v for k, v in purge_block().items() if k != "confirm_purge"}, ""),
    ):
        with pytest.raises(ValidationError) as info:
            AdtTargetSettings.model_validate(block, context={"connection": conn})
        (error,) = info.value.errors(include_url=False)
        assert error["loc"] == ("confirm_purge",)
        assert error["msg"].startswith("the connection points at 127.0.0.1:8704; to allow a")
        assert error["msg"].endswith(
            "set confirm_purge: 127.0.0.1:8704 on this target" + (" " + shown if shown else "")
        )


def test_confirmation_message_names_the_connection_when_given() -> None:
    context = {"connection": connection(PROD), "connection_name": "twinsprod"}
    for block in (purge_block(), {k: v for k, v in purge_block().items() if k != "confirm_purge"}):
        with pytest.raises(ValidationError) as info:
            AdtTargetSettings.model_validate(block, context=context)
        (error,) = info.value.errors(include_url=False)
        assert error["loc"] == ("confirm_purge",)
        assert error["msg"].startswith(
            "connections.twinsprod points at myinstance.api.weu.digitaltwins.azure.net; "
        )


def test_missing_confirmation_without_context_is_required() -> None:
    block = {k: v for k, v in purge_block().items() if k != "confirm_purge"}
    with pytest.raises(ValidationError) as info:
        AdtTargetSettings.model_validate(block)
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [(("confirm_purge",), "missing")]


def test_factory_refuses_an_unconfirmed_purge() -> None:
    with pytest.raises(FatalError, match=r"connections\.twinsprod points at myinstance"):
        build_target("twinsprod", connection(PROD), purge_settings())
    with pytest.raises(FatalError, match="set confirm_purge: myinstance"):
        AdtPurgeTarget("twinsprod", connection(PROD), purge_settings())
    target = build_target(
        "twinsprod",
        connection(PROD),
        AdtTargetSettings.model_validate(
            purge_block(confirm_purge="myinstance.api.weu.digitaltwins.azure.net")
        ),
    )
    assert isinstance(target, AdtPurgeTarget) and isinstance(target, AsyncTarget)
    assert target.kind == "adt_delete_job" and target.batch_size == 100


@pytest.mark.parametrize(
    ("changes", "loc", "message"),
    [
        ({"trigger_keys": []}, ("trigger_keys",), "at least 1 item"),
        ({"trigger_keys": [" "]}, ("trigger_keys",), "a trigger key pattern is empty"),
        ({"timeout_in_minutes": 14}, ("timeout_in_minutes",), "greater than or equal to 15"),
        ({"timeout_in_minutes": 1441}, ("timeout_in_minutes",), "less than or equal to 1440"),
        ({"poll_interval": "soon"}, ("poll_interval",), "is not a duration"),
        (
            {"twin_id": "{X}"},
            ("twin_id",),
            "unknown key 'twin_id'; valid keys for kind purge: batch_size, confirm_purge, kind, "
            "poll_interval, timeout_in_minutes, trigger_keys",
        ),
    ],
)
def test_purge_block_rejected(changes: dict[str, Any], loc: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        AdtTargetSettings.model_validate(purge_block(**changes))
    (error,) = info.value.errors(include_url=False)
    assert error["loc"] == loc and message in error["msg"]


def test_durations_and_triggers() -> None:
    settings = purge_settings(poll_interval="2m", trigger_keys=["PURGE-*", "0-1?"])
    assert settings.poll_interval == 120.0 and settings.timeout_in_minutes == 60
    assert settings.is_trigger("PURGE-2026-03") and settings.is_trigger("0-12")
    assert not settings.is_trigger("purge-x") and not settings.is_trigger("0-1")


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("notstarted", JobState.QUEUED),
        ("running", JobState.RUNNING),
        ("succeeded", JobState.SUCCEEDED),
        ("failed", JobState.FAILED),
        ("Succeeded", JobState.SUCCEEDED),
        ("canceled", JobState.CANCELLED),
        ("deleting", JobState.RUNNING),
        ("", JobState.RUNNING),
    ],
)
def test_status_table(raw: str, state: JobState) -> None:
    assert map_status(raw, STATUS) is state


# --- the job contract against the emulator ------------------------------------------------


async def test_non_triggers_start_no_job(make_target: MakeTarget, emulator: AdtEmulator) -> None:
    target = make_target()
    job = spec("0-1", "0-2")
    handle = await target.submit(job)
    assert handle.remote_id == "" and handle.state is JobState.SUCCEEDED
    assert handle.detail["outcomes"] == {"1": "not a purge trigger", "2": "not a purge trigger"}
    assert await target.find(job) == handle
    progress = await target.poll(job, handle)
    assert progress.state is JobState.SUCCEEDED
    assert [(o.delivery_id, o.kind, o.detail) for o in progress.outcomes] == [
        (1, OutcomeKind.DONE, "not a purge trigger"),
        (2, OutcomeKind.DONE, "not a purge trigger"),
    ]
    assert await settled_log(emulator) == []
    assert emulator.jobs() == [] and len(emulator.twin_ids()) == 13


async def test_trigger_runs_one_job_to_success(
    make_target: MakeTarget, emulator: AdtEmulator, shared: tuple[AdtEmulator, str]
) -> None:
    target = make_target(timeout_in_minutes=90)
    job = spec("0-1", "PURGE-2026-03", "wipe")
    handle = await target.submit(job)
    assert handle.remote_id == "syncengine-job-1" and handle.state is JobState.QUEUED
    assert handle.detail["operation_location"] == f"{shared[1]}/jobs/deletions/syncengine-job-1"
    (created,) = emulator.jobs()
    assert created["id"] == "syncengine-job-1" and created["timeoutInMinutes"] == 90
    (post,) = [e for e in await settled_log(emulator) if e.method == "POST"]
    assert (post.path, post.status, post.mutating) == ("/jobs/deletions", 202, True)

    queued = await target.poll(job, handle)
    assert queued.state is JobState.QUEUED and queued.outcomes == ()
    assert queued.poll_after == 0.05
    emulator.step(STEP)
    running = await target.poll(job, handle)
    assert running.state is JobState.RUNNING and running.detail["status"] == "running"
    assert len(emulator.twin_ids()) == 13
    emulator.step(STEP)
    done = await target.poll(job, handle)
    assert done.state is JobState.SUCCEEDED
    purged = (
        "purged by delete job syncengine-job-1 (finished 2026-03-02T09:02:00.0000000+00:00, "
        "job record kept until 2026-04-01T09:02:00.0000000+00:00)"
    )
    assert [(o.delivery_id, o.kind, o.detail) for o in done.outcomes] == [
        (1, OutcomeKind.DONE, "not a purge trigger"),
        (2, OutcomeKind.DONE, purged),
        (3, OutcomeKind.DONE, purged),
    ]
    assert emulator.twin_ids() == set() and emulator.relationships() == []
    assert [p["job"] for p in emulator.deleted()["purges"]] == ["syncengine-job-1"]
    assert emulator.deleted()["twins"] == []


async def test_another_job_running_is_retriable(
    make_target: MakeTarget, emulator: AdtEmulator, shared: tuple[AdtEmulator, str]
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=shared[1], headers=headers) as c:
        other = await c.post(
            "/jobs/deletions", params={"api-version": API_VERSION}, headers={"operation-id": "op"}
        )
        assert other.status_code == 202
    target = make_target(poll_interval=7)
    with pytest.raises(RetriableError) as info:
        await target.submit(spec("wipe"))
    assert not isinstance(info.value, AmbiguousError)
    assert info.value.retry_after == 7
    assert "another delete job is running on the instance (JobLimitReached)" in str(info.value)
    assert [j["id"] for j in emulator.jobs()] == ["op"]
    emulator.step(2 * STEP)
    handle = await target.submit(spec("wipe"))
    assert handle.remote_id == "syncengine-job-1"
    assert [j["id"] for j in emulator.jobs()] == ["op", "syncengine-job-1"]


async def test_resubmit_adopts_the_existing_job(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    target = make_target()
    job = spec("wipe")
    first = await target.submit(job)
    emulator.step(STEP)
    again = await target.submit(job)
    assert again.remote_id == first.remote_id == "syncengine-job-1"
    assert again.state is JobState.RUNNING and again.detail["adopted"] is True
    assert len(emulator.jobs()) == 1
    statuses = [(e.method, e.path, e.status) for e in await settled_log(emulator)]
    assert statuses == [
        ("POST", "/jobs/deletions", 202),
        ("POST", "/jobs/deletions", 400),
        ("GET", "/jobs/deletions/syncengine-job-1", 200),
    ]
    emulator.step(STEP)
    adopted_after_success = await target.submit(job)
    assert adopted_after_success.state is JobState.SUCCEEDED
    assert len(emulator.jobs()) == 1 and len(emulator.deleted()["purges"]) == 1


async def test_find_adopts_after_a_lost_answer(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    target = make_target()
    job = spec("PURGE-1")
    assert await target.find(job) is None
    emulator.faults.update({"drop_after_apply_rate": 1.0})
    with pytest.raises(AmbiguousError):
        await target.submit(job)
    emulator.faults.update({"drop_after_apply_rate": 0.0})
    assert [j["id"] for j in emulator.jobs()] == ["syncengine-job-1"]
    found = await target.find(job)
    assert found is not None
    assert found.remote_id == "syncengine-job-1" and found.state is JobState.QUEUED
    emulator.step(2 * STEP)
    done = await target.poll(job, found)
    assert [o.kind for o in done.outcomes] == [OutcomeKind.DONE]
    assert len(emulator.jobs()) == 1


async def test_failed_job_retries_the_triggers(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    target = make_target()
    job = spec("PURGE-1", "0-3")
    emulator.fail_next_job()
    handle = await target.submit(job)
    emulator.step(2 * STEP)
    progress = await target.poll(job, handle)
    assert progress.state is JobState.FAILED
    reason = (
        "delete job syncengine-job-1 failed: InternalError: Delete job syncengine-job-1 failed; "
        "the instance may be partly deleted."
    )
    assert progress.message.startswith("InternalError: ")
    assert [(o.kind, o.reason or o.detail) for o in progress.outcomes] == [
        (OutcomeKind.RETRY, reason),
        (OutcomeKind.DONE, "not a purge trigger"),
    ]
    assert len(emulator.twin_ids()) == 13


async def test_rejected_token_is_fatal_and_secret_free(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    target = make_target({"token": "old-" + TOKEN})
    with pytest.raises(FatalError) as info:
        await target.submit(spec("wipe"))
    assert "connections.twinsprod.token" in str(info.value) and TOKEN not in str(info.value)
    assert emulator.jobs() == []


async def test_job_in_real_time() -> None:
    """The emulator's lazy clock with short steps: the job ends while being polled."""
    emulator = AdtEmulator(tokens=[TOKEN], step_seconds=0.05)
    emulator.seed(demo_graph())
    with serve(emulator.app) as running:
        settings = purge_settings(confirm_purge=host_of(running.url))
        target = AdtPurgeTarget("twinsprod", connection(running.url), settings)
        job = spec("wipe")
        handle = await target.submit(job)
        deadline = time.monotonic() + 5
        progress = await target.poll(job, handle)
        while not progress.state.terminal and time.monotonic() < deadline:
            await asyncio.sleep(progress.poll_after or 0.05)
            progress = await target.poll(job, handle)
        await target.aclose()
    assert progress.state is JobState.SUCCEEDED
    assert emulator.twin_ids() == set()


# --- answers the emulator does not give ------------------------------------------------------


URL = "https://inst.api.weu.digitaltwins.azure.net"


def mocked_target() -> AdtPurgeTarget:
    settings = purge_settings(confirm_purge="inst.api.weu.digitaltwins.azure.net")
    return AdtPurgeTarget("twinsprod", connection(URL), settings)


def adt_error(status: int, code: str, message: str = "") -> httpx.Response:
    return httpx.Response(
        status,
        json={"error": {"code": code, "message": message}},
        headers={"x-ms-error-code": code},
    )


async def test_validation_failed_without_a_readable_job_is_retriable() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        router.post(f"{URL}/jobs/deletions").mock(
            return_value=adt_error(400, "ValidationFailed", "Operation-Id already exists.")
        )
        router.get(f"{URL}/jobs/deletions/syncengine-job-1").mock(
            return_value=adt_error(404, "DeleteJobNotFound")
        )
        target = mocked_target()
        with pytest.raises(RetriableError, match="no delete job 'syncengine-job-1' can be read"):
            await target.submit(spec("wipe"))
        post = router.calls[0].request
        assert post.headers["operation-id"] == "syncengine-job-1"
        assert post.url.params["timeoutInMinutes"] == "60"
        assert post.url.params["api-version"] == "2023-10-31"
        assert post.content == b""
        await target.aclose()


async def test_job_limit_reached_by_our_own_job_is_adopted() -> None:
    """Should the service check the job limit before the operation-id, the job is ours."""
    body = {"id": "syncengine-job-1", "status": "running", "createdDateTime": "x"}
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        router.post(f"{URL}/jobs/deletions").mock(return_value=adt_error(400, "JobLimitReached"))
        router.get(f"{URL}/jobs/deletions/syncengine-job-1").mock(
            return_value=httpx.Response(200, json=body)
        )
        target = mocked_target()
        handle = await target.submit(spec("wipe"))
        assert handle == JobHandle(
            "syncengine-job-1",
            JobState.RUNNING,
            {
                "id": "syncengine-job-1",
                "status": "running",
                "createdDateTime": "x",
                "adopted": True,
            },
        )
        await target.aclose()


async def test_find_never_guesses() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        router.get(f"{URL}/jobs/deletions/syncengine-job-1").mock(
            side_effect=[adt_error(400, "BadRequest", "odd"), httpx.Response(200, json={"x": 1})]
        )
        target = mocked_target()
        with pytest.raises(RetriableError, match="HTTP 400 BadRequest: odd"):
            await target.find(spec("wipe"))
        with pytest.raises(RetriableError, match="without a DeleteJob"):
            await target.find(spec("wipe"))
        await target.aclose()


async def test_a_job_id_that_would_change_the_poll_path_is_not_a_job() -> None:
    """Polling `jobs/deletions/..` would read `/jobs`; such an answer names no job."""
    body = {"id": "..", "status": "running"}
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        router.post(f"{URL}/jobs/deletions").mock(return_value=httpx.Response(200, json=body))
        target = mocked_target()
        with pytest.raises(RemoteError, match="without a DeleteJob"):
            await target.submit(spec("wipe"))
        await target.aclose()


async def test_other_refusals_are_remote_errors() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        router.post(f"{URL}/jobs/deletions").mock(
            return_value=adt_error(400, "InvalidArgument", "timeoutInMinutes")
        )
        router.get(f"{URL}/jobs/deletions/gone").mock(
            return_value=adt_error(404, "DeleteJobNotFound")
        )
        target = mocked_target()
        with pytest.raises(RemoteError, match="HTTP 400 InvalidArgument: timeoutInMinutes"):
            await target.submit(spec("wipe"))
        with pytest.raises(RemoteError, match="DeleteJobNotFound"):
            await target.poll(spec("wipe"), JobHandle("gone"))
        await target.aclose()
