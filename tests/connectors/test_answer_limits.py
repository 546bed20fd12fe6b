"""No answer is endless: a call has a total deadline, its answer a byte cap, and an error
body a read limit, for whole and streamed answers alike, in the kit and in the sources
that stream (Goose rows, DMM logs). Hostile answers come from a real server on loopback.

On a limit the call ends as a lost answer (`AmbiguousError`) naming the setting. What
was read is measured on the wire, under the client, never by time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any, TypeVar

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from connectors.contract import AmbiguousError, RemoteError, RetriableError
from connectors.dmm import DmmOutputsSource, DmmSourceSettings
from connectors.goose.settings import GooseSourceSettings
from connectors.goose.source import GooseSource
from connectors.kit.http import ERROR_BODY_BYTES, HttpClient, RetryPolicy
from connectors.kit.serving import RunningServer, serve
from syncengine.config import ConfigError, parse_config
from tests.connectors.test_dmm_target import connection as dmm_connection
from tests.connectors.test_goose_source import connection as goose_connection
from tests.connectors.test_goose_source import now
from tests.unit.test_config import ENV, VALID

MiB = 1024 * 1024
BURST = 8 * MiB
"""Sent at full speed before the answer goes on as a trickle: enough to pass any cap a
test sets, while the same test run on code without a cap holds little memory."""
CAP = 1 * MiB
SLACK = 1 * MiB
"""What may be read past a limit: the parts in flight when it is reached."""
GUARD = 120.0
"""Seconds after which a test that never ends fails instead (code without the limits)."""

GOOSE_ROW = b'{"RECORD_ID":"0-1","TABLE":"CON_TRO","SYKEY":"user1"}'
GOOSE_HEAD = b'{"status":"OK","result":{"data":[' + GOOSE_ROW
DMM_STATUS = b'{"Status":"Complete","Success":true,"ErrorMessage":""}'
DMM_HEAD = b'{"Status":"Complete","Success":true,"ErrorMessage":"","Logs":"'

T = TypeVar("T")


def endless(head: bytes, filler: bytes, *, trickle_only: bool = False) -> Iterator[bytes | None]:
    """`head`, then `filler` repeated forever: a BURST at once, then a part at a time
    (None: pause before the next part)."""
    yield head
    sent = 0
    bulk = filler * max(1, 64 * 1024 // len(filler))
    while not trickle_only and sent < BURST:
        yield bulk
        sent += len(bulk)
    while True:
        yield None
        yield filler * max(1, 1024 // len(filler))


ROUTES: dict[str, Callable[[str], tuple[int, Iterator[bytes | None]]]] = {
    "rows": lambda _: (200, endless(GOOSE_HEAD, b"," + GOOSE_ROW)),
    "string": lambda _: (200, endless(GOOSE_HEAD[:-2], b"x")),
    "trickle": lambda _: (200, endless(GOOSE_HEAD, b"," + GOOSE_ROW, trickle_only=True)),
    "refused": lambda _: (400, endless(b"refused: ", b"e")),
    "crashed": lambda _: (500, endless(b"crashed: ", b"e")),
    "dmm-endless": lambda op: (
        (200, iter([DMM_STATUS]))
        if op == "GetExecutionStatus"
        else (200, endless(DMM_HEAD, b"QUFB"))
    ),
    "dmm-refused": lambda op: (
        (200, iter([DMM_STATUS])) if op == "GetExecutionStatus" else (400, endless(b"no: ", b"e"))
    ),
}


async def hostile(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers named by the first path segment; each stops once its client is gone."""
    assert scope["type"] == "http"
    message: Message = {"more_body": True}
    while message.get("more_body"):
        message = await receive()
    segments = scope["path"].strip("/").split("/")
    status, parts = ROUTES[segments[0]](segments[-1])
    gone = asyncio.Event()

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch())
    try:
        await send({"type": "http.response.start", "status": status, "headers": []})
        for part in parts:
            if gone.is_set():
                return
            if part is None:
                await asyncio.sleep(0.02)
                continue
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve(hostile) as running:
        yield running


class _Counted(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, meter: Meter) -> None:
        self.inner = inner
        self.meter = meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self.inner:
            self.meter.read += len(part)
            yield part

    async def aclose(self) -> None:
        await self.inner.aclose()


