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


def test_a_relative_store_is_taken_from_the_config_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not from the working directory: `status` run from / created /data/my.db."""
    folder = tmp_path / "etc"
    folder.mkdir()
    text = (ROOT / "config.yaml").read_text("utf-8")
    (folder / "c.yaml").write_text(text, "utf-8")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(folder / "c.yaml", env={})
    assert config.state.url == f"sqlite:///{folder / 'data' / 'sandbox.db'}"
    assert config.state.artifacts == str(folder / "data" / "artifacts")
    absolute = text.replace("sqlite:///data/sandbox.db", f"sqlite:///{tmp_path}/abs.db")
    (folder / "abs.yaml").write_text(absolute, "utf-8")
    assert load_config(folder / "abs.yaml", env={}).state.url == f"sqlite:///{tmp_path}/abs.db"
    memory = text.replace("sqlite:///data/sandbox.db", "sqlite:///:memory:")
    (folder / "mem.yaml").write_text(memory, "utf-8")
    assert load_config(folder / "mem.yaml", env={}).state.url == "sqlite:///:memory:"
