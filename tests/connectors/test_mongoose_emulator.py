from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from connectors.emulation.kit import Faults, LoggedRequest, RequestLog
from connectors.kit.serving import serve
from connectors.mongoose.emulator import (
    DEFAULT_BASE_PATH,
    IllegalFilter,
    MongooseEmulator,
    demo_rows,
    parse_filter,
)

USER, PASSWORD = "sync", "s3cret-pw"


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[MongooseEmulator, str]]:
    """One server per module: starting uvicorn costs more than all these tests."""
    emu = MongooseEmulator(users={USER: PASSWORD}, bearer_tokens=["ion-token-1"])
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[MongooseEmulator, str]) -> MongooseEmulator:
    emu = shared[0]
    emu.reset()
    emu.faults.update(asdict(Faults()))
    emu.seed(demo_rows())
    return emu


@pytest.fixture
def server(emulator: MongooseEmulator, shared: tuple[MongooseEmulator, str]) -> str:
    return shared[1]


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server + DEFAULT_BASE_PATH, timeout=5) as c:
        yield c


@pytest.fixture
def auth(client: httpx.Client) -> dict[str, str]:
    response = client.get("/json/token/DEMO", headers={"userid": USER, "password": PASSWORD})
    assert response.status_code == 200
    return {"Authorization": response.json()["Token"]}


def load(client: httpx.Client, auth: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/json/UserNames/adv", params=params, headers=auth)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def delete_body(*item_ids: str, action: Any = 4) -> list[dict[str, Any]]:
    return [
        {
            "Action": action,
            "ItemId": item_id,
            "Properties": [{"IsNull": False, "Modified": False, "Name": "_ItemId", "Value": None}],
        }
        for item_id in item_ids
    ]


def logged(log: RequestLog, count: int) -> list[LoggedRequest]:
    """The log entry is written just after the answer is sent, so wait for it."""
    deadline = time.monotonic() + 2
    while len(log.entries) < count and time.monotonic() < deadline:
        time.sleep(0.005)
    return list(log.entries)


def item_id_of(emulator: MongooseEmulator, username: str) -> str:
    (row,) = [r for r in emulator.rows("UserNames") if r["Username"] == username]
    item_id: str = row["_ItemId"]
    return item_id


# --- tokens -------------------------------------------------------------------------


def test_token_json(client: httpx.Client) -> None:
    response = client.get("/json/token/DEMO", headers={"userid": USER, "password": PASSWORD})
    body = response.json()
    assert body["Message"] == "Success"
    assert len(body["Token"]) > 40


def test_token_xml_and_js(client: httpx.Client) -> None:
    headers = {"userid": USER, "password": PASSWORD}
    xml = client.get("/xml/token/DEMO", headers=headers)
    assert "<Message>Success</Message><Token>" in xml.text
    js = client.get("/js/token/DEMO", headers=headers)
    assert js.status_code == 200 and "{" not in js.text


@pytest.mark.parametrize(
    ("config", "user", "password", "message"),
    [
        ("DEMO", USER, "wrong", "Invalid user name or password"),
        ("DEMO", "nobody", PASSWORD, "Invalid user name or password"),
        ("OTHER", USER, PASSWORD, "Configuration OTHER not found"),
    ],
)
def test_token_refused(
    client: httpx.Client, config: str, user: str, password: str, message: str
) -> None:
    response = client.get(f"/json/token/{config}", headers={"userid": user, "password": password})
    assert response.status_code == 401
    assert response.json() == {"Message": message, "MessageCode": 401}


def test_calls_need_a_valid_token(client: httpx.Client, emulator: MongooseEmulator) -> None:
    params = {"props": "Username"}
    assert client.get("/json/UserNames/adv", params=params).status_code == 401
    bad = {"Authorization": "not-a-token"}
    assert client.get("/json/UserNames/adv", params=params, headers=bad).status_code == 401
    token = client.get("/json/token/DEMO", headers={"userid": USER, "password": PASSWORD})
    good = {"Authorization": token.json()["Token"]}
    assert client.get("/json/UserNames/adv", params=params, headers=good).status_code == 200
    assert emulator.expire_tokens() == 1
    assert client.get("/json/UserNames/adv", params=params, headers=good).status_code == 401


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Authorization": "Bearer ion-token-1", "X-Infor-MongooseConfig": "DEMO"}, 200),
        ({"Authorization": "Bearer ion-token-1"}, 401),
        ({"Authorization": "Bearer ion-token-1", "X-Infor-MongooseConfig": "OTHER"}, 401),
        ({"Authorization": "Bearer other", "X-Infor-MongooseConfig": "DEMO"}, 401),
        ({"Authorization": "ion-token-1", "X-Infor-MongooseConfig": "DEMO"}, 401),
    ],
)
def test_bearer_needs_the_config_header(
    client: httpx.Client, headers: dict[str, str], status: int
) -> None:
    response = client.get("/json/UserNames/adv", params={"props": "Username"}, headers=headers)
    assert response.status_code == status


