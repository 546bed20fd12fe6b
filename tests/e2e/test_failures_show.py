"""Failures show, through the real CLI: a target at a closed port makes `run --once` exit 1
with the reason on stderr, one `send_failed` warning per interval (not one per batch),
the summary's counts and first reason; the store keeps when the target started failing,
across runs, until the target is back. A job target failing its submission too."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from state import Store
from state.models import TargetHealth
from tests.e2e.conftest import Env

CONTACTS = ["0-1", "0-2", "0-3", "0-4", "0-5"]
NOTHING_THROUGH = (
    "syncengine: contacts/erp_users: nothing got through: 5 retry later: unreachable: "
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def point_at(config: Path, url: str, port: int) -> None:
    config.write_text(config.read_text().replace(url, f"http://127.0.0.1:{port}"))


def events(stderr: str, name: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == name]


def health(e2e: Env) -> TargetHealth:
    store = Store.open(f"sqlite:///{e2e.tmp / 'state.db'}")
    try:
        [row] = store.target_health("contacts")
        return row
    finally:
        store.close()


def test_a_mongoose_target_at_a_closed_port_fails_the_run_and_says_why(e2e: Env) -> None:
    point_at(e2e.config, e2e.box.mongoose_url, closed_port())
    e2e.box.delete_in_goose("CON_TRO", CONTACTS)

    first = e2e.cli("run", "--once", "-c", str(e2e.config))

    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr
    [line] = [x for x in first.stderr.splitlines() if x.startswith("syncengine: ")]
    assert line.startswith(NOTHING_THROUGH) and "cannot connect (ConnectError)" in line
    [warning] = events(first.stderr, "send_failed")  # two batches of 3 and 2: one line
    assert warning["level"] == "warning" and warning["failure"] == "unreachable"
    assert warning["pipeline"] == "contacts" and warning["target"] == "erp_users"
    assert warning["batch_size"] == 3 and warning["first_key"] == "0-1"
    assert "cannot connect" in str(warning["reason"])
    assert "nothing got through: 5 failed (unreachable 5); first: erp: " in first.stdout
    failing = health(e2e)
    assert failing.failing_since is not None and failing.failed_runs == 1
    assert "cannot connect" in failing.last_error

    again = e2e.cli("run", "--once", "-c", str(e2e.config), "-o", "json")
    assert again.returncode == 1, again.stderr
    summary = json.loads(again.stdout)
    assert summary["ok"] is False and summary["exit_code"] == 1
    [target] = summary["pipelines"][0]["targets"]
    assert target["failed"] == 5 and target["failures"] == {"unreachable": 5}
    assert "cannot connect (ConnectError)" in target["first_error"]
    assert target["nothing_through"] is True
    assert NOTHING_THROUGH in again.stderr
    still = health(e2e)
    assert still.failing_since == failing.failing_since and still.failed_runs == 2

    e2e.write_config()  # the target is back
    back = e2e.cli("run", "--once", "-c", str(e2e.config), "-o", "json")
    assert back.returncode == 0, back.stderr
    [target] = json.loads(back.stdout)["pipelines"][0]["targets"]
    assert target["delivered"] == 5 and target["failed"] == 0 and not target["nothing_through"]
    assert "nothing got through" not in back.stderr
    healed = health(e2e)
    assert healed.failing_since is None and healed.last_ok_at is not None


def test_a_job_target_failing_its_submission_fails_the_run_and_says_why(e2e: Env) -> None:
    config = e2e.compose(
        ["goose", "crm"],
        """
        contacts:
          schedule: {every: 1s}
          source: {connection: goose, tables: [CON_TRO], from: latest}
          targets:
            crm_customers:
              connection: crm
              entity: {name: Customer}
              key_attribute: ExternalId
              key: "{RECORD_ID}"
              poll_interval: 0.1s
        """,
    )
    point_at(config, e2e.box.url("dmm"), closed_port())
    e2e.box.delete_in_goose("CON_TRO", CONTACTS[:2])

    result = e2e.cli("run", "--once", "-c", str(config), "--job-wait", "0", "-o", "json")

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [target] = json.loads(result.stdout)["pipelines"][0]["targets"]
    assert target["failures"] == {"unreachable": 2} and target["nothing_through"] is True
    assert "syncengine: contacts/crm_customers: nothing got through: " in result.stderr
    [warning] = events(result.stderr, "send_failed")
    assert warning["target"] == "crm_customers" and warning["client_id"]
    assert health(e2e).failing_since is not None
