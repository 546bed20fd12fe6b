from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from connectors.adt.emulator import API_VERSION, SCOPE, AdtEmulator, demo_graph
from connectors.emulation.kit import Faults
from connectors.kit.serving import serve

TOKEN = "sandbox-token"
CLIENT, SECRET = "syncengine", "client-secret-7e1d"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
V = {"api-version": API_VERSION}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[AdtEmulator, str]]:
    """One server per module: starting uvicorn costs more than all these tests."""
    emu = AdtEmulator(tokens=[TOKEN], clients={CLIENT: SECRET}, step_seconds=60, clock=lambda: T0)
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[AdtEmulator, str]) -> AdtEmulator:
    emu = shared[0]
    emu.reset()
    emu.faults.update(asdict(Faults()))
    emu.page_size = 2
    emu.host_label = None
    emu.token_lifetime = 3599
    emu.seed(demo_graph())
    return emu


@pytest.fixture
def client(emulator: AdtEmulator, shared: tuple[AdtEmulator, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared[1], timeout=5, headers=AUTH) as c:
        yield c


def error_of(response: httpx.Response) -> tuple[int, str]:
    code = response.json()["error"]["code"]
    assert response.headers["x-ms-error-code"] == code
    return response.status_code, code


def all_pages(client: httpx.Client, path: str, **headers: str) -> list[list[dict[str, Any]]]:
    pages = []
    response = client.get(path, params=V, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        if "nextLink" not in body:
            return pages
        response = client.get(body["nextLink"], headers=headers)


# --- conventions ------------------------------------------------------------------------


def test_api_version_is_required(client: httpx.Client) -> None:
    assert error_of(client.get("/digitaltwins/hq")) == (400, "MissingApiVersionParameter")
    old = client.get("/digitaltwins/hq", params={"api-version": "2019-01-01"})
    assert error_of(old) == (400, "UnsupportedApiVersion")
    jobs = client.post("/jobs/deletions", params={"api-version": "2022-05-31"})
    assert error_of(jobs) == (400, "UnsupportedApiVersion")
    assert client.get("/digitaltwins/hq", params={"api-version": "2022-05-31"}).status_code == 200


def test_bearer_token_required(client: httpx.Client) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer nope"},
        {"Authorization": TOKEN},
    ):
        response = client.get("/digitaltwins/hq", params=V, headers=headers)
        assert error_of(response) == (401, "Unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


def token_form(**changes: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT,
        "client_secret": SECRET,
        "scope": SCOPE,
    }
    form.update(changes)
    return form


def test_client_credentials_tokens(client: httpx.Client, emulator: AdtEmulator) -> None:
    issued = client.post("/oauth2/token", data=token_form(), headers={"Authorization": ""})
    body = issued.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert client.get("/digitaltwins/hq", params=V, headers=bearer).status_code == 200
    emulator.step(3600)
    assert client.get("/digitaltwins/hq", params=V, headers=bearer).status_code == 401
    fresh = client.post("/oauth2/token", data=token_form()).json()["access_token"]
    bearer = {"Authorization": f"Bearer {fresh}"}
    assert client.get("/digitaltwins/hq", params=V, headers=bearer).status_code == 200
    assert emulator.expire_tokens() == 2
    assert client.get("/digitaltwins/hq", params=V, headers=bearer).status_code == 401


@pytest.mark.parametrize(
    ("changes", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "other"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"scope": "https://management.azure.com/.default"}, 400, "invalid_scope"),
    ],
)
def test_token_refused(
    client: httpx.Client, changes: dict[str, str], status: int, error: str
) -> None:
    response = client.post("/oauth2/token", data=token_form(**changes))
    assert response.status_code == status
    assert response.json()["error"] == error
    assert SECRET not in response.text


# --- twins and relationships ------------------------------------------------------------


def test_get_twin(client: httpx.Client) -> None:
    response = client.get("/digitaltwins/0-1", params=V)
    body = response.json()
    assert body["$dtId"] == "0-1"
    assert body["$metadata"]["$model"] == "dtmi:com:example:Person;1"
    assert body["name"] == "Giulia Rossi"
    assert response.headers["etag"] == body["$etag"]
    missing = client.get("/digitaltwins/T102", params=V)
    assert error_of(missing) == (404, "DigitalTwinNotFound")
    assert "no digital twin instance that exists with the ID T102" in missing.text


