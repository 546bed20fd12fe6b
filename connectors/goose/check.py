"""`syncengine check` for a Goose connection: the STRUCTURE service of every table the
configuration reads or writes, which proves the key and the table at once.

Never DELETED: with `from: latest` a successful call moves Goose's own cursor, so a
check would swallow deletions the next run should have read. STRUCTURE only reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from connectors.contract import ConnectorError, Probe
from connectors.goose.settings import (
    DOCUMENTED_CALLS_PER_SECOND,
    GooseConnection,
    GooseSourceSettings,
    GooseTargetSettings,
    service_url_for,
)
from connectors.goose.source import classify, error_code
from connectors.kit.check import AUTH, OBJECT, after_network, failure
from connectors.kit.http import excerpt, json_object

NOT_AUTHORIZED = ("110", "111")
PROBE_TABLE = "SYNCCHK"
"""Asked for when no pipeline names a table: any answer but 110/111 proves the key."""


def tables(blocks: Sequence[Any]) -> list[str]:
    """The tables the configuration reads (sources) or deletes from (targets), in order."""
    found: dict[str, None] = {}
    for block in blocks:
        if isinstance(block, GooseSourceSettings):
            found.update(dict.fromkeys(block.tables))
        elif isinstance(block, GooseTargetSettings):
            found[block.table] = None
    return list(found)


async def _steps(
    name: str, connection: GooseConnection, blocks: Sequence[Any]
) -> AsyncIterator[Probe]:
    url = service_url_for(connection.url, "structure")
    if url is None:
        yield Probe(
            name,
            AUTH,
            True,
            f"not checkable: connections.{name}.url does not end in a `deleted` segment, so "
            "the STRUCTURE service beside it is unknown (DELETED is never called by a check)",
        )
        return
    key = connection.key.get_secret_value()
    http = connection.http_client(
        name, secrets=[key], classify=classify, default_calls_per_second=DOCUMENTED_CALLS_PER_SECOND
    )
    try:
        wanted = tables(blocks)
        authenticated = False
        for table in wanted or [PROBE_TABLE]:
            body = {"code": connection.code, "key": key, "table": table}
            try:
                response = await http.request("POST", url, idempotent=True, json=body)
            except ConnectorError as exc:
                yield failure(name, OBJECT if authenticated else AUTH, exc)
                return
            answer = json_object(response)
            code = error_code(answer)
            said = _said(answer, response.text, http.secrets)
            if code in NOT_AUTHORIZED:
                yield Probe(
                    name,
                    AUTH,
                    False,
                    f"Goose error {code} ({said}) from POST {_path(url)}; check "
                    f"connections.{name}.key and connections.{name}.code, and that this "
                    "host's IP is on the key's allowlist",
                )
                return
            if not authenticated:
                authenticated = True
                yield Probe(name, AUTH, True, f"key accepted for company {connection.code}")
            if not wanted:
                return
            if answer is not None and answer.get("status") == "OK":
                result = answer.get("result")
                count = result.get("total") if isinstance(result, dict) else None
                yield Probe(name, OBJECT, True, f"table {table} exists ({count} fields)")
            else:
                shown = f"Goose error {code}" if code else f"HTTP {response.status_code}"
                yield Probe(name, OBJECT, False, f"table {table}: {shown}: {said}")
    finally:
        await http.aclose()


def _said(answer: dict[str, Any] | None, text: str, secrets: Sequence[str]) -> str:
    """Goose's own description of an error, else the body; scrubbed and trimmed."""
    error = answer.get("error") if answer is not None else None
    words = error.get("description") if isinstance(error, dict) else None
    return excerpt(words if isinstance(words, str) else text, secrets)


def _path(url: str) -> str:
    return urlsplit(url).path


check = after_network(lambda connection: (connection.url, connection.operation_url), _steps)
