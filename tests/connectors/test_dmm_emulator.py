from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from connectors.dmm.emulator import (
    ALREADY_RUNNING,
    BASE_PATH,
    DEMO_OTP,
    DEMO_TOKEN,
    STOPPED,
    DmmEmulator,
    Knobs,
    demo_entities,
)
from connectors.dmm.logs import parse_lines, split_lines
from connectors.emulation.kit import Faults
from connectors.kit.serving import serve

TOKEN, OTP = "api-key-4f2a", "otp-9c1d"
STEP = 0.05
AUTH = {"X-DMM-Token": TOKEN}
START_AUTH = {**AUTH, "X-DMM-Token-OTP": OTP}
CONTACTS = {
    "Contact": {
        "key": "Id",
        "rows": [{"Id": n, "Email": f"c{n}@x.it", "Name": f"C{n}"} for n in range(1, 11)],
    },
    "Tag": {"key": "Label", "rows": [{"Label": "o'brien"}, {"Label": "plain"}, {"Label": "Zoë"}]},
}


def frozen() -> float:
    """Time stands still unless a test steps it, so no state changes between two reads."""
    return 1_795_000_000.0


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[DmmEmulator, str]]:
    """One server per module: starting uvicorn costs more than all these tests."""
    emu = DmmEmulator(
        tokens=[TOKEN], otps=[OTP, "otp-2"], step_seconds=STEP, connections=["Dest"], clock=frozen
    )
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[DmmEmulator, str]) -> DmmEmulator:
    emu = shared[0]
    emu.reset()
    emu.faults.update(asdict(Faults()))
    emu.knobs.update(asdict(Knobs(step_seconds=STEP, chunk_size=4)))
    emu.seed(CONTACTS)
    return emu


