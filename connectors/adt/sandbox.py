"""Azure Digital Twins in the sandbox: an instance holding the demo twin graph."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connectors.adt.emulator import AdtEmulator, demo_graph
from connectors.emulation.contract_cases import (
    AMBIGUOUS,
    KEYED,
    NO_JOBS,
    PATH_UNSAFE,
    UNSAFE,
    ContractCase,
    ContractCases,
)
from connectors.emulation.kit import SANDBOX_RETRY, SandboxEmulator

__all__ = ["ADT_TOKEN"]

ADT_TOKEN = "sbx-adt-token-51c0"  # noqa: S105  (the sandbox's published demo token)


def describe(url: str) -> list[str]:
    return [
        f"  Azure Digital Twins    {url}  (api-version 2023-10-31)",
        f"    bearer token {ADT_TOKEN}; twins: {url}/_admin/twins",
    ]


def entry(url: str) -> dict[str, Any]:
    return {"url": url, "token": ADT_TOKEN, "retry": SANDBOX_RETRY}


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = AdtEmulator(tokens=(ADT_TOKEN,), step_seconds=step_seconds)
    return SandboxEmulator(
        "Azure Digital Twins",
        demo_graph(),
        emulator,
        describe,
        connection=("twins", entry),
    )


CONTRACT_TOKEN = "static-tok-51c0-secret"  # noqa: S105  (the contract suite's own)
CONTRACT_CLIENT, CONTRACT_SECRET = "syncengine", "cc-secret-0a9b8c"
PURGE_STEP = 60.0
PURGE_T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PURGE_IS_WHOLE_INSTANCE = (
    "the ADT purge deletes the whole instance on a trigger key; it addresses no record by key"
)


def _refuse_tokens(emulator: AdtEmulator) -> None:
    emulator.token_lifetime = 0
    emulator.expire_tokens()


def twins_case() -> ContractCase:
    emulator = AdtEmulator(tokens=[CONTRACT_TOKEN], clients={CONTRACT_CLIENT: CONTRACT_SECRET})
    emulator.seed(demo_graph())
    return ContractCase(
        emulator,
        connection=lambda url: {
            "url": url,
            "token_url": f"{url}/oauth2/token",
            "client_id": CONTRACT_CLIENT,
            "client_secret": CONTRACT_SECRET,
        },
        target=lambda url: {"kind": "twins", "twin_id": "{RECORD_ID}"},
        key_field="RECORD_ID",
        present="0-1",
        absent="no-such-twin",
        unsafe=PATH_UNSAFE,
        secrets=(CONTRACT_SECRET, CONTRACT_TOKEN),
        revoke=lambda: _refuse_tokens(emulator),
        renews_at="/oauth2/token",
        hint="client_id",
        not_applicable={AMBIGUOUS: "a twin id names one twin", **NO_JOBS},
    )


def purge_case() -> ContractCase:
    emulator = AdtEmulator(tokens=[CONTRACT_TOKEN], step_seconds=PURGE_STEP, clock=lambda: PURGE_T0)
    emulator.seed(demo_graph())
    return ContractCase(
        emulator,
        connection=lambda url: {
            "url": url,
            "token": CONTRACT_TOKEN,
        },
        target=lambda url: {
            "kind": "purge",
            "confirm_purge": url.removeprefix("http://"),
            "trigger_keys": ["PURGE-*", "wipe"],
            "poll_interval": "50ms",
        },
        key_field="RECORD_ID",
        present="PURGE-1",
        step=PURGE_STEP,
        secrets=(CONTRACT_TOKEN,),
        revoke=emulator.tokens.clear,
        hint="token",
        jobs=lambda: len(emulator.jobs()),
        not_applicable=dict.fromkeys((UNSAFE, KEYED, AMBIGUOUS), PURGE_IS_WHOLE_INSTANCE),
    )


def contract_cases() -> ContractCases:
    return {"twins": twins_case, "purge": purge_case}
