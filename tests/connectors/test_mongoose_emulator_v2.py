"""The Mongoose emulator's REST v2 routes and its knobs (row shape, older token forms)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from connectors.emulation.kit import Faults
from connectors.kit.serving import serve
from connectors.mongoose.emulator import (
    DEFAULT_BASE_PATH,
    DEFAULT_V2_BASE_PATH,
    Knobs,
    MongooseEmulator,
    demo_rows,
)
from tests.connectors.test_mongoose_emulator import item_id_of, logged

USER, PASSWORD = "sync user", "s3cret/pw%20."
SEGMENTS = "sync%20user/s3cret%2Fpw%2520."


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[MongooseEmulator, str]]:
    emu = MongooseEmulator(users={USER: PASSWORD, "blank": ""}, bearer_tokens=["ion-token-1"])
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[MongooseEmulator, str]) -> MongooseEmulator:
    emu = shared[0]
    emu.reset()
    emu.faults.update(asdict(Faults()))
    emu.knobs.update(asdict(Knobs()))
    emu.seed(demo_rows())
    return emu


@pytest.fixture
def client(
    emulator: MongooseEmulator, shared: tuple[MongooseEmulator, str]
) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared[1] + DEFAULT_V2_BASE_PATH + "/ido", timeout=5) as c:
        yield c


@pytest.fixture
def auth(client: httpx.Client) -> dict[str, str]:
    response = client.get("/token/DEMO", headers={"username": USER, "password": PASSWORD})
    assert response.status_code == 200
    return {"Authorization": response.json()["Token"]}


def load(client: httpx.Client, auth: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/load/UserNames", params=params, headers=auth)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def changes(*item_ids: str, action: Any = 4) -> dict[str, Any]:
    return {"Changes": [{"Action": action, "ItemId": item_id} for item_id in item_ids]}


# --- GetSecurityToken ----------------------------------------------------------------


def test_token_by_headers(client: httpx.Client) -> None:
    response = client.get("/token/DEMO", headers={"username": USER, "password": PASSWORD})
    body = response.json()
    assert (body["Message"], body["Success"]) == (None, True)
    assert len(body["Token"]) > 40


def test_token_by_path_decodes_each_segment_once(client: httpx.Client) -> None:
    response = client.get(f"/token/DEMO/{SEGMENTS}")
    assert response.status_code == 200 and response.json()["Success"] is True
    assert client.get("/token/DEMO/blank").json()["Success"] is True  # password is optional


@pytest.mark.parametrize(
    ("path", "headers", "message"),
    [
        ("/token/DEMO", {"username": USER, "password": "wrong"}, "Invalid user name or password"),
        ("/token/DEMO", {"userid": USER, "password": PASSWORD}, "Invalid user name or password"),
        ("/token/DEMO/sync%20user/wrong", {}, "Invalid user name or password"),
        (f"/token/OTHER/{SEGMENTS}", {}, "Configuration OTHER not found"),
    ],
)
def test_token_refused(
    client: httpx.Client, path: str, headers: dict[str, str], message: str
) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"Token": None, "Success": False, "Message": message}


def test_older_server_knows_only_the_path_form(
    client: httpx.Client, emulator: MongooseEmulator
) -> None:
    emulator.knobs.update({"header_token": False})
    by_headers = client.get("/token/DEMO", headers={"username": USER, "password": PASSWORD})
    assert by_headers.status_code == 404
    assert client.get(f"/token/DEMO/{SEGMENTS}").status_code == 200
    assert client.get(f"/token/DEMO/{SEGMENTS}/extra").status_code == 404


# --- LoadCollection --------------------------------------------------------------------


def test_load_items_are_objects_with_item_id(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    body = load(client, auth, properties="Username,UserId", filter="Username = 'JROSSI'")
    assert body == {
        "Items": [
            {"_ItemId": item_id_of(emulator, "jrossi"), "Username": "jrossi", "UserId": "101"}
        ],
        "Bookmark": None,
        "MoreRowsExist": False,
        "Success": True,
        "Message": None,
    }
    (every,) = load(client, auth, properties="*", filter="UserId = '101'")["Items"]
    assert {"_ItemId", "RowPointer", "RecordDate", "UserDesc", "Username"} <= set(every)


def test_load_recordcap_and_more_rows(client: httpx.Client, auth: dict[str, str]) -> None:
    capped = load(client, auth, properties="Username", recordcap="2")
    assert len(capped["Items"]) == 2 and capped["MoreRowsExist"] is True
    every = load(client, auth, properties="Username", recordcap="0")
    assert len(every["Items"]) == 15 and every["MoreRowsExist"] is False


def test_load_errors_are_200_with_success_false(client: httpx.Client, auth: dict[str, str]) -> None:
    body = load(client, auth, properties="Nope")
    assert body["Success"] is False and body["Items"] is None
    assert body["Message"] == "Property Nope not found in IDO UserNames"
    assert client.get("/load/UserNames", params={"properties": "Username"}).status_code == 401


@pytest.mark.parametrize("shape", ["arrays", "objects", "documented"])
def test_row_shape_knob(
    client: httpx.Client,
    auth: dict[str, str],
    emulator: MongooseEmulator,
    shared: tuple[MongooseEmulator, str],
    shape: str,
) -> None:
    emulator.knobs.update({"row_shape": shape})
    item_id = item_id_of(emulator, "jrossi")
    arrays, objects = [[item_id, "jrossi"]], [{"_ItemId": item_id, "Username": "jrossi"}]
    params = {"filter": "Username = 'jrossi'"}
    v2 = load(client, auth, properties="_ItemId,Username", **params)["Items"]
    v1 = httpx.get(
        shared[1] + DEFAULT_BASE_PATH + "/json/UserNames/adv",
        params={"props": "_ItemId,Username", **params},
        headers=auth,
    ).json()["Items"]
    expected = {"arrays": (arrays, arrays), "objects": (objects, objects)}
    assert (v1, v2) == expected.get(shape, (arrays, objects))


def test_bad_knobs_are_refused(
    emulator: MongooseEmulator, shared: tuple[MongooseEmulator, str]
) -> None:
    for bad in ({"row_shape": "tuples"}, {"header_token": "no"}, {"rows": "arrays"}):
        response = httpx.put(shared[1] + "/_admin/settings", json=bad)
        assert response.status_code == 400
    assert httpx.get(shared[1] + "/_admin/settings").json() == asdict(Knobs())


# --- UpdateCollection (deletes) ----------------------------------------------------------


def test_update_deletes(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    doomed = [item_id_of(emulator, name) for name in ("jrossi", "lverdi")]
    response = client.post("/update/UserNames", json=changes(*doomed), headers=auth)
    assert response.json() == {"Message": None, "Success": True, "RefreshItems": None}
    assert sorted(d.properties["Username"] for d in emulator.deleted()) == ["jrossi", "lverdi"]
    entries = logged(emulator.log, 2)
    assert [(e.method, e.mutating) for e in entries][-1:] == [("POST", True)]


def test_update_is_all_or_nothing(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    jrossi, lverdi = item_id_of(emulator, "jrossi"), item_id_of(emulator, "lverdi")
    emulator.touch("UserNames", {"Username": "lverdi"})
    response = client.post("/update/UserNames", json=changes(jrossi, lverdi), headers=auth)
    assert response.status_code == 200
    assert response.json() == {
        "RefreshItems": None,
        "Success": False,
        "Message": f"Delete failed: the row has been modified by another user ({lverdi})",
    }
    assert emulator.deleted() == []


@pytest.mark.parametrize(
    ("body", "status"),
    [([{"Action": 4, "ItemId": "x"}], 400), ({"changes": []}, 400), (changes("x", action=2), 200)],
)
def test_malformed_updates(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator, body: Any, status: int
) -> None:
    response = client.post("/update/UserNames", json=body, headers=auth)
    assert response.status_code == status and response.json()["Success"] is False
    assert emulator.deleted() == []


def test_update_needs_a_token_and_post(client: httpx.Client, auth: dict[str, str]) -> None:
    assert client.post("/update/UserNames", json=changes("x")).status_code == 401
    assert client.delete("/update/UserNames", headers=auth).status_code == 405
