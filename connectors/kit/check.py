"""The steps of `syncengine check` every connector shares: can the host be resolved and
reached, and does its TLS certificate verify.

Each step is a `Probe` with one line for the operator. A failure names the host and
port and the reason, never a URL's path, query or user part (they may carry a
secret). The TLS step trusts what the connectors' HTTP client trusts (httpx's default
context), so a certificate this step accepts is one a run accepts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from connectors.contract import ConnectorError, Probe
from connectors.kit.settings import ConnectionBase

REACH = "reach"
TLS = "tls"
AUTH = "auth"
OBJECT = "object"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def endpoints(urls: Iterable[str | None]) -> list[Endpoint]:
    """The distinct hosts and ports the URLs name, in order (a token server on another
    host than the API is checked too)."""
    found: dict[Endpoint, None] = {}
    for url in urls:
        if not url:
            continue
        parts = urlsplit(url)
        tls = parts.scheme.lower() == "https"
        if parts.hostname:
            found[Endpoint(parts.hostname, parts.port or (443 if tls else 80), tls)] = None
    return list(found)


async def reach(connection: str, endpoint: Endpoint, seconds: float) -> Probe:
    """DNS resolution, then a TCP connection, each within `seconds`."""
    loop = asyncio.get_running_loop()

    def failed(reason: str) -> Probe:
        return Probe(connection, REACH, False, reason)

    try:
        async with asyncio.timeout(seconds):
            infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except TimeoutError:
        return failed(f"cannot resolve host {endpoint.host}: no answer within {seconds:g}s")
    except OSError as exc:
        return failed(f"cannot resolve host {endpoint.host} ({exc.strerror or exc})")
    address = str(infos[0][4][0])
    shown = Endpoint(address, endpoint.port, endpoint.tls).where
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except TimeoutError:
        return failed(f"no TCP answer from {shown} within {seconds:g}s")
    except ConnectionRefusedError:
        return failed(f"connection refused on {shown}")
    except OSError as exc:
        return failed(f"cannot connect to {shown} ({exc.strerror or exc})")
    writer.close()
    await _closed(writer)
    resolved = "" if address == endpoint.host else f" ({address})"
    return Probe(connection, REACH, True, f"{endpoint.where}{resolved}")


async def tls(
    connection: str, endpoint: Endpoint, seconds: float, context: ssl.SSLContext | None = None
) -> Probe:
    """A TLS handshake verifying the certificate and the host name; the detail gives the
    protocol and when the certificate expires."""

    def failed(reason: str) -> Probe:
        return Probe(connection, TLS, False, f"TLS with {endpoint.where}: {reason}")

    context = context or httpx.create_ssl_context()
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(
                endpoint.host,
                endpoint.port,
                ssl=context,
                server_hostname=endpoint.host,
                ssl_handshake_timeout=seconds,
            )
    except ssl.SSLCertVerificationError as exc:
        return failed(f"certificate verify failed: {exc.verify_message or exc.reason}")
    except ssl.SSLError as exc:
        return failed(f"handshake failed ({exc.reason or exc}); is this port speaking TLS?")
    except TimeoutError:
        return failed(f"no handshake within {seconds:g}s")
    except OSError as exc:
        return failed(f"handshake failed ({exc.strerror or type(exc).__name__})")
    cert = writer.get_extra_info("peercert") or {}
    secured = writer.get_extra_info("ssl_object")
    version = secured.version() if isinstance(secured, ssl.SSLObject) else "TLS"
    writer.close()
    await _closed(writer)
    detail = f"{endpoint.where} {version}, certificate verified"
    not_after = cert.get("notAfter") if isinstance(cert, dict) else None
    if isinstance(not_after, str):
        expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)
        days = (expires - datetime.now(UTC)).days
        detail += f", expires {expires:%Y-%m-%d} (in {days} days)"
    return Probe(connection, TLS, True, detail)


async def _closed(writer: asyncio.StreamWriter) -> None:
    """A peer that resets the connection as it closes changes nothing about the check."""
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


async def network(connection: str, urls: Iterable[str | None], seconds: float) -> list[Probe]:
    """Reach (and for https, TLS) for every host the URLs name; once one fails, the
    steps that need it are not tried."""
    probes: list[Probe] = []
    for endpoint in endpoints(urls):
        probe = await reach(connection, endpoint, seconds)
        probes.append(probe)
        if probe.ok and endpoint.tls:
            probes.append(await tls(connection, endpoint, seconds))
        if not probes[-1].ok:
            break
    return probes


ConnectionT = TypeVar("ConnectionT", bound=ConnectionBase)
Steps = Callable[[str, ConnectionT, Sequence[Any]], AsyncIterator[Probe]]


def after_network(
    urls: Callable[[ConnectionT], Iterable[str | None]], steps: Steps[ConnectionT]
) -> Steps[ConnectionT]:
    """A connector's checker: the network steps for every host `urls` names, then, only
    if they all passed, the connector's own read-only `steps` (credentials, object)."""

    async def check(
        name: str, connection: ConnectionT, blocks: Sequence[Any]
    ) -> AsyncIterator[Probe]:
        probes = await network(name, urls(connection), connection.timeout)
        for probe in probes:
            yield probe
        if all(probe.ok for probe in probes):
            async for probe in steps(name, connection, blocks):
                yield probe

    return check


def failure(connection: str, step: str, exc: ConnectorError) -> Probe:
    """A connector's error as a failed step: its message is already scrubbed of every
    secret the client knows, and names the setting to fix."""
    return Probe(connection, step, False, " ".join(str(exc).split()))


__all__ = [
    "AUTH",
    "OBJECT",
    "REACH",
    "TLS",
    "Endpoint",
    "after_network",
    "endpoints",
    "failure",
    "network",
]
