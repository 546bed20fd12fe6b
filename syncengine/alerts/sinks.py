"""The places an alert is sent: a JSON webhook (signed), a Slack incoming webhook, a command.

A sink sends one alert, bounded by the delivery timeout, and either returns (the
receiver took it) or raises `SendFailed` with a reason safe to log and store: the
reason never quotes the URL (a Slack URL is its credential) and is scrubbed of
every secret the sink holds, in every encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from connectors.kit import redact
from syncengine.alerts.text import slack_message
from syncengine.config.models import (
    AlertSink,
    AlertsSettings,
    CommandSink,
    Config,
    SlackSink,
    WebhookSink,
)

USER_AGENT = "syncengine-alerts"
ERROR_CHARS = 300
"""How much of a receiver's error answer a reason quotes."""


class SendFailed(Exception):
    """One attempt to one sink failed; `str()` is safe to log (scrubbed, no URL)."""


def sink_names(config: Config) -> list[str]:
    """Each sink's name as notices are addressed to it: its `name`, else type-index."""
    return config.alerts.sink_names()


class Sender(Protocol):
    name: str

    def secrets(self) -> list[str]:
        """Values this sink must never let out (beyond the configuration's secrets)."""
        ...

    async def send(self, document: dict[str, Any], text: str, now: datetime) -> None: ...


def _sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def _url_parts(url: str) -> list[str]:
    """The parts of a URL that may carry a credential, in case a client or an error
    prints the URL normalised (host case, default port) rather than as written."""
    parts = urlsplit(url)
    return [p for p in (url, parts.path, parts.query, parts.password or "") if len(p) >= 8]


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], seconds: float
) -> None:
    try:
        answer = await client.post(
            url,
            content=body,
            headers={"content-type": "application/json", "user-agent": USER_AGENT, **headers},
            timeout=seconds,
        )
    except httpx.TimeoutException as exc:
        raise SendFailed(f"timeout after {seconds:g} s ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        # httpx's messages name the request's URL on some errors: the caller scrubs it.
        raise SendFailed(f"{type(exc).__name__}: {exc}") from None
    if answer.is_success:
        return
    raise SendFailed(f"HTTP {answer.status_code}: {answer.text[:ERROR_CHARS].strip()}")


class WebhookSender:
    """POSTs the alert's JSON (with a `text` summary); signed like Stripe and Slack
    sign theirs, so a receiver can check the sender and refuse a replay."""

    def __init__(
        self, name: str, sink: WebhookSink, client: httpx.AsyncClient, timeout: float
    ) -> None:
        self.name, self.sink, self.client, self.timeout = name, sink, client, timeout

    def secrets(self) -> list[str]:
        found = [v.get_secret_value() for v in self.sink.headers.values()]
        if self.sink.secret is not None:
            found.append(self.sink.secret.get_secret_value())
        # Many webhook URLs carry a token in their path or query (Teams, Discord, Zapier).
        return found + _url_parts(self.sink.url)

    async def send(self, document: dict[str, Any], text: str, now: datetime) -> None:
        body = json.dumps({**document, "text": text}, separators=(",", ":")).encode()
        headers = {k: v.get_secret_value() for k, v in self.sink.headers.items()}
        if self.sink.secret is not None:
            timestamp = int(time.time())
            headers["X-Syncengine-Timestamp"] = str(timestamp)
            headers["X-Syncengine-Signature"] = _sign(
                self.sink.secret.get_secret_value(), timestamp, body
            )
        await _post(self.client, self.sink.url, body, headers, self.timeout)


class SlackSender:
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat)."""

    def __init__(
        self, name: str, sink: SlackSink, client: httpx.AsyncClient, timeout: float
    ) -> None:
        self.name, self.sink, self.client, self.timeout = name, sink, client, timeout

    def secrets(self) -> list[str]:
        return _url_parts(self.sink.url.get_secret_value())

    async def send(self, document: dict[str, Any], text: str, now: datetime) -> None:
        body = json.dumps(slack_message(document, now), separators=(",", ":")).encode()
        await _post(self.client, self.sink.url.get_secret_value(), body, {}, self.timeout)


class CommandSender:
    """Runs `command` (no shell) with the alert's JSON on standard input; a non-zero
    exit, or no exit within the timeout (the program is then killed), is a failure."""

    def __init__(self, name: str, sink: CommandSink, timeout: float) -> None:
        self.name, self.sink, self.timeout = name, sink, timeout

    def secrets(self) -> list[str]:
        return []

    async def send(self, document: dict[str, Any], text: str, now: datetime) -> None:
        body = json.dumps({**document, "text": text}).encode()
        env = {
            **os.environ,
            "SYNCENGINE_ALERT_EVENT": str(document.get("event", "")),
            "SYNCENGINE_ALERT_KIND": str(document.get("kind", "")),
            "SYNCENGINE_ALERT_KEY": str(document.get("key", "")),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *self.sink.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise SendFailed(f"cannot start {self.sink.command[0]!r}: {exc.strerror}") from None
        try:
            _, stderr = await asyncio.wait_for(process.communicate(body), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise SendFailed(f"timeout after {self.timeout:g} s (the command was killed)") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        if process.returncode != 0:
            said = stderr.decode(errors="replace").strip()[-ERROR_CHARS:]
            raise SendFailed(f"exit status {process.returncode}" + (f": {said}" if said else ""))


def build_senders(config: AlertsSettings, client: httpx.AsyncClient) -> dict[str, Sender]:
    timeout = config.delivery.timeout
    senders: dict[str, Sender] = {}
    for name, sink in zip(config.sink_names(), config.sinks, strict=True):
        senders[name] = _sender(name, sink, client, timeout)
    return senders


def _sender(name: str, sink: AlertSink, client: httpx.AsyncClient, timeout: float) -> Sender:
    if isinstance(sink, WebhookSink):
        return WebhookSender(name, sink, client, timeout)
    if isinstance(sink, SlackSink):
        return SlackSender(name, sink, client, timeout)
    return CommandSender(name, sink, timeout)


def scrubbed(text: str, secrets: Sequence[str]) -> str:
    return redact.scrub(text, frozenset(s for s in secrets if s))
