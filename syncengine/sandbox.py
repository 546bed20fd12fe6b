"""The sandbox: the emulators on loopback, seeded with demo data.

Tests, the demo and `syncengine sandbox` share it: each emulator on its own
loopback port, with the same cast of people across systems, so a deletion's
path can be followed from Goose to every target.
"""

from __future__ import annotations

import functools
import importlib
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
from connectors.contract import SandboxSpec
from connectors.emulation.kit import DEMO_EMPLOYEES, DEMO_PEOPLE, SandboxEmulator
from connectors.kit.serving import RunningServer

HOST = "127.0.0.1"
PEOPLE = list(DEMO_PEOPLE)
EMPLOYEES = list(DEMO_EMPLOYEES)

__all__ = ["EMPLOYEES", "HOST", "PEOPLE", "Sandbox", "SandboxError", "default_ports"]


def sandboxed() -> dict[str, SandboxSpec]:
    """Every registered connector that has an emulator, by name."""
    registry = load_registry()
    specs = {name: registry.get(name).sandbox for name in registry.names()}
    found = {name: spec for name, spec in specs.items() if spec is not None}
    return dict(sorted(found.items(), key=lambda item: item[1].port))


def __getattr__(name: str) -> Any:
    """A connector's published demo credentials (its sandbox module's `__all__`), by name:
    the demo and the end-to-end tests import them from here, whichever connector
    publishes them, so a new connector adds none here."""
    for spec in sandboxed().values():
        module = importlib.import_module(spec.emulator.partition(":")[0])
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    registry's defaults by connector name; 0 is any free port, known once started)."""

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

    def __getattr__(self, name: str) -> Any:
        """`<connector>_url`, and what each emulator declares: its named `urls` and its
        `actions`, the latter bound to its root URL (see `SandboxEmulator`)."""
        emulators = self.__dict__.get("emulators", {})
        for emu in emulators.values():
            declared = emu.emulated
            if name in declared.actions:
                return functools.partial(declared.actions[name], emu.url)
            if name in declared.urls:
                return emu.url + declared.urls[name]
        connector = name.removesuffix("_url")
        if name.endswith("_url") and connector in emulators:
            return self.url(connector)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def __enter__(self) -> Sandbox:
        for emu in self.emulators.values():
            if emu.port and not _port_free(emu.port):
                raise SandboxError(
                    f"{emu.emulated.title} emulator: port {emu.port} on {HOST} is in use "
                    f"(another sandbox?); stop it, or pass --port {emu.name}=PORT and change "
                    "the URLs in your config"
                )
        try:
            with httpx.Client(timeout=10) as client:
                for emu in self.emulators.values():
                    emu.server = RunningServer(emu.emulated.app, HOST, emu.port).start()
                    emu.port = emu.server.port
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

    def admin_get(self, emulator: str, path: str) -> list[dict[str, Any]]:
        with httpx.Client(timeout=10) as client:
            response = client.get(f"{self.url(emulator)}{path}")
            response.raise_for_status()
            rows: list[dict[str, Any]] = response.json()
            return rows
