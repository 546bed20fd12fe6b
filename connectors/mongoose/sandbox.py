"""Mongoose in the sandbox: the emulator seeded with demo users and employees."""

from __future__ import annotations

from typing import Any

import httpx

from connectors.emulation.contract_cases import NO_JOBS, ContractCase, ContractCases
from connectors.emulation.kit import DEMO_EMPLOYEES, DEMO_PEOPLE, SandboxEmulator
from connectors.mongoose.emulator import DEFAULT_BASE_PATH, MongooseEmulator, demo_rows

__all__ = ["MONGOOSE_BASE", "MONGOOSE_CONFIG", "MONGOOSE_PASSWORD", "MONGOOSE_USER"]

MONGOOSE_CONFIG = "DEMO"
MONGOOSE_USER = "sync"
MONGOOSE_PASSWORD = "sbx-mongoose-8d2e"  # noqa: S105  (the sandbox's published demo password)
MONGOOSE_BASE = "/IDORequestService/MGRESTService.svc"


def mongoose_seed() -> dict[str, Any]:
    return {
        "UserNames": [{"Username": user, "UserDesc": name} for user, name in DEMO_PEOPLE],
        "SLEmployees": [{"EmpNum": emp, "Name": name} for emp, name in DEMO_EMPLOYEES],
    }


def describe(url: str) -> list[str]:
    return [
        f"  Mongoose IDO REST      {url}{MONGOOSE_BASE}",
        f"    config {MONGOOSE_CONFIG}; user {MONGOOSE_USER}; password {MONGOOSE_PASSWORD}",
        f"    IDOs UserNames ({len(DEMO_PEOPLE)} rows), SLEmployees ({len(DEMO_EMPLOYEES)} rows); "
        f"rows: {url}/_admin/rows/UserNames",
        f"    REST v2 (api: v2) at {url}/IDORequestService; knobs: {url}/_admin/settings",
    ]


def mongoose_rows(url: str, ido: str) -> list[dict[str, Any]]:
    """The rows an IDO still holds."""
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{url}/_admin/rows/{ido}")
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()
        return rows


def entry(url: str) -> dict[str, Any]:
    return {
        "url": f"{url}{MONGOOSE_BASE}",
        "config": MONGOOSE_CONFIG,
        "user": MONGOOSE_USER,
        "password": MONGOOSE_PASSWORD,
    }


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = MongooseEmulator(config=MONGOOSE_CONFIG, users={MONGOOSE_USER: MONGOOSE_PASSWORD})
    return SandboxEmulator(
        "Mongoose",
        mongoose_seed(),
        emulator,
        describe,
        actions={"mongoose_rows": mongoose_rows},
        connection=("erp", entry),
    )


CONTRACT_PASSWORD = "pw-9f8e7d-secret"  # noqa: S105  (the contract suite's own)
CONTRACT_ION_TOKEN = "ion-bearer-5c4b3a-secret"  # noqa: S105


def _second_jrossi(emulator: MongooseEmulator) -> str:
    emulator.seed({"UserNames": [{"Username": "jrossi", "UserDesc": "Another Rossi"}]})
    return "jrossi"


def contract_case() -> ContractCase:
    emulator = MongooseEmulator(
        users={MONGOOSE_USER: CONTRACT_PASSWORD}, bearer_tokens=[CONTRACT_ION_TOKEN]
    )
    emulator.seed(demo_rows())
    return ContractCase(
        emulator,
        connection=lambda url: {
            "url": url + DEFAULT_BASE_PATH,
            "config": MONGOOSE_CONFIG,
            "user": MONGOOSE_USER,
            "password": CONTRACT_PASSWORD,
        },
        target=lambda url: {
            "ido": "UserNames",
            "key": "{SYKEY}",
            "lookup": {"property": "Username"},
        },
        key_field="SYKEY",
        present="jrossi",
        absent="exemployee",
        unsafe=("a\x00b", "o\u02bcbrien"),
        secrets=(CONTRACT_PASSWORD, CONTRACT_ION_TOKEN),
        revoke=lambda: emulator.knobs.update({"refuse_tokens": True}),
        renews_at="/json/token/",
        ambiguous=lambda: _second_jrossi(emulator),
        not_applicable=NO_JOBS,
    )


def contract_cases() -> ContractCases:
    return {"": contract_case}
