from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import httpx
import pytest
import respx
from pydantic import ValidationError

from connectors.adt import (
    AdtConnection,
    AdtTargetSettings,
    AdtTwinsSettings,
    AdtTwinsTarget,
    build_target,
)
from connectors.adt.auth import classify
from connectors.adt.emulator import AdtEmulator, demo_graph
from connectors.contract import Delivery, FatalError, Outcome, OutcomeKind, Target, registry
from connectors.emulation.kit import Faults, LoggedRequest
from connectors.kit.http import HttpClient, RetryPolicy
from connectors.kit.serving import serve

STATIC, CLIENT, SECRET = "static-tok-51c0-secret", "syncengine", "cc-secret-0a9b8c"
FAST_RETRY = {"max_attempts": 2, "base_delay": 0.001, "max_delay": 0.005}
SEED = int(os.environ.get("FAULT_SEED", "7"))

MakeTarget = Callable[..., AdtTwinsTarget]


def connection(url: str, **changes: Any) -> AdtConnection:
    data: dict[str, Any] = {
        "type": "adt",
        "url": url,
        "token_url": f"{url}/oauth2/token",
        "client_id": CLIENT,
        "client_secret": SECRET,
        "timeout": 5,
        "retry": FAST_RETRY,
    }
    data.update(changes)
    return AdtConnection.model_validate({k: v for k, v in data.items() if v is not None})


def static(url: str, token: str = STATIC, **changes: Any) -> AdtConnection:
    return connection(
        url, token_url=None, client_id=None, client_secret=None, token=token, **changes
    )


def twins_settings(**changes: Any) -> AdtTwinsSettings:
    return AdtTwinsSettings.model_validate({"kind": "twins", "twin_id": "{RECORD_ID}", **changes})


def deliveries(*ids: Any, field: str = "RECORD_ID", start: int = 1) -> list[Delivery]:
    return [
        Delivery(start + i, "CON_TRO", str(value), {field: value}) for i, value in enumerate(ids)
    ]


async def send(target: Target, batch: Sequence[Delivery]) -> list[Outcome]:
    outcomes = await target.send(batch)
    assert [o.delivery_id for o in outcomes] == [d.delivery_id for d in batch]
    for outcome in outcomes:
        assert SECRET not in outcome.reason and STATIC not in outcome.reason
    return outcomes


def kinds(outcomes: Sequence[Outcome]) -> list[tuple[str, str]]:
    return [(o.kind.value, o.detail or o.reason) for o in outcomes]


def deleted_twins(emulator: AdtEmulator) -> list[str]:
    return [d["id"] for d in emulator.deleted()["twins"]]


async def settled_log(emulator: AdtEmulator) -> list[LoggedRequest]:
    """The emulator logs a request just after answering it; let the last entry land."""
    await asyncio.sleep(0.05)
    return list(emulator.log.entries)


async def token_calls(emulator: AdtEmulator) -> int:
    return sum(e.path == "/oauth2/token" for e in await settled_log(emulator))


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[AdtEmulator, str]]:
    emulator = AdtEmulator(tokens=[STATIC], clients={CLIENT: SECRET})
    with serve(emulator.app) as running:
        yield emulator, running.url


@pytest.fixture
def emulator(shared: tuple[AdtEmulator, str]) -> AdtEmulator:
    emulator = shared[0]
    emulator.reset()
    emulator.faults.update(asdict(Faults()))
    emulator.page_size = 2
    emulator.host_label = None
    emulator.token_lifetime = 3599
    emulator.tokens = {STATIC}
    emulator.seed(demo_graph())
    return emulator


@pytest.fixture
async def make_target(
    shared: tuple[AdtEmulator, str], emulator: AdtEmulator
) -> AsyncIterator[MakeTarget]:
    made: list[AdtTwinsTarget] = []

    def make(
        conn: AdtConnection | None = None, http: HttpClient | None = None, **changes: Any
    ) -> AdtTwinsTarget:
        target = AdtTwinsTarget(
            "twins", conn or connection(shared[1]), twins_settings(**changes), http=http
        )
        made.append(target)
        return target

    yield make
    for target in made:
        await target.aclose()


# --- settings -------------------------------------------------------------------------


