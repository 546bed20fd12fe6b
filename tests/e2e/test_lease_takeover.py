"""A lease is taken over before its expiry only on proof that its holder is gone.

Daemons in containers with host networking share a hostname but not their PID
namespace: a pid absent here says nothing about a holder there. The lease rows
are written as such a holder would write them; `run --once` is the second daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from state import Store
from syncengine.engine.lease import BOOT, HOST, PID_NAMESPACE, UNKNOWN
from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env
from tests.e2e.test_fencing import configure, lease

pytestmark = pytest.mark.postgres

A_DAY = 86400.0


def _absent_pid() -> int:
    """The pid of a process that has just ended (so absent from this namespace)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _events(stderr: str) -> list[dict[str, Any]]:
    found = []
    for line in stderr.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def _run_once_against(e2e: Env, pg_url: str, holder: str) -> tuple[list[str], str | None]:
    """A `run --once` while `holder` holds the pipeline's lease for a day: the events
    it logged and who holds the lease after it."""
    assert UNKNOWN not in (BOOT, PID_NAMESPACE), "this host's boot id and PID namespace"
    configure(e2e, pg_url)
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3"])
    store = Store.open(pg_url)
    try:
        assert store.acquire_lock("contacts", holder, A_DAY) is not None
        result = e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "10")
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        after = lease(store)
    finally:
        store.close()
    return [e.get("event", "") for e in _events(result.stderr)], (
        None if after is None else after.owner
    )


@pytest.mark.parametrize(
    "where",
    ["another PID namespace", "another boot"],
)
def test_a_holder_elsewhere_with_our_hostname_keeps_its_lease(
    e2e: Env, pg_url: str, where: str
) -> None:
    namespace = str(int(PID_NAMESPACE) + 1) if where == "another PID namespace" else PID_NAMESPACE
    boot = "00000000-0000-4000-8000-000000000000" if where == "another boot" else BOOT
    holder = f"{HOST}:{_absent_pid()}:0a1b2c3d:{boot}:{namespace}"
    events, owner = _run_once_against(e2e, pg_url, holder)
    assert "run_skipped" in events and "lock_taken_over" not in events, events
    assert owner == holder, "the live holder keeps its lease until it expires"
    assert e2e.mongoose_deleted() == [], "nothing sent behind the holder's back"


def test_a_dead_holder_of_this_namespace_is_taken_over_at_once(e2e: Env, pg_url: str) -> None:
    holder = f"{HOST}:{_absent_pid()}:0a1b2c3d:{BOOT}:{PID_NAMESPACE}"
    events, _ = _run_once_against(e2e, pg_url, holder)
    assert "lock_taken_over" in events and "run_skipped" not in events, events
    deleted = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert deleted == sorted(PEOPLE[i][0] for i in range(3))
