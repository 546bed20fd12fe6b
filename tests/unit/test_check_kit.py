"""The shared steps of `syncengine check` (connectors/kit/check.py) against servers this
test starts on loopback: a reachable port, a closed one, a name that does not resolve,
and a port that does not speak TLS; each failure one line naming host and port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors import BUILTIN, load_registry
from connectors.kit.check import Endpoint, endpoints, network, reach, tls


async def _serve(answer: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def plain_http() -> AsyncIterator[int]:
    """A port that answers like an HTTP server, and never with TLS."""
    server, port = await _serve(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    async with server:
        yield port


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_endpoints_are_each_host_and_port_once_with_default_ports() -> None:
    urls = [
        "https://api.example.com/deleted/",
        "https://API.example.com/operation/",
        "http://user:pw@10.0.0.1/x?key=y",
        None,
        "https://auth.example.com:8443/oauth/token",
    ]
    assert endpoints(urls) == [
        Endpoint("api.example.com", 443, True),
        Endpoint("10.0.0.1", 80, False),
        Endpoint("auth.example.com", 8443, True),
    ]


async def test_reach_names_the_host_and_port(plain_http: int) -> None:
    probe = await reach("goose", Endpoint("127.0.0.1", plain_http, False), 5)
    assert (probe.step, probe.ok, probe.detail) == ("reach", True, f"127.0.0.1:{plain_http}")


async def test_a_closed_port_is_refused_in_one_line() -> None:
    port = closed_port()
    probe = await reach("crm", Endpoint("127.0.0.1", port, False), 5)
    assert not probe.ok
    assert probe.detail == f"connection refused on 127.0.0.1:{port}"


async def test_an_unresolvable_host_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_such_name(self: Any, host: str, *args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", no_such_name)
    probe = await reach("erp", Endpoint("erp.example.invalid", 443, True), 5)
    assert not probe.ok
    assert probe.detail == "cannot resolve host erp.example.invalid (Name or service not known)"


async def test_tls_on_a_port_that_does_not_speak_it_fails_the_handshake(plain_http: int) -> None:
    probe = await tls("mdm", Endpoint("127.0.0.1", plain_http, True), 5)
    assert (probe.step, probe.ok) == ("tls", False)
    assert probe.detail.startswith(f"TLS with 127.0.0.1:{plain_http}: handshake failed")
    assert "\n" not in probe.detail


async def test_network_tries_tls_for_https_and_stops_at_the_first_failure(plain_http: int) -> None:
    closed = closed_port()
    urls = [f"https://127.0.0.1:{plain_http}/api", f"http://127.0.0.1:{closed}/token"]
    probes = await network("twins", urls, 5)
    assert [(p.step, p.ok) for p in probes] == [("reach", True), ("tls", False)]
    probes = await network("twins", list(reversed(urls)), 5)
    assert [(p.step, p.ok) for p in probes] == [("reach", False)]


def test_every_builtin_connector_declares_a_check() -> None:
    """`syncengine check` proves every connection: a new connector declares its checker
    on its registry entry, or its connections would pass unchecked."""
    registry = load_registry()
    assert [name for name in BUILTIN if registry.get(name).check is None] == []