@pytest.fixture
def client(emulator: DmmEmulator, shared: tuple[DmmEmulator, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared[1] + BASE_PATH, timeout=5) as c:
        yield c


def admin(shared: tuple[DmmEmulator, str]) -> httpx.Client:
    return httpx.Client(base_url=shared[1] + "/_admin", timeout=5)


def config(entity: str = "Contact", where: str | None = "[Id] IN (1, 2)", **extra: Any) -> Any:
    return {
        "Type": "Delete",
        "Configuration": {
            "DestinationDBConnection": None,
            "EntitiesToDelete": [
                {
                    "OSEntityName": entity,
                    "OSEntitySSKey": None,
                    "ESpaceSsKey": None,
                    "WhereClause": where,
                }
            ],
            "ApplicationDeletionMode": False,
            "ApplicationsToDelete": [],
            "FilterTenants": False,
            "TenantsList": [],
            "IncludeProtectedApplications": False,
            **extra,
        },
    }


def start(client: httpx.Client, body: Any = None, headers: dict[str, str] | None = None) -> int:
    response = client.post(
        "/StartExecution", json=config() if body is None else body, headers=headers or START_AUTH
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["Success"] is True, answer
    tracker: int = answer["MainExecutionTrackerId"]
    return tracker


def status(client: httpx.Client, tracker: Any, **params: Any) -> dict[str, Any]:
    body = {"MainExecutionTrackerId": tracker, "IncludeReports": True, **params}
    response = client.post("/GetExecutionStatus", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def outputs(client: httpx.Client, tracker: Any) -> dict[str, Any]:
    body = {
        "MainExecutionTrackerId": tracker,
        "IncludeLogs": True,
        "IncludeReports": True,
        "IncludeErrorReport": True,
        "IncludeFiles": False,
    }
    response = client.post("/GetExecutionOutputs", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def unzip(logs: str) -> dict[str, list[str]]:
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(logs))) as archive:
        return {n: split_lines(archive.read(n).decode()) for n in archive.namelist()}


def ids(emulator: DmmEmulator, entity: str = "Contact") -> list[Any]:
    key = {"Contact": "Id", "Tag": "Label"}[entity]
    return [row[key] for row in emulator.rows(entity)]


def finish(emulator: DmmEmulator, steps: int = 20) -> None:
    emulator.step(STEP * steps)


# --- auth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-DMM-Token": "wrong"}, {"X-DMM-Token-OTP": OTP}])
@pytest.mark.parametrize(
    "operation", ["StartExecution", "StopExecution", "GetExecutionStatus", "GetExecutionOutputs"]
)
def test_bad_token_is_401(client: httpx.Client, headers: dict[str, str], operation: str) -> None:
    response = client.post(f"/{operation}", json={"MainExecutionTrackerId": 1}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"Success": False, "ErrorMessage": "Invalid X-DMM-Token"}


@pytest.mark.parametrize("otp", [None, "", "wrong", TOKEN])
def test_start_needs_the_otp(client: httpx.Client, emulator: DmmEmulator, otp: str | None) -> None:
    headers = dict(AUTH) if otp is None else {**AUTH, "X-DMM-Token-OTP": otp}
    response = client.post("/StartExecution", json=config(), headers=headers)
    assert response.status_code == 403
    assert response.json() == {"Success": False, "ErrorMessage": "Invalid X-DMM-Token-OTP"}
    assert emulator.executions() == []


def test_otp_single_use(client: httpx.Client, emulator: DmmEmulator) -> None:
    start(client)
    start(client)
    emulator.knobs.update({"otp_single_use": True})
    response = client.post("/StartExecution", json=config(), headers=START_AUTH)
    assert response.status_code == 403
    assert "already used" in response.json()["ErrorMessage"]
    start(client, headers={**AUTH, "X-DMM-Token-OTP": "otp-2"})
    assert (
        client.post(
            "/StartExecution", json=config(), headers={**AUTH, "X-DMM-Token-OTP": "otp-2"}
        ).status_code
        == 403
    )
    assert len(emulator.executions()) == 3


def test_a_refused_start_spends_no_otp(client: httpx.Client, emulator: DmmEmulator) -> None:
    emulator.knobs.update({"otp_single_use": True})
    refused = client.post("/StartExecution", json=config("Nope"), headers=START_AUTH)
    assert refused.json()["Success"] is False
    start(client)


def test_admin_needs_no_token(shared: tuple[DmmEmulator, str], emulator: DmmEmulator) -> None:
    with admin(shared) as c:
        assert c.get("/executions").json() == []
        assert len(c.get("/rows/Contact").json()) == 10


# --- starting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (config("Nope"), "Entity not found: Nope"),
        ({**config(), "Type": "Export"}, "Type Delete only"),
        ({**config(), "Type": "Purge"}, "Invalid Type"),
        ({"Type": "Delete"}, "Configuration must be a JSON object"),
        (config(ApplicationDeletionMode=True), "ApplicationDeletionMode is not supported"),
        (config(FilterTenants=True), "FilterTenants is not supported"),
        (config(DestinationDBConnection="Elsewhere"), "Connection not found: Elsewhere"),
        (config(EntitiesToDelete=[]), "at least one entity"),
        (config(EntitiesToDelete=["Contact"]), "must be a JSON object"),
        (config(where=5), "must be text or null"),  # type: ignore[arg-type]
    ],
)
def test_start_refused(
    client: httpx.Client, emulator: DmmEmulator, body: Any, message: str
) -> None:
    response = client.post("/StartExecution", json=body, headers=START_AUTH)
    assert response.status_code == 200
    answer = response.json()
    assert answer["Success"] is False and message in answer["ErrorMessage"]
    assert emulator.executions() == []


def test_start_with_a_body_that_is_not_json(client: httpx.Client) -> None:
    response = client.post("/StartExecution", content=b"{nope", headers=START_AUTH)
    assert response.status_code == 400
    assert "Success" not in response.json()


def test_named_connection_and_ss_keys(client: httpx.Client, emulator: DmmEmulator) -> None:
    emulator.seed({"Keyed": {"key": "K", "rows": [{"K": 1}], "ss_key": "abc"}})
    body = config("Keyed", "K = 1", DestinationDBConnection="Dest")
    body["Configuration"]["EntitiesToDelete"][0]["OSEntitySSKey"] = "zzz"
    refused = client.post("/StartExecution", json=body, headers=START_AUTH).json()
    assert refused["ErrorMessage"] == "Entity not found: Keyed"
    body["Configuration"]["EntitiesToDelete"][0]["OSEntitySSKey"] = "abc"
    start(client, body)


def test_tracker_ids_are_sequential(client: httpx.Client) -> None:
    assert [start(client) for _ in range(3)] == [1, 2, 3]


def test_one_at_a_time(client: httpx.Client, emulator: DmmEmulator) -> None:
    emulator.knobs.update({"one_at_a_time": True})
    start(client)
    refused = client.post("/StartExecution", json=config(), headers=START_AUTH).json()
    assert refused == {"Success": False, "ErrorMessage": ALREADY_RUNNING}
    assert len(emulator.executions()) == 1
    finish(emulator)
    assert start(client) == 2


