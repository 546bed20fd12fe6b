"""Infosistema DMM: a deletion target running OutSystems delete executions, and a source
reading which records such executions deleted."""

from __future__ import annotations

from connectors.contract import Capabilities, Side, register
from connectors.dmm.check import check
from connectors.dmm.settings import (
    DmmConnection,
    DmmPaths,
    DmmSourceSettings,
    DmmTargetSettings,
    EntityRef,
    record_name,
)
from connectors.dmm.source import DmmOutputsSource
from connectors.dmm.target import DmmDeleteTarget


def build_target(
    name: str, connection: DmmConnection, settings: DmmTargetSettings
) -> DmmDeleteTarget:
    return DmmDeleteTarget(name, connection, settings)


def build_source(
    name: str, connection: DmmConnection, settings: DmmSourceSettings
) -> DmmOutputsSource:
    return DmmOutputsSource(name, connection, settings)


register(
    "dmm",
    DmmConnection,
    source=Side(DmmSourceSettings, build_source),
    target=Side(DmmTargetSettings, build_target),
    sandbox_port=8705,
    task_source=True,
    capabilities=Capabilities(preview=True, cancel=True),
    check=check,
)

__all__ = [
    "DmmConnection",
    "DmmDeleteTarget",
    "DmmOutputsSource",
    "DmmPaths",
    "DmmSourceSettings",
    "DmmTargetSettings",
    "EntityRef",
    "build_source",
    "build_target",
    "record_name",
]
