"""Infor Mongoose (CloudSuite Industrial) IDO REST API: a deletion target."""

from __future__ import annotations

from connectors.contract import Capabilities, Side, register
from connectors.mongoose.check import check
from connectors.mongoose.settings import LookupSettings, MongooseConnection, MongooseTargetSettings
from connectors.mongoose.target import MongooseTarget


def build_target(
    name: str, connection: MongooseConnection, settings: MongooseTargetSettings
) -> MongooseTarget:
    return MongooseTarget(name, connection, settings)


register(
    "mongoose",
    MongooseConnection,
    target=Side(MongooseTargetSettings, build_target),
    sandbox_port=8702,
    capabilities=Capabilities(preview=True, count=True),
    check=check,
)

__all__ = [
    "LookupSettings",
    "MongooseConnection",
    "MongooseTarget",
    "MongooseTargetSettings",
    "build_target",
]