# --- the lifecycle --------------------------------------------------------------------------


def test_lifecycle_by_the_clock(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client, config(where="[Id] IN (1, 2, 3, 4, 5, 6, 99)"))
    queued = status(client, tracker)
    assert (queued["Status"], queued["Result"], queued["Success"]) == ("Queued", "OK", True)
    assert queued["Report"]["StartedAt"] == "" and queued["Report"]["TotalRecords"] == 0
    assert queued["Report"]["Message"]["MessageType"] == "Info"
    emulator.step(STEP)
    started = status(client, tracker)
    assert started["Status"] == "InProgress"
    report = started["Report"]
    assert (report["TotalRecords"], report["TotalInstructions"], report["CompletedRecords"]) == (
        6,
        2,
        0,
    )
    emulator.step(STEP)
    first = status(client, tracker)["Report"]
    assert (first["CompletedRecords"], first["CompletedInstructions"]) == (4, 1)
    assert ids(emulator) == [5, 6, 7, 8, 9, 10]
    emulator.step(STEP)
    done = status(client, tracker)
    assert (done["Status"], done["Result"], done["ErrorMessage"]) == ("Complete", "OK", "")
    assert done["Report"]["CompletedRecords"] == 6 and done["Report"]["EndedAt"]
    assert done["Report"]["Message"]["MessageType"] == "Success"
    assert ids(emulator) == [7, 8, 9, 10]
    truth = emulator.deleted()
    assert [(d.entity, d.key, d.execution) for d in truth] == [
        ("Contact", n, tracker) for n in range(1, 7)
    ]
    assert truth[0].row == {"Id": 1, "Email": "c1@x.it", "Name": "C1"}


def test_a_null_where_clause_deletes_the_whole_entity(
    client: httpx.Client, emulator: DmmEmulator
) -> None:
    start(client, config(where=None))
    start(client, config("Tag", where=" "))
    finish(emulator)
    assert ids(emulator) == [] and ids(emulator, "Tag") == []


def test_quoted_text_keys(client: httpx.Client, emulator: DmmEmulator) -> None:
    start(client, config("Tag", "[Label] IN ('o''brien', N'Zoë')"))
    finish(emulator)
    assert ids(emulator, "Tag") == ["plain"]


def test_an_injection_attempt_inside_a_literal_deletes_nothing(
    client: httpx.Client, emulator: DmmEmulator
) -> None:
    start(client, config("Tag", "[Label] IN ('x'') OR (''1''=''1')"))
    finish(emulator)
    assert len(ids(emulator, "Tag")) == 3


def test_a_bad_where_clause_ends_in_error(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client, config(where="Id = 1; DROP TABLE x"))
    finish(emulator)
    answer = status(client, tracker)
    assert (answer["Status"], answer["Result"]) == ("InError", "ERROR")
    assert "Incorrect syntax near" in answer["ErrorMessage"]
    assert len(ids(emulator)) == 10
    out = outputs(client, tracker)
    (entry,) = json.loads(base64.b64decode(out["ErrorReport"]))
    assert entry["FinalReportEntity"] == "Contact" and entry["Count"] == 1
    assert "Incorrect syntax" in entry["FinalReportError"]
    lines = [line for file in unzip(out["Logs"]).values() for line in file]
    assert any("Could not run the WhereClause" in line for line in lines)
    assert parse_lines(lines) == []


def test_protected_rows_fail_with_a_reference_error(
    client: httpx.Client, emulator: DmmEmulator, shared: tuple[DmmEmulator, str]
) -> None:
    with admin(shared) as c:
        assert c.post("/protect", json={"entity": "Contact", "keys": [2, 3]}).status_code == 200
        assert c.post("/protect", json={"entity": "Nope", "keys": [1]}).status_code == 404
    tracker = start(client, config(where="[Id] IN (1, 2, 3, 4)"))
    finish(emulator)
    answer = status(client, tracker)
    assert answer["Status"] == "InError"
    assert answer["ErrorMessage"] == "2 records could not be deleted"
    assert ids(emulator) == [2, 3, *range(5, 11)]
    out = outputs(client, tracker)
    assert out["Report"]["NRecords"] == 2
    (entry,) = json.loads(base64.b64decode(out["ErrorReport"]))
    assert entry["Count"] == 2 and "REFERENCE constraint" in entry["FinalReportError"]
    events = parse_lines(line for f in unzip(out["Logs"]).values() for line in f)
    assert [(e.kind, e.value) for e in events] == [
        ("deleted", "1"),
        ("failed", "2"),
        ("failed", "3"),
        ("deleted", "4"),
    ]
    assert "REFERENCE constraint" in events[1].reason


