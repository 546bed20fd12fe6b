"""The small shared pieces connectors read answers and build errors with."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
import pytest

from connectors.contract import AmbiguousError, FatalError, RetriableError
from connectors.kit.http import HttpClient, RetryPolicy, as_int, remote_error
from connectors.kit.target import HttpTarget

ONCE = RetryPolicy(max_attempts=1, base_delay=0, max_delay=0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7, 7), ("12", 12), (" 3 ", 3), (True, None), ("1.5", None), ("-2", None), (None, None)],
)
def test_as_int_reads_counts_and_quoted_counts_never_bools(value: Any, expected: int) -> None:
    assert as_int(value) == expected


def test_remote_error_names_status_code_and_words() -> None:
    response = httpx.Response(400, text="nope")
    plain = remote_error("erp", "GET /x", response, "bad filter")
    assert str(plain) == "erp: GET /x: HTTP 400: bad filter" and plain.code == "400"
    coded = remote_error("crm", "POST /y", response, "gone", code="101", label="errorCode ")
    assert str(coded) == "crm: POST /y: HTTP 400 errorCode 101: gone" and coded.code == "101"


@pytest.mark.parametrize(
    ("failure", "kind", "words"),
    [
        (httpx.ConnectError("x"), RetriableError, "cannot connect (ConnectError)"),
        (httpx.PoolTimeout("x"), RetriableError, "cannot connect (PoolTimeout)"),
        (httpx.ReadTimeout("x"), AmbiguousError, "no complete answer (ReadTimeout)"),
        (httpx.RemoteProtocolError("x"), AmbiguousError, "no complete answer"),
        (httpx.DecodingError("x"), AmbiguousError, "the answer could not be decoded"),
    ],
)
async def test_transport_failures_say_whether_the_request_may_have_applied(
    failure: Exception, kind: type[RetriableError], words: str
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure

    client = HttpClient(connection="c", retry=ONCE, transport=httpx.MockTransport(fail))
    with pytest.raises(RetriableError) as raised:
        await client.request("GET", "http://h/p", idempotent=True)
    await client.aclose()
    assert type(raised.value) is kind
    assert str(raised.value).startswith("c: GET /p: ") and words in str(raised.value)


async def test_a_transport_error_no_answer_explains_is_not_swallowed() -> None:
    """Failures that are not about the answer (a bad URL scheme) stay the caller's bug."""
    client = HttpClient(connection="c", retry=ONCE)
    with pytest.raises(httpx.UnsupportedProtocol):
        await client.request("GET", "ftp://h/p", idempotent=True)
    await client.aclose()


class _Settings:
    batch_size = 3


class _Target(HttpTarget[str, _Settings]):
    made: ClassVar[list[str]] = []

    def problem(self, name: str, connection: str, settings: _Settings) -> str | None:
        return f"{name}: cannot use {connection}" if connection == "bad" else None

    def client(self, name: str, connection: str) -> HttpClient:
        self.made.append(name)
        return HttpClient(connection=name)

    def setup(self, connection: str) -> None:
        self.seen = connection


async def test_a_target_refused_by_its_connection_opens_no_client() -> None:
    with pytest.raises(FatalError, match="t: cannot use bad"):
        _Target("t", "bad", _Settings())
    assert _Target.made == []
    target = _Target("t", "good", _Settings())
    assert (target.name, target.batch_size, target.seen, _Target.made) == ("t", 3, "good", ["t"])
    await target.aclose()
    given = HttpClient(connection="x")
    assert _Target("t2", "good", _Settings(), http=given)._http is given
    assert _Target.made == ["t"]
    await given.aclose()
