from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from connectors.contract import (
    Delivery,
    FatalError,
    Outcome,
    OutcomeKind,
    Target,
    registry,
    sql_server_keys,
)
from connectors.emulation.kit import Faults, LoggedRequest
from connectors.kit.serving import serve
from connectors.mongoose import (
    MongooseConnection,
    MongooseTarget,
    MongooseTargetSettings,
    build_target,
)
from connectors.mongoose.emulator import DEFAULT_BASE_PATH, MongooseEmulator, demo_rows
from connectors.mongoose.filters import match_rows

USER, PASSWORD, ION_TOKEN = "sync", "pw-9f8e7d-secret", "ion-bearer-5c4b3a-secret"
FAST_RETRY = {"max_attempts": 2, "base_delay": 0.001, "max_delay": 0.005}
DOOMED = [u["Username"] for u in demo_rows()["UserNames"][:12]]
SURVIVORS = [u["Username"] for u in demo_rows()["UserNames"][12:]]

MakeTarget = Callable[..., MongooseTarget]


SEED = int(os.environ.get("FAULT_SEED", "7"))


def connection(url: str, **changes: Any) -> MongooseConnection:
    data: dict[str, Any] = {
        "type": "mongoose",
        "url": url,
        "config": "DEMO",
        "user": USER,
        "password": PASSWORD,
        "timeout": 5,
        "retry": FAST_RETRY,
    }
    data.update(changes)
    return MongooseConnection.model_validate({k: v for k, v in data.items() if v is not None})


def target_settings(**changes: Any) -> MongooseTargetSettings:
    data: dict[str, Any] = {
        "ido": "UserNames",
        "key": "{SYKEY}",
        "lookup": {"property": "Username"},
    }
    data.update(changes)
    return MongooseTargetSettings.model_validate(data)


def deliveries(*values: Any, field: str = "SYKEY", start: int = 1) -> list[Delivery]:
    return [
        Delivery(start + i, "CON_TRO", f"0-{start + i}", {field: value})
        for i, value in enumerate(values)
    ]


async def send(target: Target, batch: Sequence[Delivery]) -> list[Outcome]:
    outcomes = await target.send(batch)
    assert [o.delivery_id for o in outcomes] == [d.delivery_id for d in batch]
    for outcome in outcomes:
        assert PASSWORD not in outcome.reason and ION_TOKEN not in outcome.reason
    return outcomes


def kinds(outcomes: Sequence[Outcome]) -> list[tuple[str, str]]:
    return [(o.kind.value, o.detail or o.reason) for o in outcomes]


def usernames(emulator: MongooseEmulator) -> set[str]:
    return {row["Username"] for row in emulator.rows("UserNames")}


def deleted_usernames(emulator: MongooseEmulator) -> list[str]:
    return sorted(d.properties["Username"] for d in emulator.deleted())


def item_id_of(emulator: MongooseEmulator, username: str) -> str:
    (row,) = [r for r in emulator.rows("UserNames") if r["Username"] == username]
    item_id: str = row["_ItemId"]
    return item_id


async def settled_log(emulator: MongooseEmulator) -> list[LoggedRequest]:
    """The emulator logs a request just after answering it; let the last entry land."""
    await asyncio.sleep(0.05)
    return list(emulator.log.entries)


async def token_calls(emulator: MongooseEmulator) -> int:
    return sum("/token/" in e.path for e in await settled_log(emulator))


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[MongooseEmulator, str]]:
    emulator = MongooseEmulator(users={USER: PASSWORD}, bearer_tokens=[ION_TOKEN])
    with serve(emulator.app) as running:
        yield emulator, running.url + DEFAULT_BASE_PATH


@pytest.fixture
def emulator(shared: tuple[MongooseEmulator, str]) -> MongooseEmulator:
    emulator = shared[0]
    emulator.reset()
    emulator.faults.update(asdict(Faults()))
    emulator.seed(demo_rows())
    return emulator