def test_twin_with_relationships_cannot_be_deleted(
    client: httpx.Client, emulator: AdtEmulator
) -> None:
    refused = client.delete("/digitaltwins/0-6", params=V)
    assert error_of(refused) == (400, "RelationshipsNotDeleted")
    for rel in ("0-6-worksIn-hq-f2-r202", "0-6-reportsTo-0-4"):
        assert client.delete(f"/digitaltwins/0-6/relationships/{rel}", params=V).status_code == 204
    assert error_of(client.delete("/digitaltwins/0-6", params=V)) == (
        400,
        "RelationshipsNotDeleted",
    )  # still the incoming occupiedBy
    rel = "hq-f2-r202-occupiedBy-0-6"
    assert (
        client.delete(f"/digitaltwins/hq-f2-r202/relationships/{rel}", params=V).status_code == 204
    )
    assert client.delete("/digitaltwins/0-6", params=V).status_code == 204
    assert error_of(client.delete("/digitaltwins/0-6", params=V)) == (404, "DigitalTwinNotFound")
    deleted = emulator.deleted()
    assert [(d["id"], d["at"]) for d in deleted["twins"]] == [
        ("0-6", "2026-03-02T09:00:00.0000000+00:00")
    ]
    assert sorted(d["id"] for d in deleted["relationships"]) == sorted(
        ["0-6-worksIn-hq-f2-r202", "0-6-reportsTo-0-4", rel]
    )
    assert "0-6" not in emulator.twin_ids() and len(emulator.twin_ids()) == 12


def test_outgoing_relationships_paged(client: httpx.Client, emulator: AdtEmulator) -> None:
    pages = all_pages(client, "/digitaltwins/hq-f1/relationships")
    assert [len(p) for p in pages] == [2]
    items = pages[0]
    assert items[0] == {
        "$relationshipId": "hq-f1-contains-hq-f1-r101",
        "$etag": items[0]["$etag"],
        "$sourceId": "hq-f1",
        "$targetId": "hq-f1-r101",
        "$relationshipName": "contains",
    }
    emulator.seed(
        {
            "relationships": [
                {"source": "hq-f1", "id": f"extra-{i}", "name": "feeds", "target": "hq-f2"}
                for i in range(3)
            ]
        }
    )
    pages = all_pages(client, "/digitaltwins/hq-f1/relationships")
    assert [len(p) for p in pages] == [2, 2, 1]
    one = all_pages(client, "/digitaltwins/hq-f1/relationships", **{"max-items-per-page": "1"})
    assert [len(p) for p in one] == [1] * 5
    named = client.get(
        "/digitaltwins/hq-f1/relationships", params={**V, "relationshipName": "feeds"}
    )
    assert [r["$relationshipId"] for r in named.json()["value"]] == ["extra-0", "extra-1"]


def test_incoming_relationships_and_their_links(client: httpx.Client) -> None:
    pages = all_pages(client, "/digitaltwins/0-1/incomingrelationships")
    items = [i for page in pages for i in page]
    assert [len(p) for p in pages] == [2, 1]
    assert {i["$sourceId"] for i in items} == {"hq-f1-r101", "0-2", "0-3"}
    assert set(items[0]) == {
        "$relationshipId",
        "$sourceId",
        "$relationshipName",
        "$relationshipLink",
    }
    for item in items:
        assert client.delete(item["$relationshipLink"], params=V).status_code == 204
    assert all_pages(client, "/digitaltwins/0-1/incomingrelationships") == [[]]


def test_next_link_names_the_host_label(client: httpx.Client, emulator: AdtEmulator) -> None:
    emulator.host_label = "myinstance.api.weu.digitaltwins.azure.net"
    body = client.get("/digitaltwins/0-1/incomingrelationships", params=V).json()
    link = httpx.URL(body["nextLink"])
    assert link.host == "myinstance.api.weu.digitaltwins.azure.net"
    assert link.params["api-version"] == API_VERSION
    rest = client.get(link.raw_path.decode())
    assert len(rest.json()["value"]) == 1


def test_bad_continuation_token(client: httpx.Client) -> None:
    response = client.get(
        "/digitaltwins/0-1/incomingrelationships", params={**V, "continuationToken": "%%%"}
    )
    assert error_of(response) == (400, "BadRequest")


def test_relationship_lookups(client: httpx.Client) -> None:
    rel = client.get("/digitaltwins/0-2/relationships/0-2-reportsTo-0-1", params=V)
    assert rel.json()["$targetId"] == "0-1" and rel.headers["etag"] == rel.json()["$etag"]
    missing = client.delete("/digitaltwins/0-2/relationships/nope", params=V)
    assert error_of(missing) == (404, "RelationshipNotFound")
    no_twin = client.delete("/digitaltwins/ghost/relationships/nope", params=V)
    assert error_of(no_twin) == (404, "DigitalTwinNotFound")
    assert error_of(client.get("/digitaltwins/ghost/relationships", params=V)) == (
        404,
        "DigitalTwinNotFound",
    )


