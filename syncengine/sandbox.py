"""The sandbox: the emulators on loopback, seeded with demo data.

Tests, the demo and `syncengine sandbox` share it: each emulator on its own
loopback port, with the same cast of people across systems, so a deletion's
path can be followed from Goose to every target.
"""

from __future__ import annotations

import pkgutil
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import httpx

from connectors import load_registry
from connectors.adt.sandbox import ADT_TOKEN
from connectors.contract import SandboxSpec
from connectors.dmm.emulator import BASE_PATH as DMM_BASE
from connectors.dmm.emulator import DEMO_OTP as DMM_OTP
from connectors.dmm.emulator import DEMO_TOKEN as DMM_TOKEN
from connectors.emulator_kit import DEMO_EMPLOYEES, DEMO_PEOPLE, RunningServer, SandboxEmulator
from connectors.goose.sandbox import GOOSE_CODE, GOOSE_ENGINE_KEY, GOOSE_USER_KEY
from connectors.mongoose.sandbox import (
    MONGOOSE_BASE,
    MONGOOSE_CONFIG,
    MONGOOSE_PASSWORD,
    MONGOOSE_USER,
)
from connectors.reltio.sandbox import RELTIO_CLIENT, RELTIO_SECRET, RELTIO_TENANT

HOST = "127.0.0.1"
PEOPLE = list(DEMO_PEOPLE)
EMPLOYEES = list(DEMO_EMPLOYEES)

__all__ = [
    "ADT_TOKEN",
    "DMM_BASE",
    "DMM_OTP",
    "DMM_TOKEN",
    "GOOSE_CODE",
    "GOOSE_ENGINE_KEY",
    "GOOSE_USER_KEY",
    "MONGOOSE_BASE",
    "MONGOOSE_CONFIG",
    "MONGOOSE_PASSWORD",
    "MONGOOSE_USER",
    "RELTIO_CLIENT",
    "RELTIO_SECRET",
    "RELTIO_TENANT",
    "Sandbox",
    "SandboxError",
    "default_ports",
]


def sandboxed() -> dict[str, SandboxSpec]:
    """Every registered connector that has an emulator, by name."""
    registry = load_registry()
    specs = {name: registry.get(name).sandbox for name in registry.names()}
    found = {name: spec for name, spec in specs.items() if spec is not None}
    return dict(sorted(found.items(), key=lambda item: item[1].port))


def default_ports() -> dict[str, int]:
    return {name: spec.port for name, spec in sandboxed().items()}


def _factory(spec: SandboxSpec) -> Callable[[float], SandboxEmulator]:
    made: Callable[[float], SandboxEmulator] = pkgutil.resolve_name(spec.emulator)
    return made


class SandboxError(Exception):
    """The sandbox cannot start, or a config is not safe to demo."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


@dataclass
class Emulated:
    """One emulator of the sandbox: where it listens and what it is seeded with."""

    name: str
    port: int
    emulated: SandboxEmulator
    server: RunningServer | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class Sandbox:
    """Every registered connector's emulator, each on its port (`ports` overrides the
    registry's defaults by connector name)."""

    def __init__(self, ports: Mapping[str, int] | None = None, step_seconds: float = 0.2) -> None:
        specs = sandboxed()
        unknown = sorted(set(ports or {}) - set(specs))
        if unknown:
            raise SandboxError(
                f"no emulator named {', '.join(unknown)}; the sandbox runs: {', '.join(specs)}"
            )
        chosen = {**{name: spec.port for name, spec in specs.items()}, **(ports or {})}
        self.emulators = {
            name: Emulated(name, chosen[name], _factory(spec)(step_seconds))
            for name, spec in specs.items()
        }
        self._stop = threading.Event()

    def emulator(self, name: str) -> Any:
        """The emulator object itself, for tests that turn its knobs."""
        return self.emulators[name].emulated.emulator

    def url(self, name: str) -> str:
        return self.emulators[name].url

    @property
    def goose_url(self) -> str:
        return self.url("goose")

    @property
    def mongoose_url(self) -> str:
        return self.url("mongoose")

    @property
    def adt_url(self) -> str:
        return self.url("adt")

    @property
    def reltio_url(self) -> str:
        return self.url("reltio")

    @property
    def reltio_tenant_url(self) -> str:
        return f"{self.reltio_url}/reltio/api/{RELTIO_TENANT}"

    @property
    def dmm_url(self) -> str:
        return f"{self.url('dmm')}{DMM_BASE}"

    def __enter__(self) -> Sandbox:
        for emu in self.emulators.values():
            if not _port_free(emu.port):
                raise SandboxError(
                    f"{emu.emulated.title} emulator: port {emu.port} on {HOST} is in use "
                    f"(another sandbox?); stop it, or pass --port {emu.name}=PORT and change "
                    "the URLs in your config"
                )
        try:
            with httpx.Client(timeout=10) as client:
                for emu in self.emulators.values():
                    emu.server = RunningServer(emu.emulated.app, HOST, emu.port).start()
                    seed = emu.emulated.seed
                    client.post(f"{emu.url}/_admin/seed", json=seed).raise_for_status()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for emu in self.emulators.values():
            if emu.server is not None:
                emu.server.stop()
                emu.server = None

    def describe(self) -> list[str]:
        lines = ["syncengine sandbox (emulators on loopback, data in memory):"]
        for emu in self.emulators.values():
            lines += emu.emulated.describe(emu.url)
        return lines

    def wait(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            while not self._stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    # --- helpers the demo and tests use -------------------------------------

    def delete_in_goose(self, table: str, ids: list[str], by_key: str | None = None) -> None:
        with httpx.Client(timeout=10) as client:
            client.post(
                f"{self.goose_url}/_admin/delete",
                json={"table": table, "ids": ids, "by_key": by_key},
            ).raise_for_status()

    def admin_get(self, emulator: str, path: str) -> list[dict[str, Any]]:
        with httpx.Client(timeout=10) as client:
            response = client.get(f"{self.url(emulator)}{path}")
            response.raise_for_status()
            rows: list[dict[str, Any]] = response.json()
            return rows

    def mongoose_rows(self, ido: str) -> list[dict[str, Any]]:
        return self.admin_get("mongoose", f"/_admin/rows/{ido}")

    def delete_in_crm(self, entity: str, attribute: str, keys: list[str]) -> str:
        """An operator's own DMM delete execution, started through the DMM API as an
        operator would; its tracker id is returned for `syncengine follow`."""
        literals = ", ".join("'" + key.replace("'", "''") + "'" for key in keys)
        body = {
            "Type": "Delete",
            "Configuration": {
                "DestinationDBConnection": None,
                "EntitiesToDelete": [
                    {
                        "OSEntityName": entity,
                        "OSEntitySSKey": None,
                        "ESpaceSsKey": None,
                        "WhereClause": f"[{attribute}] IN ({literals})",
                    }
                ],
                "ApplicationDeletionMode": False,
                "ApplicationsToDelete": [],
                "FilterTenants": False,
                "TenantsList": [],
                "IncludeProtectedApplications": False,
            },
        }
        with httpx.Client(timeout=10) as client:
            response = client.post(
                f"{self.dmm_url}/StartExecution",
                json=body,
                headers={"X-DMM-Token": DMM_TOKEN, "X-DMM-Token-OTP": DMM_OTP},
            )
            response.raise_for_status()
            return str(response.json()["MainExecutionTrackerId"])