# --- LoadCollection -----------------------------------------------------------------


def test_items_are_positional_in_props_order(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    body = load(
        client, auth, props="Username,_ItemId,UserDesc", filter="Username = 'jrossi'", recordcap=0
    )
    assert body == {
        "Items": [["jrossi", item_id_of(emulator, "jrossi"), "Giulia Rossi"]],
        "Message": None,
        "MessageCode": 0,
    }
    assert body["Items"][0][1].startswith("PBT=[UserNames] UserNames.DT=[")


def test_in_filter_or_and_collation(client: httpx.Client, auth: dict[str, str]) -> None:
    body = load(
        client,
        auth,
        props="Username",
        filter="Username IN ('JRossi','lverdi ','nobody') or UserId = '105'",
        recordcap=0,
    )
    assert [row[0] for row in body["Items"]] == ["jrossi", "lverdi", "acolombo"]


def test_quotes_are_doubled(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    emulator.seed({"UserNames": [{"Username": "o'brien", "UserDesc": "Pat O'Brien"}]})
    body = load(client, auth, props="UserDesc", filter="Username IN ('o''brien')", recordcap=0)
    assert body["Items"] == [["Pat O'Brien"]]


def test_recordcap(client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator) -> None:
    emulator.seed({"UserNames": [{"Username": f"bulk{i}"} for i in range(250)]})
    assert len(load(client, auth, props="Username", recordcap=0)["Items"]) == 265
    assert len(load(client, auth, props="Username", recordcap=-1)["Items"]) == 200
    assert len(load(client, auth, props="Username")["Items"]) == 200
    assert len(load(client, auth, props="Username", recordcap=3)["Items"]) == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"props": "Username", "filter": "Username LIKE 'j%'"}, "IllegalFilterException"),
        ({"props": "Username", "filter": "Username = jrossi"}, "IllegalFilterException"),
        ({"props": "Username", "filter": "Username IN ()"}, "IllegalFilterException"),
        ({"props": "Username", "filter": "Username = 'a' AND UserId = '1'"}, "IllegalFilter"),
        ({"props": "Username", "filter": "Nope = 'a'"}, "Property Nope not found"),
        ({"props": "Username,Nope"}, "Property Nope not found"),
        ({"props": ""}, "props is required"),
        ({"props": "Username", "recordcap": "x"}, "recordcap"),
    ],
)
def test_load_errors_are_200_with_a_message(
    client: httpx.Client, auth: dict[str, str], params: dict[str, str], message: str
) -> None:
    body = load(client, auth, **params)
    assert body["Items"] is None
    assert body["MessageCode"] == 500
    assert message in body["Message"]


def test_unknown_ido(client: httpx.Client, auth: dict[str, str]) -> None:
    response = client.get("/json/Nope/adv", params={"props": "X"}, headers=auth)
    assert response.json() == {"Items": None, "Message": "IDO Nope not found", "MessageCode": 500}


