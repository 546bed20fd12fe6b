"""DMM in the sandbox: an OutSystems environment holding demo Customers and Employees."""

from __future__ import annotations

from typing import Any

import httpx

from connectors.dmm.emulator import BASE_PATH, DEMO_OTP, DEMO_TOKEN, DmmEmulator, demo_entities
from connectors.emulation.contract_cases import (
    AMBIGUOUS,
    LOST,
    ContractCase,
    ContractCases,
)
from connectors.emulation.kit import DEMO_PEOPLE, SANDBOX_RETRY, SandboxEmulator

__all__ = ["DMM_BASE", "DMM_OTP", "DMM_TOKEN"]

DMM_BASE, DMM_TOKEN, DMM_OTP = BASE_PATH, DEMO_TOKEN, DEMO_OTP


def describe(url: str) -> list[str]:
    return [
        f"  DMM (OutSystems)       {url}{DMM_BASE}",
        f"    X-DMM-Token {DMM_TOKEN}; X-DMM-Token-OTP {DMM_OTP}; entities Customer "
        f"(ExternalId 0-1..0-{len(DEMO_PEOPLE)}), Employee; rows: {url}/_admin/rows/Customer",
        f"    an operator's delete: curl -X POST {url}/_admin/start_execution "
        """-H 'content-type: application/json' -d '{"entity":"Customer","where":"""
        """"[ExternalId] IN (\\u00270-9\\u0027)"}'""",
        "      then: syncengine follow -p crm_deletions <the tracker id it answers>",
    ]


def delete_in_crm(url: str, entity: str, attribute: str, keys: list[str]) -> str:
    """An operator's own DMM delete execution, started through the DMM API as an
    operator would; its tracker id is returned for `syncengine follow`."""
    literals = ", ".join("'" + key.replace("'", "''") + "'" for key in keys)
    body = {
        "Type": "Delete",
        "Configuration": {
            "DestinationDBConnection": None,
            "EntitiesToDelete": [
                {
                    "OSEntityName": entity,
                    "OSEntitySSKey": None,
                    "ESpaceSsKey": None,
                    "WhereClause": f"[{attribute}] IN ({literals})",
                }
            ],
            "ApplicationDeletionMode": False,
            "ApplicationsToDelete": [],
            "FilterTenants": False,
            "TenantsList": [],
            "IncludeProtectedApplications": False,
        },
    }
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{url}{DMM_BASE}/StartExecution",
            json=body,
            headers={"X-DMM-Token": DMM_TOKEN, "X-DMM-Token-OTP": DMM_OTP},
        )
        response.raise_for_status()
        return str(response.json()["MainExecutionTrackerId"])


def entry(url: str) -> dict[str, Any]:
    return {"url": f"{url}{DMM_BASE}", "token": DMM_TOKEN, "otp": DMM_OTP, "retry": SANDBOX_RETRY}


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = DmmEmulator(step_seconds=step_seconds, chunk_size=5)
    return SandboxEmulator(
        "DMM",
        demo_entities(),
        emulator,
        describe,
        urls={"dmm_url": DMM_BASE},
        actions={"delete_in_crm": delete_in_crm},
        connection=("crm", entry),
    )


CONTRACT_TOKEN, CONTRACT_OTP = "dmm-key-5e4d3c", "dmm-otp-8a7b6c"
CONTRACT_STEP = 0.05


def _frozen() -> float:
    """Time stands still unless the suite steps it."""
    return 1_795_000_000.0


def contract_case() -> ContractCase:
    emulator = DmmEmulator(
        tokens=[CONTRACT_TOKEN], otps=[CONTRACT_OTP], step_seconds=CONTRACT_STEP, clock=_frozen
    )
    emulator.seed(demo_entities())
    return ContractCase(
        emulator,
        connection=lambda url: {
            "url": f"{url}{DMM_BASE}",
            "token": CONTRACT_TOKEN,
            "otp": CONTRACT_OTP,
        },
        target=lambda url: {
            "entity": {"name": "Customer"},
            "key_attribute": "ExternalId",
            "key": "{RECORD_ID}",
            "poll_interval": CONTRACT_STEP,
        },
        key_field="RECORD_ID",
        present="0-1",
        absent="9-99",
        unsafe=("o\u02bcbrien",),
        step=CONTRACT_STEP,
        secrets=(CONTRACT_TOKEN, CONTRACT_OTP),
        revoke=emulator.tokens.clear,
        hint="token",
        not_applicable={
            AMBIGUOUS: "DMM deletes every row its WhereClause matches",
            LOST: "DMM takes no client id and lists no executions, so a lost start "
            "cannot be found and the batch is started again (DmmDeleteTarget.find)",
        },
    )


def contract_cases() -> ContractCases:
    return {"": contract_case}
