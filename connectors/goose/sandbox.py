"""Goose in the sandbox: the emulator seeded with demo contacts, employees and sites."""

from __future__ import annotations

from typing import Any

import httpx

from connectors.emulation.contract_cases import (
    AMBIGUOUS,
    NO_JOBS,
    UNSAFE,
    ContractCase,
    ContractCases,
)
from connectors.emulation.kit import DEMO_EMPLOYEES, DEMO_PEOPLE, SandboxEmulator
from connectors.goose.emulator import GooseEmulator

__all__ = ["GOOSE_CODE", "GOOSE_ENGINE_KEY", "GOOSE_USER_KEY"]

GOOSE_CODE = "DEV001"
GOOSE_ENGINE_KEY = "sbx-engine-4f1c9a7e2b"
GOOSE_USER_KEY = "sbx-user-93b7d0c6a1"


def goose_seed() -> dict[str, Any]:
    contacts = [
        {"RECORD_ID": f"0-{i}", "SYKEY": user, "CORAS": name}
        for i, (user, name) in enumerate(DEMO_PEOPLE[:12], start=1)
    ]
    contacts.append({"RECORD_ID": "0-13", "SYKEY": "exemployee", "CORAS": "Former Employee"})
    contacts.append({"RECORD_ID": "0-14", "SYKEY": "", "CORAS": "Contact without a user name"})
    sites = [
        {"RECORD_ID": "SITE-HQ", "SYKEY": "hq", "CORAS": "Head office, Milano"},
        {"RECORD_ID": "SITE-LAB", "SYKEY": "lab", "CORAS": "Laboratory, Torino"},
    ]
    employees = [
        {"RECORD_ID": f"1-{i}", "SYKEY": emp, "CORAS": name}
        for i, (emp, name) in enumerate(DEMO_EMPLOYEES, start=1)
    ]
    return {
        "companies": {GOOSE_CODE: [GOOSE_ENGINE_KEY, GOOSE_USER_KEY]},
        "tables": {"CON_TRO": contacts, "ANA_DIP": employees, "ANA_SED": sites},
    }


def describe(url: str) -> list[str]:
    return [
        f"  Goose DELETED service  {url}/deleted/",
        f"    code {GOOSE_CODE}; engine key {GOOSE_ENGINE_KEY}; user key {GOOSE_USER_KEY}",
        f"    tables CON_TRO (14 contacts), ANA_DIP ({len(DEMO_EMPLOYEES)} employees), "
        "ANA_SED (2 sites)",
        f"    delete as a user: curl -X POST {url}/_admin/delete "
        """-H 'content-type: application/json' -d '{"table":"CON_TRO","ids":["0-1"]}'""",
    ]


def delete_in_goose(url: str, table: str, ids: list[str], by_key: str | None = None) -> None:
    """Records deleted as a Goose user would (`by_key`: as the API with that key)."""
    with httpx.Client(timeout=10) as client:
        client.post(
            f"{url}/_admin/delete", json={"table": table, "ids": ids, "by_key": by_key}
        ).raise_for_status()


def entry(url: str) -> dict[str, Any]:
    # The emulator has no rate limit; the demo need not wait as Goose's 5 calls a second would.
    return {
        "url": f"{url}/deleted/",
        "code": GOOSE_CODE,
        "key": GOOSE_ENGINE_KEY,
        "calls_per_second": 50,
    }


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = GooseEmulator(timezone="Europe/Rome")
    return SandboxEmulator(
        "Goose",
        goose_seed(),
        emulator,
        describe,
        actions={"delete_in_goose": delete_in_goose},
        connection=("goose", entry),
    )


CONTRACT_KEY = "engine-key-0123456789abcdef"
CONTRACT_USER_KEY = "user-key-9876543210"


def contract_case() -> ContractCase:
    emulator = GooseEmulator(timezone="Europe/Rome")
    emulator.seed(
        {GOOSE_CODE: [CONTRACT_KEY, CONTRACT_USER_KEY]},
        {"CON_TRO": [{"RECORD_ID": "0-1", "SYKEY": "user1"}]},
    )
    return ContractCase(
        emulator,
        connection=lambda url: {
            "url": f"{url}/deleted/",
            "code": GOOSE_CODE,
            "key": CONTRACT_KEY,
            "timezone": "Europe/Rome",
            "calls_per_second": 1000,
        },
        target=lambda url: {"table": "CON_TRO", "id": "{RECORD_ID}"},
        key_field="RECORD_ID",
        present="0-1",
        absent="0-99",
        secrets=(CONTRACT_KEY, CONTRACT_USER_KEY),
        revoke=lambda: emulator.seed({"ANOTHER": [CONTRACT_KEY]}, {}),
        hint="key",
        not_applicable={
            UNSAFE: "Goose takes the id as a JSON value in the body; every text is safe",
            AMBIGUOUS: "a RECORD_ID names one record of its table",
            **NO_JOBS,
        },
    )


def contract_cases() -> ContractCases:
    return {"": contract_case}
