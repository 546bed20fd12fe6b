"""`syncengine check` for a Reltio connection: an OAuth token from the auth server, then
a read of the tenant (`GET entities/_total`, the count the mass-delete guard uses)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from connectors.contract import ConnectorError, Probe
from connectors.kit.check import AUTH, OBJECT, after_network, failure
from connectors.kit.http import as_int
from connectors.reltio.auth import ReltioClient, classify, json_body
from connectors.reltio.settings import ReltioConnection

TOTAL = "/entities/_total"


async def _steps(
    name: str, connection: ReltioConnection, blocks: Sequence[Any]
) -> AsyncIterator[Probe]:
    http = connection.http_client(name, base_url=connection.tenant_url, classify=classify)
    try:
        reltio = ReltioClient(name, connection, http)
        try:
            await reltio.tokens.token()
        except ConnectorError as exc:
            yield failure(name, AUTH, exc)
            return
        yield Probe(name, AUTH, True, f"token issued to client {connection.client_id}")
        try:
            response = await reltio.call("GET", TOTAL, idempotent=True)
        except ConnectorError as exc:
            yield failure(name, OBJECT, exc)
            return
        body = json_body(response)
        total = as_int(body.get("total")) if isinstance(body, dict) else None
        if not response.is_success or total is None:
            yield failure(name, OBJECT, reltio.remote(f"GET {TOTAL}", response))
            return
        tenant = connection.tenant_url.rsplit("/", 1)[-1]
        yield Probe(name, OBJECT, True, f"tenant {tenant} answers ({total} entities)")
    finally:
        await http.aclose()


check = after_network(lambda connection: [connection.tenant_url, connection.auth_url], _steps)