def test_stop_keeps_what_was_deleted(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client, config(where=None))
    emulator.step(STEP * 2)
    assert status(client, tracker)["Report"]["CompletedRecords"] == 4
    stop = client.post("/StopExecution", json={"MainExecutionTrackerId": tracker}, headers=AUTH)
    assert stop.json() == {"Success": True, "ErrorMessage": ""}
    finish(emulator)
    answer = status(client, tracker)
    assert (answer["Status"], answer["ErrorMessage"]) == ("InError", STOPPED)
    assert ids(emulator) == list(range(5, 11))
    again = client.post("/StopExecution", json={"MainExecutionTrackerId": tracker}, headers=AUTH)
    assert again.json()["Success"] is False and "not running" in again.json()["ErrorMessage"]
    unknown = client.post("/StopExecution", json={"MainExecutionTrackerId": 42}, headers=AUTH)
    assert unknown.json()["Success"] is False
    (execution,) = emulator.executions()
    assert execution["stopped"] is True


def test_stop_a_queued_execution(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client)
    client.post("/StopExecution", json={"MainExecutionTrackerId": str(tracker)}, headers=AUTH)
    finish(emulator)
    assert status(client, tracker)["Status"] == "InError"
    assert len(ids(emulator)) == 10


def test_executions_interleave_in_time_order(client: httpx.Client, emulator: DmmEmulator) -> None:
    first = start(client, config(where="[Id] IN (1, 2, 3, 4, 5)"))
    second = start(client, config(where="[Id] IN (5, 6)"))
    finish(emulator)
    assert status(client, first)["Status"] == "Complete"
    assert status(client, second)["Status"] == "Complete"
    assert sorted((d.key, d.execution) for d in emulator.deleted()) == [
        (1, first),
        (2, first),
        (3, first),
        (4, first),
        (5, second),
        (6, second),
    ]


def test_unknown_tracker_is_not_found(client: httpx.Client) -> None:
    for answer in (status(client, 77), outputs(client, 77), status(client, "x")):
        assert (answer["Status"], answer["Success"]) == ("NotFound", False)


# --- logs and outputs -----------------------------------------------------------------------


