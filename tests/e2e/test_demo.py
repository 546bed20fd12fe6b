"""`make demo` is the first thing a new user runs: the shipped config.yaml, told as a
story against the sandbox, must end "Demo OK" (here on free ports)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from connectors.kit.serving import free_port
from syncengine.cli import run_once
from syncengine.config import parse_config
from syncengine.demo import run_demo
from syncengine.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_PORTS = {"goose": 8701, "mongoose": 8702, "reltio": 8703, "adt": 8704, "dmm": 8705}


def test_the_shipped_demo_ends_ok(tmp_path: Path) -> None:
    ports = {name: free_port() for name in SHIPPED_PORTS}
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    for name, port in SHIPPED_PORTS.items():
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{ports[name]}")
    text = text.replace("sqlite:///data/sandbox.db", f"sqlite:///{tmp_path / 'sandbox.db'}")
    config = parse_config(text, str(tmp_path / "config.yaml"), {})
    box = Sandbox(ports)
    out = io.StringIO()
    code = run_demo(config, Console(file=out, width=120), run_once, sandbox=box)
    printed = out.getvalue()
    assert code == 0, printed
    assert "Demo OK" in printed
    for expected in (
        "contacts -> mdm_people: jobs #1",
        "people -> crm_customers: jobs #2",
        "sites -> twin_instance_purge: jobs #5",
        "carried on by people CON_TRO 0-1",
        "Sandbox stopped.",
    ):
        assert expected in printed, printed
