"""`syncengine check`: is every connection usable, before a run finds out.

Each connection is checked by its connector's checker (reach, TLS, credentials, then
the read-only call that proves the configured table, IDO, tenant, instance or
connection exists), all connections at once. A connection gets a deadline from its
own timeout; one that outlasts it keeps the lines it produced and gets one more
saying where it stopped. Nothing here, nor in any checker, changes a remote system.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console

from connectors import registry
from connectors.contract import Probe
from syncengine.config import Config

STEPS_PER_DEADLINE = 8
"""A connection's check may take this many of its timeouts: resolution, connection and
TLS for two hosts, a token and a read, with room for the client's retries."""


def blocks_using(config: Config, connection: str) -> list[Any]:
    """The validated source and target blocks of every pipeline on `connection`."""
    blocks: list[Any] = []
    for pipe in config.pipelines.values():
        if pipe.source.connection == connection and pipe.source.settings is not None:
            blocks.append(pipe.source.settings)
        blocks.extend(t.settings for t in pipe.targets.values() if t.connection == connection)
    return blocks


async def check_connection(config: Config, name: str) -> list[Probe]:
    settings = config.connections[name]
    checker = registry.get(settings.type).check
    if checker is None:
        return [Probe(name, "check", True, f"not checkable: type {settings.type} has no check")]
    probes: list[Probe] = []
    seconds = float(settings.timeout) * STEPS_PER_DEADLINE
    try:
        async with asyncio.timeout(seconds):
            async for probe in checker(name, settings, blocks_using(config, name)):
                probes.append(probe)
    except TimeoutError:
        after = probes[-1].step if probes else "start"
        probes.append(
            Probe(
                name,
                "check",
                False,
                f"no end within {seconds:g}s (after {after}); "
                f"raise connections.{name}.timeout if the system is this slow",
            )
        )
    return probes


async def check_connections(config: Config, only: str | None = None) -> list[Probe]:
    """Every connection's probes (or `only` that one's), in the file's order."""
    names = [only] if only is not None else list(config.connections)
    results = await asyncio.gather(*(check_connection(config, name) for name in names))
    return [probe for probes in results for probe in probes]


def exit_code(probes: Sequence[Probe]) -> int:
    return 0 if all(probe.ok for probe in probes) else 1


def as_json(probes: Sequence[Probe]) -> list[dict[str, Any]]:
    return [asdict(probe) for probe in probes]


def render(probes: Sequence[Probe], out: Console) -> None:
    """One aligned line per step: connection, step, ok or FAILED, the detail."""
    width = max((len(p.connection) for p in probes), default=0)
    step = max((len(p.step) for p in probes), default=0)
    for probe in probes:
        verdict = "ok    " if probe.ok else "FAILED"
        out.print(
            f"{probe.connection:<{width}}  {probe.step:<{step}}  {verdict}  {probe.detail}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
