"""A damaged or foreign store is one clear line on stderr and exit 2, for every command
that opens it: never a traceback, never alembic's raw error."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.kit.serving import free_port
from state import Store

PAGE = 4096


def write_config(tmp: Path) -> Path:
    config = tmp / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            state: {{url: "sqlite:///{tmp / "state.db"}"}}
            connections:
              goose:
                type: goose
                url: "http://127.0.0.1:{free_port()}/deleted/"
                code: DEV001
                key: a-long-enough-key
            pipelines:
              contacts:
                schedule: {{every: 1h}}
                source: {{connection: goose, tables: [CON_TRO]}}
                targets:
                  back: {{connection: goose, table: CON_TRO, id: "{{RECORD_ID}}"}}
            """
        )
    )
    return config


def a_store(path: Path) -> None:
    Store.open(f"sqlite:///{path}").close()


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 40)


def newer_schema(path: Path) -> None:
    a_store(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")


def corrupt_pages(path: Path) -> None:
    """Every page but the schema's first two overwritten: the file opens, its tables do not."""
    a_store(path)
    size = path.stat().st_size
    with path.open("r+b") as file:
        for page in range(2, size // PAGE):
            file.seek(page * PAGE)
            file.write(b"\xff" * PAGE)


def another_programs_file(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage": (garbage, "is not a syncengine store (file is not a database); point state.url"),
    "newer schema": (
        newer_schema,
        "the store was written by a newer syncengine (schema revision 0099_from_the_future; "
        "this version knows up to ",
    ),
    "corrupt page": (
        corrupt_pages,
        "the store is damaged (database disk image is malformed); stop every syncengine using "
        "it, then restore it from a backup, or salvage what is readable with `sqlite3 ",
    ),
    "another program's file": (
        another_programs_file,
        "holds tables of another program (invoices) and no syncengine schema",
    ),
}
COMMANDS = [  # status and run --once: above
    ["plan"],
    ["held", "-p", "contacts"],
    ["dlq", "list"],
    ["jobs", "list"],
    ["trace", "0-1"],
]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_store_is_one_line_and_exit_2(tmp_path: Path, damage: str) -> None:
    config = write_config(tmp_path)
    make, expected = DAMAGE[damage]
    make(tmp_path / "state.db")
    (tmp_path / "state.db").chmod(0o600)
    for command in (["status"], ["run", "--once"]):
        result = cli(*command, "-c", str(config))
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert f"state.url ({tmp_path / 'state.db'})" in result.stderr
        assert expected in result.stderr, (command, result.stderr)
        assert result.stderr.rstrip().endswith(("backup", ".recover`", "upgrade syncengine",
                                                "at a new file")), result.stderr  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_that_opens_the_store_says_so_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    config = write_config(tmp_path)
    garbage(tmp_path / "state.db")
    (tmp_path / "state.db").chmod(0o600)
    result = cli(*command, "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "is not a syncengine store" in result.stderr
