"""`state info`, `state migrate`, `state backup` and `state.migrate: manual`: the store
administered on purpose, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from state import Store, StoreError
from state.admin import backup, store_info
from state.schema import HEAD_REVISION
from syncengine.cli import app
from tests.unit.test_schema import downgrade
from tests.unit.test_store import journal


def test_info_counts_what_the_store_holds(store: Store) -> None:
    journal(store, ["1", "2", "3"], 1)
    assert store.acquire_lock("p", "me", 30) is not None
    info = store_info(store.engine)
    assert info.revision == HEAD_REVISION and not info.behind
    assert info.deletions == 3
    assert info.deliveries == {"pending": 6}
    assert [(lease.pipeline, lease.owner) for lease in info.leases] == [("p", "me")]
    assert info.size_bytes is not None and info.size_bytes > 0


def test_manual_migration_refuses_an_old_store_until_it_is_migrated(store: Store) -> None:
    downgrade(store, "0005")
    with pytest.raises(StoreError, match=r"revision 0005 .* needs .*state migrate"):
        Store.open(store.url, migrate=False)
    assert store_info(store.engine).behind
    Store.open(store.url).close()  # auto: upgraded on open
    again = Store.open(store.url, migrate=False)
    again.close()
    assert store_info(store.engine).revision == HEAD_REVISION


def test_a_new_store_is_created_even_when_migration_is_manual(tmp_path: Path) -> None:
    fresh = Store.open(f"sqlite:///{tmp_path / 'new.db'}", migrate=False)
    try:
        assert store_info(fresh.engine).revision == HEAD_REVISION
    finally:
        fresh.close()


def test_a_backup_is_consistent_while_a_writer_keeps_writing(
    sqlite_store: Store, tmp_path: Path
) -> None:
    journal(sqlite_store, [str(n) for n in range(2000)], 1)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            journal(sqlite_store, [f"w{n}-{i}" for i in range(50)], n + 1)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        copy = tmp_path / "copy.db"
        assert backup(sqlite_store.engine, copy) > 0
    finally:
        stop.set()
        writer.join()
    assert oct(copy.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        deletions = db.execute("SELECT count(*) FROM deletion").fetchone()[0]
        deliveries = db.execute("SELECT count(*) FROM delivery").fetchone()[0]
    assert deletions >= 2000 and deliveries == 2 * deletions, "a transaction is whole or absent"
    with pytest.raises(StoreError, match="never overwrites"):
        backup(sqlite_store.engine, copy)


def test_backup_of_postgresql_names_the_tool_to_use(pg_url: str, tmp_path: Path) -> None:
    store = Store.open(pg_url)
    try:
        with pytest.raises(StoreError, match="pg_dump"):
            backup(store.engine, tmp_path / "x.db")
        assert not (tmp_path / "x.db").exists()
    finally:
        store.close()


def test_the_commands(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        textwrap.dedent(
            """
            state: {url: "sqlite:///s.db", migrate: manual}
            connections:
              goose: {type: goose, url: "http://127.0.0.1:9/deleted/", code: D, key: kkkkkkkk}
              erp: {type: mongoose, url: "http://127.0.0.1:9/IDORequestService/MGRESTService.svc",
                    config: DEMO, user: u, password: pppppppp}
            pipelines:
              p:
                schedule: {every: 60s}
                source: {connection: goose, tables: [T], from: latest}
                targets:
                  a: {connection: erp, ido: UserNames, key: "{K}"}
            """
        ),
        encoding="utf-8",
    )
    runner = CliRunner()
    store = Store.open(f"sqlite:///{tmp_path / 's.db'}")
    downgrade(store, "0005")
    store.close()
    refused = runner.invoke(app, ["status", "-c", str(config)])
    assert refused.exit_code == 2 and "state migrate" in refused.output
    info = runner.invoke(app, ["state", "info", "-c", str(config)])
    assert info.exit_code == 0 and "revision 0005 (behind" in info.output
    migrated = runner.invoke(app, ["state", "migrate", "-c", str(config)])
    assert migrated.exit_code == 0
    assert f"schema migrated: 0005 -> {HEAD_REVISION}" in migrated.output
    assert runner.invoke(app, ["status", "-c", str(config)]).exit_code == 0
    saved = runner.invoke(app, ["state", "backup", str(tmp_path / "b.db"), "-c", str(config)])
    assert saved.exit_code == 0 and (tmp_path / "b.db").exists()
    again = runner.invoke(app, ["state", "backup", str(tmp_path / "b.db"), "-c", str(config)])
    assert again.exit_code == 2 and "Traceback" not in again.output
