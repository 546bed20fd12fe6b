"""`syncengine check` for an Azure Digital Twins connection: the token (when client
credentials are configured), then one read of the instance. With a purge target it
lists the delete jobs (the API the purge uses, at the connection's api-version);
otherwise it reads a twin that cannot exist, which a live instance answers
DigitalTwinNotFound. Neither read changes anything."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from connectors.adt.auth import error_code, http_client, token_auth
from connectors.adt.settings import AdtConnection, AdtPurgeSettings, AdtTargetSettings
from connectors.contract import ConnectorError, Probe
from connectors.kit.check import AUTH, OBJECT, after_network, failure
from connectors.kit.http import excerpt, json_object

NO_SUCH_TWIN = "syncengine-check-no-such-twin"


def purges(blocks: Sequence[Any]) -> bool:
    """Whether a purge target uses the connection (then the jobs API is what matters)."""
    return any(
        isinstance(block.root if isinstance(block, AdtTargetSettings) else block, AdtPurgeSettings)
        for block in blocks
    )


async def _steps(
    name: str, connection: AdtConnection, blocks: Sequence[Any]
) -> AsyncIterator[Probe]:
    http = http_client(name, connection)
    try:
        auth = token_auth(name, connection, http)
        try:
            headers = await auth.headers()
        except ConnectorError as exc:
            yield failure(name, AUTH, exc)
            return
        jobs = purges(blocks)
        path = "/jobs/deletions" if jobs else f"/digitaltwins/{NO_SUCH_TWIN}"
        try:
            response = await http.request(
                "GET",
                path,
                idempotent=True,
                params={"api-version": connection.api_version},
                headers={**headers, **({"max-items-per-page": "1"} if jobs else {})},
            )
        except ConnectorError as exc:
            yield failure(name, OBJECT, exc)
            return
        code = error_code(response)
        body = json_object(response) or {}
        error = body.get("error")
        words = error.get("message") if isinstance(error, dict) else body.get("message")
        said = excerpt(str(words or response.text), http.secrets)
        what = f"GET {path}"
        fix = (
            f"check connections.{name}.token"
            if connection.token is not None
            else f"check connections.{name}.client_id, client_secret and scope"
        )
        if response.status_code == 401:
            yield Probe(name, AUTH, False, f"HTTP 401 from {what}: token refused; {fix}")
            return
        if response.status_code == 403:
            yield Probe(
                name,
                AUTH,
                False,
                f"HTTP 403 from {what}: the identity needs a data-plane role on the instance "
                "(e.g. Azure Digital Twins Data Owner)",
            )
            return
        found = response.is_success or (not jobs and code == "DigitalTwinNotFound")
        accepted = "token accepted by the instance" if found else "token not refused"
        yield Probe(name, AUTH, True, accepted)
        if found:
            read = "delete jobs listed" if jobs else "twin read answered"
            detail = f"instance {connection.host} answers ({read}, api-version "
            yield Probe(name, OBJECT, True, detail + f"{connection.api_version})")
            return
        shown = f" {code}" if code else ""
        yield Probe(
            name,
            OBJECT,
            False,
            f"{what}: HTTP {response.status_code}{shown}: {said}; check connections.{name}.url "
            f"and connections.{name}.api_version",
        )
    finally:
        await http.aclose()


check = after_network(lambda connection: [connection.url, connection.token_url], _steps)
