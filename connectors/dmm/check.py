"""`syncengine check` for a DMM connection: GetExecutionStatus of a tracker id no execution
can have. `Status: NotFound` proves the API answers and takes the key (a refused key is
401 or 403); nothing is started or stopped.

What the documented API cannot prove read-only is said as such: the OTP is only ever
checked by StartExecution (and may be single-use), and a DestinationDBConnection only
by an execution using it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from connectors.contract import ConnectorError, Probe
from connectors.dmm.client import TOKEN_HEADER, is_dmm_body
from connectors.dmm.settings import RUNTIME_CONNECTION, DmmConnection, DmmTargetSettings
from connectors.kit.check import AUTH, OBJECT, after_network, failure
from connectors.kit.http import excerpt, json_object

NO_EXECUTION = -1
"""MainExecutionTrackerId is an OutSystems auto-number: never negative."""


async def _steps(
    name: str, connection: DmmConnection, blocks: Sequence[Any]
) -> AsyncIterator[Probe]:
    http = connection.http_client(name, base_url=connection.url)
    path = connection.paths.status
    try:
        headers = {TOKEN_HEADER: connection.token.get_secret_value()}
        body = {"MainExecutionTrackerId": NO_EXECUTION}
        try:
            response = await http.request("POST", path, idempotent=True, json=body, headers=headers)
        except ConnectorError as exc:
            yield failure(name, AUTH, exc)
            return
        answer = json_object(response)
        said = excerpt(str((answer or {}).get("ErrorMessage") or response.text), http.secrets)
        if response.status_code in (401, 403):
            yield Probe(
                name,
                AUTH,
                False,
                f"HTTP {response.status_code} from POST {path} ({said}); check "
                f"connections.{name}.token (the DMM REST API key) and that its user has "
                "the DMMAPIOperator role",
            )
            return
        status = (answer or {}).get("Status")
        if not is_dmm_body(answer) or status != "NotFound":
            yield Probe(
                name,
                AUTH,
                False,
                f"POST {path} gave HTTP {response.status_code} and no DMM status answer "
                f"({said}); check connections.{name}.url and connections.{name}.paths.status",
            )
            return
        yield Probe(name, AUTH, True, "API key accepted (GetExecutionStatus answered)")
        yield Probe(name, OBJECT, True, _not_checkable(name, connection, blocks))
    finally:
        await http.aclose()


def _not_checkable(name: str, connection: DmmConnection, blocks: Sequence[Any]) -> str:
    destinations = sorted(
        {
            block.destination or RUNTIME_CONNECTION
            for block in blocks
            if isinstance(block, DmmTargetSettings)
        }
    )
    where = ", ".join(destinations) if destinations else "none used by a target"
    otp = f"; connections.{name}.otp too (StartExecution alone reads it)" if connection.otp else ""
    return (
        f"not checkable: DestinationDBConnection ({where}) is read only by a delete "
        f"execution, which the documented API offers no read-only way to test{otp}"
    )


check = after_network(lambda connection: [connection.url], _steps)
