"""Infosistema DMM: a deletion target running OutSystems delete executions."""

from __future__ import annotations

from connectors.contract import ConnectorInfo, registry
from connectors.dmm.settings import DmmConnection, DmmPaths, DmmTargetSettings, EntityRef
from connectors.dmm.target import DmmDeleteTarget


def build_target(
    name: str, connection: DmmConnection, settings: DmmTargetSettings
) -> DmmDeleteTarget:
    return DmmDeleteTarget(name, connection, settings)


registry.register(
    ConnectorInfo(
        name="dmm",
        connection_settings=DmmConnection,
        target_settings=DmmTargetSettings,
        build_target=build_target,
    )
)

__all__ = [
    "DmmConnection",
    "DmmDeleteTarget",
    "DmmPaths",
    "DmmTargetSettings",
    "EntityRef",
    "build_target",
]
