"""End-to-end harness: the sandbox on free loopback ports, the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncengine.sandbox import (
    GOOSE_CODE,
    GOOSE_ENGINE_KEY,
    MONGOOSE_CONFIG,
    MONGOOSE_PASSWORD,
    MONGOOSE_USER,
    Sandbox,
    default_ports,
)


@dataclass
class Env:
    box: Sandbox
    tmp: Path
    config: Path

    def write_config(self, **overrides: Any) -> Path:
        options = {
            "mode": "latest",
            "imc": "false",
            "level": "info",
            "timeout": "5",
            "attempts": 5,
            "every": "1s",
            "max_attempts": 50,
            "backoff": "0.2s",
            "max_backoff": "1s",
            "goose_cps": 50,
            "overlap": "5s",
        }
        options.update(overrides)
        text = textwrap.dedent(
            f"""
            state: {{url: "sqlite:///{self.tmp / "state.db"}"}}
            logging: {{level: {options["level"]}, format: json}}
            connections:
              goose:
                type: goose
                url: "{self.box.goose_url}/deleted/"
                code: {GOOSE_CODE}
                key: "${{TEST_GOOSE_KEY}}"
                timezone: Europe/Rome
                timeout: {options["timeout"]}
                calls_per_second: {options["goose_cps"]}
                retry: {{max_attempts: {options["attempts"]}, base_delay: 0.05, max_delay: 0.2}}
              erp:
                type: mongoose
                url: "{self.box.mongoose_url}/IDORequestService/MGRESTService.svc"
                config: {MONGOOSE_CONFIG}
                user: {MONGOOSE_USER}
                password: "${{TEST_MONGOOSE_PASSWORD}}"
                timeout: {options["timeout"]}
                retry: {{max_attempts: {options["attempts"]}, base_delay: 0.05, max_delay: 0.2}}
            pipelines:
              contacts:
                schedule: {{every: {options["every"]}}}
                source: {{connection: goose, tables: [CON_TRO], from: {options["mode"]},
                          imc: {options["imc"]}, overlap: {options["overlap"]}}}
                targets:
                  erp_users:
                    connection: erp
                    ido: UserNames
                    key: "{{SYKEY}}"
                    lookup: {{property: Username}}
                    batch_size: 3
                    retry: {{max_attempts: {options["max_attempts"]},
                             backoff: {options["backoff"]}, max_backoff: {options["max_backoff"]}}}
            """
        )
        self.config.write_text(text)
        return self.config

    def connection(self, name: str) -> str:
        """The YAML entry of one sandbox connection, by the name the shipped config uses;
        each connector's sandbox declares its own."""
        entries = {
            declared[0]: {"type": emu.name, **declared[1](emu.url)}
            for emu in self.box.emulators.values()
            if (declared := emu.emulated.connection) is not None
        }
        return f"{name}: {json.dumps(entries[name])}"

    def compose(self, connections: list[str], pipelines: str) -> Path:
        """Write a config: the sandbox `connections` by name, and the `pipelines:` block."""
        state = (
            f'{{url: "sqlite:///{self.tmp / "state.db"}", artifacts: "{self.tmp / "artifacts"}"}}'
        )
        header = f"\nstate: {state}\nlogging: {{level: info, format: json}}\nconnections:\n"
        body = textwrap.indent("\n".join(self.connection(c) for c in connections), "  ")
        self.config.write_text(
            header + body + "\npipelines:\n" + textwrap.indent(textwrap.dedent(pipelines), "  ")
        )
        return self.config

    def admin(self, emulator: str, path: str) -> Any:
        """GET an emulator's admin route (its ground truth)."""
        response = httpx.get(f"{self.box.url(emulator)}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def admin_post(self, emulator: str, path: str, body: Any) -> Any:
        response = httpx.post(f"{self.box.url(emulator)}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Delivery counts per (pipeline, target)."""
        return {
            (p["pipeline"], t["target"]): t
            for p in self.status()["pipelines"]
            for t in p["targets"]
        }

    def settle(self, *args: str, runs: int = 12) -> dict[tuple[str, str], dict[str, int]]:
        """`run --once` until nothing waits: no delivery pending, failed or in flight and no
        task stream still unfinished."""
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for _ in range(runs):
            result = self.cli("run", "--once", "-c", str(self.config), "--job-wait", "10", *args)
            assert "Traceback" not in result.stderr, result.stderr
            status = self.status()
            counts = self.counts()
            unfinished = [
                s
                for p in status["pipelines"]
                for s in p["streams"]
                if s["stream"].startswith(("execution-", "task-"))
                and not (s["cursor"] or {}).get("finished")
            ]
            if not unfinished and all(
                c["pending"] == c["failed"] == c["in_flight"] == 0 for c in counts.values()
            ):
                return counts
        raise AssertionError(f"never settled: {counts}")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCENGINE_")}
        env["TEST_GOOSE_KEY"] = GOOSE_ENGINE_KEY
        env["TEST_MONGOOSE_PASSWORD"] = MONGOOSE_PASSWORD
        return env

    def cli(
        self, *args: str, failpoints: str = "", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = self.env()
        if failpoints:
            env["SYNCENGINE_FAILPOINTS"] = failpoints
        return subprocess.run(
            [sys.executable, "-m", "syncengine", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str, **extra_env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "syncengine", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**self.env(), **extra_env},
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "-c", str(self.config), "-o", "json")
        assert result.returncode == 0, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def target_counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.status()["pipelines"][0]["targets"][0]
        return counts

    def users(self) -> set[str]:
        return {row["Username"] for row in self.box.mongoose_rows("UserNames")}

    def mongoose_deleted(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.box.mongoose_url}/_admin/deleted", timeout=10)
        response.raise_for_status()
        deleted: list[dict[str, Any]] = response.json()
        return deleted

    def faults(self, url: str, **knobs: Any) -> None:
        httpx.put(f"{url}/_admin/faults", json=knobs, timeout=10).raise_for_status()

    def drop_next_goose_answers(self, count: int) -> None:
        httpx.post(
            f"{self.box.goose_url}/_admin/drop_next", json={"count": count}, timeout=10
        ).raise_for_status()


@pytest.fixture
def e2e(tmp_path: Path) -> Iterator[Env]:
    with Sandbox(dict.fromkeys(default_ports(), 0)) as box:
        env = Env(box=box, tmp=tmp_path, config=tmp_path / "config.yaml")
        env.write_config()
        yield env
