"""SIGTERM as the README tells it: the first lets the batch being sent finish and be
recorded, then the process exits 0; a second cancels at once, without a traceback."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from connectors.kit.serving import serve
from syncengine.sandbox import PEOPLE
from tests.e2e.conftest import Env

HOLD = 2.0
"""Seconds Mongoose holds each request: long enough to signal inside a DeleteItems."""


def _log_lines(stderr: str) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append({"level": "raw", "event": line})
    return lines


def _wait_for_lookup(e2e: Env, daemon: subprocess.Popen[str]) -> None:
    """Until Mongoose has answered the batch's look-up: its DeleteItems is under way."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and daemon.poll() is None:
        requests = httpx.get(f"{e2e.box.mongoose_url}/_admin/requests", timeout=10).json()
        if any(not r["mutating"] and "UserNames" in r["path"] for r in requests):
            return
        time.sleep(0.05)
    daemon.kill()
    raise AssertionError(f"no look-up reached Mongoose: {daemon.communicate()[1]}")


def test_first_sigterm_lets_the_batch_under_way_finish(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3"])
    e2e.faults(e2e.box.mongoose_url, latency=HOLD)
    daemon = e2e.popen("run", "-c", str(e2e.config))
    _wait_for_lookup(e2e, daemon)
    daemon.send_signal(signal.SIGTERM)
    try:
        _, stderr = daemon.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.kill()
        raise
    assert daemon.returncode == 0, stderr
    assert "Traceback" not in stderr and "CancelledError" not in stderr, stderr
    lines = _log_lines(stderr)
    assert [e for e in lines if e.get("level") in ("error", "critical", "raw")] == [], stderr
    assert any(e.get("event") == "batch_sent" and e.get("done") == 3 for e in lines), stderr
    deleted = sorted(row["properties"]["Username"] for row in e2e.mongoose_deleted())
    assert deleted == sorted(PEOPLE[i][0] for i in range(3))
    e2e.faults(e2e.box.mongoose_url, latency=0.0)
    counts = e2e.target_counts()
    assert counts["done"] == 3 and counts["in_flight"] == 0 and counts["pending"] == 0


def test_second_sigterm_cancels_the_send_and_loses_nothing(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2", "0-3"])
    e2e.faults(e2e.box.mongoose_url, latency=HOLD * 15)
    daemon = e2e.popen("run", "-c", str(e2e.config))
    _wait_for_claim(e2e, daemon)
    stderr = _signal_twice(daemon)
    assert daemon.returncode not in (0, None), stderr
    assert "Traceback" not in stderr, stderr
    lines = _log_lines(stderr)
    assert [e for e in lines if e.get("level") in ("error", "critical", "raw")] == [], stderr
    assert any(e.get("event") == "shutdown_forced" for e in lines), stderr
    counts = e2e.target_counts()
    assert counts["in_flight"] == 0 and counts["pending"] == 3, counts
    e2e.faults(e2e.box.mongoose_url, latency=0.0)
    e2e.cli("run", "--once", "-c", str(e2e.config))
    assert e2e.target_counts()["done"] == 3


def _signal_twice(process: subprocess.Popen[str]) -> str:
    """SIGTERM, then once its log line shows it was handled (two signals pending at
    once would be one), SIGTERM again; the process's stderr once it ended."""
    lines: list[str] = []
    handled = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if '"shutdown_requested"' in line:
                handled.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process.send_signal(signal.SIGTERM)
    if not handled.wait(timeout=60):
        process.kill()
        raise AssertionError("the first SIGTERM was never handled: " + "".join(lines))
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("a second SIGTERM did not end it: " + "".join(lines)) from None
    reader.join(timeout=60)
    process.communicate(timeout=60)  # closes the pipes
    return "".join(lines)


def _wait_for_claim(e2e: Env, daemon: subprocess.Popen[str]) -> None:
    """Until the batch is claimed and Mongoose holds its first request."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and daemon.poll() is None:
        if e2e.target_counts()["in_flight"]:
            return
        time.sleep(0.1)
    daemon.kill()
    raise AssertionError(f"nothing was claimed: {daemon.communicate()[1]}")


class Endless:
    """A server whose answer is OK and whose rows never start: whitespace between JSON
    tokens, forever, in small slow pieces (no size or nesting limit is ever reached,
    no read times out)."""

    def __init__(self) -> None:
        self.answering = threading.Event()
        self.app = Starlette(routes=[Route("/{path:path}", self.answer, methods=["POST"])])

    async def answer(self, request: Request) -> StreamingResponse:
        return StreamingResponse(self.body(), media_type="application/json")

    async def body(self) -> AsyncIterator[bytes]:
        yield b'{"status": "OK", "result": {"total": 1, "data": ['
        self.answering.set()
        while True:
            yield b" " * 1024
            await asyncio.sleep(0.05)


def test_a_second_sigterm_cuts_run_once_inside_an_endless_answer(e2e: Env) -> None:
    endless = Endless()
    with serve(endless.app) as server:
        e2e.config.write_text(e2e.config.read_text().replace(e2e.box.goose_url, server.url))
        run = e2e.popen("run", "--once", "-c", str(e2e.config))
        if not endless.answering.wait(timeout=60):
            run.kill()
            raise AssertionError(f"the run never asked: {run.communicate()[1]}")
        stderr = _signal_twice(run)
    assert run.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    lines = _log_lines(stderr)
    assert [e for e in lines if e.get("level") in ("error", "critical", "raw")] == [], stderr
    assert [e["event"] for e in lines if e["event"].startswith("shutdown_")] == [
        "shutdown_requested",
        "shutdown_forced",
    ]
    with sqlite3.connect(e2e.tmp / "state.db") as db:
        outcomes = db.execute("SELECT outcome, error FROM run").fetchall()
        marked = db.execute("SELECT count(*) FROM cursor WHERE in_flight IS NOT NULL").fetchone()
    assert outcomes == [("interrupted", "cancelled")]
    assert marked == (1,), "the call stays in flight: the next run re-reads its window"
