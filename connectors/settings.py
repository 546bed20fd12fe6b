"""Settings every connection shares: timeouts, retries, a client-side rate limit."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from connectors.http import Classifier, HttpClient, Observer, RetryPolicy


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt setting must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(StrictModel):
    max_attempts: int = Field(5, ge=1, le=50, description="tries per HTTP request")
    base_delay: float = Field(0.5, ge=0, description="first backoff ceiling, seconds")
    max_delay: float = Field(30.0, ge=0, description="backoff cap, seconds")
    max_retry_after: float = Field(
        120.0, ge=0, description="longest Retry-After obeyed in-line, seconds"
    )

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay=self.base_delay,
            max_delay=self.max_delay,
            max_retry_after=self.max_retry_after,
        )


class ConnectionBase(StrictModel):
    type: str
    timeout: float = Field(30.0, gt=0, description="seconds per HTTP request")
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
