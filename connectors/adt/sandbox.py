"""Azure Digital Twins in the sandbox: an instance holding the demo twin graph."""

from __future__ import annotations

from connectors.adt.emulator import AdtEmulator, demo_graph
from connectors.emulator_kit import SandboxEmulator

ADT_TOKEN = "sbx-adt-token-51c0"  # noqa: S105  (the sandbox's published demo token)


def describe(url: str) -> list[str]:
    return [
        f"  Azure Digital Twins    {url}  (api-version 2023-10-31)",
        f"    bearer token {ADT_TOKEN}; twins: {url}/_admin/twins",
    ]


def emulated(step_seconds: float) -> SandboxEmulator:
    emulator = AdtEmulator(tokens=(ADT_TOKEN,), step_seconds=step_seconds)
    return SandboxEmulator("Azure Digital Twins", emulator.app, demo_graph(), emulator, describe)