class Meter(httpx.AsyncBaseTransport):
    """The real transport, counting the body bytes the client took off the wire."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.read = 0
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Counted(response.stream, self),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def guarded(work: Awaitable[T]) -> T:
    async with asyncio.timeout(GUARD):
        return await work


def client(meter: Meter, **limits: Any) -> HttpClient:
    return HttpClient(
        connection="erp",
        retry=RetryPolicy(max_attempts=3, base_delay=0, max_delay=0),
        transport=meter,
        timeout=GUARD,
        **limits,
    )


# --- the kit --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["rows", "string"])
async def test_an_endless_whole_answer_ends_at_the_byte_cap_and_is_not_resent(
    server: RunningServer, route: str
) -> None:
    meter = Meter()
    http = client(meter, max_answer_bytes=CAP)
    with pytest.raises(AmbiguousError) as lost:
        await guarded(http.request("GET", f"{server.url}/{route}/", idempotent=True))
    await http.aclose()
    assert str(lost.value) == (
        "connections.erp.max_answer_bytes: the answer to GET /"
        f"{route}/ passed 1 MiB; raise the setting if this is real"
    )
    assert CAP < meter.read <= CAP + SLACK
    assert meter.requests == 1, "a limit is not a failure another attempt could fix"


@pytest.mark.parametrize("route", ["rows", "string"])
async def test_an_endless_streamed_answer_ends_at_the_byte_cap(
    server: RunningServer, route: str
) -> None:
    meter = Meter()
    http = client(meter, max_answer_bytes=CAP)
    handed = 0

    async def read() -> None:
        nonlocal handed
        async with http.stream("GET", f"{server.url}/{route}/", idempotent=True) as response:
            async for part in response.aiter_bytes():
                handed += len(part)

    with pytest.raises(AmbiguousError, match=r"^connections\.erp\.max_answer_bytes: "):
        await guarded(read())
    await http.aclose()
    assert 0 < handed <= CAP < meter.read <= CAP + SLACK


async def test_a_whole_answer_that_never_ends_ends_at_the_deadline(server: RunningServer) -> None:
    meter = Meter()
    http = client(meter, call_deadline=1.0)
    with pytest.raises(AmbiguousError) as lost:
        await guarded(http.request("POST", f"{server.url}/trickle/", idempotent=True))
    await http.aclose()
    assert str(lost.value).startswith(
        "connections.erp.call_deadline: POST /trickle/ had no complete answer after 1s ("
    )
    assert str(lost.value).endswith("; raise the setting if this is real")
    assert meter.requests == 1 and 0 < meter.read < BURST


async def test_a_streamed_answer_that_never_ends_ends_at_the_deadline(
    server: RunningServer,
) -> None:
    meter = Meter()
    http = client(meter, call_deadline=1.0)
    handed = 0

    async def read() -> None:
        nonlocal handed
        async with http.stream("POST", f"{server.url}/trickle/", idempotent=False) as response:
            async for part in response.aiter_bytes():
                handed += len(part)

    with pytest.raises(AmbiguousError, match=r"^connections\.erp\.call_deadline: ") as lost:
        await guarded(read())
    await http.aclose()
    assert f"({handed} bytes of its body read)" in str(lost.value) and handed > 0


async def test_an_endless_refusal_read_whole_keeps_only_the_start_of_its_body(
    server: RunningServer,
) -> None:
    """A 400 is handed to the connector to read (its error table), with at most
    ERROR_BODY_BYTES of its body; the rest is never taken off the wire."""
    meter = Meter()
    http = client(meter)
    response = await guarded(http.request("GET", f"{server.url}/refused/", idempotent=True))
    await http.aclose()
    assert response.status_code == 400
    assert response.content == b"refused: " + b"e" * (ERROR_BODY_BYTES - len(b"refused: "))
    assert meter.read <= ERROR_BODY_BYTES + SLACK


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_endless_error_body_is_read_only_up_to_its_limit(
    server: RunningServer, streamed: bool
) -> None:
    meter = Meter()
    http = client(meter)

    async def call() -> None:
        if streamed:
            async with http.stream("POST", f"{server.url}/crashed/", idempotent=False):
                raise AssertionError("a refused answer is never handed over")
        await http.request("POST", f"{server.url}/crashed/", idempotent=False)

    with pytest.raises(AmbiguousError, match=r"^erp: POST /crashed/: HTTP 500: crashed: eee"):
        await guarded(call())
    await http.aclose()
    assert meter.requests == 1 and meter.read <= ERROR_BODY_BYTES + SLACK


# --- the sources that stream ----------------------------------------------------------------


async def goose_read(server: RunningServer, route: str, meter: Meter, **limits: Any) -> int:
    """Records handed out before the read ended (it is expected to raise)."""
    conn = goose_connection(f"{server.url}/{route}/", timeout=GUARD, **limits)
    settings = GooseSourceSettings.model_validate({"tables": ["CON_TRO"], "from": "watermark"})
    src = GooseSource("goose", conn, settings)
    src.http._client._transport = meter
    handed = 0
    try:
        async with aclosing(src.fetch_pages(src.plan("CON_TRO", None, None, now()))) as pages:
            async for page in pages:
                handed += len(page.records)
    finally:
        await src.aclose()
    return handed


@pytest.mark.parametrize("route", ["rows", "string"])
async def test_an_endless_goose_answer_is_a_lost_answer_at_the_byte_cap(
    server: RunningServer, route: str
) -> None:
    meter = Meter()
    with pytest.raises(AmbiguousError) as lost:
        await guarded(goose_read(server, route, meter, max_answer_bytes="1MiB"))
    assert str(lost.value) == (
        f"connections.goose.max_answer_bytes: the answer to POST /{route}/ passed 1 MiB; "
        "raise the setting if this is real"
    )
    assert CAP < meter.read <= CAP + SLACK and meter.requests == 1


async def test_a_goose_answer_that_never_ends_is_a_lost_answer_at_the_deadline(
    server: RunningServer,
) -> None:
    meter = Meter()
    with pytest.raises(AmbiguousError, match=r"^connections\.goose\.call_deadline: POST /trickle/"):
        await guarded(goose_read(server, "trickle", meter, call_deadline="1s"))
    assert meter.requests == 1


async def test_an_endless_goose_error_body_is_read_only_up_to_its_limit(
    server: RunningServer,
) -> None:
    meter = Meter()
    with pytest.raises(RemoteError, match=r"HTTP 400: refused: eee"):
        await guarded(goose_read(server, "refused", meter))
    assert meter.read <= ERROR_BODY_BYTES + SLACK


async def dmm_read(server: RunningServer, route: str, meter: Meter, **limits: Any) -> None:
    src = DmmOutputsSource(
        "dmm",
        dmm_connection(f"{server.url}/{route}", timeout=GUARD, **limits),
        DmmSourceSettings.model_validate({}),
    )
    src.http._client._transport = meter
    try:
        await src.fetch(src.plan("execution-5", None, None, now()))
    finally:
        await src.aclose()


async def test_an_endless_dmm_log_is_a_lost_answer_at_the_byte_cap(server: RunningServer) -> None:
    """A task source only reads: its lost answer is retriable (`task_streams`), and the
    engine reads it again as it would any other."""
    meter = Meter()
    with pytest.raises(RetriableError) as lost:
        await guarded(dmm_read(server, "dmm-endless", meter, max_answer_bytes="1MiB"))
    assert str(lost.value) == (
        "connections.dmm.max_answer_bytes: the answer to POST /GetExecutionOutputs "
        "passed 1 MiB; raise the setting if this is real"
    )
    assert CAP < meter.read <= len(DMM_STATUS) + CAP + SLACK


async def test_an_endless_dmm_error_body_is_read_only_up_to_its_limit(
    server: RunningServer,
) -> None:
    meter = Meter()
    with pytest.raises(RemoteError, match=r"^dmm: POST /GetExecutionOutputs: HTTP 400: no: eee"):
        await guarded(dmm_read(server, "dmm-refused", meter))
    assert meter.requests == 2 and meter.read <= ERROR_BODY_BYTES + SLACK


# --- the settings ---------------------------------------------------------------------------


def goose_block(line: str) -> str:
    return VALID.replace("timezone: Europe/Rome}", f"timezone: Europe/Rome, {line}}}")


def test_the_limits_default_far_beyond_a_real_answer_and_take_units() -> None:
    default = parse_config(VALID, "my.yaml", ENV).connections["goose"]
    assert (default.call_deadline, default.max_answer_bytes) == (1800.0, 4 * 1024**3)
    text = goose_block("call_deadline: 2h, max_answer_bytes: 512MiB")
    configured = parse_config(text, "my.yaml", ENV).connections["goose"]
    assert (configured.call_deadline, configured.max_answer_bytes) == (7200.0, 512 * MiB)
    assert configured.http_client("goose").call_deadline == 7200.0
    assert configured.http_client("goose").max_answer_bytes == 512 * MiB


@pytest.mark.parametrize(
    "line",
    [
        "call_deadline: 0",
        "call_deadline: -30",
        "call_deadline: 0s",
        "max_answer_bytes: 0",
        "max_answer_bytes: -1",
        "max_answer_bytes: 0GiB",
        "max_answer_bytes: -5MB",
        "max_answer_bytes: lots",
    ],
)
def test_a_limit_that_is_not_positive_is_refused_in_one_line(line: str) -> None:
    setting = line.split(":")[0]
    with pytest.raises(ConfigError) as info:
        parse_config(goose_block(line), "my.yaml", ENV)
    messages = [issue.render("my.yaml") for issue in info.value.issues]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert f"connections.goose.{setting}" in messages[0]
    assert "unknown key" not in messages[0], "refused for its value, as a setting it knows"