@pytest.fixture
async def make_target(
    shared: tuple[MongooseEmulator, str], emulator: MongooseEmulator
) -> AsyncIterator[MakeTarget]:
    made: list[MongooseTarget] = []

    def make(conn: dict[str, Any] | None = None, **changes: Any) -> MongooseTarget:
        target = MongooseTarget(
            "erp", connection(shared[1], **(conn or {})), target_settings(**changes)
        )
        made.append(target)
        return target

    yield make
    for target in made:
        await target.aclose()


# --- settings -------------------------------------------------------------------------


def test_connection_modes() -> None:
    direct = connection("http://h/IDORequestService/MGRESTService.svc/")
    assert direct.url == "http://h/IDORequestService/MGRESTService.svc"
    assert direct.secret_values() == [PASSWORD]
    bearer = connection("https://h/x", user=None, password=None, token=ION_TOKEN)
    assert bearer.secret_values() == [ION_TOKEN]
    assert PASSWORD not in repr(direct) and ION_TOKEN not in repr(bearer)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token": ION_TOKEN}, "set either 'user' and 'password'"),
        ({"password": None}, "set 'user' and 'password' (Mongoose security token) or 'token'"),
        ({"user": None, "password": None}, "set 'user' and 'password'"),
        ({"user": None, "password": None, "token": ""}, "'token' is empty"),
        ({"url": "ftp://h/x"}, "is not an http(s) URL"),
        ({"url": "h/x"}, "is not an http(s) URL"),
        ({"config": ""}, "at least 1 character"),
        ({"config": ".."}, "'..' holds a dot segment"),
        ({"config": "%2e"}, "'%2e' holds a dot segment"),
        ({"passwd": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_connection_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        connection(**{"url": "http://h/x", **changes})
    assert message in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key": "{SYKEY!r}"}, "conversions"),
        ({"key": "USERS"}, "uses no field"),
        ({"ido": "User Names"}, "should match pattern"),
        ({"ido": "../token"}, "should match pattern"),
        ({"lookup": {"property": "Username) OR (1"}}, "should match pattern"),
        ({"lookup": {"prop": "Username"}}, "Extra inputs"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"batch_size": 1001}, "less than or equal to 1000"),
        ({"delete_method": "PUT"}, "'DELETE' or 'POST'"),
    ],
)
def test_target_settings_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        target_settings(**changes)
    assert message in str(info.value)


def test_registered() -> None:
    info = registry.get("mongoose")
    assert info.connection_settings is MongooseConnection
    assert info.target_settings is MongooseTargetSettings
    assert info.build_target is build_target
    target = build_target("erp", connection("http://h/x"), target_settings(batch_size=7))
    assert isinstance(target, Target) and target.batch_size == 7


# --- the contract against the emulator ------------------------------------------------


async def test_lookup_deletes_exactly_the_looked_up_rows(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    target = make_target()
    outcomes = await send(target, deliveries("jrossi", "mbianchi", "lverdi"))
    assert kinds(outcomes) == [("done", "deleted")] * 3
    assert deleted_usernames(emulator) == ["jrossi", "lverdi", "mbianchi"]
    assert usernames(emulator) == set(DOOMED[3:] + SURVIVORS)
    calls = [(e.method, e.path.rsplit("/", 1)[-1]) for e in await settled_log(emulator)]
    assert calls == [("GET", "DEMO"), ("GET", "adv"), ("DELETE", "deleteitems")]


async def test_post_verb(make_target: MakeTarget, emulator: MongooseEmulator) -> None:
    target = make_target(delete_method="POST")
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "deleted")]
    assert deleted_usernames(emulator) == ["jrossi"]


async def test_missing_field_is_dead(make_target: MakeTarget, emulator: MongooseEmulator) -> None:
    target = make_target()
    batch = [*deliveries("jrossi"), *deliveries(None, start=2), *deliveries("x", field="OTHER")]
    outcomes = await send(target, batch)
    assert kinds(outcomes) == [
        ("done", "deleted"),
        ("dead", "no key: field 'SYKEY' is null"),
        ("dead", "no key: field 'SYKEY' is missing (fields: OTHER)"),
    ]
    assert deleted_usernames(emulator) == ["jrossi"]


