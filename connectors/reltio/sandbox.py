"""Reltio in the sandbox: a tenant seeded with the demo people as Individuals."""

from __future__ import annotations

from connectors.emulator_kit import DEMO_PEOPLE, SandboxEmulator
from connectors.reltio.emulator import ReltioEmulator, demo_entities

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


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = ReltioEmulator(
        tenant=RELTIO_TENANT, clients={RELTIO_CLIENT: RELTIO_SECRET}, step_seconds=step_seconds
    )
    seed = {"entities": demo_entities()}
    return SandboxEmulator("Reltio", emulator.app, seed, emulator, describe)
