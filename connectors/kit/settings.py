"""Settings every connection shares: timeouts, retries, a client-side rate limit,
the secrets a connection holds and the value types several connectors use."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    ValidationInfo,
)
from pydantic_core import core_schema

from connectors.kit.http import (
    CALL_DEADLINE,
    MAX_ANSWER_BYTES,
    Classifier,
    HttpClient,
    Observer,
    RetryPolicy,
)
from connectors.kit.keys import KeyTemplate

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """`90`, `90s`, `1.5m`, `2h`, `500ms`, `1d` -> seconds; anything else is left for
    pydantic to reject with its own message."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                "this value is not a duration; write a number of seconds or e.g. 90s, 5m, 2h, 1d"
            )
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds, written as a number or with a unit (ms, s, m, h, d)."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {
    "b": 1,
    **{f"{p}b": 1000**i for i, p in enumerate("kmgt", 1)},
    **{f"{p}ib": 1024**i for i, p in enumerate("kmgt", 1)},
}


def parse_size(value: Any) -> Any:
    """`1048576`, `64KiB`, `500MB`, `4GiB` -> bytes; anything else not an int is refused
    (without echoing it: it may be a pasted secret)."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError("not a size; write a number of bytes or e.g. 64KiB, 500MB, 4GiB")
        return int(float(match.group(1)) * _UNIT_BYTES[(match.group(2) or "b").lower()])
    return value


Bytes = Annotated[int, BeforeValidator(parse_size)]
"""A size in bytes, written as a number or with a unit (KB, MB, GB, TB; KiB, MiB, GiB, TiB)."""


def http_url(value: str, example: str, *, query: bool = True, slash: bool = False) -> str:
    """An http(s) base URL without its trailing slash, so paths join onto it one way
    (`slash=True` keeps it, for a URL called as written).

    `query=False` refuses a query string or fragment, which a base URL that
    paths are appended to would silently lose or misplace.

    A message never quotes the value: a URL can carry a password or a key."""
    value = value.strip() if slash else value.strip().rstrip("/")
    parts = urlsplit(value)
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in value)
    ):
        raise ValueError(f"this value is not an http(s) URL; write e.g. {example}")
    try:
        port = parts.port
    except ValueError:
        port = 0  # beyond 65535 or not a number: every request would fail, not the check
    if port == 0:
        raise ValueError(f"this URL's port is not a number from 1 to 65535; write e.g. {example}")
    if not query and (parts.query or parts.fragment):
        raise ValueError("this URL is a base URL, which takes no query string or fragment")
    return value


@dataclass(frozen=True)
class HttpUrl:
    """`Annotated[str, HttpUrl(example)]`: a setting checked by `http_url`, whose error
    shows `example` (each service's URL has its own recognisable shape)."""

    example: str
    query: bool = True
    slash: bool = False

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            lambda value: http_url(value, self.example, query=self.query, slash=self.slash),
            handler(source),
        )


def _key_template(value: str) -> str:
    KeyTemplate(value)
    return value


KeyTemplateText = Annotated[str, AfterValidator(_key_template)]
"""A key template (connectors/kit/keys.py), refused at load time when it does not parse."""


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt setting must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(StrictModel):
    max_attempts: int = Field(5, ge=1, le=50, description="tries per HTTP request")
    base_delay: Seconds = Field(0.5, ge=0, description="first backoff ceiling")
    max_delay: Seconds = Field(30.0, ge=0, description="backoff cap")
    max_retry_after: Seconds = Field(120.0, ge=0, description="longest Retry-After obeyed in-line")

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay=self.base_delay,
            max_delay=self.max_delay,
            max_retry_after=self.max_retry_after,
        )


class ConnectionBase(StrictModel):
    """What every connection shares. A validation error never echoes its input: the
    input of a connection holds its passwords, keys and tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: str
    timeout: Seconds = Field(30.0, gt=0, description="per HTTP request")
    retry: RetrySettings = RetrySettings()
    calls_per_second: float | None = Field(None, gt=0, description="client-side rate limit")
    call_deadline: Seconds = Field(
        CALL_DEADLINE, gt=0, description="one call, retries and its whole answer included"
    )
    max_answer_bytes: Bytes = Field(MAX_ANSWER_BYTES, gt=0, description="one answer's body")

    def secret_values(self) -> list[str]:
        """Every non-empty `SecretStr` setting, in declaration order: a secret field is
        known by its type, so a new one is scrubbed without being listed anywhere."""
        values = (getattr(self, field) for field in type(self).model_fields)
        return [
            v.get_secret_value()
            for v in values
            if isinstance(v, SecretStr) and v.get_secret_value()
        ]

    def http_client(
        self,
        name: str,
        *,
        base_url: str = "",
        secrets: Sequence[str] = (),
        classify: Classifier | None = None,
        observer: Observer | None = None,
        default_calls_per_second: float | None = None,
    ) -> HttpClient:
        """A client that already knows every secret of this connection (besides any
        `secrets` obtained otherwise), so no connector can forget to scrub one."""
        return HttpClient(
            connection=name,
            base_url=base_url,
            timeout=self.timeout,
            retry=self.retry.policy(),
            calls_per_second=self.calls_per_second or default_calls_per_second,
            secrets=[*self.secret_values(), *secrets],
            classify=classify,
            observer=observer,
            call_deadline=self.call_deadline,
            max_answer_bytes=self.max_answer_bytes,
        )


C = TypeVar("C")


def check_connection(
    info: ValidationInfo, kind: type[C], problem: Callable[[C, str | None], str | None]
) -> None:
    """A target block's check that needs its connection's settings. The config loader
    passes the connection and its name as validation context, so `syncengine check`
    reports the problem at the block; without a context the target checks when built."""
    context = info.context or {}
    connection = context.get("connection")
    if isinstance(connection, kind):
        found = problem(connection, context.get("connection_name"))
        if found:
            raise ValueError(found)


def id_list(
    values: list[str],
    what: str,
    problem: Callable[[str], str | None],
    normal: Callable[[str], str] = str,
) -> list[str]:
    """A list of remote ids (tasks, executions) each read as a stream of its own: each
    stripped, checked by `problem`, written the one way `normal` gives; none twice."""
    ids = [value.strip() for value in values]
    for found in filter(None, map(problem, ids)):
        raise ValueError(found)
    ids = [normal(value) for value in ids]
    twice = sorted({value for value in ids if ids.count(value) > 1})
    if twice:
        raise ValueError(f"{what} listed more than once: {', '.join(twice)}")
    return ids
