"""`syncengine check` for a Mongoose connection: the security token, then for each
target's IDO a LoadCollection of its key property that can return one row at most and
is meant to match none, which proves the IDO and the property exist (an unknown one is
refused: MessageCode or Success false)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from connectors.contract import ConnectorError, FatalError, Probe
from connectors.kit.check import AUTH, OBJECT, after_network, failure
from connectors.mongoose.client import MongooseApi
from connectors.mongoose.filters import in_filter, quote_literal
from connectors.mongoose.settings import MongooseConnection, MongooseTargetSettings
from connectors.mongoose.target import ROW_POINTER

NO_SUCH_KEY = "syncengine-check-no-such-key"
"""The value the read looks for: no real key is written like this, and `recordcap` 1
bounds the answer even if one were."""


def objects(blocks: Sequence[Any]) -> list[tuple[str, str]]:
    """(IDO, property the target finds rows by) per target, each pair once: the lookup
    property, or RowPointer when keys are ItemIds (the target re-checks by it)."""
    found: dict[tuple[str, str], None] = {}
    for block in blocks:
        if isinstance(block, MongooseTargetSettings):
            prop = block.lookup.property if block.lookup is not None else ROW_POINTER
            found[(block.ido, prop)] = None
    return list(found)


async def _steps(
    name: str, connection: MongooseConnection, blocks: Sequence[Any]
) -> AsyncIterator[Probe]:
    http = connection.http_client(name, base_url=connection.url)
    try:
        mongoose = MongooseApi(name, connection, http)
        proven = False
        try:
            proven = await mongoose.authenticate()
        except ConnectorError as exc:
            yield failure(name, AUTH, exc)
            return
        if proven:
            yield Probe(name, AUTH, True, f"security token issued for {connection.user}")
        wanted = objects(blocks)
        if not wanted and not proven:
            yield Probe(name, AUTH, True, "bearer token not tried: no target names an IDO to read")
        for ido, prop in wanted:
            where = in_filter(prop, [quote_literal(NO_SUCH_KEY)])
            try:
                await mongoose.load(ido, ["_ItemId", prop], where, cap="1")
            except FatalError as exc:
                # Refused credentials: a bearer token's first call is its proof.
                yield failure(name, AUTH, exc)
                return
            except ConnectorError as exc:
                if not proven:
                    proven = True
                    yield Probe(name, AUTH, True, "bearer token accepted")
                yield failure(name, OBJECT, exc)
                continue
            if not proven:
                proven = True
                yield Probe(name, AUTH, True, "bearer token accepted")
            yield Probe(name, OBJECT, True, f"IDO {ido} reads property {prop}")
    finally:
        await http.aclose()


check = after_network(lambda connection: [connection.url], _steps)
