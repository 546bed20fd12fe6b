"""Asynchronous jobs through the real CLI: SIGKILL around submission and polling,
restart, and find exactly one remote job per batch with every delivery settled."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Env


def purge_config(e2e: Env, confirm: str | None = None) -> Path:
    host = f"127.0.0.1:{e2e.box.emulators['adt'].port}"
    return e2e.compose(
        ["goose", "twins"],
        f"""
        sites:
          schedule: {{every: 1s}}
          source: {{connection: goose, tables: [ANA_SED], from: latest}}
          targets:
            purge:
              connection: twins
              kind: purge
              confirm_purge: "{confirm if confirm is not None else host}"
              trigger_keys: ["SITE-HQ"]
              poll_interval: 0.1s
              retry: {{max_attempts: 5, backoff: 0.1s, max_backoff: 0.5s}}
        """,
    )


def adt(e2e: Env, path: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = e2e.admin("adt", path)
    return rows


def settle(e2e: Env) -> dict[str, int]:
    [counts] = e2e.settle().values()
    return counts


@pytest.mark.parametrize("point", ["before_submit", "after_submit", "after_poll"])
def test_killed_around_a_job_resumes_it_and_never_starts_two(e2e: Env, point: str) -> None:
    purge_config(e2e)
    e2e.box.delete_in_goose("ANA_SED", ["SITE-HQ"])
    killed = e2e.cli("run", "--once", "-c", str(e2e.config), failpoints=point)
    assert killed.returncode == -9, killed.stderr
    counts = settle(e2e)
    assert counts["done"] == 1 and counts["dead"] == 0
    jobs = adt(e2e, "/_admin/jobs")
    assert len(jobs) == 1, f"exactly one remote job, got {jobs}"
    assert jobs[0]["status"] == "succeeded"
    assert adt(e2e, "/_admin/twins") == []
    status = e2e.status()
    assert status["pipelines"][0]["targets"][0]["done"] == 1


def test_a_lost_submit_answer_is_adopted_not_resubmitted(e2e: Env) -> None:
    purge_config(e2e)
    e2e.faults(e2e.box.adt_url, drop_after_apply_rate=1.0)
    e2e.box.delete_in_goose("ANA_SED", ["SITE-HQ"])
    e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "0")
    e2e.faults(e2e.box.adt_url, drop_after_apply_rate=0.0)
    settle(e2e)
    assert len(adt(e2e, "/_admin/jobs")) == 1


def test_non_trigger_deletions_start_no_job(e2e: Env) -> None:
    purge_config(e2e)
    e2e.box.delete_in_goose("ANA_SED", ["SITE-LAB"])
    counts = settle(e2e)
    assert counts["done"] == 1
    assert adt(e2e, "/_admin/jobs") == []
    assert len(adt(e2e, "/_admin/twins")) == 13


def test_purge_without_confirmation_refuses_to_start(e2e: Env) -> None:
    purge_config(e2e, confirm="some-other-instance.example.net")
    e2e.box.delete_in_goose("ANA_SED", ["SITE-HQ"])
    for command in (("validate",), ("run", "--once")):
        result = e2e.cli(*command, "-c", str(e2e.config))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "confirm_purge" in result.stderr
        assert "Traceback" not in result.stderr
    assert adt(e2e, "/_admin/jobs") == []
    text = e2e.config.read_text()
    e2e.config.write_text(
        "\n".join(line for line in text.splitlines() if "confirm_purge" not in line)
    )
    result = e2e.cli("validate", "-c", str(e2e.config))
    assert result.returncode == 2 and "confirm_purge" in result.stderr


def test_status_lists_open_jobs_and_adt_jobs_cannot_be_cancelled(e2e: Env) -> None:
    purge_config(e2e)
    httpx.post(f"{e2e.box.adt_url}/_admin/step", json={"seconds": 3600}, timeout=5)
    e2e.box.emulator("adt").step_seconds = 3600
    e2e.box.delete_in_goose("ANA_SED", ["SITE-HQ"])
    e2e.cli("run", "--once", "-c", str(e2e.config), "--job-wait", "0")
    jobs = e2e.status()["jobs"]
    assert len(jobs) == 1 and jobs[0]["target"] == "purge" and jobs[0]["items"] == 1
    text = e2e.cli("status", "-c", str(e2e.config)).stdout
    assert "open jobs" in text and jobs[0]["remote_id"] in text
    refused = e2e.cli("jobs", "cancel", str(jobs[0]["id"]), "-c", str(e2e.config))
    assert refused.returncode == 2
    assert "cannot be cancelled" in refused.stderr


def test_the_daemon_follows_a_job_to_its_end(e2e: Env) -> None:
    purge_config(e2e)
    e2e.box.delete_in_goose("ANA_SED", ["SITE-HQ"])
    daemon = e2e.popen("run", "-c", str(e2e.config))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and e2e.target_counts()["done"] < 1:
        time.sleep(0.3)
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    assert e2e.target_counts()["done"] == 1
    assert len(adt(e2e, "/_admin/jobs")) == 1
