"""Reltio: a deletion target using the bulk delete API (DeleteEntitiesTask), and a
source reading which entities such tasks deleted."""

from __future__ import annotations

from connectors.contract import Capabilities, Side, register
from connectors.reltio.check import check
from connectors.reltio.settings import (
    CrosswalkSettings,
    ReltioConnection,
    ReltioSourceSettings,
    ReltioTargetSettings,
    entity_name,
)
from connectors.reltio.source import ReltioTaskSource
from connectors.reltio.target import ReltioDeleteTarget

NO_CANCEL = (
    "Reltio's bulk delete (DeleteEntitiesTask) offers no cancel call the engine can rely on; "
    "the task runs to its end, and entities it did not delete are retried"
)


def build_target(
    name: str, connection: ReltioConnection, settings: ReltioTargetSettings
) -> ReltioDeleteTarget:
    return ReltioDeleteTarget(name, connection, settings)


def build_source(
    name: str, connection: ReltioConnection, settings: ReltioSourceSettings
) -> ReltioTaskSource:
    return ReltioTaskSource(name, connection, settings)


register(
    "reltio",
    ReltioConnection,
    source=Side(ReltioSourceSettings, build_source),
    target=Side(ReltioTargetSettings, build_target),
    sandbox_port=8703,
    task_source=True,
    capabilities=Capabilities(preview=True, count=True, no_cancel=NO_CANCEL),
    check=check,
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
