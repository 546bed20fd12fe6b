"""`syncengine.api` from a plain Python script, as an orchestrator calls it: a typed,
JSON-serialisable summary, typed errors, and nothing done behind the caller's back (no
signal handler, no exit); `run --once -o json` prints the same summary."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.e2e.conftest import Env

SCRIPT = textwrap.dedent(
    """
    import json, signal, sys
    from syncengine import api

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    summary = api.run_once(sys.argv[1], job_wait=5)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert isinstance(summary, api.RunSummary)
    summary.raise_for_failure()
    status = api.status(sys.argv[1])
    plan = api.plan(sys.argv[1])
    errors = {}
    for name, call in {
        "missing": lambda: api.run_once(sys.argv[1] + ".missing"),
        "pipeline": lambda: api.run_once(sys.argv[1], pipeline="nope"),
    }.items():
        try:
            call()
        except api.SyncEngineError as exc:
            errors[name] = [type(exc).__name__, str(exc)]
    print(json.dumps({
        "summary": summary.as_dict(),
        "deletions": status["pipelines"][0]["deletions"],
        "plan": plan,
        "errors": errors,
    }))
    print("the script went on after every call")
    """
)


def test_a_plain_script_runs_plans_and_reads_status(e2e: Env, tmp_path: Path) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    script = tmp_path / "orchestrate.py"
    script.write_text(SCRIPT, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), str(e2e.config)],
        capture_output=True,
        text=True,
        env=e2e.env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first, last = result.stdout.strip().splitlines()
    assert last == "the script went on after every call"
    data = json.loads(first)
    summary = data["summary"]
    assert summary["ok"] is True and summary["exit_code"] == 0
    (pipeline,) = summary["pipelines"]
    assert pipeline["pipeline"] == "contacts" and pipeline["pulled"] == 2
    assert [t["delivered"] for t in pipeline["targets"]] == [2]
    assert data["deletions"] == 2
    assert data["plan"][0]["pipeline"] == "contacts"
    assert data["errors"]["missing"][0] == "ConfigInvalid"
    assert "file not found" in data["errors"]["missing"][1]
    assert data["errors"]["pipeline"][0] == "UnknownPipeline"
    assert "no pipeline named 'nope'" in data["errors"]["pipeline"][1]
    assert "Traceback" not in result.stderr


def test_run_once_json_prints_the_api_summary(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-3"])
    result = e2e.cli("run", "--once", "-c", str(e2e.config), "-o", "json", "--job-wait", "5")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary) == {"ok", "exit_code", "pipelines"}
    assert summary["pipelines"][0]["pulled"] == 1
    assert summary["pipelines"][0]["targets"][0]["delivered"] == 1
    refused = e2e.cli("run", "-c", str(e2e.config), "-o", "json")
    assert refused.returncode == 2
    assert "json with --once or --dry-run" in refused.stderr
