"""Mongoose in the sandbox: the emulator seeded with demo users and employees."""

from __future__ import annotations

from typing import Any

from connectors.emulator_kit import DEMO_EMPLOYEES, DEMO_PEOPLE, SandboxEmulator
from connectors.mongoose.emulator import MongooseEmulator

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


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = MongooseEmulator(config=MONGOOSE_CONFIG, users={MONGOOSE_USER: MONGOOSE_PASSWORD})
    return SandboxEmulator("Mongoose", emulator.app, mongoose_seed(), emulator, describe)
