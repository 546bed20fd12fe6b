"""Goose deletions reach Mongoose through the real CLI; only new ones travel again."""

from __future__ import annotations

import json
import sqlite3

from syncengine.sandbox import GOOSE_ENGINE_KEY, MONGOOSE_PASSWORD, PEOPLE
from tests.e2e.conftest import Env

USERS = [p[0] for p in PEOPLE]


def test_deletions_travel_and_a_second_run_sends_only_new_ones(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3"])
    first = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert first.returncode == 0, first.stderr
    assert "contacts" in first.stdout and "erp_users" in first.stdout
    gone = set(USERS) - e2e.users()
    assert gone == {"jrossi", "mbianchi", "lverdi"}

    e2e.box.delete_in_goose("CON_TRO", ["0-4"])
    second = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert second.returncode == 0, second.stderr
    assert set(USERS) - e2e.users() == {"jrossi", "mbianchi", "lverdi", "fromano"}
    deleted = e2e.mongoose_deleted()
    assert len(deleted) == 4, "each row deleted exactly once"
    last_run = e2e.status()["pipelines"][0]["last_run"]
    assert last_run["pulled"] == 1 and last_run["delivered"] == 1
    assert e2e.target_counts()["done"] == 4


def test_imc_false_leaves_out_deletions_made_with_the_engines_own_key(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    e2e.box.delete_in_goose("CON_TRO", ["0-2"], by_key=GOOSE_ENGINE_KEY)
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert result.returncode == 0, result.stderr
    assert "mbianchi" in e2e.users()
    assert "jrossi" not in e2e.users()


def test_imc_true_includes_them(e2e: Env) -> None:
    e2e.write_config(imc="true")
    e2e.box.delete_in_goose("CON_TRO", ["0-2"], by_key=GOOSE_ENGINE_KEY)
    assert e2e.cli("run", "--once", "-c", str(e2e.config)).returncode == 0
    assert "mbianchi" not in e2e.users()


def test_watermark_mode_propagates_and_rereads_harmlessly(e2e: Env) -> None:
    e2e.write_config(mode="watermark")
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    assert e2e.cli("run", "--once", "-c", str(e2e.config)).returncode == 0
    assert e2e.cli("run", "--once", "-c", str(e2e.config)).returncode == 0
    assert {"jrossi", "mbianchi"}.isdisjoint(e2e.users())
    pipeline = e2e.status()["pipelines"][0]
    assert pipeline["deletions"] == 2
    assert pipeline["last_run"]["pulled"] == 0, "the overlap re-read only duplicates"
    assert len(e2e.mongoose_deleted()) == 2


def test_absent_row_counts_as_done(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-13"])  # SYKEY exemployee: no ERP user
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert result.returncode == 0, result.stderr
    assert e2e.target_counts()["done"] == 1
    assert e2e.mongoose_deleted() == []


def test_debug_logs_and_database_hold_no_secret(e2e: Env) -> None:
    e2e.write_config(level="debug")
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert result.returncode == 0, result.stderr
    status = e2e.cli("status", "-c", str(e2e.config), "-o", "json")
    output = result.stdout + result.stderr + status.stdout + status.stderr
    assert '"event"' in result.stderr, "debug logs were produced"
    for secret in (GOOSE_ENGINE_KEY, MONGOOSE_PASSWORD):
        assert secret not in output
        for name in ("state.db", "state.db-wal"):
            path = e2e.tmp / name
            if path.exists():
                assert secret.encode() not in path.read_bytes()
    with sqlite3.connect(e2e.tmp / "state.db") as db:
        dump = json.dumps([list(r) for r in db.execute("SELECT * FROM cursor")])
    assert GOOSE_ENGINE_KEY not in dump


def test_wrong_credentials_stop_with_a_clear_message(e2e: Env) -> None:
    env_config = e2e.config.read_text().replace("${TEST_MONGOOSE_PASSWORD}", "wrong-password")
    e2e.config.write_text(env_config)
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert result.returncode == 1
    assert "credentials" in result.stdout + result.stderr
    assert "wrong-password" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "jrossi" in e2e.users()
    counts = e2e.target_counts()
    assert counts["pending"] == 1 and counts["dead"] == 0, (
        "nothing lost while credentials are wrong"
    )
