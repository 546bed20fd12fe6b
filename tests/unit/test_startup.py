"""Start-up: a command imports only what it uses.

The modules asserted absent are the slow ones a command has no use for: alembic when
the schema is already at the newest migration, the daemon's scheduler and metrics web
server outside the daemon, the emulators outside the sandbox and demo, connectors that
the configuration does not name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from state import Store
from tests.unit.test_config import VALID
from tests.unit.test_schema import downgrade

DAEMON_ONLY = (
    "apscheduler",
    "uvicorn",
    "starlette",
    "prometheus_client",
    "syncengine.daemon",
    "syncengine.observe",
)
SANDBOX_ONLY = (
    "connectors.emulation.kit",
    "connectors.emulation.admin",
    "connectors.emulation.contract_cases",
    "syncengine.sandbox",
    "syncengine.demo",
)
UNUSED_CONNECTORS = ("connectors.adt", "connectors.reltio", "connectors.dmm")


# Runs the command as `python -m syncengine` does, and writes the names of every module
# loaded by the time the process exits. (`-X importtime` cannot serve: it omits the
# modules loaded through importlib, as the connector registry loads connectors.)
COMMAND = """
import atexit, json, os, sys
out = os.environ["TEST_MODULES_FILE"]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from syncengine.cli import main
main()
"""


def imported(*args: str, cwd: Path) -> set[str]:
    """Every module a `syncengine` command has loaded when it exits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCENGINE_")}
    env["GOOSE_KEY"] = "goose-secret-key-123"
    env["TEST_MODULES_FILE"] = str(cwd / "modules.json")
    result = subprocess.run(
        [sys.executable, "-c", COMMAND, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    modules: list[str] = json.loads((cwd / "modules.json").read_text())
    return set(modules)


def under(modules: set[str], *packages: str) -> list[str]:
    return sorted(
        m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages)
    ) + sorted(
        m for m in modules if m.startswith("connectors.") and m.endswith((".emulator", ".sandbox"))
    )


def test_run_once_loads_alembic_only_to_migrate_and_never_the_daemon_or_emulators(
    tmp_path: Path,
) -> None:
    # The pipeline is disabled so that the run opens the store, builds the runtime and
    # renders its summary without any traffic; the goose and mongoose connectors are
    # still loaded, because the configuration names them.
    config = tmp_path / "config.yaml"
    config.write_text(
        VALID.replace("sqlite:///tmp/x.db", f"sqlite:///{tmp_path / 'state.db'}").replace(
            "schedule: {every: 60s}", "schedule: {every: 60s}\n    enabled: false"
        )
    )
    first = imported("run", "--once", "-c", str(config), cwd=tmp_path)
    assert under(first, "alembic", "mako") == [], "a new store is created at head"

    older = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        downgrade(older, "0006")
    finally:
        older.close()
    migrated = imported("run", "--once", "-c", str(config), cwd=tmp_path)
    assert "alembic" in migrated, "a store from an older version is migrated by alembic"

    again = imported("run", "--once", "-c", str(config), cwd=tmp_path)
    assert {"state.store", "syncengine.engine", "connectors.goose", "connectors.mongoose"} <= again
    assert under(again, "alembic", "mako") == [], "the schema is at head: nothing to migrate"
    assert under(again, *DAEMON_ONLY, *SANDBOX_ONLY) == []
    assert under(again, *UNUSED_CONNECTORS) == [], "the configuration names none of these"


def test_help_loads_neither_the_store_nor_the_engine_nor_connectors(tmp_path: Path) -> None:
    modules = imported("--help", cwd=tmp_path)
    assert "typer" in modules
    heavy = ("sqlalchemy", "sqlmodel", "alembic", "httpx", "pydantic", "state", "connectors")
    assert under(modules, *heavy, "syncengine.engine", "syncengine.config") == []
    assert under(modules, *DAEMON_ONLY, *SANDBOX_ONLY) == []


def test_the_registry_names_every_connector_but_imports_one_on_its_first_lookup() -> None:
    code = (
        "import json, sys\n"
        "from connectors import BUILTIN, load_registry\n"
        "from connectors.contract import UnknownConnectorType\n"
        "registry = load_registry()\n"
        "packages = {f'connectors.{name}' for name in BUILTIN}\n"
        "loaded = lambda: sorted(packages & set(sys.modules))\n"
        "before = loaded()\n"
        "try:\n"
        "    registry.get('mongo')\n"
        "except UnknownConnectorType as exc:\n"
        "    message = str(exc)\n"
        "info = registry.get('dmm')\n"
        "print(json.dumps([registry.names(), before, message, info.name, loaded()]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    names, before, message, name, after = json.loads(result.stdout)
    assert names == ["adt", "dmm", "goose", "mongoose", "reltio"]
    assert before == []
    assert message == (
        "unknown connection type 'mongo'; known types: adt, dmm, goose, mongoose, reltio"
    )
    assert (name, after) == ("dmm", ["connectors.dmm"])
