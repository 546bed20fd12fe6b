from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from connectors.emulation.kit import Faults
from connectors.kit.serving import serve
from connectors.reltio.emulator import (
    DELETE_TASK_TYPE,
    GOOSE,
    INDIVIDUAL,
    Knobs,
    ReltioEmulator,
    demo_entities,
)

CLIENT, SECRET = "syncengine", "cl-secret-7d1e"
USER, PASSWORD = "jdoe", "user-pw-2b9c"
STEP = 0.05
API = "/reltio/api/TENANT"


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ReltioEmulator, str]]:
    """One server per module: starting uvicorn costs more than all these tests. Its clock
    is frozen: tasks move only when a test steps it, never because the machine was slow."""
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
    emu.seed(demo_entities())
    return emu


@pytest.fixture
def client(emulator: ReltioEmulator, shared: tuple[ReltioEmulator, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared[1], timeout=5) as c:
        yield c


def basic(client_id: str = CLIENT, secret: str = SECRET) -> dict[str, str]:
    encoded = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def auth(client: httpx.Client) -> dict[str, str]:
    return login(client)


def login(client: httpx.Client) -> dict[str, str]:
    response = client.post(
        "/oauth/token", content=b"grant_type=client_credentials", headers={**basic(), **FORM}
    )
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def uri(n: int) -> str:
    return f"entities/{demo_entities()[n - 1]['id']}"


def delete(client: httpx.Client, auth: dict[str, str], body: Any, **params: str) -> dict[str, Any]:
    response = client.post(f"{API}/entities/_delete", json=body, params=params, headers=auth)
    assert response.status_code == 200, response.text
    answer = response.json()
    task: dict[str, Any] = answer[0] if isinstance(answer, list) else answer
    return task


def task(client: httpx.Client, auth: dict[str, str], task_id: str) -> dict[str, Any]:
    response = client.get(f"{API}/tasks/{task_id}", headers=auth)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def remaining(emulator: ReltioEmulator) -> set[str]:
    return {e["uri"] for e in emulator.entities()}


# --- tokens ---------------------------------------------------------------------------


def test_token_client_credentials_in_body(client: httpx.Client) -> None:
    response = client.post(
        "/oauth/token", content=b"grant_type=client_credentials", headers={**basic(), **FORM}
    )
    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["access_token"] and body["refresh_token"]


def test_token_grant_in_query_string_with_empty_body(client: httpx.Client) -> None:
    response = client.post("/oauth/token?grant_type=client_credentials", headers=basic())
    assert response.status_code == 200
    refreshed = client.post(
        "/oauth/token",
        params={"grant_type": "refresh_token", "refresh_token": response.json()["refresh_token"]},
        headers=basic(),
    )
    assert refreshed.status_code == 200
    assert refreshed.json()["access_token"] != response.json()["access_token"]


def test_token_password_grant(client: httpx.Client) -> None:
    form = f"grant_type=password&username={USER}&password={PASSWORD}".encode()
    response = client.post("/oauth/token", content=form, headers={**basic(), **FORM})
    assert response.status_code == 200
    token = response.json()["access_token"]
    created = delete(client, {"Authorization": f"Bearer {token}"}, {"objects": {"list": [uri(1)]}})
    assert created["createdBy"] == USER


@pytest.mark.parametrize(
    ("headers", "form", "status", "error"),
    [
        (basic(secret="wrong"), "grant_type=client_credentials", 401, "unauthorized"),
        (basic(client_id="other"), "grant_type=client_credentials", 401, "unauthorized"),
        ({}, "grant_type=client_credentials", 401, "unauthorized"),
        ({"Authorization": "Basic !!!"}, "grant_type=client_credentials", 401, "unauthorized"),
        (basic(), f"grant_type=password&username={USER}&password=no", 400, "invalid_grant"),
        (basic(), "grant_type=password&username=nobody&password=x", 400, "invalid_grant"),
        (basic(), "grant_type=refresh_token&refresh_token=nope", 400, "invalid_grant"),
        (basic(), "grant_type=authorization_code", 400, "unsupported_grant_type"),
        (basic(), "", 400, "unsupported_grant_type"),
    ],
)
def test_token_errors(
    client: httpx.Client, headers: dict[str, str], form: str, status: int, error: str
) -> None:
    response = client.post("/oauth/token", content=form.encode(), headers={**headers, **FORM})
    assert response.status_code == status
    assert response.json()["error"] == error
    assert "error_description" in response.json()


def test_data_calls_need_a_valid_token(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    path = f"{API}/{uri(1)}"
    assert client.get(path, headers=auth).status_code == 200
    missing = client.get(path)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    bad = client.get(path, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_token"
    assert emulator.expire_tokens() == 1
    expired = client.get(path, headers=auth)
    assert expired.status_code == 401
    assert expired.json()["error_description"].startswith("Token is invalid: ")


def test_tokens_expire_with_the_clock(client: httpx.Client, emulator: ReltioEmulator) -> None:
    emulator.knobs.update({"token_lifetime": 10})
    response = client.post("/oauth/token?grant_type=client_credentials", headers=basic())
    assert response.json()["expires_in"] == 10
    auth = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert client.get(f"{API}/{uri(1)}", headers=auth).status_code == 200
    emulator.step(11)
    assert client.get(f"{API}/{uri(1)}", headers=auth).json()["error"] == "invalid_token"


def test_unknown_tenant_is_forbidden(client: httpx.Client, auth: dict[str, str]) -> None:
    response = client.get(f"/reltio/api/OTHER/{uri(1)}", headers=auth)
    assert response.status_code == 403
    assert response.json()["errorCode"] == 804


# --- entities -------------------------------------------------------------------------


def test_entity_and_not_found(client: httpx.Client, auth: dict[str, str]) -> None:
    entity = client.get(f"{API}/{uri(1)}", headers=auth).json()
    assert entity["uri"] == uri(1) and entity["type"] == INDIVIDUAL
    assert {"type": GOOSE, "value": "0-1"} in entity["crosswalks"]
    missing = client.get(f"{API}/entities/nope", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["errorCode"] == 101
    assert set(missing.json()) >= {"severity", "errorMessage", "errorCode", "errorDetailMessage"}


def test_by_crosswalk_shapes(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    path = f"{API}/entities/_byCrosswalk/0-3"
    entries = client.get(path, params={"type": GOOSE}, headers=auth).json()
    assert [e["object"]["uri"] for e in entries] == [uri(3)] and entries[0]["index"] == 0
    short = client.get(path, params={"type": "GOOSE"}, headers=auth).json()
    assert short == entries
    emulator.knobs.update({"crosswalk_answer": "entity"})
    assert client.get(path, params={"type": GOOSE}, headers=auth).json()["uri"] == uri(3)
    absent = client.get(f"{API}/entities/_byCrosswalk/9-9", params={"type": GOOSE}, headers=auth)
    assert absent.status_code == 404 and absent.json()["errorCode"] == 101
    no_type = client.get(path, headers=auth)
    assert no_type.status_code == 400


def test_crosswalk_value_with_a_slash(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.seed([{"id": "slash1", "crosswalks": [{"type": GOOSE, "value": "A/B 1"}]}])
    response = client.get(
        f"{API}/entities/_byCrosswalk/A%2FB%201", params={"type": GOOSE}, headers=auth
    )
    assert [e["object"]["uri"] for e in response.json()] == ["entities/slash1"]


def test_demo_seed() -> None:
    demo = demo_entities()
    assert len(demo) == 15 and len({e["id"] for e in demo}) == 15
    assert [e["crosswalks"][0]["value"] for e in demo] == [f"0-{n}" for n in range(1, 16)]
    assert demo == demo_entities()


# --- delete tasks ---------------------------------------------------------------------


def test_task_lifecycle(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    created = delete(client, auth, {"objects": {"list": [uri(1), uri(2)]}}, mode="hard")
    assert created["type"] == DELETE_TASK_TYPE
    assert created["status"] == "SCHEDULED" and created["currentState"] == {}
    assert created["parameters"] == {
        "tenantId": "TENANT",
        "mode": "hard",
        "entityUriList": [uri(1), uri(2)],
    }
    assert created["name"] == "Hard Delete Entities" and created["createdBy"] == CLIENT
    emulator.step(STEP)
    assert task(client, auth, created["id"])["status"] == "PROCESSING"
    assert uri(1) in remaining(emulator)
    emulator.step(STEP)
    done = task(client, auth, created["id"])
    assert done["status"] == "COMPLETED"
    assert done["currentState"]["numberOfProcessedObjects"] == 2
    assert done["currentState"]["objectsFailedToDeleteCount"] == 0
    assert done["endTime"] >= done["startTime"] >= done["createdTime"]
    assert uri(1) not in remaining(emulator) and uri(3) in remaining(emulator)
    deleted = emulator.deleted()
    assert [(d.uri, d.mode, d.task) for d in deleted] == [
        (uri(1), "hard", created["id"]),
        (uri(2), "hard", created["id"]),
    ]


def test_task_completes_on_the_real_clock() -> None:
    real = ReltioEmulator(clients={CLIENT: SECRET}, users={USER: PASSWORD}, step_seconds=STEP)
    real.seed(demo_entities())
    with serve(real.app) as running, httpx.Client(base_url=running.url, timeout=10) as client:
        auth = login(client)
        created = delete(client, auth, {"objects": {"list": [uri(1)]}})
        time.sleep(2 * STEP + 0.02)
        assert task(client, auth, created["id"])["status"] == "COMPLETED"


def test_answer_as_object(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    response = client.post(
        f"{API}/entities/_delete", json={"objects": {"list": [uri(1)]}}, headers=auth
    )
    assert isinstance(response.json(), list) and len(response.json()) == 1
    emulator.knobs.update({"answer_as_array": False})
    response = client.post(
        f"{API}/entities/_delete", json={"objects": {"list": [uri(2)]}}, headers=auth
    )
    assert isinstance(response.json(), dict) and response.json()["status"] == "SCHEDULED"


@pytest.mark.parametrize("key", ["uriList", "uris"])
def test_other_list_keys(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator, key: str
) -> None:
    created = delete(client, auth, {"objects": {key: [uri(1)]}})
    emulator.step(2 * STEP)
    assert task(client, auth, created["id"])["status"] == "COMPLETED"
    assert uri(1) not in remaining(emulator)


def test_protected_and_absent_entities_fail(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.protect([uri(2)])
    created = delete(client, auth, {"objects": {"list": [uri(1), uri(2), "entities/gone"]}})
    emulator.step(2 * STEP)
    state = task(client, auth, created["id"])
    assert state["status"] == "COMPLETED_WITH_ERRORS"
    assert state["currentState"]["objectsFailedToDelete"] == [uri(2)[9:], "gone"]
    assert state["currentState"]["objectsFailedToDeleteCount"] == 2
    assert state["currentState"]["numberOfProcessedObjects"] == 1
    assert remaining(emulator) >= {uri(2)}


def test_failure_fields_only_when_failed(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.knobs.update({"failure_fields": "when_failed"})
    clean = delete(client, auth, {"objects": {"list": [uri(1)]}})
    failing = delete(client, auth, {"objects": {"list": ["entities/gone"]}})
    emulator.step(2 * STEP)
    assert "objectsFailedToDeleteCount" not in task(client, auth, clean["id"])["currentState"]
    assert task(client, auth, failing["id"])["currentState"]["objectsFailedToDeleteCount"] == 1


def test_second_task_on_the_same_entity_fails_it(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    first = delete(client, auth, {"objects": {"list": [uri(1)]}})
    second = delete(client, auth, {"objects": {"list": [uri(1)]}})
    emulator.step(2 * STEP)
    assert task(client, auth, first["id"])["status"] == "COMPLETED"
    assert task(client, auth, second["id"])["currentState"]["objectsFailedToDeleteCount"] == 1
    assert [d.uri for d in emulator.deleted()] == [uri(1)]


def test_failure_list_is_cut_at_100_with_the_true_count(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    many = [f"entities/p{n:03d}" for n in range(150)]
    emulator.seed([{"id": u[9:]} for u in many])
    emulator.protect(many)
    created = delete(client, auth, {"objects": {"list": [*many, uri(1)]}})
    emulator.step(2 * STEP)
    state = task(client, auth, created["id"])["currentState"]
    assert len(state["objectsFailedToDelete"]) == 100
    assert state["objectsFailedToDeleteCount"] == 150
    assert state["numberOfProcessedObjects"] == 1


def test_filter_by_type_with_exclusions(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.seed([{"id": "org1", "type": "configuration/entityTypes/Organization"}])
    created = delete(
        client,
        auth,
        {
            "objects": {
                "filter": f"equals(type, '{INDIVIDUAL}')",
                "excludeList": [uri(14), uri(15)],
            }
        },
    )
    assert created["parameters"]["filter"] == f"equals(type, '{INDIVIDUAL}')"
    assert created["name"] == f"Soft Delete Entities By Type: {INDIVIDUAL}"
    emulator.step(2 * STEP)
    assert remaining(emulator) == {uri(14), uri(15), "entities/org1"}
    assert task(client, auth, created["id"])["currentState"]["numberOfProcessedObjects"] == 13


@pytest.mark.parametrize(
    ("content", "params", "code"),
    [
        (b"{not json", {}, 150),
        (b"{}", {}, 100),
        (json.dumps({"objects": {"list": []}}).encode(), {}, 100),
        (json.dumps({"objects": {"list": "entities/a"}}).encode(), {}, 100),
        (json.dumps({"objects": {"list": ["entities/a"]}}).encode(), {"mode": "wipe"}, 100),
        (json.dumps({"objects": {"filter": "startsWith(attributes.X,'a')"}}).encode(), {}, 100),
        (
            json.dumps({"objects": {"filter": "equals(type,'X')", "excludeList": "a"}}).encode(),
            {},
            100,
        ),
    ],
)
def test_bad_delete_requests(
    client: httpx.Client,
    auth: dict[str, str],
    emulator: ReltioEmulator,
    content: bytes,
    params: dict[str, str],
    code: int,
) -> None:
    response = client.post(
        f"{API}/entities/_delete",
        content=content,
        params=params,
        headers={**auth, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["errorCode"] == code
    assert emulator.tasks() == []


def test_tasks_list_newest_first_with_filters(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    ids = []
    for n in (1, 2, 3):
        ids.append(delete(client, auth, {"objects": {"list": [uri(n)]}})["id"])
        emulator.step(0.001)
    listed = client.get(f"{API}/tasks", headers=auth).json()
    assert [t["id"] for t in listed] == ids[::-1]
    for name in (DELETE_TASK_TYPE, "DeleteEntitiesTask"):
        by_type = client.get(f"{API}/tasks", params={"type": name}, headers=auth).json()
        assert len(by_type) == 3
    other = client.get(f"{API}/tasks", params={"type": "ExportTask"}, headers=auth).json()
    assert other == []
    page = client.get(f"{API}/tasks", params={"offset": 1, "max": 1}, headers=auth).json()
    assert [t["id"] for t in page] == [ids[1]]
    emulator.step(2 * STEP)
    done = client.get(f"{API}/tasks", params={"status": "completed"}, headers=auth).json()
    assert len(done) == 3
    assert client.get(f"{API}/tasks", params={"max": 0}, headers=auth).status_code == 400
    missing = client.get(f"{API}/tasks/nope", headers=auth)
    assert missing.status_code == 404 and missing.json()["errorCode"] == 101


def test_task_params_as_strings(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.knobs.update({"task_params_field": "taskParams"})
    created = delete(client, auth, {"objects": {"list": [uri(1)]}}, sendMail="true")
    assert "parameters" not in created
    assert created["taskParams"]["entityUriList"] == json.dumps([uri(1)])
    assert created["taskParams"]["sendMail"] == "true"


def test_forced_status(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    created = delete(client, auth, {"objects": {"list": [uri(1)]}})
    emulator.force_status(created["id"], "failed")
    emulator.step(10 * STEP)
    state = task(client, auth, created["id"])
    assert state["status"] == "FAILED" and "endTime" in state
    assert uri(1) in remaining(emulator)
    emulator.force_status(created["id"], None)
    assert task(client, auth, created["id"])["status"] == "COMPLETED"
    assert uri(1) not in remaining(emulator)
    other = delete(client, auth, {"objects": {"list": [uri(2)]}})
    assert emulator.force_status(other["id"], "COMPLETED")["status"] == "COMPLETED"
    assert uri(2) not in remaining(emulator)


def test_backpressure_knob(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.knobs.update({"backpressure_next": 1})
    body = {"objects": {"list": [uri(1)]}}
    refused = client.post(f"{API}/entities/_delete", json=body, headers=auth)
    assert refused.status_code == 503 and refused.json()["errorCode"] == 2001
    assert emulator.tasks() == []
    assert client.post(f"{API}/entities/_delete", json=body, headers=auth).status_code == 200


def test_throttle_has_no_retry_after_unless_asked(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.faults.update({"throttle_rate": 1.0})
    response = client.get(f"{API}/{uri(1)}", headers=auth)
    assert response.status_code == 429 and "retry-after" not in response.headers
    emulator.knobs.update({"retry_after_header": True})
    assert "retry-after" in client.get(f"{API}/{uri(1)}", headers=auth).headers


def test_knob_validation() -> None:
    knobs = Knobs()
    with pytest.raises(ValueError, match="unknown settings"):
        knobs.update({"speed": 1})
    with pytest.raises(ValueError, match="bad value for answer_as_array"):
        knobs.update({"answer_as_array": "yes"})
    assert knobs.answer_as_array is True


# --- admin routes ---------------------------------------------------------------------


def test_admin_routes(client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator) -> None:
    emulator.faults.update({"error_rate": 1.0})
    seeded = client.post(
        "/_admin/seed",
        json={
            "entities": [
                {"id": "x1", "type": INDIVIDUAL, "crosswalks": [{"type": GOOSE, "value": "9-1"}]}
            ]
        },
    ).json()
    assert seeded[0]["uri"] == "entities/x1"
    assert client.post("/_admin/protect", json={"uris": ["entities/x1"]}).json() == {"protected": 1}
    assert len(client.get("/_admin/entities").json()) == 16
    emulator.faults.update({"error_rate": 0.0})
    created = delete(client, auth, {"objects": {"list": ["entities/x1", uri(1)]}})
    assert client.get("/_admin/tasks").json()[0]["id"] == created["id"]
    assert client.post("/_admin/step", json={"seconds": 2 * STEP}).status_code == 200
    assert [d["uri"] for d in client.get("/_admin/deleted").json()] == [uri(1)]
    forced = client.post("/_admin/task_status", json={"id": created["id"], "status": "PAUSED"})
    assert forced.json()["status"] == "PAUSED"
    unknown = client.post("/_admin/task_status", json={"id": "nope", "status": "PAUSED"})
    assert unknown.status_code == 404
    assert client.put("/_admin/settings", json={"step_seconds": 1}).json()["step_seconds"] == 1
    assert client.put("/_admin/settings", json={"nope": 1}).status_code == 400
    assert client.get("/_admin/settings").json()["answer_as_array"] is True
    assert client.post("/_admin/expire_tokens").json() == {"expired": 1}
    assert client.post("/_admin/seed", json={"rows": []}).status_code == 400
    assert client.post("/_admin/protect", json={"uris": "x"}).status_code == 400
    assert client.post("/_admin/step", json={"seconds": -1}).status_code == 400
    assert client.post("/_admin/reset").json() == {"reset": True}
    assert client.get("/_admin/entities").json() == []


def test_total_counts_the_active_entities(
    client: httpx.Client, auth: dict[str, str], emulator: ReltioEmulator
) -> None:
    emulator.seed([{"id": "org1", "type": "configuration/entityTypes/Organization"}])
    people = len(demo_entities())

    def total(**params: str) -> Any:
        response = client.get(f"{API}/entities/_total", params=params, headers=auth)
        return response.status_code, response.json()

    assert total() == (200, {"total": people + 1})
    assert total(filter=f"equals(type,'{INDIVIDUAL}')") == (200, {"total": people})
    assert total(activeness="all") == (200, {"total": people + 1})
    assert total(activeness="not_active") == (200, {"total": 0})
    delete(client, auth, {"objects": {"list": [uri(1)]}})
    emulator.step(2 * STEP)
    assert total() == (200, {"total": people})
    status, body = total(filter="startsWith(attributes.Name,'A')")
    assert status == 400 and body["errorCode"] == 100
    assert client.get(f"{API}/entities/_total").status_code == 401
