"""`deliveries list`: every delivery with its status, attempts, next attempt and reason
(the failure, the guard's reason, why it died), filtered, paged by keyset and read a
chunk at a time, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from typer.testing import CliRunner

from state import NewRecord, OutcomeRecord, RetryRule, Store
from syncengine.cli import app
from tests.unit.test_claim_screen import KeyScreen

KEYS = ["k1", "k2", "[k3]", "k4", "k5"]


def write_config(path: Path, url: str) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            state: {{url: "{url}"}}
            connections:
              goose: {{type: goose, url: "http://127.0.0.1:9/deleted/", code: D, key: kkkkkkkk}}
              erp: {{type: mongoose, url: "http://127.0.0.1:9/IDORequestService/MGRESTService.svc",
                    config: DEMO, user: u, password: pppppppp}}
            pipelines:
              p:
                schedule: {{every: 60s}}
                source: {{connection: goose, tables: [T], from: latest}}
                targets:
                  a: {{connection: erp, ido: UserNames, key: "{{K}}"}}
                  b: {{connection: erp, ido: UserNames, key: "{{K}}"}}
            """
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def queue(store: Store, tmp_path: Path) -> Path:
    """Five deletions to targets a and b. On a: k1 failed (will be retried), k2 dead,
    [k3] dead by the legal hold, k4 and k5 held by the mass-delete guard; b: all pending."""
    store.journal(
        "p", "T", [NewRecord(k, {"K": k}) for k in KEYS], cursor=None, targets=["a", "b"],
        run_id=None,
    )  # fmt: skip
    first, second = store.claim("p", "a", 2, "run")
    store.record_outcomes(
        [
            OutcomeRecord(first.id, "retry", reason="timeout after 5s"),
            OutcomeRecord(second.id, "dead", reason="refused [red] by the server"),
        ],
        RetryRule(max_attempts=5, base_delay=600, max_delay=600),
    )
    assert store.claim("p", "a", 10, "run", screen=KeyScreen({"[k3]"}, limit=1)) == []
    return write_config(tmp_path / "c.yaml", store.url)


def listing(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["deliveries", "list", "-c", str(config), *args])
    assert result.exit_code == 0, result.output
    if "json" in args:
        return json.loads(result.output)
    return result.output


def by_key(page: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in page["deliveries"]}


def test_each_status_with_its_reason_and_attempts(queue: Path) -> None:
    failed = by_key(listing(queue, "--status", "failed", "-o", "json"))
    assert list(failed) == ["k1"]
    assert failed["k1"]["attempts"] == 1 and failed["k1"]["reason"] == "timeout after 5s"
    assert failed["k1"]["next_attempt_at"] is not None and failed["k1"]["target"] == "a"

    held = by_key(listing(queue, "-p", "p", "-t", "a", "--status", "held", "-o", "json"))
    assert {k: r["reason"] for k, r in held.items()} == {"k4": "guard: 2 due", "k5": "guard: 2 due"}

    dead = by_key(listing(queue, "--status", "dead", "-o", "json"))
    assert {k: r["reason"] for k, r in dead.items()} == {
        "k2": "refused [red] by the server",
        "[k3]": "legal hold: [k3]",
    }

    pending = listing(queue, "-t", "b", "-o", "json")
    assert [r["key"] for r in pending["deliveries"]] == KEYS
    assert {(r["status"], r["target"]) for r in pending["deliveries"]} == {("pending", "b")}
    assert pending["next_after"] is None


def test_text_shows_keys_and_reasons_as_written(queue: Path) -> None:
    text = listing(queue, "--status", "dead")
    assert "[k3]" in text and "legal hold: [k3]" in text and "refused [red] by the" in text
    assert "2 deliveries" in text and "next page" not in text
    failed = listing(queue, "--status", "failed")
    assert re.search(r"k1 .* failed .* 1 .* in \d+m .* timeout after 5s", failed)


def test_pages_follow_each_other_by_the_last_id(queue: Path) -> None:
    seen: list[int] = []
    after = 0
    for _ in range(5):
        page = listing(queue, "--limit", "3", "--after", str(after), "-o", "json")
        seen += [row["id"] for row in page["deliveries"]]
        if page["next_after"] is None:
            break
        assert page["next_after"] == seen[-1]
        after = page["next_after"]
    assert len(seen) == 10 and seen == sorted(set(seen))

    on_a = [row["id"] for row in listing(queue, "-t", "a", "-o", "json")["deliveries"]]
    text = listing(queue, "-t", "a", "--limit", "2")
    line = text.strip().splitlines()[-1]
    assert line.startswith("next page: syncengine deliveries list -c ")
    assert line.endswith(f"-t a --limit 2 --after {on_a[1]}"), line
    args = shlex.split(line.removeprefix("next page: "))[1:]
    following = CliRunner().invoke(app, args)
    assert following.exit_code == 0 and "2 deliveries" in following.output
    keys_then = json.loads(CliRunner().invoke(app, [*args, "-o", "json"]).output)["deliveries"]
    assert [r["key"] for r in keys_then] == ["[k3]", "k4"]


def test_a_long_page_is_read_a_chunk_at_a_time(
    store: Store, queue: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("state.deliveries.CHUNK", 3)
    queries: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "FROM delivery" in statement and "LIMIT" in statement:
            queries.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        rows = list(store.page(limit=9))
    finally:
        event.remove(store.engine, "before_cursor_execute", note)
    assert len(rows) == 9 and [d.id for d, _ in rows] == sorted(d.id for d, _ in rows)
    assert len(queries) == 3, "three chunks of three, each its own query"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--status", "stuck"], "--status 'stuck': use one of pending, in_flight, done"),
        (["-t", "nope"], "no pipeline has a target 'nope'; targets: a, b"),
        (["-p", "p", "-t", "nope"], "pipeline p has no target 'nope'"),
        (["--limit", "0"], "--limit 0: write a count from 1"),
        (["-o", "yaml"], "--output 'yaml': use text or json"),
    ],
)
def test_a_wrong_filter_is_one_line_and_exit_2(queue: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["deliveries", "list", "-c", str(queue), *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
