"""Goose (gooseapp.com): the DELETED service as a source of deletions."""

from __future__ import annotations

from connectors.contract import ConnectorInfo, registry
from connectors.goose.settings import GooseConnection, GooseSourceSettings
from connectors.goose.source import GooseSource, build_source

registry.register(
    ConnectorInfo(
        name="goose",
        connection_settings=GooseConnection,
        source_settings=GooseSourceSettings,
        build_source=build_source,
    )
)

__all__ = ["GooseConnection", "GooseSource", "GooseSourceSettings"]
