"""Goose in the sandbox: the emulator seeded with demo contacts, employees and sites."""

from __future__ import annotations

from typing import Any

from connectors.emulator_kit import DEMO_EMPLOYEES, DEMO_PEOPLE, SandboxEmulator
from connectors.goose.emulator import GooseEmulator

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


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = GooseEmulator(timezone="Europe/Rome")
    return SandboxEmulator("Goose", emulator.app, goose_seed(), emulator, describe)
