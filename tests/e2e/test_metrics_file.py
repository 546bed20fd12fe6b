"""`run --once --metrics-file`: what a cron user's node_exporter reads, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Env
from tests.e2e.test_jobs import purge_config
from tests.e2e.test_observe import metric, start_daemon_with_metrics, stop, wait_for

LAG = "syncengine_propagation_lag_seconds"


def read(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_a_run_writes_the_lag_of_each_delivery_it_made_done(e2e: Env) -> None:
    e2e.write_config()
    path = e2e.tmp / "syncengine.prom"
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    result = e2e.cli("run", "--once", "-c", str(e2e.config), "--metrics-file", str(path))
    assert result.returncode == 0, result.stderr
    found = read(path)
    labels = {"pipeline": "contacts", "target": "erp_users"}
    assert value(found, f"{LAG}_count", **labels) == 2
    assert value(found, f"{LAG}_bucket", le="+Inf", **labels) == 2
    assert value(found, f"{LAG}_bucket", le="604800.0", **labels) == 2
    assert value(found, "syncengine_deliveries", status="done", **labels) == 2
    assert value(found, "syncengine_deliveries", status="dead", **labels) == 0
    assert value(found, "syncengine_oldest_pending_age_seconds", **labels) == 0
    assert value(found, "syncengine_last_run_success", pipeline="contacts") == 1
    assert value(found, "syncengine_last_run_timestamp_seconds", pipeline="contacts") > 0
    assert not [k for k in found if k[0] == "syncengine_lease_holder"], "the run let go"

    e2e.box.delete_in_goose("CON_TRO", ["0-3"])
    env_run = subprocess.run(
        [sys.executable, "-m", "syncengine", "run", "--once", "-c", str(e2e.config)],
        capture_output=True,
        text=True,
        env={**e2e.env(), "SYNCENGINE_METRICS_FILE": str(path)},
        timeout=120,
        check=False,
    )
    assert env_run.returncode == 0, env_run.stderr
    found = read(path)
    assert value(found, f"{LAG}_count", **labels) == 3, "the counts carry on across runs"
    assert value(found, "syncengine_runs_total", pipeline="contacts", outcome="ok") == 2


def test_a_job_targets_done_items_have_their_lag(e2e: Env) -> None:
    purge_config(e2e)
    path = e2e.tmp / "syncengine.prom"
    e2e.box.delete_in_goose("ANA_SED", ["SITE-HQ"])
    result = e2e.cli("run", "--once", "-c", str(e2e.config), "--metrics-file", str(path))
    assert result.returncode == 0, result.stderr
    found = read(path)
    assert value(found, f"{LAG}_count", pipeline="sites", target="purge") == 1
    assert (
        value(found, "syncengine_deliveries", pipeline="sites", target="purge", status="done") == 1
    )


def test_a_metrics_file_is_refused_where_it_cannot_serve(e2e: Env) -> None:
    e2e.write_config()
    nowhere = e2e.tmp / "no-such-dir" / "syncengine.prom"
    result = e2e.cli("run", "--once", "-c", str(e2e.config), "--metrics-file", str(nowhere))
    assert result.returncode == 2
    assert "no directory" in result.stderr and "Traceback" not in result.stderr
    daemon = e2e.cli("run", "-c", str(e2e.config), "--metrics-file", str(e2e.tmp / "m.prom"))
    assert daemon.returncode == 2 and "--metrics-file goes with --once" in daemon.stderr


def test_the_daemon_serves_the_lag_and_the_queue_gauges(e2e: Env) -> None:
    daemon, base = start_daemon_with_metrics(e2e)
    try:
        e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
        labels = 'pipeline="contacts",target="erp_users"'
        wait_for(lambda: metric(base, f"{LAG}_count{{{labels}}}") == 2)
        assert metric(base, f'{LAG}_bucket{{le="+Inf",{labels}}}') == 2
        assert metric(base, f"syncengine_oldest_pending_age_seconds{{{labels}}}") == 0
        assert metric(base, f'syncengine_deliveries{{{labels},status="held"}}') == 0
    finally:
        stop(daemon)
