"""Settings every connection shares: timeouts, retries, a client-side rate limit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from connectors.http import Classifier, HttpClient, Observer, RetryPolicy

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> Any:
    """`90`, `90s`, `1.5m`, `2h`, `500ms`, `1d` -> seconds; anything else is left for
    pydantic to reject with its own message."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"{value!r} is not a duration; write a number of seconds or e.g. 90s, 5m, 2h, 1d"
            )
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A duration in seconds, written as a number or with a unit (ms, s, m, h, d)."""


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
    type: str
    timeout: Seconds = Field(30.0, gt=0, description="per HTTP request")
    retry: RetrySettings = RetrySettings()
    calls_per_second: float | None = Field(None, gt=0, description="client-side rate limit")

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
        return HttpClient(
            connection=name,
            base_url=base_url,
            timeout=self.timeout,
            retry=self.retry.policy(),
            calls_per_second=self.calls_per_second or default_calls_per_second,
            secrets=secrets,
            classify=classify,
            observer=observer,
        )
