"""`syncengine demo`: the shipped config.yaml against the sandbox, told as a story.

The demo changes the emulators only the way their users would (a user deleting
in Goose, an operator running a DMM delete in the CRM, Reltio refusing one
entity), runs every pipeline, and then checks each emulator's own record: what
each system lost, and that nothing else was touched. It refuses any
configuration whose connections leave the sandbox: a demo must never reach a
real system.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from sqlalchemy.engine import make_url

from state import Store
from state.db import sqlite_path
from syncengine.config import Config
from syncengine.engine import RunReport, Runtime, build_runtime
from syncengine.engine.runtime import follow_tasks
from syncengine.logs import SECRETS
from syncengine.sandbox import GOOSE_ENGINE_KEY, HOST, PEOPLE, Sandbox, SandboxError

RunOnce = Callable[[Runtime], Awaitable[list[RunReport]]]

REFUSED_BY_RELTIO = "0-3"
"""Reltio refuses to delete this contact's entity (a protected profile)."""
CRM_OPERATOR_DELETES = ["0-9", "0-10"]
TRACED = "0-1"


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
    if sqlite_path(make_url(config.state.url)) is None:
        raise SandboxError(
            f"{config.path}: state.url must be a SQLite file for the demo (it is reset each time)"
        )
    for pipeline in ("contacts", "people", "crm_deletions"):
        if pipeline not in config.pipelines:
            raise SandboxError(
                f"{config.path}: the demo tells the story of the shipped config.yaml and needs "
                f"its pipeline {pipeline!r}"
            )


@contextmanager
def _fresh_state(config: Config) -> Iterator[Path]:
    path = sqlite_path(make_url(config.state.url))
    assert path is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    yield path


def _natural(key: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in key.replace("-", " ").split())


def _listed(keys: set[str]) -> str:
    return ", ".join(sorted(keys, key=lambda k: (_natural(k), k))) or "none"


@dataclass
class Snapshot:
    """What the emulators hold, read through their admin endpoints."""

    users: set[str]
    employees: set[str]
    entities: set[str]
    """Reltio entities, by their GOOSE crosswalk."""
    twins: set[str]
    customers: set[str]
    """CRM customers, by ExternalId."""

    @classmethod
    def take(cls, box: Sandbox) -> Snapshot:
        return cls(
            users={u["Username"] for u in box.mongoose_rows("UserNames")},
            employees={e["EmpNum"] for e in box.mongoose_rows("SLEmployees")},
            entities={_goose_id(e) for e in box.admin_get("reltio", "/_admin/entities")},
            twins={t["$dtId"] for t in box.admin_get("adt", "/_admin/twins")},
            customers={r["ExternalId"] for r in box.admin_get("dmm", "/_admin/rows/Customer")},
        )


def _goose_id(entity: dict[str, Any]) -> str:
    return next(
        (c["value"] for c in entity.get("crosswalks", []) if c["type"].endswith("/GOOSE")), "?"
    )


def _protect_in_reltio(box: Sandbox, record_id: str) -> None:
    uri = next(
        e["uri"] for e in box.admin_get("reltio", "/_admin/entities") if _goose_id(e) == record_id
    )
    with httpx.Client(timeout=10) as client:
        client.post(f"{box.reltio_url}/_admin/protect", json={"uris": [uri]}).raise_for_status()


def _follow(config: Config, pipeline: str, task_id: str) -> str:
    """What `syncengine follow -p PIPELINE TASK_ID` does."""
    store = Store.open(config.state.url, scrub=SECRETS.scrub)
    try:
        [(stream, _)] = asyncio.run(follow_tasks(config, pipeline, store, [task_id]))
        return stream
    finally:
        store.close()


def run_demo(
    config: Config, console: Console, run_once_fn: RunOnce, sandbox: Sandbox | None = None
) -> int:
    """`sandbox` (not yet started) lets a test use other ports than the shipped file's."""
    with sandbox or Sandbox() as box:
        check_demo_safe(config, box)
        with _fresh_state(config) as db:
            code = _story(config, console, run_once_fn, box, db)
    console.print("Sandbox stopped.")
    return code


def _story(config: Config, console: Console, run_once_fn: RunOnce, box: Sandbox, db: Path) -> int:
    say = console.print
    say(
        f"Sandbox started: Goose {box.goose_url}, Mongoose {box.mongoose_url}, "
        f"Reltio {box.reltio_url}, Azure Digital Twins {box.adt_url}, DMM {box.url('dmm')}",
        highlight=False,
    )
    say(f"State: {db} (reset: the sandbox starts empty every time)\n", highlight=False)
    before = Snapshot.take(box)
    refused_user, refused_name = PEOPLE[int(REFUSED_BY_RELTIO.split("-")[1]) - 1]
    _protect_in_reltio(box, REFUSED_BY_RELTIO)

    say("[bold]Round 1[/bold]: in Goose, a user deletes 5 contacts, 1 contact that has no ERP")
    say("         user, and 2 employees; the engine's own key deletes 1 contact (imc: false")
    say(
        f"         keeps it out). Reltio refuses to delete {refused_name}'s entity "
        f"({REFUSED_BY_RELTIO})."
    )
    box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3", "0-4", "0-5", "0-13"])
    box.delete_in_goose("CON_TRO", ["0-12"], by_key=GOOSE_ENGINE_KEY)
    box.delete_in_goose("ANA_DIP", ["1-1", "1-2"])
    reports = _run(config, run_once_fn, console)
    middle = Snapshot.take(box)

    say("\n[bold]Round 2[/bold]: a user deletes 2 more contacts and the head-office site")
    say("         (SITE-HQ, the trigger for purging the twin instance: one ADT delete job);")
    say(
        f"         in the CRM an operator deletes customers {', '.join(CRM_OPERATOR_DELETES)} "
        "with a DMM delete"
    )
    box.delete_in_goose("CON_TRO", ["0-6", "0-7"])
    box.delete_in_goose("ANA_SED", ["SITE-HQ"])
    tracker = box.delete_in_crm("Customer", "ExternalId", CRM_OPERATOR_DELETES)
    stream = _follow(config, "crm_deletions", tracker)
    say(
        f"         execution {tracker}; `syncengine follow -p crm_deletions {tracker}` makes "
        f"crm_deletions read it ({stream})."
    )
    reports += _run(config, run_once_fn, console)

    say("\n[bold]Round 3[/bold]: nothing new. Goose now reports the two contacts the engine")
    say("         deleted for the CRM, made with its own key: contacts does not read them back.")
    reports += _run(config, run_once_fn, console)
    after = Snapshot.take(box)
    ok = _report(console, box, before, middle, after, refused_user) and not any(
        r.failed for r in reports
    )
    _trace(config, console)
    say(
        "\n[green]Demo OK[/green]: every deletion reached the systems it should, and nothing else."
        if ok
        else "\n[red]Demo FAILED[/red]: the emulators do not hold what the sources reported."
    )
    command = _command_name()
    say(f"Inspect it: {command} status -c {config.path}", highlight=False)
    say(f"            {command} trace 0-4 -c {config.path}", highlight=False)
    return 0 if ok else 1


