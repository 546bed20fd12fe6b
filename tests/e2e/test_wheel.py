"""The tool as a user installs it: a wheel built by the standard front end (`python -m
build`), so package data can never go missing from a release unnoticed.

The default run builds the wheel and checks it holds every module of the three rooms,
the migrations and the shipped example. `make wheel-check` (marker `install`) goes on to
install it in a clean venv and run `--version`, the demo on free ports, `check` against a
sandbox the installed tool starts, and a migration of an old store from the installed
copy, away from this source tree.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from connectors.kit.serving import free_port
from state.schema import HEAD_REVISION
from syncengine.sandbox import default_ports

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("syncengine", "connectors", "state")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built without isolation: the venv already has the build backend, and a test must
    not need the network to fetch it."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("syncengine-*.whl")
    return built


def source_files() -> set[str]:
    found = set()
    for room in ROOMS:
        for path in (ROOT / room).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in {".py", ".mako", ".ini", ".yaml"}:
                found.add(str(path.relative_to(ROOT)))
    return found


def test_the_wheel_holds_every_module_migration_and_the_example(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(source_files() - names)
    assert missing == []
    assert "syncengine/demo.yaml" in names
    assert any(n.startswith("state/migrations/versions/0001") for n in names)
    example = zipfile.ZipFile(wheel).read("syncengine/demo.yaml").decode("utf-8")
    assert example == (ROOT / "config.yaml").read_text(encoding="utf-8")
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "syncengine = syncengine.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


OLD_STORE = textwrap.dedent(
    """
    import sys
    from alembic import command
    from alembic.config import Config
    from state import Store
    from state.db import MIGRATIONS

    store = Store.open(sys.argv[1])
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    store.close()
    print(MIGRATIONS)
    """
)


@pytest.mark.install
def test_the_wheel_installs_in_a_clean_venv_and_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    tool = str(venv / "bin" / "syncengine")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, cwd=home, env=env, capture_output=True, text=True, timeout=600, check=False
        )

    version = run(tool, "--version")
    assert version.returncode == 0 and version.stdout.strip() == "syncengine 0.1.0"

    ports = {name: free_port() for name in default_ports()}
    moves = [f"--port={name}={port}" for name, port in ports.items()]
    demo = run(tool, "demo", *moves)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Demo OK" in demo.stdout
    assert (home / "config.yaml").exists(), "the demo writes the shipped example out"

    # `check` against a sandbox the installed tool starts, on the same free ports.
    shipped = (home / "config.yaml").read_text(encoding="utf-8")
    for name, port in ports.items():
        shipped = shipped.replace(f"127.0.0.1:{default_ports()[name]}", f"127.0.0.1:{port}")
    (home / "check.yaml").write_text(shipped, encoding="utf-8")
    sandbox = subprocess.Popen(
        [tool, "sandbox", *moves],
        cwd=home,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        for line in sandbox.stdout:
            if line.startswith("Ctrl-C to stop"):
                break
        check = run(tool, "check", "-c", "check.yaml")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "FAILED" not in check.stdout
    finally:
        sandbox.send_signal(signal.SIGINT)
        sandbox.wait(timeout=30)
        sandbox.stdout.close()  # type: ignore[union-attr]

    db = f"sqlite:///{home / 'old.db'}"
    old = run(str(venv / "bin" / "python"), "-c", OLD_STORE, db)
    assert old.returncode == 0, old.stderr
    assert str(ROOT) not in old.stdout, "the migrations came from the source tree"
    shipped = (home / "config.yaml").read_text(encoding="utf-8")
    (home / "old.yaml").write_text(shipped.replace("sqlite:///data/sandbox.db", db), "utf-8")
    status = run(tool, "status", "-c", "old.yaml", "-o", "json")
    assert status.returncode == 0, status.stderr
    assert "contacts" in status.stdout
    with sqlite3.connect(home / "old.db") as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == HEAD_REVISION, "status migrated the old store from the installed copy"
