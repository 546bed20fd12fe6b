"""SIGKILL the daemon at random moments, restart it, and lose nothing.

`make test` runs a few cycles; `make crash-test` runs many
(SYNCENGINE_CRASH_CYCLES). Each cycle is bounded in time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env
from tests.e2e.test_faults import run_until_settled

USERS = {p[0] for p in PEOPLE}


def kill_loop(e2e: Env, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    contacts = [f"0-{i}" for i in range(1, 13)]
    rng.shuffle(contacts)
    e2e.write_config(every="0.3s")
    e2e.faults(e2e.box.mongoose_url, latency=0.02)
    for cycle in range(cycles):
        if contacts and rng.random() < 0.7:
            e2e.box.delete_in_goose("CON_TRO", [contacts.pop()])
        daemon = e2e.popen("run", "-c", str(e2e.config))
        time.sleep(rng.uniform(0.3, 1.6))
        daemon.send_signal(signal.SIGKILL)
        daemon.communicate(timeout=10)
        assert daemon.returncode == -signal.SIGKILL, f"cycle {cycle}: daemon ended by itself"
    e2e.box.delete_in_goose("CON_TRO", contacts)


def check_everything_arrived(e2e: Env) -> None:
    counts = run_until_settled(e2e)
    expected = {PEOPLE[i][0] for i in range(12)}
    assert USERS - e2e.users() == expected
    assert counts["done"] == 12 and counts["dead"] == 0 and counts["pending"] == 0
    deleted = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert deleted == sorted(expected), "each row deleted once, nothing else"


def test_sigkill_at_random_moments_loses_nothing(e2e: Env) -> None:
    kill_loop(e2e, cycles=4, seed=1)
    check_everything_arrived(e2e)


@pytest.mark.slow
def test_sigkill_many_times(e2e: Env) -> None:
    cycles = int(os.environ.get("SYNCENGINE_CRASH_CYCLES", "40"))
    kill_loop(e2e, cycles=cycles, seed=int(time.time()))
    check_everything_arrived(e2e)


def test_sigterm_finishes_the_batch_and_exits_zero(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3"])
    daemon = e2e.popen("run", "-c", str(e2e.config))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and e2e.target_counts()["done"] < 3:
        time.sleep(0.3)
    daemon.send_signal(signal.SIGTERM)
    try:
        _, stderr = daemon.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        raise
    assert daemon.returncode == 0, stderr
    assert "daemon_stopped" in stderr
    counts = e2e.target_counts()
    assert counts["done"] == 3 and counts["in_flight"] == 0