def _report(
    console: Console,
    box: Sandbox,
    before: Snapshot,
    middle: Snapshot,
    after: Snapshot,
    refused_user: str,
) -> bool:
    say = console.print
    contacts = {f"0-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 13)}
    reltio_deleted = contacts - {REFUSED_BY_RELTIO}
    users_gone = {PEOPLE[int(k.split("-")[1]) - 1][0] for k in reltio_deleted if k != "0-13"}
    tasks = box.admin_get("reltio", "/_admin/tasks")
    jobs = box.admin_get("adt", "/_admin/jobs")
    executions = box.admin_get("dmm", "/_admin/executions")
    goose_back = {
        d["RECORD_ID"]
        for d in box.admin_get("goose", "/_admin/deletions")
        if d["by_key"] == GOOSE_ENGINE_KEY and d["RECORD_ID"] != "0-12"
    }
    say("\n[bold]In the emulators now[/bold]")
    say(
        f"  Reltio: deleted (by GOOSE crosswalk) {_listed(before.entities - after.entities)}; "
        f"kept {REFUSED_BY_RELTIO} (refused, retried later, not carried on); tasks "
        + ", ".join(f"{t['id'][:8]} {t['status']}" for t in reversed(tasks)),
        highlight=False,
    )
    say(
        f"  Mongoose UserNames: deleted {_listed(before.users - after.users)}; kept "
        f"{refused_user} (Reltio refused) and vdeluca (the engine's own Goose delete)",
        highlight=False,
    )
    say(
        f"  Mongoose SLEmployees: deleted {_listed(before.employees - after.employees)}",
        highlight=False,
    )
    say(
        f"  ADT: round 1 removed twins {_listed(before.twins - middle.twins)} one by one; "
        f"round 2 delete job "
        + ", ".join(f"{j['id']} {j['status']}" for j in jobs)
        + f"; twins left: {len(after.twins)} of {len(before.twins)}",
        highlight=False,
    )
    say(
        f"  CRM (DMM): customers deleted {_listed(before.customers - after.customers)}; "
        "executions " + ", ".join(f"{e['id']} {e['status']}" for e in executions),
        highlight=False,
    )
    say(
        f"  Goose: the engine deleted contacts {_listed(goose_back)} for the CRM; they went "
        "nowhere else",
        highlight=False,
    )
    return (
        before.entities - after.entities == reltio_deleted
        and before.users - after.users == users_gone
        and before.employees - after.employees == {"E0101", "E0102"}
        and before.twins - middle.twins == {"0-1", "0-2", "0-4", "0-5"}
        and not after.twins
        and len(jobs) == 1
        and jobs[0]["status"] == "succeeded"
        and before.customers - after.customers == reltio_deleted | set(CRM_OPERATOR_DELETES)
        and goose_back == set(CRM_OPERATOR_DELETES)
        and all(e["status"] == "Complete" for e in executions)
    )


def _trace(config: Config, console: Console) -> None:
    from syncengine.status import collect_trace, render_trace

    console.print(f"\n[bold]One record's path[/bold] (syncengine trace {TRACED}):")
    store = Store.open(config.state.url, scrub=SECRETS.scrub)
    try:
        render_trace(collect_trace(store, TRACED), console)
    finally:
        store.close()


def _run(config: Config, run_once_fn: RunOnce, console: Console) -> list[RunReport]:
    from syncengine.status import render_summary

    async def main() -> list[RunReport]:
        store = Store.open(config.state.url, scrub=SECRETS.scrub)
        runtime = build_runtime(config, store)
        try:
            reports = await run_once_fn(runtime)
            render_summary(reports, store, console)
            return reports
        finally:
            await runtime.aclose()

    return asyncio.run(main())


def _command_name() -> str:
    """How the user can call the tool again: `syncengine` when the shell finds this very
    program by that name (an installed tool), else the path it was started by
    (`.venv/bin/syncengine` in a source tree)."""
    started = Path(sys.argv[0])
    found = shutil.which("syncengine")
    if found is not None and Path(found).resolve() == started.resolve():
        return "syncengine"
    try:
        return str(started.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(started)


__all__ = ["check_demo_safe", "run_demo"]
