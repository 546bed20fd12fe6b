"""The sandbox is driven by the registry: a connector's emulator, its seed and its
default port hang on its registry entry, so adding a target edits no sandbox code."""

from __future__ import annotations

import dataclasses
import pkgutil
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connectors import load_registry
from connectors.contract import Registry, SandboxSpec
from connectors.emulation.kit import SandboxEmulator
from syncengine.cli import app
from syncengine.sandbox import Sandbox, SandboxError, default_ports
from tests.connectors import targets

ROOT = Path(__file__).resolve().parents[2]


def test_every_connector_brings_its_emulator_on_its_own_port() -> None:
    registry = load_registry()
    ports = default_ports()
    assert sorted(ports) == registry.names(), "every connector runs in the sandbox"
    assert len(set(ports.values())) == len(ports), ports
    shipped = (ROOT / "config.yaml").read_text(encoding="utf-8")
    for name, port in ports.items():
        assert f"127.0.0.1:{port}" in shipped, f"{name}: the shipped config uses its port"
        spec = registry.get(name).sandbox
        assert spec is not None
        made = pkgutil.resolve_name(spec.emulator)(0.2)
        assert isinstance(made, SandboxEmulator) and made.describe("http://h")


def test_a_port_is_moved_by_name_and_an_unknown_name_is_refused() -> None:
    box = Sandbox({"dmm": 9999})
    assert box.emulators["dmm"].port == 9999
    assert box.emulators["goose"].port == default_ports()["goose"]
    with pytest.raises(SandboxError, match=r"no emulator named nosuch; the sandbox runs: goose"):
        Sandbox({"nosuch": 1})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("goose", "write it as NAME=PORT"),
        ("goose=x", "write it as NAME=PORT"),
        ("goose=70000", "write it as NAME=PORT"),
        ("nosuch=9701", "no emulator named nosuch"),
    ],
)
def test_sandbox_port_option_errors_are_one_line(given: str, expected: str) -> None:
    result = CliRunner().invoke(app, ["sandbox", "--port", given])
    assert result.exit_code == 2
    text = re.sub(r"\s+", " ", result.output)
    assert expected in text and "Traceback" not in text


def test_a_new_target_needs_nothing_but_its_registry_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connector registered under a new name, with its emulator and contract cases
    (borrowed from a registered one), is run by the sandbox, gets a URL and its actions
    there, and joins the contract suite: no shared file lists connectors."""
    registry = load_registry()
    infos = [registry.get(name) for name in registry.names()]
    model = next(info for info in infos if info.build_target and info.sandbox)
    assert model.sandbox is not None
    spec = SandboxSpec(9999, model.sandbox.emulator, model.sandbox.contract)
    fresh = Registry()
    for info in [*infos, dataclasses.replace(model, name="newcomer", sandbox=spec)]:
        fresh.register(info)
    monkeypatch.setattr("syncengine.sandbox.load_registry", lambda: fresh)
    monkeypatch.setattr(targets, "load_registry", lambda: fresh)

    assert default_ports()["newcomer"] == 9999
    box = Sandbox()
    assert box.newcomer_url == "http://127.0.0.1:9999"
    declared = box.emulators["newcomer"].emulated
    for action in declared.actions:
        assert getattr(box, action).args == ("http://127.0.0.1:9999",)
    suite = targets.registered_targets()
    assert any(case_id.split("-")[0] == "newcomer" for case_id in suite)
    with_targets = {name for name in fresh.names() if fresh.get(name).build_target}
    assert {case_id.split("-")[0] for case_id in suite} == with_targets
