"""Every registered target kind, as the target contract suite runs it.

Nothing here names a connector: each registry entry points at its package's
`contract_cases()` (`SandboxSpec.contract`), and the target is built through the entry
itself, from the case's connection and target blocks validated by the entry's models,
so the suite also proves what a configuration would build. A case that does not apply
to a target is declared by its package, with the reason, in `not_applicable`: the suite
skips it naming that reason, never passes it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import pkgutil
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from connectors import load_registry
from connectors.contract import (
    AsyncTarget,
    ConnectorInfo,
    Delivery,
    JobHandle,
    JobSpec,
    Outcome,
    Previewable,
    Target,
)
from connectors.emulation.contract_cases import ContractCase, ContractCases
from connectors.emulation.kit import LoggedRequest
from connectors.kit.serving import serve


@dataclass
class Harness:
    """A built target, its emulator and the case that says how to address it."""

    target: Target | AsyncTarget
    case: ContractCase
    connection: str
    """The connection's name, as a refusal must name it (`connections.<name>.`)."""

    @property
    def emulator(self) -> Any:
        return self.case.emulator

    @property
    def hint(self) -> str:
        return f"connections.{self.connection}.{self.case.hint}"

    def delivery(self, n: int, key: str) -> Delivery:
        return self.case.delivery(n, key)

    async def deliver(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """`send`, or a job submitted and polled to its end, moving the emulator's clock."""
        if isinstance(self.target, Target):
            return await self.target.send(batch)
        job = self.job(batch)
        return await self.finish(job, await self.target.submit(job))

    def job(self, batch: Sequence[Delivery]) -> JobSpec:
        return JobSpec(job_id=1, client_id="contract-job-1", items=list(batch))

    async def finish(self, job: JobSpec, handle: JobHandle) -> list[Outcome]:
        """Polls the job to its end, moving the emulator's clock between polls."""
        assert isinstance(self.target, AsyncTarget)
        for _ in range(50):
            progress = await self.target.poll(job, handle)
            if progress.state.terminal:
                return list(progress.outcomes)
            self.emulator.step(self.case.step)
        raise AssertionError("the job never ended")

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        assert isinstance(self.target, Previewable)
        return await self.target.preview(batch)

    async def requests(self) -> list[LoggedRequest]:
        """The emulator logs a request just after answering it; let the last entry land."""
        await asyncio.sleep(0.05)
        return list(self.emulator.log.entries)


Factory = Callable[[], contextlib.AbstractAsyncContextManager[Harness]]
QUICK = {"timeout": 5, "retry": {"max_attempts": 2, "base_delay": 0.001, "max_delay": 0.005}}
"""Connection settings that keep the suite fast against emulators that answer at once."""


def _factory(info: ConnectorInfo, make: Callable[[], ContractCase]) -> Factory:
    @contextlib.asynccontextmanager
    async def built() -> AsyncIterator[Harness]:
        assert info.build_target is not None and info.target_settings is not None
        case = make()
        with serve(case.emulator.app) as running:
            connection = info.connection_settings.model_validate(
                {"type": info.name, **QUICK, **case.connection(running.url)}
            )
            settings = info.target_settings.model_validate(case.target(running.url))
            target = info.build_target(info.name, connection, settings)
            try:
                yield Harness(target, case, info.name)
            finally:
                await target.aclose()

    return built


def registered_targets() -> dict[str, Factory]:
    """Every target kind of every registered connector with a target, by case id."""
    registry = load_registry()
    factories: dict[str, Factory] = {}
    for name in registry.names():
        info = registry.get(name)
        if info.build_target is None:
            continue
        assert info.sandbox is not None and info.sandbox.contract, (
            f"{name}: a target needs an emulator and contract cases in its sandbox.py"
        )
        cases: ContractCases = pkgutil.resolve_name(info.sandbox.contract)()
        for kind, make in cases.items():
            factories["-".join(filter(None, (name, kind)))] = _factory(info, make)
    return factories


FACTORIES = registered_targets()
