"""A target whose delete reaches beyond its keys (an ADT purge) is refused the guards
that weigh keys or count deliveries, and the chains that would hand on what it
deleted: it can keep neither promise, so `validate` says so instead of the run
wiping what a legal hold named, or a chain deleting what the purge never touched."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors import load_registry
from connectors.contract import Unscoped
from syncengine.cli import app
from syncengine.config import parse_config
from tests.unit.test_config import ENV, issues_of

BASE = textwrap.dedent(
    """
    state: {url: "sqlite:///tmp/x.db"}
    connections:
      goose: {type: goose, url: "http://127.0.0.1:8701/deleted/", code: DEV001, key: k}
      twins: {type: adt, url: "http://127.0.0.1:8704", token: tok}
      erp: {type: mongoose, url: "http://127.0.0.1:8702/IDORequestService/MGRESTService.svc",
            config: DEMO, user: sync, password: pw}
    pipelines:
      sites:
        schedule: {every: 60s}
        source: {connection: goose, tables: [SITES], from: latest}
        targets:
          purge:
            connection: twins
            kind: purge
            confirm_purge: "127.0.0.1:8704"
            trigger_keys: ["SITE-9"]
            GUARD
          twins_by_key:
            connection: twins
            kind: twins
            twin_id: "{RECORD_ID}"
            guard: {legal_hold: {key: "{RECORD_ID}", patterns: [hq, "hq-*"]}}
    """
)

GUARDS = {
    "legal_hold": 'guard: {legal_hold: {key: "{RECORD_ID}", patterns: [hq, "hq-*"]}}',
    "max_per_run": "guard: {max_per_run: 1}",
    "max_per_hour": "guard: {max_per_hour: 5}",
}


def config_text(guard: str = "", chain_on: str | None = None) -> str:
    text = BASE.replace("GUARD", guard)
    if chain_on is not None:
        text += textwrap.indent(
            textwrap.dedent(
                f"""
                site_users:
                  schedule: {{every: 60s}}
                  source: {{pipeline: sites, target: {chain_on}}}
                  targets:
                    erp_users: {{connection: erp, ido: UserNames, key: "{{RECORD_ID}}"}}
                """
            ),
            "  ",
        )
    return text


def test_a_purge_without_guards_and_a_held_target_by_key_are_valid() -> None:
    config = parse_config(config_text(), "my.yaml", ENV)
    assert set(config.pipelines["sites"].targets) == {"purge", "twins_by_key"}


@pytest.mark.parametrize("guard", sorted(GUARDS))
def test_a_guard_that_cannot_hold_on_a_purge_is_refused_naming_why(guard: str) -> None:
    issues = issues_of(config_text(GUARDS[guard]))
    assert len(issues) == 1, issues
    (issue,) = issues
    assert re.match(rf"my\.yaml:\d+: pipelines\.sites\.targets\.purge\.guard\.{guard}: ", issue)
    assert "purge" in issue and "cannot hold" in issue and "remove it" in issue


def test_a_chain_on_a_purge_is_refused_and_one_on_a_target_by_key_is_not() -> None:
    (issue,) = issues_of(config_text(chain_on="purge"))
    assert re.match(r"my\.yaml:\d+: pipelines\.site_users\.source\.target: ", issue)
    assert "sites/purge" in issue and "cannot be listed" in issue
    config = parse_config(config_text(chain_on="twins_by_key"), "my.yaml", ENV)
    chain = config.pipelines["site_users"].source.chain
    assert chain is not None and chain.describe() == "sites/twins_by_key"


def test_validate_refuses_a_held_purge_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(config_text(GUARDS["legal_hold"]), encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", "-c", str(path)])
    assert result.exit_code == 2
    assert "legal_hold cannot hold" in result.output
    assert "Traceback" not in result.output


def test_only_the_purge_declares_itself_unscoped() -> None:
    """Every other built-in target deletes the record its key names and nothing else."""
    config = parse_config(config_text(chain_on="twins_by_key"), "my.yaml", ENV)
    registry = load_registry()
    seen = {}
    for pipe in config.pipelines.values():
        for name, target in pipe.targets.items():
            factory = registry.get(target.connection_type).build_target
            assert factory is not None
            built = factory(
                target.connection, config.connections[target.connection], target.settings
            )
            seen[name] = isinstance(built, Unscoped)
    assert seen == {"purge": True, "twins_by_key": False, "erp_users": False}