@pytest.mark.parametrize(
    ("text", "clauses"),
    [
        ("A = 'x'", [("A", ["x"])]),
        ("A in ('x','y''z') OR B='1'", [("A", ["x", "y'z"]), ("B", ["1"])]),
        ("  A IN ( 'x' , 'y' )  ", [("A", ["x", "y"])]),
        ("A = ''", [("A", [""])]),
    ],
)
def test_parse_filter(text: str, clauses: list[tuple[str, list[str]]]) -> None:
    assert parse_filter(text) == clauses


@pytest.mark.parametrize(
    "text", ["A = 'x' OR", "OR A = 'x'", "A = 'x", "A = 'x' B = 'y'", "A IN 'x'", "A = 1"]
)
def test_parse_filter_rejects(text: str) -> None:
    with pytest.raises(IllegalFilter):
        parse_filter(text)


# --- DeleteItems --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["DELETE", "POST"])
def test_delete_items(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator, method: str
) -> None:
    ids = [item_id_of(emulator, "jrossi"), item_id_of(emulator, "mbianchi")]
    response = client.request(
        method, "/json/UserNames/deleteitems", json=delete_body(*ids), headers=auth
    )
    assert response.status_code == 200
    assert response.json() == {"Message": "Delete successful.", "MessageCode": 202}
    left = {r["Username"] for r in emulator.rows("UserNames")}
    assert "jrossi" not in left and "mbianchi" not in left and len(left) == 13
    deleted = emulator.deleted()
    assert [(d.ido, d.item_id, d.properties["Username"]) for d in deleted] == [
        ("UserNames", ids[0], "jrossi"),
        ("UserNames", ids[1], "mbianchi"),
    ]
    assert emulator.attempts() == {ids[0]: 1, ids[1]: 1}
    mutating = [e for e in logged(emulator.log, 2) if e.mutating]
    assert [(e.method, e.status) for e in mutating] == [(method, 200)]


def test_action_may_be_the_enum_name(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    body = delete_body(item_id_of(emulator, "jrossi"), action="Delete")
    response = client.post("/json/UserNames/deleteitems", json=body, headers=auth)
    assert response.json()["MessageCode"] == 202


def test_unknown_item_id_deletes_nothing(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    good = item_id_of(emulator, "jrossi")
    ghost = good.rsplit("ID=[", 1)[0] + "ID=[00000000-0000-0000-0000-000000000000]"
    response = client.request(
        "DELETE", "/json/UserNames/deleteitems", json=delete_body(good, ghost), headers=auth
    )
    assert response.status_code == 200
    assert response.json() == {
        "Message": f"Delete failed: item {ghost} not found",
        "MessageCode": 404,
    }
    assert emulator.deleted() == []
    assert len(emulator.rows("UserNames")) == 15
    assert emulator.attempts() == {good: 1, ghost: 1}


def test_stale_item_id_deletes_nothing(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    stale = item_id_of(emulator, "lverdi")
    other = item_id_of(emulator, "jrossi")
    (touched,) = emulator.touch("UserNames", {"Username": "lverdi"})
    assert touched["_ItemId"] != stale
    assert touched["RowPointer"] in stale
    response = client.post(
        "/json/UserNames/deleteitems", json=delete_body(other, stale), headers=auth
    )
    assert response.json() == {
        "Message": f"Delete failed: the row has been modified by another user ({stale})",
        "MessageCode": 409,
    }
    assert emulator.deleted() == []
    fresh = client.post(
        "/json/UserNames/deleteitems", json=delete_body(touched["_ItemId"]), headers=auth
    )
    assert fresh.json()["MessageCode"] == 202


def test_deleting_twice_fails_the_second_time(
    client: httpx.Client, auth: dict[str, str], emulator: MongooseEmulator
) -> None:
    item = item_id_of(emulator, "jrossi")
    first = client.post("/json/UserNames/deleteitems", json=delete_body(item), headers=auth)
    again = client.post("/json/UserNames/deleteitems", json=delete_body(item), headers=auth)
    both = client.post(
        "/json/UserNames/deleteitems",
        json=delete_body(item_id_of(emulator, "lverdi"), item_id_of(emulator, "lverdi")),
        headers=auth,
    )
    assert first.json()["MessageCode"] == 202
    assert again.json()["MessageCode"] == 404
    assert both.json()["MessageCode"] == 404
    assert [d.properties["Username"] for d in emulator.deleted()] == ["jrossi"]
    assert emulator.attempts()[item] == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"Action": 4}, 400, 400),
        ("not json", 400, 400),
        ([{"Action": 2, "ItemId": "x"}], 200, 400),
        ([{"Action": 4}], 200, 400),
    ],
)
def test_malformed_deletes(
    client: httpx.Client, auth: dict[str, str], body: Any, status: int, code: int
) -> None:
    if isinstance(body, str):
        response = client.post("/json/UserNames/deleteitems", content=body, headers=auth)
    else:
        response = client.post("/json/UserNames/deleteitems", json=body, headers=auth)
    assert response.status_code == status
    assert response.json()["MessageCode"] == code


