"""Shared fixtures: a store on SQLite (always) and on PostgreSQL (its own database)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from state import Store

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

LONG_FIRST = (
    "tests/unit/test_report_memory.py",
    "tests/e2e/test_retention.py",
    "tests/e2e/test_screen_at_submit.py",
    "tests/connectors/test_hostile_answers.py",
    "tests/e2e/test_memory.py",
    "tests/e2e/test_signals.py",
    "tests/e2e/test_crash.py",
    "tests/e2e/test_faults.py",
    "tests/e2e/test_lease_takeover.py",
    "tests/e2e/test_async_targets.py",
    "tests/e2e/test_concurrency.py",
    "tests/e2e/test_conditions.py",
    "tests/e2e/test_alert_delivery.py",
)
"""The modules whose tests take tens of seconds each. Run first, so that `-n auto`'s
workers share them out instead of one worker finishing them alone at the end: the
default run was a few minutes of one busy core after the other had stopped."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order within a module and among the rest stays


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=2
        ):
            return True
    except Exception:
        return False


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    yield store
    store.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if not _pg_available():
        pytest.fail(
            "PostgreSQL is not reachable on 127.0.0.1:5432; start it with "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    import psycopg

    name = f"syncengine_test_{uuid.uuid4().hex[:10]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same store contract, run against both backends."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
        store = Store.open(url)
        yield store
        store.close()
    else:
        url = request.getfixturevalue("pg_url")
        store = Store.open(url)
        yield store
        store.close()