async def test_nothing_to_send_makes_no_call(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    target = make_target()
    assert await send(target, []) == []
    assert kinds(await send(target, deliveries(None))) == [
        ("dead", "no key: field 'SYKEY' is null")
    ]
    assert await token_calls(emulator) == 0


async def test_keys_are_quoted_never_trusted(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    emulator.seed({"UserNames": [{"Username": "o'brien"}]})
    target = make_target()
    outcomes = await send(target, deliveries("x') OR Username IN ('jrossi", "o'brien"))
    assert kinds(outcomes) == [("done", "absent"), ("done", "deleted")]
    assert deleted_usernames(emulator) == ["o'brien"]


async def test_keys_no_literal_carries_safely_are_dead_and_never_sent(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    """A NUL would cut the filter short in the layers below the IDO; U+02BC turns into a
    quote when SQL Server converts the text to varchar."""
    emulator.seed({"UserNames": [{"Username": "a\x00b"}]})
    target = make_target()
    outcomes = await send(
        target, deliveries("jrossi", "a\x00b", "x\u02bc) OR Username IN (\u02bclverdi")
    )
    assert outcomes[0].kind is OutcomeKind.DONE
    assert outcomes[1].reason == (
        "unsafe key: 'a\\x00b' holds a control character (U+0000), which could cut the query short"
    )
    assert outcomes[2].kind is OutcomeKind.DEAD
    assert outcomes[2].reason.startswith("unsafe key: ") and "U+02BC" in outcomes[2].reason
    assert deleted_usernames(emulator) == ["jrossi"]
    item_ids = make_target(key="{ITEM_ID}", lookup=None)
    bad_pointer = "PBT=[UserNames] UserNames.DT=[x] UserNames.ID=[a\x00b]"
    before = len(await settled_log(emulator))
    outcomes = await send(item_ids, deliveries(bad_pointer, field="ITEM_ID"))
    assert outcomes[0].kind is OutcomeKind.DEAD and outcomes[0].reason.startswith("unsafe key: ")
    assert len(await settled_log(emulator)) == before
    assert "a\x00b" in usernames(emulator)


async def test_collation_match_and_duplicates(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    target = make_target()
    outcomes = await send(target, deliveries("JRossi", "jrossi", "lverdi", "lverdi"))
    assert kinds(outcomes) == [("done", "deleted")] * 4
    assert deleted_usernames(emulator) == ["jrossi", "lverdi"]
    assert set(emulator.attempts().values()) == {1}


async def test_stale_item_id_after_lookup_is_refreshed(
    make_target: MakeTarget, emulator: MongooseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user modifies a row between our lookup and our delete."""
    target = make_target()
    stale = item_id_of(emulator, "lverdi")
    load = target.api.load

    async def load_then_touch(*args: Any) -> list[list[Any]]:
        rows = await load(*args)
        if item_id_of(emulator, "lverdi") == stale:
            emulator.touch("UserNames", {"Username": "lverdi"})
        return rows

    monkeypatch.setattr(target.api, "load", load_then_touch)
    outcomes = await send(target, deliveries("jrossi", "lverdi", "mbianchi"))
    assert kinds(outcomes) == [
        ("done", "deleted"),
        ("done", "deleted (ItemId refreshed)"),
        ("done", "deleted"),
    ]
    assert deleted_usernames(emulator) == ["jrossi", "lverdi", "mbianchi"]
    assert emulator.attempts()[stale] == 2  # in the batch, then alone


async def test_item_id_mode_stale_fails_only_that_one(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    ids = {name: item_id_of(emulator, name) for name in ("jrossi", "lverdi", "mbianchi")}
    emulator.touch("UserNames", {"Username": "lverdi"})
    target = make_target(key="{ITEM_ID}", lookup=None)
    outcomes = await send(target, deliveries(*ids.values(), field="ITEM_ID"))
    assert kinds(outcomes[::2]) == [("done", "deleted")] * 2
    assert outcomes[1].kind is OutcomeKind.DEAD
    assert outcomes[1].reason.startswith("stale ItemId: the UserNames row was modified")
    assert "has been modified by another user" in outcomes[1].reason
    assert deleted_usernames(emulator) == ["jrossi", "mbianchi"]
    assert "lverdi" in usernames(emulator)


async def test_item_id_mode_gone_is_done_and_garbage_is_dead(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    gone = item_id_of(emulator, "jrossi")
    target = make_target(key="{ITEM_ID}", lookup=None)
    assert kinds(await send(target, deliveries(gone, field="ITEM_ID"))) == [("done", "deleted")]
    outcomes = await send(
        target, deliveries(gone, "jrossi", item_id_of(emulator, "lverdi"), field="ITEM_ID")
    )
    assert kinds(outcomes[::2]) == [("done", "absent"), ("done", "deleted")]
    assert outcomes[1].kind is OutcomeKind.DEAD
    assert "'jrossi' is not a Mongoose ItemId" in outcomes[1].reason
    assert deleted_usernames(emulator) == ["jrossi", "lverdi"]


async def test_token_renewed_once_after_expiry(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    target = make_target()
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "deleted")]
    assert emulator.expire_tokens() == 1
    assert kinds(await send(target, deliveries("lverdi"))) == [("done", "deleted")]
    assert await token_calls(emulator) == 2
    assert deleted_usernames(emulator) == ["jrossi", "lverdi"]


async def test_wrong_password_is_fatal_and_secret_free(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    target = make_target({"password": "wrong-" + PASSWORD})
    with pytest.raises(FatalError) as info:
        await target.send(deliveries("jrossi"))
    message = str(info.value)
    assert "mongoose connection 'erp': credentials rejected" in message
    assert "check connections.erp.user/password" in message
    assert PASSWORD not in message
    assert emulator.deleted() == []


async def test_unknown_config_is_fatal(make_target: MakeTarget, emulator: MongooseEmulator) -> None:
    target = make_target({"config": "PROD"})
    with pytest.raises(FatalError, match=r"connections\.erp\.config"):
        await target.send(deliveries("jrossi"))


async def test_bearer_mode(make_target: MakeTarget, emulator: MongooseEmulator) -> None:
    """The emulator refuses a bearer token without X-Infor-MongooseConfig."""
    target = make_target({"user": None, "password": None, "token": ION_TOKEN})
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "deleted")]
    assert await token_calls(emulator) == 0
    emulator.bearer_tokens.clear()
    with pytest.raises(FatalError) as info:
        await target.send(deliveries("lverdi"))
    assert "the ION API bearer token was rejected" in str(info.value)
    assert "connections.erp.token" in str(info.value)
    assert ION_TOKEN not in str(info.value)
    emulator.bearer_tokens.add(ION_TOKEN)


async def test_fault_reasons_are_retry_with_retry_after(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    target = make_target({"retry": {**FAST_RETRY, "max_attempts": 1}})
    emulator.faults.update({"throttle_rate": 1.0, "retry_after": 0.25})
    outcomes = await send(target, deliveries("jrossi", "lverdi"))
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 2
    assert outcomes[0].retry_after == 0.25
    assert "HTTP 429" in outcomes[0].reason
    assert emulator.deleted() == []


@pytest.mark.parametrize("mode", ["lookup", "item_id"])
async def test_faults_every_row_deleted_exactly_once(mode: str) -> None:
    """Sending again what came back as retry converges: each row deleted once, no other."""
    faults = Faults(
        error_rate=0.15, throttle_rate=0.15, drop_after_apply_rate=0.15, retry_after=0.01, seed=SEED
    )
    emulator = MongooseEmulator(users={USER: PASSWORD}, faults=faults)
    emulator.seed(demo_rows())
    bulk = emulator.seed({"UserNames": [{"Username": f"bulk{i:02d}"} for i in range(48)]})
    doomed = [r for r in emulator.rows("UserNames") if r["Username"] not in SURVIVORS]
    if mode == "lookup":
        settings = target_settings(batch_size=4)
        pending = deliveries(*[r["Username"] for r in doomed])
    else:
        settings = target_settings(batch_size=4, key="{ITEM_ID}", lookup=None)
        pending = deliveries(*[r["_ItemId"] for r in doomed], field="ITEM_ID")
    with serve(emulator.app) as running:
        target = MongooseTarget("erp", connection(running.url + DEFAULT_BASE_PATH), settings)
        rounds = 0
        while pending and rounds < 30:
            rounds += 1
            retry: list[Delivery] = []
            for start in range(0, len(pending), target.batch_size):
                batch = pending[start : start + target.batch_size]
                for delivery, outcome in zip(batch, await send(target, batch), strict=True):
                    assert outcome.kind is not OutcomeKind.DEAD, outcome.reason
                    if outcome.kind is OutcomeKind.RETRY:
                        retry.append(delivery)
            pending = retry
        await target.aclose()
    assert pending == []
    assert rounds > 1
    assert deleted_usernames(emulator) == sorted(r["Username"] for r in doomed)
    assert len(doomed) == len(DOOMED) + len(bulk["UserNames"])
    assert usernames(emulator) == set(SURVIVORS)
    faulted = {(e.fault, e.mutating) for e in emulator.log.entries if e.fault}
    assert {("error", True), ("throttle", True), ("drop_after_apply", True)} <= faulted


# --- odd answers, strictly mocked ------------------------------------------------------

BASE = "https://mg.example/IDORequestService/MGRESTService.svc"
ITEM = "PBT=[UserNames] UserNames.DT=[2019-07-24 13:58:55.860] UserNames.ID=[4b5b7da7-dd7c]"
TOKEN = "tok/en+secret=="


def token_ok() -> httpx.Response:
    return httpx.Response(200, json={"Message": "Success", "Token": TOKEN})


def rows(*items: list[Any]) -> httpx.Response:
    return httpx.Response(200, json={"Items": list(items), "Message": None, "MessageCode": 0})


@pytest.fixture
async def mocked() -> AsyncIterator[tuple[respx.MockRouter, MongooseTarget]]:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        target = MongooseTarget("erp", connection(BASE), target_settings())
        yield router, target
        await target.aclose()


async def test_token_sent_raw_and_scrubbed(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    token = router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    load = router.get(f"{BASE}/json/UserNames/adv").mock(
        return_value=httpx.Response(200, json={"Items": None, "Message": f"bad {TOKEN}"})
    )
    (outcome,) = await send(target, deliveries("jrossi"))
    assert token.calls.last.request.headers["userid"] == USER
    assert token.calls.last.request.headers["password"] == PASSWORD
    request = load.calls.last.request
    assert request.headers["Authorization"] == TOKEN
    assert request.url.params["props"] == "_ItemId,Username"
    assert request.url.params["filter"] == "Username IN ('jrossi')"
    assert request.url.params["recordcap"] == "0"
    assert outcome.kind is OutcomeKind.RETRY
    assert TOKEN not in outcome.reason and "bad ***" in outcome.reason


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(403, text=f"no {PASSWORD}"), "credentials rejected (HTTP 403"),
        (httpx.Response(200, json={"Message": "Nope", "Token": ""}), "gave no token: "),
        (httpx.Response(404), "check connections.erp.url"),
    ],
)
async def test_token_failures_are_fatal(
    mocked: tuple[respx.MockRouter, MongooseTarget], answer: httpx.Response, message: str
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=answer)
    with pytest.raises(FatalError, match="mongoose connection 'erp'") as info:
        await target.send(deliveries("jrossi"))
    assert message in str(info.value)
    assert PASSWORD not in str(info.value)


async def test_token_server_error_is_retry(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=httpx.Response(400, text="?"))
    (outcome,) = await send(target, deliveries("jrossi"))
    assert outcome.kind is OutcomeKind.RETRY and "HTTP 400" in outcome.reason


async def test_method_not_allowed_is_fatal(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    router.get(f"{BASE}/json/UserNames/adv").mock(return_value=rows([ITEM, "jrossi"]))
    router.delete(f"{BASE}/json/UserNames/deleteitems").mock(return_value=httpx.Response(405))
    with pytest.raises(FatalError, match="set the target's delete_method"):
        await target.send(deliveries("jrossi"))


async def test_error_answer_still_there_is_retry(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    load = router.get(f"{BASE}/json/UserNames/adv").mock(return_value=rows([ITEM, "jrossi"]))
    delete = router.delete(f"{BASE}/json/UserNames/deleteitems").mock(
        return_value=httpx.Response(200, json={"Message": "Row locked", "MessageCode": 500})
    )
    (outcome,) = await send(target, deliveries("jrossi"))
    assert kinds([outcome]) == [("retry", "Row locked (MessageCode 500)")]
    assert load.call_count == 2 and delete.call_count == 1
    body = json.loads(delete.calls.last.request.content)
    assert body == [
        {
            "Action": 4,
            "ItemId": ITEM,
            "Properties": [{"IsNull": False, "Modified": False, "Name": "_ItemId", "Value": None}],
        }
    ]


async def test_unreadable_answer_is_rechecked(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    router.get(f"{BASE}/json/UserNames/adv").mock(
        side_effect=[rows([ITEM, "jrossi"], [ITEM + "2", "lverdi"]), rows(), rows()]
    )
    delete = router.delete(f"{BASE}/json/UserNames/deleteitems").mock(
        side_effect=[httpx.Response(200, text="<html>"), httpx.Response(400), httpx.Response(418)]
    )
    outcomes = await send(target, deliveries("jrossi", "lverdi"))
    assert kinds(outcomes) == [("done", "absent"), ("done", "absent")]
    assert delete.call_count == 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"Items": [["only-one-value"]], "MessageCode": 0}),
        httpx.Response(200, json={"Items": [[None, "jrossi"]], "MessageCode": 0}),
        httpx.Response(200, json={"Items": [], "MessageCode": 500, "Message": "oops"}),
        httpx.Response(200, text="not json"),
        httpx.Response(404, text="Not Found"),
    ],
)
async def test_bad_lookup_answers_are_retry(
    mocked: tuple[respx.MockRouter, MongooseTarget], answer: httpx.Response
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    router.get(f"{BASE}/json/UserNames/adv").mock(return_value=answer)
    (outcome,) = await send(target, deliveries("jrossi"))
    assert outcome.kind is OutcomeKind.RETRY


# --- pure helpers ---------------------------------------------------------------------


def test_match_rows_prefers_exact_then_collation() -> None:
    found = match_rows(
        ["jrossi", "JRossi", "LVERDI", "nobody"],
        [["id1", "jrossi"], ["id2", "JRossi"], ["id3", "lverdi "], ["id4", None]],
        sql_server_keys(),
    )
    assert found == {"jrossi": ["id1"], "JRossi": ["id2"], "LVERDI": ["id3"], "nobody": []}


def test_match_rows_under_a_case_sensitive_collation_ignores_only_trailing_spaces() -> None:
    found = match_rows(
        ["LVERDI", "lverdi"], [["id3", "lverdi "]], sql_server_keys(case_sensitive=True)
    )
    assert found == {"LVERDI": [], "lverdi": ["id3"]}


async def test_fresh_item_id_tried_once_then_retry(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    router.get(f"{BASE}/json/UserNames/adv").mock(
        side_effect=[rows([ITEM, "jrossi"]), rows([ITEM + "-fresh", "jrossi"])]
    )
    delete = router.delete(f"{BASE}/json/UserNames/deleteitems").mock(
        side_effect=[
            httpx.Response(200, json={"Message": "modified", "MessageCode": 409}),
            httpx.Response(200, json={"Message": "locked", "MessageCode": 500}),
        ]
    )
    assert kinds(await send(target, deliveries("jrossi"))) == [
        ("retry", "locked (MessageCode 500)")
    ]
    assert json.loads(delete.calls.last.request.content)[0]["ItemId"] == ITEM + "-fresh"


async def test_keys_sharing_an_item_id_are_rechecked_one_by_one_into_their_own_places(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    """'JRossi' and 'jrossi' find one row (a case-insensitive collation); when its delete
    fails, each key is looked up again and each verdict lands on its own deliveries."""
    router, target = mocked
    other = ITEM.replace("4b5b7da7", "0c0c0c0c")
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    loads = router.get(f"{BASE}/json/UserNames/adv").mock(
        side_effect=[rows([ITEM, "jrossi"], [other, "lverdi"]), rows(), rows([ITEM, "jrossi"])]
    )
    failed = httpx.Response(200, json={"Message": "locked", "MessageCode": 500})
    done = httpx.Response(200, json={"Message": "Delete successful.", "MessageCode": 202})
    deletes = router.delete(f"{BASE}/json/UserNames/deleteitems").mock(
        side_effect=[failed, failed, done]
    )
    outcomes = await send(target, deliveries("JRossi", "lverdi", "jrossi", "JRossi"))
    assert kinds(outcomes) == [
        ("done", "absent"),
        ("done", "deleted"),
        ("retry", "locked (MessageCode 500)"),
        ("done", "absent"),
    ]
    rechecked = [call.request.url.params["filter"] for call in loads.calls[1:]]
    assert rechecked == ["Username IN ('JRossi')", "Username IN ('jrossi')"]
    sent = [[i["ItemId"] for i in json.loads(c.request.content)] for c in deletes.calls]
    assert sent == [[ITEM, other], [ITEM], [other]]


async def test_recheck_failure_is_retry_with_both_reasons(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
    router.get(f"{BASE}/json/UserNames/adv").mock(
        side_effect=[rows([ITEM, "jrossi"]), httpx.Response(400, text="bad")]
    )
    router.delete(f"{BASE}/json/UserNames/deleteitems").mock(
        return_value=httpx.Response(200, json={"Message": "nope", "MessageCode": 404})
    )
    ((kind, reason),) = kinds(await send(target, deliveries("jrossi")))
    assert kind == "retry"
    assert reason.startswith("nope (MessageCode 404); re-check failed: ")
    assert "HTTP 400" in reason


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ([[ITEM]], ("retry", "in use (MessageCode 547)")),
        ([], ("done", "absent")),
        (
            [[ITEM + "x"], [ITEM + "y"]],
            ("retry", "in use (MessageCode 547); re-check found 2 rows"),
        ),
    ],
)
async def test_item_id_recheck_by_row_pointer(
    now: list[list[Any]], expected: tuple[str, str]
) -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        target = MongooseTarget(
            "erp", connection(BASE), target_settings(key="{ITEM_ID}", lookup=None)
        )
        router.get(f"{BASE}/json/token/DEMO").mock(return_value=token_ok())
        load = router.get(f"{BASE}/json/UserNames/adv").mock(return_value=rows(*now))
        router.delete(f"{BASE}/json/UserNames/deleteitems").mock(
            return_value=httpx.Response(200, json={"Message": "in use", "MessageCode": 547})
        )
        assert kinds(await send(target, deliveries(ITEM, field="ITEM_ID"))) == [expected]
        assert load.calls.last.request.url.params["filter"] == "RowPointer = '4b5b7da7-dd7c'"
        await target.aclose()


async def test_bearer_headers() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        conn = connection(BASE, user=None, password=None, token=ION_TOKEN)
        target = MongooseTarget("erp", conn, target_settings())
        load = router.get(f"{BASE}/json/UserNames/adv").mock(return_value=rows())
        assert kinds(await send(target, deliveries("jrossi"))) == [("done", "absent")]
        headers = load.calls.last.request.headers
        assert headers["Authorization"] == f"Bearer {ION_TOKEN}"
        assert headers["X-Infor-MongooseConfig"] == "DEMO"
        await target.aclose()
