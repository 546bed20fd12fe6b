"""DMM in the sandbox: an OutSystems environment holding demo Customers and Employees."""

from __future__ import annotations

from connectors.dmm.emulator import BASE_PATH, DEMO_OTP, DEMO_TOKEN, DmmEmulator, demo_entities
from connectors.emulator_kit import DEMO_PEOPLE, SandboxEmulator


def describe(url: str) -> list[str]:
    return [
        f"  DMM (OutSystems)       {url}{BASE_PATH}",
        f"    X-DMM-Token {DEMO_TOKEN}; X-DMM-Token-OTP {DEMO_OTP}; entities Customer "
        f"(ExternalId 0-1..0-{len(DEMO_PEOPLE)}), Employee; rows: {url}/_admin/rows/Customer",
        f"    an operator's delete: curl -X POST {url}/_admin/start_execution "
        """-H 'content-type: application/json' -d '{"entity":"Customer","where":"""
        """"[ExternalId] IN (\\u00270-9\\u0027)"}'""",
        "      then: syncengine follow -p crm_deletions <the tracker id it answers>",
    ]


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = DmmEmulator(step_seconds=step_seconds, chunk_size=5)
    return SandboxEmulator("DMM", emulator.app, demo_entities(), emulator, describe)
