"""Reltio: a deletion target using the bulk delete API (DeleteEntitiesTask)."""

from __future__ import annotations

from connectors.contract import ConnectorInfo, registry
from connectors.reltio.settings import CrosswalkSettings, ReltioConnection, ReltioTargetSettings
from connectors.reltio.target import ReltioDeleteTarget


def build_target(
    name: str, connection: ReltioConnection, settings: ReltioTargetSettings
) -> ReltioDeleteTarget:
    return ReltioDeleteTarget(name, connection, settings)


registry.register(
    ConnectorInfo(
        name="reltio",
        connection_settings=ReltioConnection,
        target_settings=ReltioTargetSettings,
        build_target=build_target,
    )
)

__all__ = [
    "CrosswalkSettings",
    "ReltioConnection",
    "ReltioDeleteTarget",
    "ReltioTargetSettings",
    "build_target",
]
