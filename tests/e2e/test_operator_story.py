"""The operator's story end to end: a target behind a closed port is noticed.

`run --once` exits 1 and says why on stderr; a daemon turns /readyz 503 once the
target has got nothing through for `health.stall_after`, sends one alert to a
webhook receiver (however many runs fail meanwhile), and one recovery alert once
the target answers again.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from connectors.kit.serving import free_port
from tests.e2e.conftest import Env
from tests.e2e.test_observe import wait_for

SIGNING_KEY = "whsec-operator-story-0123456789"


@dataclass
class Receiver:
    """A webhook receiver that keeps every alert it was sent, and its signature check."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    verified: list[bool] = field(default_factory=list)
    url: str = ""

    def of(self, kind: str) -> list[str]:
        return [a["event"] for a in self.alerts if a.get("kind") == kind]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            stamp = self.headers.get("X-Syncengine-Timestamp", "")
            expected = hmac.new(
                SIGNING_KEY.encode(), f"{stamp}.".encode() + body, hashlib.sha256
            ).hexdigest()
            got.verified.append(
                self.headers.get("X-Syncengine-Signature", "") == f"sha256={expected}"
            )
            got.alerts.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()


class Forwarder:
    """Opens the closed port: every connection to it is relayed to `upstream`."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            # The first direction to end closes the pair; the other then ends on its
            # closed socket. Closing twice is harmless.
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def readiness(base: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{base}/readyz", timeout=5)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def reasons(body: dict[str, Any]) -> set[str]:
    return {r["kind"] for r in body["reasons"]}


def behind_closed_port(e2e: Env, receiver: Receiver, closed: int, metrics: int) -> None:
    e2e.write_config(every="1s", timeout="2", attempts=1, backoff="0.2s", max_backoff="0.5s")
    text = e2e.config.read_text().replace(e2e.box.mongoose_url, f"http://127.0.0.1:{closed}")
    text += (
        f"metrics: {{host: 127.0.0.1, port: {metrics}}}\n"
        "health: {stall_after: 4s}\n"
        "alerts:\n"
        "  check_every: 1s\n"
        "  delivery: {backoff: 0.2s, timeout: 2s}\n"
        "  sinks:\n"
        f"    - {{type: webhook, name: ops, url: '{receiver.url}', secret: {SIGNING_KEY}}}\n"
    )
    e2e.config.write_text(text)


def test_a_target_behind_a_closed_port_is_noticed_and_its_recovery_too(
    e2e: Env, receiver: Receiver
) -> None:
    closed, metrics = free_port(), free_port()
    behind_closed_port(e2e, receiver, closed, metrics)
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])

    once = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert once.returncode == 1, once.stdout + once.stderr
    assert "erp_users" in once.stderr and "nothing got through" in once.stderr, once.stderr
    assert "Traceback" not in once.stderr

    daemon = e2e.popen("run", "-c", str(e2e.config))
    base = f"http://127.0.0.1:{metrics}"
    forwarder: Forwarder | None = None
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=5).status_code == 200)
        wait_for(lambda: "target_stalled" in reasons(readiness(base)[1]))
        code, body = readiness(base)
        assert code == 503
        (stall,) = [r for r in body["reasons"] if r["kind"] == "target_stalled"]
        assert (stall["pipeline"], stall["target"]) == ("contacts", "erp_users")
        assert stall["command"]
        wait_for(lambda: receiver.of("target_stalled") == ["opened"])
        time.sleep(4)  # several more failing runs and checks: still one alert
        assert receiver.of("target_stalled") == ["opened"]

        mongoose = httpx.URL(e2e.box.mongoose_url)
        forwarder = Forwarder(closed, (mongoose.host, mongoose.port or 80))
        wait_for(lambda: receiver.of("target_stalled") == ["opened", "resolved"])
        wait_for(lambda: readiness(base)[0] == 200)
        assert "target_stalled" not in reasons(readiness(base)[1])
        wait_for(lambda: e2e.target_counts()["done"] == 2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
        if forwarder is not None:
            forwarder.close()
    assert receiver.verified and all(receiver.verified)
    assert SIGNING_KEY not in out + err
    assert all(SIGNING_KEY not in json.dumps(a) for a in receiver.alerts)
