"""The sandbox: the emulators on loopback with demo data, and the demo that uses them.

The demo drives the emulators only through their admin endpoints, as a
user would, and refuses any configuration whose connections leave the
sandbox: a demo must never touch a real system.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from starlette.types import ASGIApp

from connectors.adt.emulator import AdtEmulator, demo_graph
from connectors.emulator_kit import DEMO_PEOPLE, RunningServer
from connectors.goose.emulator import GooseEmulator
from connectors.mongoose.emulator import MongooseEmulator
from connectors.reltio.emulator import ReltioEmulator, demo_entities
from state import Store
from state.db import sqlite_path
from syncengine.config import Config
from syncengine.engine import RunReport, Runtime, build_runtime

HOST = "127.0.0.1"
GOOSE_CODE = "DEV001"
GOOSE_ENGINE_KEY = "sbx-engine-4f1c9a7e2b"
GOOSE_USER_KEY = "sbx-user-93b7d0c6a1"
MONGOOSE_CONFIG = "DEMO"
MONGOOSE_USER = "sync"
MONGOOSE_PASSWORD = "sbx-mongoose-8d2e"  # noqa: S105  (the sandbox's published demo password)
MONGOOSE_BASE = "/IDORequestService/MGRESTService.svc"
ADT_TOKEN = "sbx-adt-token-51c0"  # noqa: S105  (the sandbox's published demo token)
RELTIO_TENANT = "SBXTENANT"
RELTIO_CLIENT = "syncengine"
RELTIO_SECRET = "sbx-reltio-secret-7a2f"  # noqa: S105  (the sandbox's published demo secret)

PEOPLE = list(DEMO_PEOPLE)
EMPLOYEES = [(f"E{n:04d}", name) for n, (_, name) in enumerate(PEOPLE[:8], start=101)]


def goose_seed() -> dict[str, Any]:
    contacts = [
        {"RECORD_ID": f"0-{i}", "SYKEY": user, "CORAS": name}
        for i, (user, name) in enumerate(PEOPLE[:12], start=1)
    ]
    contacts.append({"RECORD_ID": "0-13", "SYKEY": "exemployee", "CORAS": "Former Employee"})
    contacts.append({"RECORD_ID": "0-14", "SYKEY": "", "CORAS": "Contact without a user name"})
    sites = [
        {"RECORD_ID": "SITE-HQ", "SYKEY": "hq", "CORAS": "Head office, Milano"},
        {"RECORD_ID": "SITE-LAB", "SYKEY": "lab", "CORAS": "Laboratory, Torino"},
    ]
    employees = [
        {"RECORD_ID": f"1-{i}", "SYKEY": emp, "CORAS": name}
        for i, (emp, name) in enumerate(EMPLOYEES, start=1)
    ]
    return {
        "companies": {GOOSE_CODE: [GOOSE_ENGINE_KEY, GOOSE_USER_KEY]},
        "tables": {"CON_TRO": contacts, "ANA_DIP": employees, "ANA_SED": sites},
    }


def mongoose_seed() -> dict[str, Any]:
    return {
        "UserNames": [{"Username": user, "UserDesc": name} for user, name in PEOPLE],
        "SLEmployees": [{"EmpNum": emp, "Name": name} for emp, name in EMPLOYEES],
    }


def reltio_seed() -> dict[str, Any]:
    return {"entities": demo_entities()}


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
    flag: str
    app: ASGIApp
    port: int
    seed: dict[str, Any]
    server: RunningServer | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class Sandbox:
    def __init__(
        self,
        goose_port: int = 8701,
        mongoose_port: int = 8702,
        adt_port: int = 8704,
        reltio_port: int = 8703,
        step_seconds: float = 0.2,
    ) -> None:
        self.goose = GooseEmulator(timezone="Europe/Rome")
        self.mongoose = MongooseEmulator(
            config=MONGOOSE_CONFIG, users={MONGOOSE_USER: MONGOOSE_PASSWORD}
        )
        self.adt = AdtEmulator(tokens=(ADT_TOKEN,), step_seconds=step_seconds)
        self.reltio = ReltioEmulator(
            tenant=RELTIO_TENANT, clients={RELTIO_CLIENT: RELTIO_SECRET}, step_seconds=step_seconds
        )
        self.emulators = {
            "goose": Emulated("Goose", "--goose-port", self.goose.app, goose_port, goose_seed()),
            "mongoose": Emulated(
                "Mongoose", "--mongoose-port", self.mongoose.app, mongoose_port, mongoose_seed()
            ),
            "reltio": Emulated(
                "Reltio", "--reltio-port", self.reltio.app, reltio_port, reltio_seed()
            ),
            "adt": Emulated(
                "Azure Digital Twins", "--adt-port", self.adt.app, adt_port, demo_graph()
            ),
        }
        self._stop = threading.Event()

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

    def __enter__(self) -> Sandbox:
        for emu in self.emulators.values():
            if not _port_free(emu.port):
                raise SandboxError(
                    f"{emu.name} emulator: port {emu.port} on {HOST} is in use (another "
                    f"sandbox?); stop it, or pass {emu.flag} and change the URLs in your config"
                )
        try:
            with httpx.Client(timeout=10) as client:
                for emu in self.emulators.values():
                    emu.server = RunningServer(emu.app, HOST, emu.port).start()
                    client.post(f"{emu.url}/_admin/seed", json=emu.seed).raise_for_status()
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
        return [
            "syncengine sandbox (emulators on loopback, data in memory):",
            f"  Goose DELETED service  {self.goose_url}/deleted/",
            f"    code {GOOSE_CODE}; engine key {GOOSE_ENGINE_KEY}; user key {GOOSE_USER_KEY}",
            f"    tables CON_TRO (14 contacts), ANA_DIP ({len(EMPLOYEES)} employees), "
            "ANA_SED (2 sites)",
            f"    delete as a user: curl -X POST {self.goose_url}/_admin/delete "
            """-H 'content-type: application/json' -d '{"table":"CON_TRO","ids":["0-1"]}'""",
            f"  Mongoose IDO REST      {self.mongoose_url}{MONGOOSE_BASE}",
            f"    config {MONGOOSE_CONFIG}; user {MONGOOSE_USER}; password {MONGOOSE_PASSWORD}",
            f"    IDOs UserNames ({len(PEOPLE)} rows), SLEmployees ({len(EMPLOYEES)} rows); "
            f"rows: {self.mongoose_url}/_admin/rows/UserNames",
            f"  Reltio tenant          {self.reltio_tenant_url}",
            f"    token URL {self.reltio_url}/oauth/token; client {RELTIO_CLIENT}; "
            f"secret {RELTIO_SECRET}",
            f"    {len(PEOPLE)} Individuals with GOOSE crosswalks 0-1..0-{len(PEOPLE)}; "
            f"entities: {self.reltio_url}/_admin/entities",
            f"  Azure Digital Twins    {self.adt_url}  (api-version 2023-10-31)",
            f"    bearer token {ADT_TOKEN}; twins: {self.adt_url}/_admin/twins",
        ]

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


def check_demo_safe(config: Config, sandbox: Sandbox) -> None:
    """Refuse to demo against anything but the sandbox and a local SQLite file."""
    allowed = {(HOST, emu.port) for emu in sandbox.emulators.values()}
    for name, connection in config.connections.items():
        for field in type(connection).model_fields:
            value = getattr(connection, field)
            if not field.endswith("url") or value is None:
                continue
            url = urlsplit(str(value))
            if (url.hostname, url.port) not in allowed:
                raise SandboxError(
                    f"{config.path}: connections.{name}.{field} {url.geturl()!r} is not a "
                    "sandbox emulator; the demo only runs against the sandbox (use the shipped "
                    "config.yaml)"
                )
    from sqlalchemy.engine import make_url

    if sqlite_path(make_url(config.state.url)) is None:
        raise SandboxError(
            f"{config.path}: state.url must be a SQLite file for the demo (it is reset each time)"
        )


@contextmanager
def _fresh_state(config: Config) -> Iterator[Path]:
    from sqlalchemy.engine import make_url

    path = sqlite_path(make_url(config.state.url))
    assert path is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    yield path


RunOnce = Callable[[Runtime], Awaitable[list[RunReport]]]


def _crosswalk(entity: dict[str, Any], source: str = "configuration/sources/GOOSE") -> str:
    return next((c["value"] for c in entity.get("crosswalks", []) if c["type"] == source), "?")


def run_demo(config: Config, console: Console, run_once_fn: RunOnce) -> int:
    with Sandbox() as box:
        check_demo_safe(config, box)
        with _fresh_state(config) as db:
            console.print(
                f"Sandbox started: Goose {box.goose_url}, Mongoose {box.mongoose_url}, "
                f"Reltio {box.reltio_url}, Azure Digital Twins {box.adt_url}"
            )
            console.print(f"State: {db} (reset: the sandbox starts empty every time)\n")
            before = {u["Username"] for u in box.mongoose_rows("UserNames")}
            before_emp = {e["EmpNum"] for e in box.mongoose_rows("SLEmployees")}
            twins_before = box.admin_get("adt", "/_admin/twins")
            mdm_before = box.admin_get("reltio", "/_admin/entities")

            console.print(
                "[bold]Round 1[/bold]: in Goose, a user deletes 5 contacts, 1 contact that has "
                "no ERP user, and 2 employees;"
            )
            console.print(
                "         the engine's own key deletes 1 contact (imc: false keeps it out)."
            )
            box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3", "0-4", "0-5", "0-13"])
            box.delete_in_goose("CON_TRO", ["0-12"], by_key=GOOSE_ENGINE_KEY)
            box.delete_in_goose("ANA_DIP", ["1-1", "1-2"])
            reports = _run(config, run_once_fn, console)
            twins_mid = {t["$dtId"] for t in box.admin_get("adt", "/_admin/twins")}

            console.print(
                "\n[bold]Round 2[/bold]: a user deletes 2 more contacts, and the whole head-office "
                "site (SITE-HQ),"
            )
            console.print(
                "         which is the configured trigger for purging the twin instance "
                "(one ADT delete job)."
            )
            box.delete_in_goose("CON_TRO", ["0-6", "0-7"])
            box.delete_in_goose("ANA_SED", ["SITE-HQ"])
            reports2 = _run(config, run_once_fn, console)

            after = {u["Username"] for u in box.mongoose_rows("UserNames")}
            after_emp = {e["EmpNum"] for e in box.mongoose_rows("SLEmployees")}
            twins_after = box.admin_get("adt", "/_admin/twins")
            adt_jobs = box.admin_get("adt", "/_admin/jobs")
            mdm_after = box.admin_get("reltio", "/_admin/entities")
            mdm_tasks = box.admin_get("reltio", "/_admin/tasks")
            mdm_gone = {_crosswalk(e) for e in mdm_before} - {_crosswalk(e) for e in mdm_after}
            expected_gone = {p[0] for p in PEOPLE[:7]}
            expected_emp_gone = {EMPLOYEES[0][0], EMPLOYEES[1][0]}
            expected_mdm_gone = {f"0-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 13)}
            removed_round1 = {t["$dtId"] for t in twins_before} - twins_mid
            console.print("\n[bold]In the emulators now[/bold]")
            console.print(
                f"  Mongoose UserNames: {len(before)} rows before, {len(after)} after; "
                f"deleted: {', '.join(sorted(before - after))}"
            )
            console.print(
                f"  Mongoose SLEmployees: {len(before_emp)} rows before, {len(after_emp)} after; "
                f"deleted: {', '.join(sorted(before_emp - after_emp))}"
            )
            console.print(
                f"  kept: {PEOPLE[11][0]} (deleted in Goose by the engine's own key, imc: false)"
            )
            tasks_text = ", ".join(f"{t['id'][:8]} {t['status']}" for t in reversed(mdm_tasks))
            console.print(
                f"  Reltio: {len(mdm_before)} entities before, {len(mdm_after)} after; deleted "
                f"(by GOOSE crosswalk): {', '.join(sorted(mdm_gone))}; tasks {tasks_text}"
            )
            console.print(
                f"  ADT round 1: twins removed one by one: {', '.join(sorted(removed_round1))}"
            )
            jobs_text = ", ".join(f"{j['id']} {j['status']}" for j in adt_jobs)
            console.print(
                f"  ADT round 2: delete jobs {jobs_text}; "
                f"twins left: {len(twins_after)} of {len(twins_before)}"
            )
            ok = (
                before - after == expected_gone
                and before_emp - after_emp == expected_emp_gone
                and mdm_gone == expected_mdm_gone
                and len(mdm_tasks) == 2
                and all(t["status"] == "COMPLETED" for t in mdm_tasks)
                and removed_round1 == {"0-1", "0-2", "0-3", "0-4", "0-5"}
                and len(adt_jobs) == 1
                and adt_jobs[0]["status"] == "succeeded"
                and not twins_after
                and not any(r.failed for r in reports + reports2)
            )
            console.print(
                "\n[green]Demo OK[/green]: every deletion made in Goose reached its targets, "
                "and nothing else."
                if ok
                else "\n[red]Demo FAILED[/red]: the targets do not match what Goose reported."
            )
            console.print(f"Inspect it: .venv/bin/syncengine status -c {config.path}")
    console.print("Sandbox stopped.")
    return 0 if ok else 1


def _run(config: Config, run_once_fn: RunOnce, console: Console) -> list[RunReport]:
    from syncengine.status import render_summary

    async def main() -> list[RunReport]:
        store = Store.open(config.state.url)
        runtime = build_runtime(config, store)
        try:
            reports = await run_once_fn(runtime)
            render_summary(reports, store, console)
            return reports
        finally:
            await runtime.aclose()

    return asyncio.run(main())
