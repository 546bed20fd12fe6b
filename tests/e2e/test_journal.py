"""The journal through the real CLI: a record deleted again travels again while re-reads
stay duplicates, and a malformed record becomes a dead letter instead of stopping its
table."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from syncengine.sandbox import GOOSE_CODE, GOOSE_ENGINE_KEY
from tests.e2e.conftest import Env


def run(e2e: Env) -> str:
    result = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def restore(e2e: Env, record_id: str, user: str) -> None:
    """The record is re-created in Goose and its user in the ERP, as an operator would."""
    row = {"RECORD_ID": record_id, "SYKEY": user, "CORAS": "restored"}
    e2e.admin_post(
        "goose", "/_admin/seed", {"companies": {GOOSE_CODE: []}, "tables": {"CON_TRO": [row]}}
    )
    e2e.admin_post("mongoose", "/_admin/seed", {"UserNames": [{"Username": user}]})


def deleted_users(e2e: Env) -> Counter[str]:
    return Counter(row["properties"]["Username"] for row in e2e.mongoose_deleted())


def summary_row(stdout: str) -> tuple[int, int]:
    """(pulled, duplicates) of the contacts row of the run summary."""
    match = re.search(r"contacts\s*│\s*erp_users\s*│\s*\w+\s*│\s*(\d+)\s*│\s*(\d+)\s*│", stdout)
    assert match is not None, stdout
    return int(match[1]), int(match[2])


def test_a_record_deleted_again_after_a_restore_is_deleted_again(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    run(e2e)
    assert deleted_users(e2e) == {"jrossi": 1}
    restore(e2e, "0-1", "jrossi")
    assert "jrossi" in e2e.users()
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    assert summary_row(run(e2e)) == (1, 0), "a new deletion, not a duplicate"
    assert "jrossi" not in e2e.users()
    assert deleted_users(e2e) == {"jrossi": 2}
    assert e2e.target_counts()["done"] == 2
    trace = e2e.cli("trace", "0-1", "-c", str(e2e.config), "-o", "json")
    assert trace.returncode == 0, trace.stderr
    assert [t["key"] for t in json.loads(trace.stdout)] == ["0-1", "0-1"], "each deletion shown"


def test_a_recovery_after_lost_answers_still_sends_nothing_twice(e2e: Env) -> None:
    """The recovery re-reads what the call before the lost one journaled, and the
    `latest` call after it repeats what the recovery read: duplicates, both."""
    e2e.config.write_text(e2e.config.read_text().replace("overlap: 5s", "overlap: 1h"))
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    run(e2e)
    e2e.box.delete_in_goose("CON_TRO", ["0-3"])
    e2e.drop_next_goose_answers(100)  # the latest call and every recovery lose their answer
    assert e2e.cli("run", "--once", "-c", str(e2e.config)).returncode == 1
    e2e.drop_next_goose_answers(0)
    e2e.box.delete_in_goose("CON_TRO", ["0-4"])  # after Goose's cursor moved: read twice
    stdout = run(e2e)
    assert summary_row(stdout) == (2, 3), "0-1 and 0-2 re-read by the recovery, 0-4 by latest"
    assert e2e.status()["pipelines"][0]["streams"][0]["recoveries"] == 1
    assert deleted_users(e2e) == {"jrossi": 1, "mbianchi": 1, "lverdi": 1, "fromano": 1}
    assert e2e.target_counts()["done"] == 4


def dead(e2e: Env) -> list[dict[str, Any]]:
    result = e2e.cli("dlq", "list", "-c", str(e2e.config), "-o", "json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_a_record_without_record_id_is_a_dead_letter_and_the_table_goes_on(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    bad = {"TABLE": "CON_TRO", "SYKEY": "ghost", "api_key": "k-123456", "NOTE": GOOSE_ENGINE_KEY}
    e2e.admin_post("goose", "/_admin/raw_deletion", {"table": "CON_TRO", "row": bad})
    e2e.box.delete_in_goose("CON_TRO", ["0-2"])
    stdout = run(e2e)
    assert {"jrossi", "mbianchi"}.isdisjoint(e2e.users()), "the good records are delivered"
    assert "1 malformed record(s)" in stdout and "dlq list --error malformed" in stdout
    [letter] = dead(e2e)
    assert letter["reason"].startswith("malformed record: a record without RECORD_ID")
    assert letter["key"].startswith("malformed:") and letter["target"] == "erp_users"
    assert letter["fields"] == {"TABLE": "CON_TRO", "SYKEY": "ghost", "api_key": "***",
                                "NOTE": "***"}  # fmt: skip
    stream = e2e.status()["pipelines"][0]["streams"][0]
    assert stream["malformed"] == 1
    assert stream["in_flight_since"] is None and stream["consecutive_errors"] == 0
    assert stream["last_error"] == ""
    shown = e2e.cli("status", "-c", str(e2e.config))
    assert "malformed" in shown.stdout, "the text status shows the count too"

    run(e2e)
    backfill = e2e.cli(
        "backfill", "-c", str(e2e.config), "-p", "contacts", "--from", "2000-01-01 00:00:00"
    )
    assert backfill.returncode == 0, backfill.stdout + backfill.stderr
    assert len(dead(e2e)) == 1, "a re-read of the same row is a duplicate"
    assert e2e.status()["pipelines"][0]["streams"][0]["malformed"] == 1
    assert e2e.status()["pipelines"][0]["last_run"]["outcome"] == "ok"

    retry = e2e.cli("dlq", "retry", "-c", str(e2e.config))
    assert retry.returncode == 1
    assert "not retried: 1 dead letter(s) of malformed records" in retry.stderr
    assert len(dead(e2e)) == 1
    dropped = e2e.cli("dlq", "drop", "-c", str(e2e.config), "--error", "malformed")
    assert dropped.returncode == 0 and dead(e2e) == []


def test_hostile_rows_are_dead_letters_with_their_reason_and_the_table_goes_on(e2e: Env) -> None:
    """Rows no JSON reader should take as they are (issue 18 items 4 and 6): each one is a
    malformed record, the good rows around them are delivered, the table never stalls."""
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    for text in [
        '{"TABLE":"CON_TRO","RECORD_ID":"h-1","\\udc00x":1}',
        '{"TABLE":"CON_TRO","\\ud800":"0-3"}',
        '{"TABLE":"CON_TRO","RECORD_ID":"h-3","N":1e999}',
        '{"TABLE":"CON_TRO","RECORD_ID":"h-4","N":' + "9" * 5000 + "}",
        '{"TABLE":"CON_TRO","RECORD_ID":"h-5","N":' + "[" * 100_000 + "]" * 100_000 + "}",
    ]:
        e2e.admin_post("goose", "/_admin/raw_deletion", {"table": "CON_TRO", "text": text})
    e2e.box.delete_in_goose("CON_TRO", ["0-2"])
    stdout = run(e2e)
    assert {"jrossi", "mbianchi"}.isdisjoint(e2e.users()), "the good records are delivered"
    assert "5 malformed record(s)" in stdout
    reasons = sorted(letter["reason"] for letter in dead(e2e))
    assert reasons == sorted(
        f"malformed record: {why}; never sent: no retry can fix it, correct or remove it in "
        "the source"
        for why in [
            "a lone surrogate (\\udc00) in a string",
            "a lone surrogate (\\ud800) in a string",
            "a number beyond a float's range (1E+999)",
            "a number written with more than 4300 characters",
            "values nested more than 64 levels deep",
        ]
    )
    stream = e2e.status()["pipelines"][0]["streams"][0]
    assert stream["in_flight_since"] is None and stream["consecutive_errors"] == 0
    assert e2e.status()["pipelines"][0]["last_run"]["outcome"] == "ok"
