"""Pruning as aggressively as the settings allow (keep_done: 0s) between SIGKILLs and
restarts loses nothing and sends nothing twice; `trace` then says what was pruned."""

from __future__ import annotations

import json
import random
import signal
import time

from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env
from tests.e2e.test_crash import USERS
from tests.e2e.test_faults import run_until_settled

RETENTION = "retention: {keep_done: 0s, keep_runs: 0s, pause: 0, reread_margin: 2s}"
MARGIN = 2.5
"""Past reread_margin: a later read's window lies beyond the earlier ones (overlap 1s)."""


def aggressive(e2e: Env, **overrides: object) -> None:
    e2e.write_config(**overrides)
    text = e2e.config.read_text()
    start = text.index("state: {")
    end = text.index("}", start)
    e2e.config.write_text(text[:end] + ", " + RETENTION + text[end:])


def prune(e2e: Env) -> dict[str, object]:
    result = e2e.cli("state", "prune", "-c", str(e2e.config), "-o", "json")
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_pruning_between_crashes_loses_nothing_and_sends_nothing_twice(e2e: Env) -> None:
    rng = random.Random(5)
    contacts = [f"0-{i}" for i in range(1, 13)]
    aggressive(e2e, every="0.3s", overlap="1s")
    e2e.faults(e2e.box.mongoose_url, latency=0.02)
    pruned = 0
    for cycle in range(5):
        e2e.box.delete_in_goose("CON_TRO", [contacts.pop(), contacts.pop()])
        # The answer of the next Goose call is lost: the in-flight marker must survive
        # the prune, and the recovery re-read must find its records duplicates or new.
        if cycle % 2:
            e2e.drop_next_goose_answers(1)
        daemon = e2e.popen("run", "-c", str(e2e.config))
        time.sleep(rng.uniform(0.5, 1.6))
        daemon.send_signal(signal.SIGKILL)
        daemon.communicate(timeout=10)
        deletions = prune(e2e)["deletions"]  # a call may be in flight: its stream stays
        if cycle % 2 == 0:
            e2e.cli("run", "--once", "-c", str(e2e.config))
            time.sleep(MARGIN)
            deletions = prune(e2e)["deletions"]
        assert isinstance(deletions, int)
        pruned += deletions
    e2e.box.delete_in_goose("CON_TRO", contacts)
    check_everything_arrived_after_prunes(e2e)
    assert pruned > 0, "the prunes removed something"


def check_everything_arrived_after_prunes(e2e: Env) -> None:
    """As test_crash checks it, except the done count: pruned deliveries are no longer
    counted, so the emulator's own record (each row deleted once, nothing else) is the
    proof."""
    counts = run_until_settled(e2e)
    assert counts["dead"] == 0 and counts["pending"] == 0 and counts["failed"] == 0
    expected = sorted(PEOPLE[i][0] for i in range(12))
    assert sorted(USERS - e2e.users()) == expected
    deleted = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert deleted == expected, "each row deleted once, nothing else"


def test_trace_of_a_pruned_key_says_when_and_under_which_setting(e2e: Env) -> None:
    aggressive(e2e, overlap="1s")
    e2e.box.delete_in_goose("CON_TRO", ["0-1"])
    for _ in range(3):
        e2e.cli("run", "--once", "-c", str(e2e.config))
    found = e2e.cli("trace", "0-1", "-c", str(e2e.config))
    assert found.returncode == 0, found.stderr
    time.sleep(MARGIN)
    e2e.cli("run", "--once", "-c", str(e2e.config))
    assert prune(e2e)["deletions"] == 1
    gone = e2e.cli("trace", "0-1", "-c", str(e2e.config))
    assert gone.returncode == 1
    said = " ".join(gone.stdout.split())
    assert "contacts: 1 deletions seen" in said
    assert "under keep_done: 0s, keep_runs: 0s" in said


def test_the_daemon_prunes_by_itself_between_runs(e2e: Env) -> None:
    """With `retention.every`, the daemon prunes on its own schedule: what is done goes,
    the prune is logged, and the runs go on (a deletion made afterwards still arrives)."""
    e2e.write_config(every="0.5s", overlap="1s")
    text = e2e.config.read_text()
    end = text.index("}", text.index("state: {"))
    settings = "retention: {keep_done: 0s, pause: 0, reread_margin: 1s, every: 1s}"
    e2e.config.write_text(text[:end] + ", " + settings + text[end:])
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    daemon = e2e.popen("run", "-c", str(e2e.config))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            traced = e2e.cli("trace", "0-1", "-c", str(e2e.config), "-o", "json").stdout
            # Found, trace prints its trees (a list); pruned, the prune notes.
            notes = json.loads(traced) if traced.strip() else []
            if isinstance(notes, dict) and notes["found"] == [] and notes["pruned"]:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the daemon never pruned 0-1")
        e2e.box.delete_in_goose("CON_TRO", ["0-3"])
        deadline = time.monotonic() + 60
        third = PEOPLE[2][0]
        while third not in {r["properties"]["Username"] for r in e2e.mongoose_deleted()}:
            assert time.monotonic() < deadline, "a deletion after the prune never arrived"
            time.sleep(0.5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
    assert "store_pruned" in out + err
    deleted = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert deleted == sorted(PEOPLE[i][0] for i in range(3)), "each deleted once"