def test_if_match(client: httpx.Client) -> None:
    path = "/digitaltwins/0-2/relationships/0-2-reportsTo-0-1"
    etag = client.get(path, params=V).headers["etag"]
    stale = client.delete(path, params=V, headers={"If-Match": 'W/"stale"'})
    assert error_of(stale) == (412, "PreconditionFailed")
    assert client.delete(path, params=V, headers={"If-Match": etag}).status_code == 204


# --- delete jobs ----------------------------------------------------------------------------


def add_job(client: httpx.Client, operation_id: str | None = None, **params: str) -> httpx.Response:
    headers = {"operation-id": operation_id} if operation_id else {}
    return client.post("/jobs/deletions", params={**V, **params}, headers=headers)


def test_delete_job_lifecycle(client: httpx.Client, emulator: AdtEmulator) -> None:
    accepted = add_job(client, "job-1", timeoutInMinutes="60")
    assert accepted.status_code == 202
    assert accepted.json() == {
        "id": "job-1",
        "status": "notstarted",
        "createdDateTime": "2026-03-02T09:00:00.0000000+00:00",
    }
    assert accepted.headers["operation-id"] == "job-1"
    location = httpx.URL(accepted.headers["operation-location"])
    assert location.path == "/jobs/deletions/job-1"
    assert location.params["api-version"] == API_VERSION
    assert emulator.jobs()[0]["timeoutInMinutes"] == 60

    emulator.step(60)
    assert client.get("/jobs/deletions/job-1", params=V).json()["status"] == "running"
    assert len(emulator.twin_ids()) == 13
    emulator.step(60)
    done = client.get("/jobs/deletions/job-1", params=V).json()
    assert done["status"] == "succeeded"
    assert done["finishedDateTime"] == "2026-03-02T09:02:00.0000000+00:00"
    assert done["purgeDateTime"] == "2026-04-01T09:02:00.0000000+00:00"
    assert emulator.twin_ids() == set()
    assert emulator.relationships() == [] and emulator.models() == []
    assert emulator.deleted()["purges"] == [
        {
            "job": "job-1",
            "at": "2026-03-02T09:02:00.0000000+00:00",
            "models": 4,
            "twins": 13,
            "relationships": 22,
        }
    ]
    assert emulator.deleted()["twins"] == []


def test_operation_id_generated_when_absent(client: httpx.Client, emulator: AdtEmulator) -> None:
    accepted = add_job(client)
    job_id = accepted.json()["id"]
    assert accepted.headers["operation-id"] == job_id and len(job_id) == 36
    assert client.get(f"/jobs/deletions/{job_id}", params=V).status_code == 200


def test_one_job_at_a_time_and_operation_ids_unique(
    client: httpx.Client, emulator: AdtEmulator
) -> None:
    assert add_job(client, "job-1").status_code == 202
    assert error_of(add_job(client, "job-2")) == (400, "JobLimitReached")
    reused = add_job(client, "job-1")
    assert error_of(reused) == (400, "ValidationFailed")
    assert reused.json()["error"]["message"] == "Operation-Id already exists."
    emulator.step(60)
    assert error_of(add_job(client, "job-2")) == (400, "JobLimitReached")
    emulator.step(60)
    assert error_of(add_job(client, "job-1")) == (400, "ValidationFailed")
    assert add_job(client, "job-2").status_code == 202
    assert [j["id"] for j in emulator.jobs()] == ["job-1", "job-2"]


def test_failed_job_deletes_nothing(client: httpx.Client, emulator: AdtEmulator) -> None:
    emulator.fail_next_job()
    add_job(client, "doomed")
    emulator.step(120)
    job = client.get("/jobs/deletions/doomed", params=V).json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "InternalError"
    assert len(emulator.twin_ids()) == 13 and emulator.deleted()["purges"] == []
    add_job(client, "again")
    emulator.step(120)
    assert client.get("/jobs/deletions/again", params=V).json()["status"] == "succeeded"


