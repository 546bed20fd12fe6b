"""The shared HTTP client: what it retries, what it refuses to re-send, what it scrubs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from connectors.contract import AmbiguousError, RetriableError
from connectors.kit.http import HttpClient, RetryPolicy, parse_retry_after

FAST = RetryPolicy(max_attempts=4, base_delay=0, max_delay=0, max_retry_after=5)


class Script:
    """Answers from a list, recording each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def client(script: Script, **kwargs: object) -> HttpClient:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    c = HttpClient(
        connection="conn",
        base_url="http://127.0.0.1:1",
        retry=FAST,
        transport=httpx.MockTransport(script),
        sleep=sleep,
        **kwargs,  # type: ignore[arg-type]
    )
    c.waits = waits  # type: ignore[attr-defined]
    return c


async def test_429_is_retried_honouring_retry_after() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200, json={}))
    c = client(script)
    response = await c.request("POST", "/x", idempotent=False)
    assert response.status_code == 200
    assert len(script.requests) == 2
    assert c.waits == [3.0]  # type: ignore[attr-defined]


async def test_absurd_retry_after_is_not_obeyed_inline() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RetriableError) as info:
        await client(script).request("GET", "/x", idempotent=True)
    assert info.value.retry_after == 3600
    assert len(script.requests) == 1


async def test_500_is_ambiguous_and_not_resent_when_not_idempotent() -> None:
    script = Script(httpx.Response(500, text="boom"), httpx.Response(200))
    with pytest.raises(AmbiguousError):
        await client(script).request("POST", "/x", idempotent=False)
    assert len(script.requests) == 1


async def test_500_is_retried_when_idempotent() -> None:
    script = Script(httpx.Response(503), httpx.Response(502), httpx.Response(200))
    response = await client(script).request("GET", "/x", idempotent=True)
    assert response.status_code == 200 and len(script.requests) == 3


async def test_read_timeout_is_ambiguous_connect_error_is_safe_to_retry() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.Response(200))
    assert (await client(script).request("POST", "/x", idempotent=False)).status_code == 200
    script = Script(httpx.ReadTimeout("slow"))
    with pytest.raises(AmbiguousError, match="no complete answer"):
        await client(script).request("POST", "/x", idempotent=False)


async def test_gives_up_after_max_attempts() -> None:
    script = Script(*[httpx.Response(429) for _ in range(4)])
    with pytest.raises(RetriableError, match="HTTP 429"):
        await client(script).request("GET", "/x", idempotent=True)
    assert len(script.requests) == 4


async def test_errors_scrub_secrets_and_leave_out_query_strings() -> None:
    script = Script(httpx.Response(503, text="bad key s3cr3t-value in body"))
    c = client(script, secrets=["s3cr3t-value"])
    with pytest.raises(AmbiguousError) as info:
        await c.request("POST", "/deleted/?key=s3cr3t-value", idempotent=False)
    message = str(info.value)
    assert "s3cr3t-value" not in message
    assert "***" in message and "POST /deleted/" in message


async def test_errors_scrub_a_secret_the_server_echoes_json_escaped() -> None:
    """A body written with JSON's ensure_ascii spells a non-ASCII letter `\\u00e0`."""
    secret = "chiave-segretà-2024"
    body = json.dumps({"error": f"key {secret} not authorized"})
    assert secret not in body
    c = client(Script(httpx.Response(503, text=body)), secrets=[secret])
    with pytest.raises(AmbiguousError) as info:
        await c.request("POST", "/deleted/", idempotent=False)
    assert json.dumps(secret)[1:-1] not in str(info.value)
    assert "key *** not authorized" in str(info.value)


async def test_an_undecodable_body_is_a_lost_answer() -> None:
    def gzip_that_is_not(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"plain text")
        )

    script = Script(gzip_that_is_not(httpx.Request("POST", "/")), httpx.Response(200))
    with pytest.raises(AmbiguousError, match="the answer could not be decoded"):
        await client(script).request("POST", "/x", idempotent=False)
    assert len(script.requests) == 1, "not re-sent: the server may have applied it"
    script = Script(gzip_that_is_not(httpx.Request("GET", "/")), httpx.Response(200))
    assert (await client(script).request("GET", "/x", idempotent=True)).status_code == 200


async def test_redirects_are_not_followed() -> None:
    script = Script(httpx.Response(302, headers={"Location": "http://127.0.0.1:2/elsewhere"}))
    response = await client(script).request("POST", "/x", idempotent=False, json={"key": "k"})
    assert response.status_code == 302 and len(script.requests) == 1


def test_retry_after_parses_seconds_and_dates() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


async def test_a_secret_in_the_path_is_scrubbed_from_errors() -> None:
    """Some APIs take a password as a path segment (Mongoose's older GetSecurityToken)."""
    path = "/ido/token/DEMO/sync/pw%2Fsecret"
    down = client(Script(*[httpx.Response(503, text="down")] * 4), secrets=["pw%2Fsecret"])
    with pytest.raises(AmbiguousError) as ambiguous:
        await down.request("GET", path, idempotent=True)
    gone = client(Script(*[httpx.ConnectError("refused")] * 4), secrets=["pw%2Fsecret"])
    with pytest.raises(RetriableError) as refused:
        await gone.request("GET", path, idempotent=True)
    for error in (ambiguous.value, refused.value):
        assert "pw%2Fsecret" not in str(error)
        assert "GET /ido/token/DEMO/sync/***" in str(error)


class Broken(httpx.AsyncByteStream):
    """A body that sends `parts` and then loses its connection."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


async def test_a_stream_is_classified_and_retried_before_its_body_is_read() -> None:
    script = Script(httpx.Response(503, text="busy"), httpx.Response(200, stream=Broken(b"ok")))
    c = client(script)
    async with c.stream("GET", "/x", idempotent=True) as response:
        assert response.status_code == 200 and len(script.requests) == 2
        parts = []
        with pytest.raises(AmbiguousError, match="broke off after 2 bytes"):
            async for part in response.aiter_bytes():
                parts.append(part)
    assert parts == [b"ok"] and len(script.requests) == 2, "nothing re-sent once the body flows"


async def test_a_refused_stream_reports_its_body_scrubbed_and_is_not_resent() -> None:
    script = Script(httpx.Response(500, text="crash for key s3cret"))
    with pytest.raises(AmbiguousError, match="crash for key") as info:
        async with client(script, secrets=["s3cret"]).stream("POST", "/x", idempotent=False):
            raise AssertionError("a refused answer is never handed over")
    assert "s3cret" not in str(info.value) and len(script.requests) == 1
