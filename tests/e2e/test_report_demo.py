"""`report` on the demo's state tells the shipped story hop by hop, with lags: a contact
deleted in Goose, then in Reltio, then (carried on by `people`) in the ERP, the twin
graph and the CRM; the one Reltio refused still waiting and carried on nowhere; the
site purge and the CRM's own deletions each with the job that did them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from typer.testing import CliRunner

from connectors.kit.serving import free_port
from syncengine.cli import app, run_once
from syncengine.config import parse_config
from syncengine.demo import run_demo
from syncengine.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_PORTS = {"goose": 8701, "mongoose": 8702, "reltio": 8703, "adt": 8704, "dmm": 8705}
PEOPLE = ("erp_users", "person_twins", "crm_customers")


def test_report_on_the_demo_shows_every_hop_with_lags(tmp_path: Path) -> None:
    ports = {name: free_port() for name in SHIPPED_PORTS}
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    for name, port in SHIPPED_PORTS.items():
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{ports[name]}")
    text = text.replace("sqlite:///data/sandbox.db", f"sqlite:///{tmp_path / 'sandbox.db'}")
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    config = parse_config(text, str(path), {})
    printed = io.StringIO()
    code = run_demo(config, Console(file=printed, width=120), run_once, sandbox=Sandbox(ports))
    assert code == 0, printed.getvalue()

    runner = CliRunner()
    result = runner.invoke(app, ["report", "-c", str(path), "-o", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    at: dict[tuple[str, str, str], dict[str, Any]] = {
        (r["pipeline"], r["key"], r["target"]): r for r in rows
    }
    for key in ("0-1", "0-2", "0-4", "0-5", "0-6", "0-7", "0-13"):
        reltio = at[("contacts", key, "mdm_people")]
        assert (reltio["hop"], reltio["outcome"], reltio["job_kind"]) == (
            1,
            "done",
            "reltio_delete",
        )
        assert reltio["job_remote_id"] and reltio["lag_s"] > 0
        for target in PEOPLE:
            hop = at[("people", key, target)]
            assert (hop["hop"], hop["outcome"]) == (2, "done"), hop
            assert hop["upstream_delivery_id"] == reltio["delivery_id"]
            assert (hop["upstream_pipeline"], hop["upstream_target"]) == ("contacts", "mdm_people")
            assert (hop["source_deletion_id"], hop["source_origin"]) == (
                reltio["deletion_id"],
                f"goose:DEV001:CON_TRO:{key}",
            )
            assert hop["lag_s"] >= reltio["lag_s"] and hop["lag_s"] > hop["hop_lag_s"] > 0
        assert at[("people", key, "crm_customers")]["job_kind"] == "dmm_delete"
    refused = at[("contacts", "0-3", "mdm_people")]
    assert refused["outcome"] == "failed" and "could not delete" in refused["reason"]
    assert not [r for r in rows if r["pipeline"] == "people" and r["key"] == "0-3"]
    purge = at[("sites", "SITE-HQ", "twin_instance_purge")]
    assert (purge["outcome"], purge["job_kind"]) == ("done", "adt_delete_job")
    for key in ("Customer.ExternalId=0-9", "Customer.ExternalId=0-10"):
        assert at[("crm_deletions", key, "goose_contacts")]["outcome"] == "done"
    assert {r["outcome"] for r in rows} == {"done", "failed"}

    summary = runner.invoke(app, ["report", "-c", str(path)])
    assert summary.exit_code == 0, summary.output
    lines = summary.stdout.splitlines()
    for hop, pipeline, target in [
        (1, "contacts", "mdm_people"),
        *[(2, "people", t) for t in PEOPLE],
        (1, "sites", "twin_instance_purge"),
        (1, "crm_deletions", "goose_contacts"),
        (1, "employees", "erp_employees"),
    ]:
        shown = [line for line in lines if f"│ {pipeline} " in line and f"│ {target} " in line]
        assert len(shown) == 2 and all(line.split("│")[1].strip() == str(hop) for line in shown)
    assert any("0-3," in line and "(failed)" in line for line in lines), summary.stdout
