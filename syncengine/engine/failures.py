"""Why a delivery did not get through, as one of a few classes, and the warning that says so.

A failing target must show (a warning naming the request and the reason) without
flooding the log: a target that refuses every batch of a 20,000-deletion run would
otherwise write a line per batch. `FailureLog` lets the first failure of each
(pipeline, target) through, then at most one line per interval, which carries how
many it kept back. It lives for the process, so the daemon's runs share it.

The classes are read from the reasons the connectors' kit writes
(connectors/kit/http.py: "cannot connect (ConnectError)", "no complete answer
(ReadTimeout)", "HTTP 429", `call_deadline`...), so metrics and alerts can count
failures by a handful of names an operator can act on.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncengine.logs import SECRETS

UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
THROTTLED = "throttled"
SERVER_ERROR = "server_error"
REJECTED = "rejected"
ANSWER_LOST = "answer_lost"
OTHER = "other"

CLASSES = (UNREACHABLE, TIMEOUT, THROTTLED, SERVER_ERROR, REJECTED, ANSWER_LOST, OTHER)
"""Every class `classify` answers, for a metric that declares its label values."""

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (cls, re.compile(pattern, re.IGNORECASE))
    for cls, pattern in (
        # Before anything else: these are the kit's own words for a request that
        # never reached the server, or whose answer did not arrive in time.
        (UNREACHABLE, r"cannot connect \("),
        (TIMEOUT, r"timeout\)|call_deadline|\bHTTP 408\b|\bHTTP 504\b"),
        (
            THROTTLED,
            r"\bHTTP 429\b|backpressure|rate limit|calls per second|daily call limit"
            r"|too many requests|throttl",
        ),
        (
            ANSWER_LOST,
            r"no complete answer \(|answer broke off|could not be decoded|max_answer_bytes"
            r"|returned no outcome|answer lost",
        ),
        (SERVER_ERROR, r"\bHTTP 5\d\d\b"),
        (
            REJECTED,
            r"\bHTTP 4\d\d\b|credentials or configuration rejected|could not delete"
            r"|still present after|Goose (SQL )?error|refused",
        ),
    )
)


def classify(reason: str) -> str:
    """The class of a failure's reason: the first rule that matches, else `other`."""
    for cls, pattern in _RULES:
        if pattern.search(reason):
            return cls
    return OTHER


INTERVAL = 60.0
"""Seconds between two `send_failed` lines of one (pipeline, target)."""


@dataclass
class _Window:
    logged_at: float
    suppressed: int = 0


class FailureLog:
    """Per (pipeline, target): the first failure logged, then at most one per `interval`,
    each saying how many were kept back since the last line."""

    def __init__(
        self, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()

    def admit(self, pipeline: str, target: str) -> int | None:
        """None to keep this failure back; else log it, with the count kept back before it."""
        now = self.clock()
        with self._lock:
            window = self._windows.get((pipeline, target))
            if window is None:
                self._windows[(pipeline, target)] = _Window(now)
                return 0
            if now - window.logged_at < self.interval:
                window.suppressed += 1
                return None
            suppressed = window.suppressed
            self._windows[(pipeline, target)] = _Window(now)
            return suppressed


LIMITER = FailureLog()


def log_send_failed(
    log: Any,
    pipeline: str,
    target: str,
    *,
    reason: str,
    deliveries: int,
    request: dict[str, Any],
    limiter: FailureLog | None = None,
) -> None:
    """The `send_failed` warning, if the limiter lets it through. `request` names what
    was sent (its size and first key, or a job's client id); the reason is scrubbed of
    every secret here, not only by the log's processor, since it also reaches the
    run summary and the store."""
    suppressed = (limiter or LIMITER).admit(pipeline, target)
    if suppressed is None:
        return
    log.warning(
        "send_failed",
        failure=classify(reason),
        reason=SECRETS.scrub(reason),
        deliveries=deliveries,
        suppressed=suppressed,
        **request,
    )
