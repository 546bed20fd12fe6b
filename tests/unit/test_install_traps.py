"""What a newly installed tool must answer before anything else: its version, where the
shipped example is, and a demo whose configuration follows the ports it moves."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from syncengine.cli import _write_example, app
from syncengine.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_version_comes_from_the_package_metadata() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"syncengine {version('syncengine')}"


def test_the_shipped_example_is_written_out_when_there_is_no_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write_example(Path("config.yaml"))
    assert (tmp_path / "config.yaml").read_text("utf-8") == (ROOT / "config.yaml").read_text(
        "utf-8"
    )


def test_moved_ports_move_every_loopback_url_and_the_purge_confirmation() -> None:
    config = load_config(ROOT / "config.yaml", env={}, moved_ports={8701: 9701, 8704: 9704})
    assert str(config.connections["goose"].url).startswith("http://127.0.0.1:9701/")
    assert str(config.connections["twins"].url).startswith("http://127.0.0.1:9704")
    assert str(config.connections["erp"].url).startswith("http://127.0.0.1:8702/")
    purge = config.pipelines["sites"].targets["twin_instance_purge"].settings
    assert purge.root.confirm_purge == "127.0.0.1:9704"


def test_a_malformed_demo_port_is_one_line() -> None:
    result = CliRunner().invoke(app, ["demo", "--port", "goose=99999"])
    assert result.exit_code == 2
    assert "--port 'goose=99999': write it as NAME=PORT" in result.output
    assert "Traceback" not in result.output