def test_status_logs_are_paged(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client, config(where=None))
    finish(emulator)
    first = status(client, tracker, IncludeLogs=True)
    lines = split_lines(base64.b64decode(first["Logs"]).decode())
    assert len(lines) == 10
    count = status(client, tracker, LogRecords=1)["LogNumPages"]
    assert count > 10
    assert first["LogNumPages"] == -(-count // 10)
    pages = status(client, tracker, IncludeLogs=True, LogRecords=4)["LogNumPages"]
    assert pages == -(-count // 4)
    everything: list[str] = []
    for page in range(1, pages + 1):
        answer = status(client, tracker, IncludeLogs=True, LogRecords=4, LogPage=page)
        everything += split_lines(base64.b64decode(answer["Logs"]).decode())
    assert len(everything) == count
    assert everything[:10] == lines
    assert len(parse_lines(everything)) == 10
    assert status(client, tracker, IncludeLogs=True, LogRecords=4, LogPage=99)["Logs"] == ""
    assert status(client, tracker)["Logs"] == ""
    bad = status(client, tracker, LogRecords=0)
    assert bad["Success"] is False


def test_outputs_only_when_finished(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client)
    early = outputs(client, tracker)
    assert early["Success"] is False and "not finished" in early["ErrorMessage"]
    assert early["Status"] == "Queued"
    finish(emulator)
    out = outputs(client, tracker)
    assert (out["Status"], out["Result"], out["Success"]) == ("Complete", "OK", True)
    assert out["ErrorReport"] is None and out["ZipFile"] is None
    report = out["Report"]
    assert report["ConfigurationType"] == "Delete"
    assert (report["NRecords"], report["NInstructions"]) == (2, 1)
    assert set(report) >= {"ExecutionDate", "ExecutionDuration", "DataVolume", "NBPTRecords"}


def test_outputs_zip_holds_several_files(client: httpx.Client, emulator: DmmEmulator) -> None:
    emulator.knobs.update({"log_file_lines": 3})
    tracker = start(client, config(where=None))
    finish(emulator)
    files = unzip(outputs(client, tracker)["Logs"])
    assert len(files) > 3
    assert all(len(lines) <= 3 for lines in files.values())
    assert sorted(files) == sorted(
        f"DMM_Execution_{tracker}_{n}.log" for n in range(1, len(files) + 1)
    )
    events = parse_lines(line for lines in files.values() for line in lines)
    assert [e.value for e in events] == [str(n) for n in range(1, 11)]
    assert {e.entity for e in events} == {"Contact"}


def test_outputs_leave_out_what_was_not_asked(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client)
    finish(emulator)
    response = client.post(
        "/GetExecutionOutputs", json={"MainExecutionTrackerId": tracker}, headers=AUTH
    )
    answer = response.json()
    assert answer["Success"] is True and answer["Logs"] is None and answer["Report"] is None


# --- faults, admin and demo -----------------------------------------------------------------


def test_a_lost_answer_still_starts_the_execution(
    client: httpx.Client, emulator: DmmEmulator, shared: tuple[DmmEmulator, str]
) -> None:
    emulator.faults.update({"drop_after_apply_rate": 1.0})
    response = client.post("/StartExecution", json=config(), headers=START_AUTH)
    assert response.status_code == 500
    with admin(shared) as c:
        (execution,) = c.get("/executions").json()
        assert execution["configuration"] == config()
        assert c.post("/step", json={"seconds": 1}).status_code == 200
        assert [d["key"] for d in c.get("/deleted").json()] == [1, 2]
        requests = c.get("/requests").json()
    assert requests[0]["mutating"] is True and requests[0]["fault"] == "drop_after_apply"


def test_reads_are_not_mutating(client: httpx.Client, emulator: DmmEmulator) -> None:
    tracker = start(client)
    status(client, tracker)
    outputs(client, tracker)
    client.post("/StopExecution", json={"MainExecutionTrackerId": tracker}, headers=AUTH)
    finish(emulator)
    logged = [(e.path.rsplit("/", 1)[-1], e.mutating) for e in emulator.log.entries]
    assert logged == [
        ("StartExecution", True),
        ("GetExecutionStatus", False),
        ("GetExecutionOutputs", False),
        ("StopExecution", True),
    ]


def test_settings_route(shared: tuple[DmmEmulator, str], emulator: DmmEmulator) -> None:
    with admin(shared) as c:
        assert c.get("/settings").json()["chunk_size"] == 4
        assert c.put("/settings", json={"chunk_size": 7}).json()["chunk_size"] == 7
        for bad in ({"chunk_size": 0}, {"one_at_a_time": "yes"}, {"nope": 1}, [1]):
            assert c.put("/settings", json=bad).status_code == 400
        assert c.post("/step", json={"seconds": -1}).status_code == 400


def test_seed_route(shared: tuple[DmmEmulator, str], emulator: DmmEmulator) -> None:
    with admin(shared) as c:
        added = c.post("/seed", json={"Contact": {"key": "Id", "rows": [{"Id": 11}]}}).json()
        assert added["Contact"] == 11
        for bad in (
            {"Contact": {"key": "Email", "rows": []}},
            {"X": {"key": "Id", "rows": [{"Id": True}]}},
            {"X": {"key": "Id", "rows": [{"Id": "a\nb"}]}},
            {"X": {"key": "Id", "rows": [{"Id": 1, "F": 1.5}]}},
            {"X": {"key": "bad key", "rows": []}},
        ):
            assert c.post("/seed", json=bad).status_code == 400, bad
        assert c.get("/rows/Nope").status_code == 404
        assert c.post("/reset").json() == {"reset": True}
    assert emulator.executions() == [] and emulator.deleted() == []


def test_demo_entities() -> None:
    demo = demo_entities()
    assert demo["Customer"]["key"] == "ExternalId"
    assert [r["ExternalId"] for r in demo["Customer"]["rows"]] == [f"0-{n}" for n in range(1, 16)]
    assert demo["Customer"]["rows"][0]["UserName"] == "jrossi"
    assert [r["EmployeeNumber"] for r in demo["Employee"]["rows"]] == [
        f"E01{n:02d}" for n in range(1, 9)
    ]
    emu = DmmEmulator()
    assert emu.seed(demo) == {"Customer": 15, "Employee": 8}
    assert (emu.tokens, emu.otps) == ({DEMO_TOKEN}, {DEMO_OTP})