def test_delete_needs_a_token(client: httpx.Client, emulator: MongooseEmulator) -> None:
    body = delete_body(item_id_of(emulator, "jrossi"))
    response = client.post("/json/UserNames/deleteitems", json=body)
    assert response.status_code == 401
    assert emulator.deleted() == []


# --- admin --------------------------------------------------------------------------


def test_admin_routes(server: str, emulator: MongooseEmulator) -> None:
    with httpx.Client(base_url=server, timeout=5) as admin:
        seeded = admin.post("/_admin/seed", json={"SLEmployees": [{"EmpNum": "E0101"}]}).json()
        (row,) = seeded["SLEmployees"]
        assert row["_ItemId"].startswith("PBT=[SLEmployees] SLEmployees.DT=[")
        assert admin.get("/_admin/rows/SLEmployees").json() == [row]
        assert admin.get("/_admin/rows/Nope").status_code == 404
        touched = admin.post(
            "/_admin/touch", json={"ido": "SLEmployees", "match": {"EmpNum": "E0101"}}
        ).json()["touched"]
        assert touched[0]["_ItemId"] != row["_ItemId"]
        assert admin.post("/_admin/expire_tokens").json() == {"expired": 0}
        assert admin.get("/_admin/deleted").json() == []
        assert admin.get("/_admin/attempts").json() == {}
        admin.put("/_admin/faults", json={"error_rate": 1.0}).raise_for_status()
        assert admin.get("/_admin/rows/SLEmployees").status_code == 200
        admin.post("/_admin/reset").raise_for_status()
    assert emulator.rows("UserNames") == []


def test_faults_spare_admin_but_hit_vendor_routes(
    client: httpx.Client, emulator: MongooseEmulator
) -> None:
    emulator.faults.update({"error_rate": 1.0})
    response = client.get("/json/token/DEMO", headers={"userid": USER, "password": PASSWORD})
    assert response.status_code == 500
    assert logged(emulator.log, 1)[-1].fault == "error"


def test_demo_rows() -> None:
    users = demo_rows()["UserNames"]
    assert len(users) == 15
    assert users[0] == {"UserId": "101", "Username": "jrossi", "UserDesc": "Giulia Rossi"}
    assert len({u["Username"] for u in users}) == 15


def test_touch_always_moves_the_timestamp(emulator: MongooseEmulator) -> None:
    seen = {item_id_of(emulator, "jrossi")}
    for _ in range(20):
        (row,) = emulator.touch("UserNames", {"Username": "jrossi"})
        seen.add(row["_ItemId"])
    assert len(seen) == 21
