"""Reltio in the sandbox: a tenant seeded with the demo people as Individuals."""

from __future__ import annotations

from typing import Any

from connectors.emulation.contract_cases import (
    AMBIGUOUS,
    PATH_UNSAFE,
    ContractCase,
    ContractCases,
)
from connectors.emulation.kit import DEMO_PEOPLE, SANDBOX_RETRY, SandboxEmulator
from connectors.reltio.emulator import ReltioEmulator, demo_entities

__all__ = ["RELTIO_CLIENT", "RELTIO_SECRET", "RELTIO_TENANT"]

RELTIO_TENANT = "SBXTENANT"
RELTIO_CLIENT = "syncengine"
RELTIO_SECRET = "sbx-reltio-secret-7a2f"  # noqa: S105  (the sandbox's published demo secret)


def describe(url: str) -> list[str]:
    people = len(DEMO_PEOPLE)
    return [
        f"  Reltio tenant          {url}/reltio/api/{RELTIO_TENANT}",
        f"    token URL {url}/oauth/token; client {RELTIO_CLIENT}; secret {RELTIO_SECRET}",
        f"    {people} Individuals with GOOSE crosswalks 0-1..0-{people}; "
        f"entities: {url}/_admin/entities",
        f"    an operator's delete task: curl -X POST {url}/_admin/delete_task "
        """-H 'content-type: application/json' -d '{"uris":["entities/<id>"]}'""",
    ]


def entry(url: str) -> dict[str, Any]:
    return {
        "tenant_url": f"{url}/reltio/api/{RELTIO_TENANT}",
        "auth_url": f"{url}/oauth/token",
        "client_id": RELTIO_CLIENT,
        "client_secret": RELTIO_SECRET,
        "retry": SANDBOX_RETRY,
    }


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = ReltioEmulator(
        tenant=RELTIO_TENANT, clients={RELTIO_CLIENT: RELTIO_SECRET}, step_seconds=step_seconds
    )
    seed = {"entities": demo_entities()}
    return SandboxEmulator(
        "Reltio",
        seed,
        emulator,
        describe,
        urls={"reltio_tenant_url": f"/reltio/api/{RELTIO_TENANT}"},
        connection=("mdm", entry),
    )


CONTRACT_SECRET = "cl-secret-5e4d3c"  # noqa: S105  (the contract suite's own)
CONTRACT_PASSWORD = "user-pw-8a7b6c"  # noqa: S105
CONTRACT_STEP = 0.05


def _refuse_tokens(emulator: ReltioEmulator) -> None:
    """Tokens issued from now on expire at once, and those held already are gone."""
    emulator.knobs.update({"token_lifetime": 1e-9})
    emulator.expire_tokens()


def contract_case() -> ContractCase:
    emulator = ReltioEmulator(
        clients={RELTIO_CLIENT: CONTRACT_SECRET},
        users={"jdoe": CONTRACT_PASSWORD},
        step_seconds=CONTRACT_STEP,
    )
    entities = demo_entities()
    emulator.seed(entities)
    return ContractCase(
        emulator,
        connection=lambda url: {
            "tenant_url": f"{url}/reltio/api/TENANT",
            "auth_url": f"{url}/oauth/token",
            "client_id": RELTIO_CLIENT,
            "client_secret": CONTRACT_SECRET,
        },
        target=lambda url: {"entity": "entities/{RELTIO_ID}", "poll_interval": CONTRACT_STEP},
        key_field="RELTIO_ID",
        present=str(entities[0]["id"]),
        absent="nosuchentity",
        unsafe=PATH_UNSAFE,
        step=CONTRACT_STEP,
        secrets=(CONTRACT_SECRET, CONTRACT_PASSWORD),
        revoke=lambda: _refuse_tokens(emulator),
        renews_at="/oauth/token",
        jobs=lambda: len(emulator.tasks()),
        not_applicable={AMBIGUOUS: "an entity id names one entity"},
    )


def contract_cases() -> ContractCases:
    return {"": contract_case}
