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


CHAIN = """
contacts:
  schedule: {every: 0.3s}
  source: {connection: goose, tables: [CON_TRO], from: latest}
  targets:
    mdm_people:
      connection: mdm
      crosswalk: {type: GOOSE, value: "{RECORD_ID}"}
      poll_interval: 0.1s
      retry: {max_attempts: 50, backoff: 0.2s, max_backoff: 1s}
people:
  schedule: {every: 0.3s}
  source: {pipeline: contacts, target: mdm_people}
  targets:
    erp_users: {connection: erp, ido: UserNames, key: "{SYKEY}", lookup: {property: Username},
                retry: {max_attempts: 50, backoff: 0.2s, max_backoff: 1s}}
    person_twins: {connection: twins, kind: twins, twin_id: "{RECORD_ID}",
                   retry: {max_attempts: 50, backoff: 0.2s, max_backoff: 1s}}
    crm_customers:
      connection: crm
      entity: {name: Customer}
      key_attribute: ExternalId
      key: "{RECORD_ID}"
      poll_interval: 0.1s
      retry: {max_attempts: 50, backoff: 0.2s, max_backoff: 1s}
"""


def chain_kill_loop(e2e: Env, cycles: int, seed: int) -> None:
    """The daemon runs the whole chain (Goose -> Reltio -> ERP, twins, CRM) and is killed at
    random moments: around task and execution submissions, polls and hand-overs."""
    rng = random.Random(seed)
    contacts = [f"0-{i}" for i in range(1, 13)]
    rng.shuffle(contacts)
    e2e.compose(["goose", "mdm", "erp", "twins", "crm"], CHAIN)
    for cycle in range(cycles):
        if contacts and rng.random() < 0.7:
            e2e.box.delete_in_goose("CON_TRO", [contacts.pop()])
        daemon = e2e.popen("run", "-c", str(e2e.config))
        time.sleep(rng.uniform(0.3, 2.0))
        daemon.send_signal(signal.SIGKILL)
        daemon.communicate(timeout=10)
        assert daemon.returncode == -signal.SIGKILL, f"cycle {cycle}: daemon ended by itself"
    e2e.box.delete_in_goose("CON_TRO", contacts)


def check_the_chain_arrived(e2e: Env) -> None:
    counts = e2e.settle(runs=25)
    expected = {f"0-{i}" for i in range(1, 13)}
    for target in ("mdm_people",):
        assert counts[("contacts", target)]["done"] == 12, counts
    for target in ("erp_users", "person_twins", "crm_customers"):
        assert counts[("people", target)]["done"] == 12, counts
        assert counts[("people", target)]["dead"] == 0, counts
    reltio = [d["uri"] for d in e2e.admin("reltio", "/_admin/deleted")]
    assert len(reltio) == len(set(reltio)) == 12, "each entity deleted once"
    tasks = e2e.admin("reltio", "/_admin/tasks")
    carried = [u for t in tasks for u in t["parameters"]["entityUriList"]]
    assert len(carried) == len(set(carried)), "no entity carried by two tasks"
    users = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert users == sorted(PEOPLE[i][0] for i in range(12)), "each ERP row deleted once"
    customers = [d["key"] for d in e2e.admin("dmm", "/_admin/deleted")]
    assert sorted(customers) == sorted(expected), "each CRM row deleted once, nothing else"
    twins = {t["$dtId"] for t in e2e.admin("adt", "/_admin/twins")}
    assert not twins & expected


def test_sigkill_a_chain_at_random_moments_loses_nothing(e2e: Env) -> None:
    chain_kill_loop(e2e, cycles=3, seed=3)
    check_the_chain_arrived(e2e)


@pytest.mark.slow
def test_sigkill_a_chain_many_times(e2e: Env) -> None:
    cycles = int(os.environ.get("SYNCENGINE_CRASH_CYCLES", "40")) // 3
    chain_kill_loop(e2e, cycles=cycles, seed=int(time.time()))
    check_the_chain_arrived(e2e)
