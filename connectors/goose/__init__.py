"""Goose (gooseapp.com): the DELETED service as a source of deletions, and the
OPERATION service as a target deleting records by RECORD_ID."""

from __future__ import annotations

from connectors.contract import Capabilities, Side, register
from connectors.goose.check import check
from connectors.goose.settings import (
    GooseConnection,
    GooseSourceSettings,
    GooseTargetSettings,
    record_name,
)
from connectors.goose.source import GooseSource, build_source
from connectors.goose.target import GooseDeleteTarget, build_target

register(
    "goose",
    GooseConnection,
    source=Side(GooseSourceSettings, build_source),
    target=Side(GooseTargetSettings, build_target),
    sandbox_port=8701,
    capabilities=Capabilities(preview=True),
    check=check,
)

__all__ = [
    "GooseConnection",
    "GooseDeleteTarget",
    "GooseSource",
    "GooseSourceSettings",
    "GooseTargetSettings",
    "record_name",
]
