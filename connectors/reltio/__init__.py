"""Reltio: a deletion target using the bulk delete API (DeleteEntitiesTask), and a
source reading which entities such tasks deleted."""

from __future__ import annotations

from connectors.contract import Capabilities, ConnectorInfo, SandboxSpec, registry
from connectors.reltio.settings import (
    CrosswalkSettings,
    ReltioConnection,
    ReltioSourceSettings,
    ReltioTargetSettings,
    entity_name,
)
from connectors.reltio.source import ReltioTaskSource
from connectors.reltio.target import ReltioDeleteTarget


def build_target(
    name: str, connection: ReltioConnection, settings: ReltioTargetSettings
) -> ReltioDeleteTarget:
    return ReltioDeleteTarget(name, connection, settings)


def build_source(
    name: str, connection: ReltioConnection, settings: ReltioSourceSettings
) -> ReltioTaskSource:
    return ReltioTaskSource(name, connection, settings)


registry.register(
    ConnectorInfo(
        name="reltio",
        connection_settings=ReltioConnection,
        source_settings=ReltioSourceSettings,
        target_settings=ReltioTargetSettings,
        build_source=build_source,
        build_target=build_target,
        task_source=True,
        sandbox=SandboxSpec(8703, "connectors.reltio.sandbox:emulated"),
        capabilities=Capabilities(
            preview=True,
            count=True,
            no_cancel=(
                "Reltio's bulk delete (DeleteEntitiesTask) offers no cancel call the engine can "
                "rely on; the task runs to its end, and entities it did not delete are retried"
            ),
        ),
    )
)

__all__ = [
    "CrosswalkSettings",
    "ReltioConnection",
    "ReltioDeleteTarget",
    "ReltioSourceSettings",
    "ReltioTargetSettings",
    "ReltioTaskSource",
    "build_source",
    "build_target",
    "entity_name",
]
