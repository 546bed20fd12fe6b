"""Infor Mongoose (CloudSuite Industrial) IDO REST API: a deletion target."""

from __future__ import annotations

from connectors.contract import Capabilities, ConnectorInfo, SandboxSpec, registry
from connectors.mongoose.settings import LookupSettings, MongooseConnection, MongooseTargetSettings
from connectors.mongoose.target import MongooseTarget


def build_target(
    name: str, connection: MongooseConnection, settings: MongooseTargetSettings
) -> MongooseTarget:
    return MongooseTarget(name, connection, settings)


registry.register(
    ConnectorInfo(
        name="mongoose",
        connection_settings=MongooseConnection,
        target_settings=MongooseTargetSettings,
        build_target=build_target,
        sandbox=SandboxSpec(8702, "connectors.mongoose.sandbox:emulated"),
        capabilities=Capabilities(preview=True, count=True),
    )
)

__all__ = [
    "LookupSettings",
    "MongooseConnection",
    "MongooseTarget",
    "MongooseTargetSettings",
    "build_target",
]
