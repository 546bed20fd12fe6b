"""The Mongoose target against both REST versions, both row shapes and both token forms.

Contract tests run against the emulator over real HTTP; odd answers are mocked strictly.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest
import respx
import structlog
from pydantic import ValidationError

from connectors.contract import FatalError, OutcomeKind
from connectors.emulation.kit import Faults
from connectors.kit import http as http_module
from connectors.kit.serving import serve
from connectors.mongoose import MongooseTarget
from connectors.mongoose.emulator import (
    DEFAULT_BASE_PATH,
    DEFAULT_V2_BASE_PATH,
    Knobs,
    MongooseEmulator,
    demo_rows,
)
from syncengine.logs import SECRETS, configure, get_logger
from tests.connectors.test_mongoose_target import (
    DOOMED,
    ION_TOKEN,
    PASSWORD,
    SURVIVORS,
    USER,
    connection,
    deleted_usernames,
    deliveries,
    item_id_of,
    kinds,
    send,
    settled_log,
    target_settings,
    usernames,
)

ODD_USER, ODD_PASSWORD = "odd user", "pw/9f%8e d.secret"
ODD_SEGMENT = "pw%2F9f%258e%20d.secret"  # the password as one path segment, as sent

MakeTarget = Callable[..., MongooseTarget]


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[MongooseEmulator, str]]:
    emulator = MongooseEmulator(
        users={USER: PASSWORD, ODD_USER: ODD_PASSWORD}, bearer_tokens=[ION_TOKEN]
    )
    with serve(emulator.app) as running:
        yield emulator, running.url


@pytest.fixture
def emulator(shared: tuple[MongooseEmulator, str]) -> MongooseEmulator:
    emulator = shared[0]
    emulator.reset()
    emulator.faults.update(asdict(Faults()))
    emulator.knobs.update(asdict(Knobs()))
    emulator.seed(demo_rows())
    return emulator


def base_url(server: str, api: str) -> str:
    return server + (DEFAULT_V2_BASE_PATH if api == "v2" else DEFAULT_BASE_PATH)


@pytest.fixture
async def make_target(
    shared: tuple[MongooseEmulator, str], emulator: MongooseEmulator
) -> AsyncIterator[MakeTarget]:
    made: list[MongooseTarget] = []

    def make(api: str, conn: dict[str, Any] | None = None, **changes: Any) -> MongooseTarget:
        settings = connection(**{"url": base_url(shared[1], api), "api": api, **(conn or {})})
        target = MongooseTarget("erp", settings, target_settings(**changes))
        made.append(target)
        return target

    yield make
    for target in made:
        await target.aclose()


async def calls(emulator: MongooseEmulator) -> list[tuple[str, str, int]]:
    return [(e.method, e.path, e.status) for e in await settled_log(emulator)]


# --- settings -------------------------------------------------------------------------


def test_api_defaults_to_v1_and_takes_v2() -> None:
    assert connection("http://h/IDORequestService/MGRESTService.svc").api == "v1"
    assert connection("http://h/IDORequestService", api="v2").api == "v2"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"api": "v3"}, "Input should be 'v1' or 'v2'"),
        (
            {"api": "v2", "url": "https://h/IDORequestService/MGRESTService.svc"},
            "end the url with /IDORequestService (drop /MGRESTService.svc), or set api: v1",
        ),
        (
            {"api": "v2", "url": "https://h/TENANT/CSI/IDORequestService/ido/"},
            "the url ends with /ido: drop the final /ido (the connector adds it)",
        ),
        (
            {"url": "https://h/IDORequestService/ido"},
            "the url ends with /ido: set api: v2 and drop the final /ido",
        ),
    ],
)
def test_api_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        connection(**{"url": "http://h/x", **changes})
    assert message in str(info.value)


# --- v2 end to end against the emulator -----------------------------------------------


async def test_v2_lookup_deletes_exactly_the_looked_up_rows(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    target = make_target("v2")
    outcomes = await send(target, deliveries("jrossi", "exemployee", "lverdi"))
    assert kinds(outcomes) == [("done", "deleted"), ("done", "absent"), ("done", "deleted")]
    assert deleted_usernames(emulator) == ["jrossi", "lverdi"]
    assert usernames(emulator) == {*DOOMED, *SURVIVORS} - {"jrossi", "lverdi"}
    v2 = DEFAULT_V2_BASE_PATH + "/ido"
    assert await calls(emulator) == [
        ("GET", f"{v2}/token/DEMO", 200),
        ("GET", f"{v2}/load/UserNames", 200),
        ("POST", f"{v2}/update/UserNames", 200),
    ]
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "absent")]


async def test_v2_load_asks_for_every_row(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    """recordcap=0: without it a v2 load stops at 200 rows and says MoreRowsExist."""
    emulator.seed({"UserNames": [{"Username": f"bulk{i:03d}"} for i in range(250)]})
    rows = await make_target("v2").api.load("UserNames", ["_ItemId"], "")
    assert len(rows) == len(DOOMED) + len(SURVIVORS) + 250


async def test_v2_stale_item_id_is_refreshed_and_failures_are_rechecked(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    """A refused v2 update (Success false) goes through the same re-check as v1's."""
    ids = {name: item_id_of(emulator, name) for name in ("jrossi", "lverdi", "mbianchi")}
    emulator.touch("UserNames", {"Username": "lverdi"})
    target = make_target("v2", key="{ITEM_ID}", lookup=None)
    outcomes = await send(target, deliveries(*ids.values(), field="ITEM_ID"))
    assert kinds(outcomes[::2]) == [("done", "deleted")] * 2
    assert outcomes[1].kind is OutcomeKind.DEAD
    assert outcomes[1].reason.startswith("stale ItemId: the UserNames row was modified")
    assert "has been modified by another user" in outcomes[1].reason
    assert "(Success false)" in outcomes[1].reason
    assert deleted_usernames(emulator) == ["jrossi", "mbianchi"]


