"""The Goose emulator's semantics, over real HTTP on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from connectors.goose.emulator import GooseEmulator, demo_data
from connectors.kit.serving import serve

CODE = "DEV001"
ENGINE = "engine-key-0123456789"
USER = "user-key-9876543210"
OTHER_CODE_KEY = "other-company-key-55"
CONTACTS = [{"RECORD_ID": f"0-{i}", "SYKEY": f"user{i}", "CORAS": f"Name {i}"} for i in range(1, 9)]


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[GooseEmulator, str]]:
    """One server per module: starting uvicorn costs more than most of these tests."""
    emu = GooseEmulator(timezone="Europe/Rome")
    with serve(emu.app) as running:
        yield emu, running.url


@pytest.fixture
def emulator(shared: tuple[GooseEmulator, str]) -> GooseEmulator:
    emu = shared[0]
    emu.reset()
    emu.seed({CODE: [ENGINE, USER]}, {"CON_TRO": CONTACTS, "ANA_DIP": [{"RECORD_ID": "1-1"}]})
    emu.seed({"OTH002": [OTHER_CODE_KEY]}, {"CON_TRO": [{"RECORD_ID": "9-1"}]})
    return emu


@pytest.fixture
def client(emulator: GooseEmulator, shared: tuple[GooseEmulator, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared[1], timeout=5) as c:
        yield c


def deleted(
    client: httpx.Client, key: str = ENGINE, table: str = "CON_TRO", **extra: Any
) -> httpx.Response:
    return client.post("/deleted/", json={"code": CODE, "key": key, "table": table, **extra})


def ids(response: httpx.Response) -> list[str]:
    body = response.json()
    assert response.status_code == 200 and body["status"] == "OK", body
    assert body["result"]["total"] == len(body["result"]["data"])
    return [row["RECORD_ID"] for row in body["result"]["data"]]


def error(response: httpx.Response) -> tuple[Any, str]:
    assert response.status_code == 200, "Goose answers errors with HTTP 200"
    body = response.json()
    assert body["status"] == "error", body
    return body["error"]["code"], body["error"]["description"]


def test_rows_follow_the_documented_shape(emulator: GooseEmulator, client: httpx.Client) -> None:
    emulator.delete("CON_TRO", ["0-2"])
    body = deleted(client).json()
    assert body == {
        "status": "OK",
        "result": {
            "total": 1,
            "data": [{"TABLE": "CON_TRO", "RECORD_ID": "0-2", "SYKEY": "user2"}],
        },
    }


def test_latest_returns_everything_first_then_only_what_is_new(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    emulator.delete("CON_TRO", ["0-1", "0-2"])
    emulator.delete("ANA_DIP", ["1-1"])
    assert ids(deleted(client, **{"from": "latest"})) == ["0-1", "0-2"]
    assert ids(deleted(client, **{"from": "latest"})) == []
    emulator.delete("CON_TRO", ["0-3"])
    assert ids(deleted(client, **{"from": "latest"})) == ["0-3"]
    # the cursor is per key and per table
    assert ids(deleted(client, key=USER, **{"from": "latest", "imc": True})) == [
        "0-1",
        "0-2",
        "0-3",
    ]
    assert ids(deleted(client, table="ANA_DIP", **{"from": "latest"})) == ["1-1"]
    # and per company: the other company's table of the same name is its own
    other = client.post(
        "/deleted/",
        json={"code": "OTH002", "key": OTHER_CODE_KEY, "table": "CON_TRO", "from": "latest"},
    )
    assert ids(other) == []


def test_latest_cursor_advances_only_when_the_call_succeeds(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    emulator.clock = clock
    emulator.rate_limit_per_second = 1
    emulator.delete("CON_TRO", ["0-1"])
    assert ids(deleted(client, **{"from": "latest"})) == ["0-1"]
    emulator.delete("CON_TRO", ["0-2"])
    code, _ = error(deleted(client, **{"from": "latest"}))  # same second: refused
    assert code == 50
    clock.advance(2)
    code, _ = error(deleted(client, **{"from": "latest", "imc": "yes"}))
    assert code == 108
    clock.advance(2)
    assert ids(deleted(client, **{"from": "latest"})) == ["0-2"]


def test_drop_next_applies_the_call_then_loses_the_answer(
    emulator: GooseEmulator, client: httpx.Client, shared: tuple[GooseEmulator, str]
) -> None:
    emulator.delete("CON_TRO", ["0-1"])
    admin = client.post("/_admin/drop_next", json={"count": 1})
    assert admin.json() == {"drop_next": 1}
    lost = deleted(client, **{"from": "latest"})
    assert lost.status_code == 500
    assert emulator.pending_drops() == 0
    assert ids(deleted(client, **{"from": "latest"})) == [], "the cursor moved before the 500"
    assert ids(deleted(client, **{"from": "2000-01-01 00:00:00"})) == ["0-1"]
    statuses = [r["status"] for r in emulator.log.as_json() if r["path"] == "/deleted/"]
    assert statuses == [500, 200, 200]


def test_imc_excludes_the_callers_own_deletions_only_when_from_is_set(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    emulator.delete("CON_TRO", ["0-1"])  # by a user in the Goose app
    emulator.delete("CON_TRO", ["0-2"], by_key=ENGINE)
    emulator.delete("CON_TRO", ["0-3"], by_key=USER)
    since = "2000-01-01 00:00:00"
    assert ids(deleted(client, **{"from": since})) == ["0-1", "0-3"], "imc defaults to false"
    assert ids(deleted(client, **{"from": since, "imc": False})) == ["0-1", "0-3"]
    assert ids(deleted(client, **{"from": since, "imc": True})) == ["0-1", "0-2", "0-3"]
    assert ids(deleted(client, key=USER, **{"from": "latest"})) == ["0-1", "0-2"]
    assert ids(deleted(client, imc=False)) == ["0-1", "0-2", "0-3"], "without from, imc is ignored"


def test_from_is_a_wall_clock_time_in_the_emulator_zone(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, 0, 400000, tzinfo=UTC))  # 13:00:00 in Rome
    emulator.clock = clock
    emulator.delete("CON_TRO", ["0-1"])
    assert ids(deleted(client, **{"from": "2026-03-01 13:00:00"})) == ["0-1"], "second resolution"
    assert ids(deleted(client, **{"from": "2026-03-01 13:00:01"})) == []
    assert ids(deleted(client, **{"from": "2026-03-01 12:30:00"})) == ["0-1"], "not read as UTC"
    assert emulator.deletions()[0]["deleted_at"].startswith("2026-03-01T13:00:00")


def test_the_repeated_hour_is_compared_by_wall_time(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    """Rome goes from 03:00 CEST back to 02:00 CET at 01:00 UTC on 2025-10-26."""
    emulator.clock = FakeClock(datetime(2025, 10, 26, 1, 10, tzinfo=UTC))  # 02:10 CET
    emulator.delete("CON_TRO", ["0-1"])
    # 00:50 UTC was 02:50 CEST: later on the wall, earlier in time
    assert ids(deleted(client, **{"from": "2025-10-26 02:50:00"})) == []
    assert ids(deleted(client, **{"from": "2025-10-26 02:10:00"})) == ["0-1"]


@pytest.mark.parametrize("as_strings", [False, True])
def test_error_codes(emulator: GooseEmulator, client: httpx.Client, as_strings: bool) -> None:
    emulator.codes_as_strings = as_strings

    def code_of(response: httpx.Response) -> str:
        code, _ = error(response)
        assert isinstance(code, str) is as_strings
        return str(code)

    assert code_of(client.post("/deleted/", content=b"{code: 'DEV001'}")) == "99"
    assert code_of(client.post("/deleted/", json=["DEV001"])) == "99"
    assert code_of(client.post("/deleted/", json={"key": ENGINE, "table": "CON_TRO"})) == "101"
    assert code_of(client.post("/deleted/", json={"code": "TOOLONG1", "key": ENGINE})) == "101"
    assert code_of(client.post("/deleted/", json={"code": CODE, "table": "CON_TRO"})) == "102"
    assert code_of(deleted(client, table="TOOLONGX")) == "103"
    assert code_of(deleted(client, **{"from": "yesterday"})) == "107"
    assert code_of(deleted(client, **{"from": 20260301})) == "107"
    assert code_of(deleted(client, key="not-a-key")) == "110"
    assert code_of(deleted(client, key=OTHER_CODE_KEY)) == "110", "a key is valid for its company"
    code, description = error(deleted(client, table="NOPE"))
    assert str(code) == "120"
    assert description == "Table 'client_goose_DEV001.NOPE' doesn't exist'", "as the docs print it"


def test_ip_allowlist(emulator: GooseEmulator, client: httpx.Client) -> None:
    emulator.allowed_ips = ["10.9.9.9"]
    assert error(deleted(client)) == (111, "IP or Key not authorized")
    emulator.allowed_ips = ["127.0.0.1"]
    assert ids(deleted(client)) == []


def test_rate_limits_per_second_and_per_day(emulator: GooseEmulator, client: httpx.Client) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 22, 0, tzinfo=UTC))  # 23:00 in Rome
    emulator.clock = clock
    emulator.rate_limit_per_second = 5
    for _ in range(5):
        ids(deleted(client))
    assert error(deleted(client)) == (50, "Limit API calls exceeded: max 5 per second")
    assert ids(deleted(client, key=USER)) == [], "the limit is per key"
    clock.advance(1)
    ids(deleted(client))
    emulator.rate_limit_per_second = None
    emulator.daily_limit = 7  # 6 calls counted so far today; a refused one does not count
    ids(deleted(client))
    code, description = error(deleted(client))
    assert (code, description) == (51, "Limit API calls exceeded: max 7 per day")
    clock.advance(3600)  # past midnight in Rome
    ids(deleted(client))


def test_operation_deletes_as_the_calling_key(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    def operation(**body: Any) -> dict[str, Any]:
        answer = client.post("/operation/", json={"code": CODE, "key": ENGINE, **body})
        assert answer.status_code == 200
        result: dict[str, Any] = answer.json()
        return result

    done = operation(operation="DELETE", table="CON_TRO", id="0-4")
    assert done == {
        "status": "OK",
        "result": {"operation": "DELETE", "table": "CON_TRO", "id": "0-4"},
    }
    assert emulator.deletions()[-1]["by_key"] == ENGINE
    assert "0-4" not in {r["RECORD_ID"] for r in emulator.records("CON_TRO")}
    again = operation(operation="DELETE", table="CON_TRO", id="0-4")
    assert again["error"] == {
        "code": 120,
        "description": "Record '0-4' not found",
        "query": "DELETE FROM client_goose_DEV001.CON_TRO WHERE RECORD_ID='0-4'",
    }
    assert operation(operation="UPDATE", table="CON_TRO", id="0-5")["error"]["code"] == 100
    no_table = operation(operation="DELETE", table="NOPE", id="0-5")["error"]
    assert no_table["code"] == 120 and "query" in no_table, "a SQL error shows its query"
    assert operation(operation="DELETE", table="CON_TRO")["error"]["code"] == 104
    assert operation(operation="DELETE", table="CON_TRO", id="x" * 26)["error"]["code"] == 104
    assert operation(operation="DELETE", table="TOOLONGX", id="0-5")["error"]["code"] == 103
    assert "query" not in operation(operation="DELETE", table="CON_TRO")["error"], (
        "a format error runs no query"
    )
    emulator.codes_as_strings = True
    assert operation(operation="DELETE", table="CON_TRO", id="0-4")["error"]["code"] == "120"
    emulator.codes_as_strings = False
    # the engine's own deletion is left out of its imc=false reads
    assert ids(deleted(client, **{"from": "latest"})) == []
    assert ids(deleted(client, key=USER, **{"from": "latest"})) == ["0-4"]
    mutating = {(r["path"], r["mutating"]) for r in emulator.log.as_json()}
    assert mutating == {("/operation/", True), ("/deleted/", False)}


def test_admin_endpoints_drive_the_same_state(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    emulator.reset()
    assert client.post("/_admin/seed", json=demo_data("ek-1", "uk-1")).json() == {"ok": True}
    assert len(client.get("/_admin/tables/CON_TRO").json()) == 12
    answer = client.post("/_admin/delete", json={"table": "CON_TRO", "ids": ["0-1", "0-99"]})
    assert answer.json() == {"deleted": 1}
    client.post("/_admin/delete", json={"table": "CON_TRO", "ids": ["0-2"], "by_key": "ek-1"})
    truth = client.get("/_admin/deletions").json()
    assert [(d["RECORD_ID"], d["SYKEY"], d["by_key"]) for d in truth] == [
        ("0-1", "jrossi", None),
        ("0-2", "mbianchi", "ek-1"),
    ]
    assert datetime.fromisoformat(truth[0]["deleted_at"]).utcoffset() is not None
    assert len(client.get("/_admin/tables/CON_TRO").json()) == 10
    assert client.post("/_admin/delete", json={"table": "NOPE", "ids": ["x"]}).status_code == 400
    before = emulator.now()
    shifted = client.post("/_admin/clock", json={"offset_seconds": 7200})
    assert shifted.status_code == 200
    assert emulator.now() - before >= timedelta(seconds=7199)
    config = client.put("/_admin/config", json={"codes_as_strings": True})
    assert config.json()["codes_as_strings"] is True
    assert client.put("/_admin/config", json={"colour": "red"}).status_code == 400
    assert client.put("/_admin/config", json={"daily_limit": "ten"}).status_code == 400
    error_code, _ = error(
        client.post("/deleted/", json={"code": "DEV001", "key": "nope", "table": "CON_TRO"})
    )
    assert error_code == "110"


def test_a_restored_record_can_be_deleted_again_and_a_raw_row_is_answered_as_given(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    """Seeding a deleted record again restores it; deleting it again is a second entry.
    A raw row (a damaged log entry) is answered exactly as given, in its place."""
    emulator.delete("CON_TRO", ["0-1"])
    client.post(
        "/_admin/seed", json={"companies": {CODE: []}, "tables": {"CON_TRO": [CONTACTS[0]]}}
    )
    bad = {"TABLE": "CON_TRO", "SYKEY": "ghost"}
    assert client.post("/_admin/raw_deletion", json={"table": "CON_TRO", "row": bad}).json() == {
        "ok": True
    }
    emulator.delete("CON_TRO", ["0-1"])
    rows = deleted(client, **{"from": "latest"}).json()["result"]["data"]
    assert rows == [
        {"TABLE": "CON_TRO", "RECORD_ID": "0-1", "SYKEY": "user1"},
        bad,
        {"TABLE": "CON_TRO", "RECORD_ID": "0-1", "SYKEY": "user1"},
    ]
    assert client.post("/_admin/raw_deletion", json={"table": "NOPE", "row": {}}).status_code == 400


def test_faults_hit_the_vendor_routes_but_never_admin(
    emulator: GooseEmulator, client: httpx.Client
) -> None:
    assert client.put("/_admin/faults", json={"error_rate": 1.0}).status_code == 200
    assert deleted(client).status_code == 500
    assert client.get("/_admin/deletions").status_code == 200
    emulator.reset()
    assert emulator.faults.error_rate == 0.0
    assert emulator.log.as_json() == []


def test_concurrent_deletions_get_distinct_sequence_numbers(emulator: GooseEmulator) -> None:
    emulator.seed({CODE: [ENGINE]}, {"BIG": [{"RECORD_ID": str(i)} for i in range(400)]})

    def worker(start: int) -> None:
        for i in range(start, 400, 4):
            emulator.delete("BIG", [str(i)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [d["seq"] for d in emulator.deletions() if d["table"] == "BIG"]
    assert sorted(seqs) == list(range(1, 401))
    assert emulator.records("BIG") == []


def test_demo_data_is_a_small_realistic_seed() -> None:
    data = demo_data()
    assert list(data["companies"]) == ["DEV001"]
    assert len(data["companies"]["DEV001"]) == 2
    contacts = data["tables"]["CON_TRO"]
    assert 10 <= len(contacts) <= 15
    assert contacts[0]["SYKEY"] == "jrossi"
    assert len({c["RECORD_ID"] for c in contacts}) == len(contacts)


def test_admin_refusals_are_one_line_and_the_kit_routes_answer_alike(
    client: httpx.Client, emulator: GooseEmulator
) -> None:
    """The kit's admin handlers: a body that is no object gets the route's usage, a
    missing field is named, and reset clears the request log as on every emulator."""
    not_object = client.post("/_admin/delete", content=b"[1]")
    assert not_object.status_code == 400 and "table" in not_object.json()["error"]
    missing = client.post("/_admin/delete", json={"ids": ["0-1"]})
    assert (missing.status_code, missing.json()) == (400, {"error": "the body lacks 'table'"})
    deleted(client)
    assert emulator.log.entries
    assert client.post("/_admin/reset").json() == {"reset": True}
    assert emulator.log.entries == [] and emulator.records("CON_TRO") == []
