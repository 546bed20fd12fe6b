"""Azure Digital Twins data plane: a twin-by-twin target and a whole-instance purge.

One connection type, `adt`; its target block picks `kind: twins` (delete the
twins deliveries name) or `kind: purge` (a delete job, only on a trigger and
only with `confirm_purge` repeating the instance host).
"""

from __future__ import annotations

from connectors.adt.check import check
from connectors.adt.purge import AdtPurgeTarget
from connectors.adt.settings import (
    AdtConnection,
    AdtPurgeSettings,
    AdtTargetSettings,
    AdtTwinsSettings,
    check_purge_confirmation,
)
from connectors.adt.twins import AdtTwinsTarget
from connectors.contract import Capabilities, Side, register

NO_CANCEL = "Azure Digital Twins delete jobs cannot be cancelled or deleted once started"


def build_target(
    name: str,
    connection: AdtConnection,
    settings: AdtTargetSettings | AdtTwinsSettings | AdtPurgeSettings,
) -> AdtTwinsTarget | AdtPurgeTarget:
    """Raises FatalError for a purge whose confirm_purge does not name the connection's host."""
    block = settings.root if isinstance(settings, AdtTargetSettings) else settings
    if isinstance(block, AdtPurgeSettings):
        return AdtPurgeTarget(name, connection, block)
    return AdtTwinsTarget(name, connection, block)


register(
    "adt",
    AdtConnection,
    target=Side(AdtTargetSettings, build_target),
    sandbox_port=8704,
    capabilities=Capabilities(preview=True, no_cancel=NO_CANCEL),
    check=check,
)

__all__ = [
    "AdtConnection",
    "AdtPurgeSettings",
    "AdtPurgeTarget",
    "AdtTargetSettings",
    "AdtTwinsSettings",
    "AdtTwinsTarget",
    "build_target",
    "check_purge_confirmation",
]