async def test_v2_bearer_token(make_target: MakeTarget, emulator: MongooseEmulator) -> None:
    target = make_target("v2", {"user": None, "password": None, "token": ION_TOKEN})
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "deleted")]
    assert not any("/token/" in path for _, path, _ in await calls(emulator))


# --- row shapes -----------------------------------------------------------------------


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("shape", ["arrays", "objects"])
async def test_both_row_shapes_in_both_versions(
    make_target: MakeTarget, emulator: MongooseEmulator, api: str, shape: str
) -> None:
    emulator.knobs.update({"row_shape": shape})
    by_key = make_target(api)
    outcomes = await send(by_key, deliveries("jrossi", "exemployee"))
    assert kinds(outcomes) == [("done", "deleted"), ("done", "absent")]
    gone = item_id_of(emulator, "mbianchi")
    emulator.touch("UserNames", {"Username": "mbianchi"})
    by_item_id = make_target(api, key="{ITEM_ID}", lookup=None)
    (stale,) = await send(by_item_id, deliveries(gone, field="ITEM_ID"))
    assert stale.kind is OutcomeKind.DEAD and stale.reason.startswith("stale ItemId")
    assert deleted_usernames(emulator) == ["jrossi"]


# --- GetSecurityToken -----------------------------------------------------------------


async def test_v2_token_by_headers(make_target: MakeTarget, emulator: MongooseEmulator) -> None:
    target = make_target("v2", {"user": ODD_USER, "password": ODD_PASSWORD})
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "deleted")]
    tokens = [(path, status) for _, path, status in await calls(emulator) if "/token/" in path]
    assert tokens == [(f"{DEFAULT_V2_BASE_PATH}/ido/token/DEMO", 200)]


