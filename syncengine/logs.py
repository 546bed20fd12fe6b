"""structlog for every line: JSON in the daemon, readable on a terminal, never a secret.

Redaction happens twice: by key name (anything called password, token, key...)
and by value (every secret the configuration holds, and tokens obtained at
run time, in every form a server may echo them in: JSON-escaped, URL-encoded,
base64), after exceptions are formatted so tracebacks are scrubbed too.
Tracebacks never render local variables, and httpx's request logging (which
prints whole URLs) is silenced.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from connectors.kit import redact

REDACTED = redact.REDACTED
SECRET_KEY_NAMES = {
    "key",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "client_secret",
    "authorization",
    "x-dmm-token",
    "x-dmm-token-otp",
    "otp",
    "userid_password",
}
SECRET_SUFFIXES = ("_password", "_secret", "_token", "-token")
NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "hpack",
    "alembic",
    "apscheduler.executors",
    "apscheduler.scheduler",
    "uvicorn.access",
)


class SecretValues:
    """Values that must never be printed, registered as they become known."""

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if value and len(value) >= 3:
            with self._lock:
                self._values = self._values | {value}

    def add_all(self, values: Iterable[str]) -> None:
        for value in values:
            self.add(value)

    def scrub(self, text: str) -> str:
        """`text` without any known secret, raw or in any form a server may echo it in."""
        return redact.scrub(text, self._values)


SECRETS = SecretValues()


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return lowered in SECRET_KEY_NAMES or lowered.endswith(SECRET_SUFFIXES)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return SECRETS.scrub(value)
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret_name(k) else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    if isinstance(value, BaseException):
        return SECRETS.scrub(f"{type(value).__name__}: {value}")
    return value


def redact_processor(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    for name in list(event):
        if _is_secret_name(name):
            event[name] = REDACTED
        else:
            event[name] = _redact(event[name])
    return event


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "console" or (fmt == "auto" and stream.isatty()):
        return structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    return structlog.processors.JSONRenderer()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog and route the standard library's logging through it."""
    out = stream or sys.stderr
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exceptions: Processor = (
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if not (fmt == "console" or (fmt == "auto" and out.isatty()))
        else structlog.processors.format_exc_info
    )
    renderer = _renderer(fmt, out)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            exceptions,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                redact_processor,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def remember_secrets(secrets: Iterable[str]) -> None:
    """Redact these values from every log line, and the tokens the HTTP clients obtain
    later as they obtain them."""
    from connectors.kit.http import secret_listeners

    SECRETS.add_all(secrets)
    if SECRETS.add not in secret_listeners:
        secret_listeners.append(SECRETS.add)


def ensure_redacted(level: str = "info") -> None:
    """For a library caller (`syncengine.api`): logging as the CLI sets it up when nobody
    has configured structlog yet, else the caller's configuration with the redaction
    put in before its last processor (the renderer), so no secret reaches any log."""
    if not structlog.is_configured():
        configure(level, "json")
        return
    processors = list(structlog.get_config()["processors"])
    if redact_processor in processors:
        return
    structlog.configure(processors=[*processors[:-1], redact_processor, *processors[-1:]])


def get_logger(name: str = "syncengine", **bound: Any) -> Any:
    return structlog.get_logger(name).bind(**bound)


def scrub_mapping(values: MutableMapping[str, Any]) -> dict[str, Any]:
    """A copy safe to print or store (used by `status` and run records)."""
    cleaned = _redact(dict(values))
    assert isinstance(cleaned, dict)
    return cleaned
