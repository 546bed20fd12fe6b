"""Goose (gooseapp.com): the DELETED service as a source of deletions, and the
OPERATION service as a target deleting records by RECORD_ID."""

from __future__ import annotations

from connectors.contract import Capabilities, ConnectorInfo, SandboxSpec, registry
from connectors.goose.settings import (
    GooseConnection,
    GooseSourceSettings,
    GooseTargetSettings,
    record_name,
)
from connectors.goose.source import GooseSource, build_source
from connectors.goose.target import GooseDeleteTarget, build_target

registry.register(
    ConnectorInfo(
        name="goose",
        connection_settings=GooseConnection,
        source_settings=GooseSourceSettings,
        target_settings=GooseTargetSettings,
        build_source=build_source,
        build_target=build_target,
        sandbox=SandboxSpec(8701, "connectors.goose.sandbox:emulated"),
        capabilities=Capabilities(preview=True),
    )
)

__all__ = [
    "GooseConnection",
    "GooseDeleteTarget",
    "GooseSource",
    "GooseSourceSettings",
    "GooseTargetSettings",
    "record_name",
]