async def test_older_v2_server_token_by_path_once_and_remembered(
    make_target: MakeTarget, emulator: MongooseEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header form answers 404 (before 2025.x): the path form is used and kept. The
    password then travels in the path, encoded: that form is a secret too."""
    announced: list[str] = []
    monkeypatch.setattr(http_module, "secret_listeners", [announced.append])
    emulator.knobs.update({"header_token": False})
    target = make_target("v2", {"user": ODD_USER, "password": ODD_PASSWORD})
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "deleted")]
    token = f"{DEFAULT_V2_BASE_PATH}/ido/token/DEMO"
    by_path = f"{token}/{ODD_USER}/{ODD_PASSWORD}"  # as the emulator decoded it
    assert [(path, status) for _, path, status in await calls(emulator) if "/token/" in path] == [
        (token, 404),
        (by_path, 200),
    ]
    assert ODD_SEGMENT in announced  # so the process's log redaction knows it

    emulator.log.clear()
    assert emulator.expire_tokens() == 1
    assert kinds(await send(target, deliveries("lverdi"))) == [("done", "deleted")]
    assert [path for _, path, _ in await calls(emulator) if "/token/" in path] == [by_path]
    assert deleted_usernames(emulator) == ["jrossi", "lverdi"]


async def test_wrong_password_by_path_is_fatal_and_secret_free(
    make_target: MakeTarget, emulator: MongooseEmulator
) -> None:
    emulator.knobs.update({"header_token": False})
    target = make_target("v2", {"user": ODD_USER, "password": "wrong " + ODD_PASSWORD})
    with pytest.raises(FatalError) as info:
        await target.send(deliveries("jrossi"))
    message = str(info.value)
    assert "credentials rejected (HTTP 401 from GET /ido/token/DEMO/odd%20user/***)" in message
    assert ODD_PASSWORD not in message and ODD_SEGMENT not in message
    assert emulator.deleted() == []


async def test_v1_has_no_path_form(
    make_target: MakeTarget, emulator: MongooseEmulator, shared: tuple[MongooseEmulator, str]
) -> None:
    """v1 documents the header form only: its 404 means a wrong url, nothing is guessed."""
    target = make_target("v1", {"url": base_url(shared[1], "v2")})
    with pytest.raises(FatalError, match=r"GET /json/token/DEMO answered 404; check") as info:
        await target.send(deliveries("jrossi"))
    assert "for api v1 it ends with /MGRESTService.svc" in str(info.value)
    assert [path for _, path, _ in await calls(emulator)] == [
        f"{DEFAULT_V2_BASE_PATH}/json/token/DEMO"
    ]


# --- odd v2 answers, strictly mocked ---------------------------------------------------

BASE = "https://mingle.example/TENANT/CSI/IDORequestService"
ITEM = "PBT=[UserNames] UserNames.DT=[2019-07-24 13:58:55.860] UserNames.ID=[4b5b7da7-dd7c]"
TOKEN = "v2-tok/en+secret=="


def v2_token() -> httpx.Response:
    return httpx.Response(200, json={"Message": None, "Success": True, "Token": TOKEN})


def v2_rows(*items: Any, **answer: Any) -> httpx.Response:
    body = {"Items": list(items), "MoreRowsExist": False, "Success": True, "Message": None}
    return httpx.Response(200, json={**body, **answer})


@pytest.fixture
async def mocked() -> AsyncIterator[tuple[respx.MockRouter, MongooseTarget]]:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        target = MongooseTarget("erp", connection(BASE, api="v2"), target_settings())
        yield router, target
        await target.aclose()


async def test_v2_requests_as_documented(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    token = router.get(f"{BASE}/ido/token/DEMO").mock(return_value=v2_token())
    load = router.get(f"{BASE}/ido/load/UserNames").mock(
        return_value=v2_rows({"_ItemId": ITEM, "Username": "jrossi", "UserDesc": "x"})
    )
    update = router.post(f"{BASE}/ido/update/UserNames").mock(
        return_value=httpx.Response(
            200, json={"Message": None, "Success": True, "RefreshItems": None}
        )
    )
    assert kinds(await send(target, deliveries("jrossi"))) == [("done", "deleted")]
    headers = token.calls.last.request.headers
    assert (headers["username"], headers["password"]) == (USER, PASSWORD)
    request = load.calls.last.request
    assert request.headers["Authorization"] == TOKEN
    assert dict(request.url.params) == {
        "properties": "_ItemId,Username",
        "filter": "Username IN ('jrossi')",
        "recordcap": "0",
    }
    sent = update.calls.last.request
    assert sent.headers["Authorization"] == TOKEN
    assert json.loads(sent.content) == {"Changes": [{"Action": 4, "ItemId": ITEM}]}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (v2_rows(Success=False, Message="IllegalFilterException"), "IllegalFilterException"),
        (v2_rows({"_ItemId": ITEM, "Username": "jrossi"}, MoreRowsExist=True), "MoreRowsExist"),
        (v2_rows({"Username": "jrossi"}), "unexpected row shape"),
        (v2_rows({"_ItemId": "", "Username": "jrossi"}), "a row has no _ItemId"),
        (v2_rows([ITEM]), "unexpected row shape"),
        (httpx.Response(200, json={"Success": True, "Message": None}), "no Items"),
    ],
)
async def test_v2_bad_lookup_answers_are_retry(
    mocked: tuple[respx.MockRouter, MongooseTarget], answer: httpx.Response, reason: str
) -> None:
    router, target = mocked
    router.get(f"{BASE}/ido/token/DEMO").mock(return_value=v2_token())
    router.get(f"{BASE}/ido/load/UserNames").mock(return_value=answer)
    (outcome,) = await send(target, deliveries("jrossi"))
    assert outcome.kind is OutcomeKind.RETRY
    assert reason in outcome.reason
    assert outcome.reason.startswith("erp: GET /ido/load/UserNames: ")


async def test_v2_refused_update_is_rechecked(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/ido/token/DEMO").mock(return_value=v2_token())
    router.get(f"{BASE}/ido/load/UserNames").mock(
        side_effect=[v2_rows([ITEM, "jrossi"]), v2_rows({"_ItemId": ITEM, "Username": "jrossi"})]
    )
    router.post(f"{BASE}/ido/update/UserNames").mock(
        return_value=httpx.Response(200, json={"Message": "Row locked", "Success": False})
    )
    assert kinds(await send(target, deliveries("jrossi"))) == [
        ("retry", "Row locked (Success false)")
    ]


async def test_v2_method_not_allowed_names_the_settings(
    mocked: tuple[respx.MockRouter, MongooseTarget],
) -> None:
    router, target = mocked
    router.get(f"{BASE}/ido/token/DEMO").mock(return_value=v2_token())
    router.get(f"{BASE}/ido/load/UserNames").mock(return_value=v2_rows([ITEM, "jrossi"]))
    router.post(f"{BASE}/ido/update/UserNames").mock(return_value=httpx.Response(405))
    with pytest.raises(FatalError) as info:
        await target.send(deliveries("jrossi"))
    assert "POST /ido/update/UserNames is not allowed (HTTP 405)" in str(info.value)
    assert "check connections.erp.url and connections.erp.api" in str(info.value)


async def test_a_failing_path_form_shows_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the error nor any log line (through the engine's logging) holds the
    password, raw or as sent in the path."""
    monkeypatch.setattr(http_module, "secret_listeners", [SECRETS.add])
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        conn = connection(BASE, api="v2", user=ODD_USER, password=ODD_PASSWORD)
        target = MongooseTarget("erp", conn, target_settings())
        router.get(f"{BASE}/ido/token/DEMO").mock(return_value=httpx.Response(404))
        router.get(url__regex=rf"^{BASE}/ido/token/DEMO/[^/]+/[^/]+$").mock(
            return_value=httpx.Response(503, text=f"down for {ODD_USER} {ODD_SEGMENT}")
        )
        (failed,) = await send(target, deliveries("jrossi"))
        await target.aclose()
    assert failed.kind is OutcomeKind.RETRY
    assert "GET /ido/token/DEMO/odd%20user/***: HTTP 503: down for odd user ***" in failed.reason
    stream = io.StringIO()
    configure("debug", "json", stream)
    try:
        get_logger().warning("delivery failed", reason=failed.reason)
        logging.getLogger("somelib").warning(f"GET /ido/token/DEMO/odd%20user/{ODD_SEGMENT}")
    finally:
        structlog.reset_defaults()
    for shown in (failed.reason, stream.getvalue()):
        assert ODD_PASSWORD not in shown and ODD_SEGMENT not in shown
    assert "odd%20user/***" in stream.getvalue()


async def test_both_token_forms_404_is_fatal_without_the_password() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        conn = connection(BASE, api="v2", user=ODD_USER, password=ODD_PASSWORD)
        target = MongooseTarget("erp", conn, target_settings())
        router.get(f"{BASE}/ido/token/DEMO").mock(return_value=httpx.Response(404))
        by_path = router.get(url__regex=rf"^{BASE}/ido/token/DEMO/[^/]+/[^/]+$").mock(
            return_value=httpx.Response(404, text=f"no route {ODD_SEGMENT}")
        )
        with pytest.raises(FatalError) as info:
            await target.send(deliveries("jrossi"))
        assert by_path.calls.last.request.url.raw_path.decode().endswith(
            f"/DEMO/odd%20user/{ODD_SEGMENT}"
        )
        message = str(info.value)
        assert message == (
            "mongoose connection 'erp': GET /ido/token/DEMO and "
            "GET /ido/token/DEMO/odd%20user/*** answered 404; check connections.erp.url "
            "(for api v2 it ends with /IDORequestService, without /ido) and connections.erp.api"
        )
        await target.aclose()


async def test_v2_empty_password_leaves_the_segment_out() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        conn = connection(BASE, api="v2", password="")
        target = MongooseTarget("erp", conn, target_settings())
        router.get(f"{BASE}/ido/token/DEMO").mock(return_value=httpx.Response(404))
        router.get(f"{BASE}/ido/token/DEMO/sync").mock(return_value=v2_token())
        router.get(f"{BASE}/ido/load/UserNames").mock(return_value=v2_rows())
        assert kinds(await send(target, deliveries("jrossi"))) == [("done", "absent")]
        await target.aclose()