def test_job_lookups_and_no_cancel(client: httpx.Client, emulator: AdtEmulator) -> None:
    assert error_of(client.get("/jobs/deletions/nope", params=V)) == (404, "DeleteJobNotFound")
    for i in range(3):
        add_job(client, f"job-{i}")
        emulator.step(120)
    pages = all_pages(client, "/jobs/deletions")
    assert [[j["id"] for j in page] for page in pages] == [["job-0", "job-1"], ["job-2"]]
    assert client.post("/jobs/deletions/job-0/cancel", params=V).status_code in (404, 405)
    assert client.delete("/jobs/deletions/job-0", params=V).status_code in (404, 405)


@pytest.mark.parametrize("minutes", ["14", "1441", "soon"])
def test_timeout_out_of_range(client: httpx.Client, emulator: AdtEmulator, minutes: str) -> None:
    assert error_of(add_job(client, "j", timeoutInMinutes=minutes)) == (400, "InvalidArgument")
    assert emulator.jobs() == []


def test_jobs_advance_lazily_in_real_time() -> None:
    emu = AdtEmulator(tokens=[TOKEN], step_seconds=0.05)
    emu.seed(demo_graph())
    with serve(emu.app) as running, httpx.Client(base_url=running.url, headers=AUTH) as c:
        assert add_job(c, "quick").json()["status"] == "notstarted"
        deadline = time.monotonic() + 5
        seen: list[str] = []
        while time.monotonic() < deadline:
            status = c.get("/jobs/deletions/quick", params=V).json()["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "succeeded":
                break
            time.sleep(0.01)
    assert seen[-1] == "succeeded" and set(seen) <= {"notstarted", "running", "succeeded"}
    assert emu.twin_ids() == set()


# --- faults and admin -------------------------------------------------------------------------


def test_throttle_has_retry_after_and_spares_admin(
    client: httpx.Client, emulator: AdtEmulator, shared: tuple[AdtEmulator, str]
) -> None:
    emulator.faults.update({"throttle_rate": 1.0, "retry_after": 2})
    response = client.delete("/digitaltwins/0-1", params=V)
    assert response.status_code == 429 and response.headers["retry-after"] == "2"
    assert client.get("/_admin/twins").status_code == 200
    assert len(emulator.twin_ids()) == 13


def test_drop_after_apply_creates_the_job(client: httpx.Client, emulator: AdtEmulator) -> None:
    emulator.faults.update({"drop_after_apply_rate": 1.0})
    assert add_job(client, "lost").status_code == 500
    assert [j["id"] for j in emulator.jobs()] == ["lost"]


def test_admin_routes(client: httpx.Client, emulator: AdtEmulator) -> None:
    emulator.reset()
    seeded = client.post("/_admin/seed", json=demo_graph())
    assert seeded.json() == {"models": 4, "twins": 13, "relationships": 22}
    assert len(client.get("/_admin/twins").json()) == 13
    assert len(client.get("/_admin/relationships").json()) == 22
    assert client.get("/_admin/models").json()[0] == "dtmi:com:example:Building;1"
    assert client.post("/_admin/fail_next_job").json() == {"fail_next_job": True}
    add_job(client, "j")
    assert client.post("/_admin/step", json={"seconds": 120}).status_code == 200
    assert client.get("/_admin/jobs").json()[0]["status"] == "failed"
    assert client.get("/_admin/deleted").json() == {"twins": [], "relationships": [], "purges": []}
    assert client.post("/_admin/step", json={"seconds": -1}).status_code == 400
    assert client.post("/_admin/expire_tokens").json() == {"expired": 0}
    assert client.post("/_admin/reset").json() == {"reset": True}
    assert client.get("/_admin/twins").json() == []


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ({"twins": [{"id": "x", "model": "dtmi:unknown;1"}]}, "unknown model"),
        ({"twins": [{"id": "hq", "model": "dtmi:com:example:Building;1"}]}, "already used"),
        ({"relationships": [{"source": "hq", "id": "r", "target": "ghost"}]}, "no twin 'ghost'"),
        ({"models": ["not-a-dtmi"]}, "needs a dtmi id"),
        ({"people": []}, "unknown seed keys"),
    ],
)
def test_seed_refuses_what_adt_refuses(
    client: httpx.Client, graph: dict[str, Any], message: str
) -> None:
    response = client.post("/_admin/seed", json=graph)
    assert response.status_code == 400 and message in response.json()["error"]


def test_demo_graph_shape() -> None:
    graph = demo_graph()
    ids = {t["id"] for t in graph["twins"]}
    assert {f"0-{i}" for i in range(1, 7)} <= ids
    for person in (f"0-{i}" for i in range(1, 7)):
        assert any(r["source"] == person for r in graph["relationships"])
        assert any(r["target"] == person for r in graph["relationships"])