def test_connection_modes() -> None:
    cc = connection("https://MyInstance.api.weu.digitaltwins.azure.net/")
    assert cc.url == "https://MyInstance.api.weu.digitaltwins.azure.net"
    assert cc.host == "myinstance.api.weu.digitaltwins.azure.net"
    assert cc.api_version == "2023-10-31"
    assert cc.scope == "https://digitaltwins.azure.net/.default"
    assert cc.secret_values() == [SECRET]
    token = static("http://127.0.0.1:8704")
    assert token.secret_values() == [STATIC] and token.host == "127.0.0.1:8704"
    assert SECRET not in repr(cc) and STATIC not in repr(token)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token": STATIC}, "set either 'token_url', 'client_id' and 'client_secret'"),
        ({"client_secret": None}, "missing: 'client_secret'"),
        (
            {"token_url": None, "client_id": None, "client_secret": None},
            "missing: 'token_url', 'client_id', 'client_secret'",
        ),
        (
            {"token_url": None, "client_id": None, "client_secret": None, "token": ""},
            "'token' is empty",
        ),
        ({"client_secret": ""}, "'client_secret' is empty"),
        ({"url": "ftp://h"}, "is not an http(s) URL"),
        ({"url": "https://h/twins"}, "has no path or query; write only https://h"),
        ({"token_url": "login/token"}, "is not an http(s) URL"),
        ({"secret": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_connection_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        connection(**{"url": "https://h", **changes})
    assert message in str(info.value)
    assert SECRET not in str(info.value) and STATIC not in str(info.value)


@pytest.mark.parametrize(
    ("block", "loc", "message"),
    [
        ({"twin_id": "{X}"}, ("kind",), "required key is missing; write kind: twins"),
        ({"kind": "nuke", "twin_id": "{X}"}, ("kind",), "unknown kind 'nuke'"),
        ({"kind": "twins"}, ("twin_id",), "Field required"),
        ({"kind": "twins", "twin_id": "TWIN"}, ("twin_id",), "uses no field"),
        ({"kind": "twins", "twin_id": "{X:>5}"}, ("twin_id",), "format specs"),
        ({"kind": "twins", "twin_id": "{X}", "batch_size": 0}, ("batch_size",), "greater than"),
        (
            {"kind": "twins", "twin_id": "{X}", "twinid": "{X}"},
            ("twinid",),
            "unknown key 'twinid'; valid keys for kind twins: batch_size, kind, twin_id",
        ),
    ],
)
def test_target_block_errors_name_the_key(
    block: dict[str, Any], loc: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        AdtTargetSettings.model_validate(block)
    errors = info.value.errors(include_url=False)
    assert [e["loc"] for e in errors] == [loc]
    assert message in errors[0]["msg"]


def test_registered() -> None:
    info = registry.get("adt")
    assert info.connection_settings is AdtConnection
    assert info.target_settings is AdtTargetSettings
    assert info.build_target is build_target
    block = AdtTargetSettings.model_validate({"kind": "twins", "twin_id": "{ID}", "batch_size": 7})
    target = build_target("twins", static("http://h"), block)
    assert isinstance(target, AdtTwinsTarget) and isinstance(target, Target)
    assert target.batch_size == 7


# --- the contract against the emulator ------------------------------------------------


async def test_relationships_go_first_then_the_twin(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    target = make_target()
    outcomes = await send(target, deliveries("0-1"))
    assert kinds(outcomes) == [("done", "deleted (4 relationships removed)")]
    assert deleted_twins(emulator) == ["0-1"]
    gone = {(d["source"], d["id"]) for d in emulator.deleted()["relationships"]}
    assert gone == {
        ("0-1", "0-1-worksIn-hq-f1-r101"),
        ("hq-f1-r101", "hq-f1-r101-occupiedBy-0-1"),
        ("0-2", "0-2-reportsTo-0-1"),
        ("0-3", "0-3-reportsTo-0-1"),
    }
    assert len(emulator.relationships()) == 22 - 4
    calls = [(e.method, e.path, e.status) for e in await settled_log(emulator)]
    assert calls[0] == ("POST", "/oauth2/token", 200)
    assert calls[-1] == ("DELETE", "/digitaltwins/0-1", 204)
    assert not any(status == 400 for _, _, status in calls)


async def test_every_page_is_read_before_deleting(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    """Deleting while paging would shift the offset continuation and skip relationships."""
    emulator.seed(
        {
            "relationships": [
                {"source": f"0-{i}", "id": f"mentor-{i}", "name": "mentors", "target": "0-4"}
                for i in (1, 2, 3, 5, 6)
            ]
            + [
                {"source": "0-4", "id": f"visits-{r}", "name": "visits", "target": r}
                for r in ("hq-f1-r101", "hq-f1-r102", "hq-f2-r202")
            ]
        }
    )
    outcomes = await send(make_target(), deliveries("0-4"))
    assert kinds(outcomes) == [("done", "deleted (12 relationships removed)")]
    assert deleted_twins(emulator) == ["0-4"]
    assert not any("0-4" in (r["source"], r["target"]) for r in emulator.relationships())


async def test_next_link_is_followed_on_the_configured_instance(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    emulator.host_label = "elsewhere.example"
    outcomes = await send(make_target(), deliveries("0-1"))
    assert kinds(outcomes) == [("done", "deleted (4 relationships removed)")]


async def test_absent_twin_is_done(make_target: MakeTarget, emulator: AdtEmulator) -> None:
    target = make_target()
    outcomes = await send(target, deliveries("0-13", "hq-f2-r202"))
    assert kinds(outcomes) == [("done", "absent"), ("done", "deleted (3 relationships removed)")]
    again = await send(target, deliveries("hq-f2-r202"))
    assert kinds(again) == [("done", "absent")]
    assert deleted_twins(emulator) == ["hq-f2-r202"]
    assert not any(e.method == "DELETE" and "0-13" in e.path for e in await settled_log(emulator))


async def test_unmapped_key_is_dead_and_touches_nothing(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    target = make_target()
    batch = [
        *deliveries(None),
        *deliveries("0-2", field="OTHER", start=2),
        *deliveries(1.5, start=3),
    ]
    outcomes = await send(target, batch)
    assert kinds(outcomes) == [
        ("dead", "no key: field 'RECORD_ID' is null"),
        ("dead", "no key: field 'RECORD_ID' is missing (fields: OTHER)"),
        ("dead", "no key: field 'RECORD_ID' holds a float; only text and integers make keys"),
    ]
    assert await settled_log(emulator) == []


async def test_each_twin_deleted_once(make_target: MakeTarget, emulator: AdtEmulator) -> None:
    target = make_target(twin_id="{ID}")
    batch = deliveries("0-2", "0-3", "0-2", "0-5", "0-3", field="ID")
    outcomes = await send(target, batch)
    assert [o.kind for o in outcomes] == [OutcomeKind.DONE] * 5
    assert outcomes[2].detail == outcomes[0].detail
    assert sorted(deleted_twins(emulator)) == ["0-2", "0-3", "0-5"]
    deletes = Counter(
        e.path for e in await settled_log(emulator) if e.method == "DELETE" and e.status == 204
    )
    assert deletes["/digitaltwins/0-2"] == 1 and deletes["/digitaltwins/0-3"] == 1
    assert await token_calls(emulator) == 1


async def test_twin_ids_are_quoted(make_target: MakeTarget, emulator: AdtEmulator) -> None:
    emulator.seed({"twins": [{"id": "room 7 & co?", "model": "dtmi:com:example:Room;1"}]})
    outcomes = await send(make_target(), deliveries("room 7 & co?"))
    assert kinds(outcomes) == [("done", "deleted")]
    assert deleted_twins(emulator) == ["room 7 & co?"]


async def test_twin_ids_that_would_change_the_path_are_dead_and_touch_nothing(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    """Twin id `.` made `GET /digitaltwins/relationships` (a twin of that name, or none:
    then it was recorded done without the twin ever being addressed)."""
    emulator.seed({"twins": [{"id": "relationships", "model": "dtmi:com:example:Room;1"}]})
    unsafe = [".", "..", "a/../b", "%2e%2e", "./relationships"]
    outcomes = await send(make_target(), deliveries(*unsafe))
    for outcome in outcomes:
        assert outcome.kind is OutcomeKind.DEAD
        assert outcome.reason.startswith("unsafe key: ") and "dot segment" in outcome.reason
    assert await settled_log(emulator) == []
    assert deleted_twins(emulator) == []
    preview = await make_target().preview(deliveries("."))
    assert preview[0].kind is OutcomeKind.DEAD and preview[0].reason.startswith("unsafe key: ")


async def test_a_relationship_id_that_would_change_the_path_is_never_deleted(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    """`DELETE /digitaltwins/t-a/relationships/..` would be `DELETE /digitaltwins/t-a`."""
    room = "dtmi:com:example:Room;1"
    emulator.seed(
        {
            "twins": [{"id": "t-a", "model": room}, {"id": "t-b", "model": room}],
            "relationships": [{"source": "t-a", "id": "..", "name": "near", "target": "t-b"}],
        }
    )
    outcomes = await send(make_target(), deliveries("t-b"))
    assert outcomes[0].kind is OutcomeKind.RETRY
    assert "a relationship that cannot be addressed: '..' holds a dot segment" in (
        outcomes[0].reason
    )
    assert not [e for e in await settled_log(emulator) if e.method == "DELETE"]
    assert deleted_twins(emulator) == []


async def test_relationship_added_meanwhile_is_retried(
    make_target: MakeTarget, emulator: AdtEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = make_target()
    original = target._delete_relationships

    async def then_someone_links(twin_id: str) -> int:
        removed = await original(twin_id)
        emulator.seed(
            {"relationships": [{"source": "hq", "id": "late", "name": "hosts", "target": twin_id}]}
        )
        return removed

    monkeypatch.setattr(target, "_delete_relationships", then_someone_links)
    outcomes = await send(target, deliveries("0-6"))
    assert outcomes[0].kind is OutcomeKind.RETRY
    assert "RelationshipsNotDeleted" in outcomes[0].reason
    assert "0-6" in emulator.twin_ids()
    monkeypatch.setattr(target, "_delete_relationships", original)
    assert kinds(await send(target, deliveries("0-6"))) == [
        ("done", "deleted (1 relationship removed)")
    ]


async def test_429_retry_after_is_honoured(
    make_target: MakeTarget, emulator: AdtEmulator, shared: tuple[AdtEmulator, str]
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        emulator.faults.update({"throttle_rate": 0.0})

    conn = static(shared[1])
    http = HttpClient(
        connection="twins",
        base_url=conn.url,
        retry=RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.001),
        secrets=conn.secret_values(),
        classify=classify,
        sleep=sleep,
    )
    emulator.faults.update({"throttle_rate": 1.0, "retry_after": 0.75})
    outcomes = await send(make_target(conn, http=http), deliveries("hq-f1-r102"))
    assert kinds(outcomes) == [("done", "deleted (3 relationships removed)")]
    assert slept == [0.75]
    assert [e.status for e in await settled_log(emulator)][:2] == [429, 200]


async def test_throttled_past_retries_is_retry_with_the_wait(
    make_target: MakeTarget, emulator: AdtEmulator, shared: tuple[AdtEmulator, str]
) -> None:
    target = make_target(static(shared[1], retry={**FAST_RETRY, "max_attempts": 1}))
    emulator.faults.update({"throttle_rate": 1.0, "retry_after": 0.25})
    outcomes = await send(target, deliveries("0-1", "0-2", "0-1"))
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3
    assert [o.retry_after for o in outcomes] == [0.25] * 3
    assert "HTTP 429" in outcomes[0].reason
    assert outcomes[1].reason.startswith("not attempted: ")
    assert len(await settled_log(emulator)) == 1
    assert emulator.deleted()["twins"] == []


async def test_retry_after_in_milliseconds() -> None:
    response = httpx.Response(429, headers={"x-ms-retry-after-ms": "1500"})
    resolution = classify(response)
    assert resolution is not None and resolution.retry_after == 1.5
    assert classify(httpx.Response(429, headers={"Retry-After": "2"})) is None
    assert classify(httpx.Response(404)) is None


# --- authentication ----------------------------------------------------------------------


async def test_token_cached_and_renewed_after_revocation(
    make_target: MakeTarget, emulator: AdtEmulator
) -> None:
    target = make_target()
    assert kinds(await send(target, deliveries("0-6"))) == [
        ("done", "deleted (3 relationships removed)")
    ]
    assert kinds(await send(target, deliveries("hq-f2-r202"))) == [
        ("done", "deleted (1 relationship removed)")
    ]
    assert await token_calls(emulator) == 1
    assert emulator.expire_tokens() == 1
    assert kinds(await send(target, deliveries("hq-f1-r102"))) == [
        ("done", "deleted (3 relationships removed)")
    ]
    assert await token_calls(emulator) == 2


async def test_token_renewed_before_expiry(
    shared: tuple[AdtEmulator, str], emulator: AdtEmulator
) -> None:
    """A token is renewed shortly before it expires instead of failing a call first."""
    from connectors.adt.auth import ClientCredentials

    now = [1000.0]
    http = HttpClient(connection="twins", base_url=shared[1])
    tokens = ClientCredentials("twins", connection(shared[1]), http, clock=lambda: now[0])
    first = await tokens.token()
    now[0] += 3599 - 301
    assert await tokens.token() == first
    now[0] += 2
    second = await tokens.token()
    assert second != first and second in http.secrets and first in http.secrets
    await http.aclose()


async def test_bad_client_secret_is_fatal_and_secret_free(
    make_target: MakeTarget, shared: tuple[AdtEmulator, str], emulator: AdtEmulator
) -> None:
    target = make_target(connection(shared[1], client_secret="wrong-" + SECRET))
    with pytest.raises(FatalError) as info:
        await target.send(deliveries("0-1"))
    message = str(info.value)
    assert "the token endpoint refused the client credentials (HTTP 401 invalid_client" in message
    assert "check connections.twins.token_url, client_id, client_secret and scope" in message
    assert SECRET not in message
    assert emulator.deleted()["twins"] == []


async def test_static_token_rejected_is_fatal(
    make_target: MakeTarget, shared: tuple[AdtEmulator, str], emulator: AdtEmulator
) -> None:
    target = make_target(static(shared[1], token="revoked-" + STATIC))
    with pytest.raises(FatalError) as info:
        await target.send(deliveries("0-1"))
    assert "the bearer token was rejected" in str(info.value)
    assert "connections.twins.token" in str(info.value)
    assert STATIC not in str(info.value)


URL = "https://inst.api.weu.digitaltwins.azure.net"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(403, json={"error": {"code": "Forbidden"}}), "Data Owner"),
        (
            httpx.Response(404, json={"statusCode": 404, "message": "Sub-domain not found."}),
            "Sub-domain not found",
        ),
    ],
)
async def test_fatal_answers(response: httpx.Response, message: str) -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        router.get(f"{URL}/digitaltwins/0-1/relationships").mock(return_value=response)
        target = AdtTwinsTarget("twins", static(URL), twins_settings())
        with pytest.raises(FatalError, match=message) as info:
            await target.send(deliveries("0-1"))
        assert STATIC not in str(info.value)
        assert router.calls[0].request.url.params["api-version"] == "2023-10-31"
        assert router.calls[0].request.headers["authorization"] == f"Bearer {STATIC}"
        await target.aclose()


async def test_malformed_list_is_retried() -> None:
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        router.get(f"{URL}/digitaltwins/0-1/relationships").mock(
            return_value=httpx.Response(200, json={"value": [{"$sourceId": "0-1"}]})
        )
        target = AdtTwinsTarget("twins", static(URL), twins_settings())
        outcomes = await send(target, deliveries("0-1"))
        assert outcomes[0].kind is OutcomeKind.RETRY
        assert "without $relationshipId" in outcomes[0].reason
        await target.aclose()


# --- faults -------------------------------------------------------------------------------


async def test_faults_every_twin_deleted_exactly_once() -> None:
    """Sending again what came back as retry converges: each twin deleted once, no other."""
    faults = Faults(
        error_rate=0.1, throttle_rate=0.1, drop_after_apply_rate=0.1, retry_after=0.01, seed=SEED
    )
    emulator = AdtEmulator(clients={CLIENT: SECRET}, faults=faults, page_size=2)
    emulator.seed(demo_graph())
    doomed = [f"0-{i}" for i in range(1, 7)] + ["hq-f1-r101", "hq-f2-r201", "hq-f1"]
    with serve(emulator.app) as running:
        target = AdtTwinsTarget(
            "twins", connection(running.url), twins_settings(batch_size=3, twin_id="{ID}")
        )
        pending = deliveries(*doomed, field="ID")
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
    assert sorted(deleted_twins(emulator)) == sorted(doomed)
    assert emulator.twin_ids() == {"hq", "hq-f2", "hq-f1-r102", "hq-f2-r202"}
