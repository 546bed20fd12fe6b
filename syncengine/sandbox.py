"""The sandbox: the emulators on loopback, seeded with demo data.

Tests, the demo and `syncengine sandbox` share it: each emulator on its own
loopback port, with the same cast of people across systems, so a deletion's
path can be followed from Goose to every target.
"""

from __future__ import annotations

import signal
import socket
import threading
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import httpx
from starlette.types import ASGIApp

from connectors.adt.emulator import AdtEmulator, demo_graph
from connectors.dmm.emulator import BASE_PATH as DMM_BASE
from connectors.dmm.emulator import DEMO_OTP as DMM_OTP
from connectors.dmm.emulator import DEMO_TOKEN as DMM_TOKEN
from connectors.dmm.emulator import DmmEmulator
from connectors.dmm.emulator import demo_entities as dmm_entities
from connectors.emulator_kit import DEMO_PEOPLE, RunningServer
from connectors.goose.emulator import GooseEmulator
from connectors.mongoose.emulator import MongooseEmulator
from connectors.reltio.emulator import ReltioEmulator, demo_entities

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
        dmm_port: int = 8705,
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
        self.dmm = DmmEmulator(step_seconds=step_seconds, chunk_size=5)
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
            "dmm": Emulated("DMM", "--dmm-port", self.dmm.app, dmm_port, dmm_entities()),
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

    @property
    def dmm_url(self) -> str:
        return f"{self.url('dmm')}{DMM_BASE}"

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
            f"    REST v2 (api: v2) at {self.mongoose_url}/IDORequestService; "
            f"knobs: {self.mongoose_url}/_admin/settings",
            f"  Reltio tenant          {self.reltio_tenant_url}",
            f"    token URL {self.reltio_url}/oauth/token; client {RELTIO_CLIENT}; "
            f"secret {RELTIO_SECRET}",
            f"    {len(PEOPLE)} Individuals with GOOSE crosswalks 0-1..0-{len(PEOPLE)}; "
            f"entities: {self.reltio_url}/_admin/entities",
            f"    an operator's delete task: curl -X POST {self.reltio_url}/_admin/delete_task "
            """-H 'content-type: application/json' -d '{"uris":["entities/<id>"]}'""",
            f"  Azure Digital Twins    {self.adt_url}  (api-version 2023-10-31)",
            f"    bearer token {ADT_TOKEN}; twins: {self.adt_url}/_admin/twins",
            f"  DMM (OutSystems)       {self.dmm_url}",
            f"    X-DMM-Token {DMM_TOKEN}; X-DMM-Token-OTP {DMM_OTP}; entities Customer "
            f"(ExternalId 0-1..0-{len(PEOPLE)}), Employee; rows: "
            f"{self.url('dmm')}/_admin/rows/Customer",
            f"    an operator's delete: curl -X POST {self.url('dmm')}/_admin/start_execution "
            """-H 'content-type: application/json' -d '{"entity":"Customer","where":"""
            """"[ExternalId] IN (\\u00270-9\\u0027)"}'""",
            "      then: syncengine follow -p crm_deletions <the tracker id it answers>",
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
