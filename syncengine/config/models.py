"""The configuration as validated types.

The YAML is checked in two passes: first the shape the engine owns (state,
logging, schedules, pipeline wiring), then each connection, source and
target block against the settings model of its connector `type`. Runtime
objects are built from these models afterwards, never from raw dicts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.kit.settings import Seconds, StrictModel

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


STORE_DRIVERS = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",), "postgres": ("psycopg",)}
"""The databases the store runs on, with the one driver each that is installed; a bare
`postgresql://` or `postgres://` (the form most tools take) uses psycopg."""
STORE_URLS = "sqlite:///path/to/file.db or postgresql://user@host/db"


class RetentionSettings(StrictModel):
    """How long finished history stays in the store; what is still needed stays whatever
    these say (DESIGN.md, Retention). Unset, nothing is ever pruned."""

    keep_done: Seconds | None = Field(
        None,
        ge=0,
        description="done (and dropped) deliveries, their deletions, finished jobs and sent "
        "alerts are pruned this long after they finished (e.g. 400d); unset: never",
    )
    keep_runs: Seconds | None = Field(
        None, ge=0, description="finished runs are pruned this long after they ended; unset: never"
    )
    batch: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="rows per transaction: each batch holds the store's writer only briefly",
    )
    pause: Seconds = Field(
        0.05, ge=0, le=60, description="wait between batches, so claims get the writer"
    )
    every: Seconds = Field(3600.0, gt=0, description="the daemon prunes this often")
    reread_margin: Seconds = Field(
        86400.0,
        ge=0,
        description="a deletion stays while its read window ends within this of its stream's "
        "newest read: longer than any source's re-read overlap (Goose `overlap`)",
    )

    @model_validator(mode="after")
    def _something_to_keep(self) -> RetentionSettings:
        if self.keep_done is None and self.keep_runs is None:
            raise ValueError(
                "retention names nothing to prune; set keep_done (e.g. 400d) and/or keep_runs, "
                "or remove state.retention"
            )
        return self


class StateSettings(StrictModel):
    url: str = Field(
        "sqlite:///data/syncengine.db",
        description="SQLAlchemy URL; sqlite:///path or postgresql://user@host/db",
    )
    artifacts: str = Field(
        "data/artifacts", description="folder for files asynchronous jobs return (DMM log zips)"
    )
    migrate: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: a store behind this version's schema is upgraded when opened; "
        "manual: commands refuse it until `syncengine state migrate`",
    )
    lease: Seconds = Field(
        30.0,
        gt=0,
        description="how long a daemon's hold on a pipeline lasts unrenewed (renewed every "
        "third of it); another daemon takes a pipeline over within this time after its "
        "holder dies",
    )
    retention: RetentionSettings | None = Field(
        None, description="prune finished history (unset: the store keeps everything)"
    )

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        """Checked here so `validate` refuses a store the run could not open; without
        importing the store (state/db.py opens it, and refuses the same URLs)."""
        scheme, sep, _ = value.partition("://")
        backend, _, driver = scheme.strip().lower().partition("+")
        if not sep or not backend:
            raise ValueError(f"this value is not a database URL; write {STORE_URLS}")
        if backend not in STORE_DRIVERS:
            raise ValueError(
                f"{backend!r} is not supported: the store runs on SQLite or PostgreSQL; "
                f"write {STORE_URLS}"
            )
        if driver and driver not in STORE_DRIVERS[backend]:
            raise ValueError(
                f"driver {driver!r} is not supported (not installed); write {backend}:// "
                f"to use {STORE_DRIVERS[backend][0]}"
            )
        return value


class LoggingSettings(StrictModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable on a terminal, JSON otherwise"
    )


class Schedule(StrictModel):
    every: Seconds | None = Field(None, gt=0)
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is not None:
            # The scheduler's own parser, loaded only for a configuration that has a cron.
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(f"bad cron expression {value!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("set exactly one of 'every' (e.g. 60s) or 'cron' (e.g. '*/5 * * * *')")
        return self

    def describe(self) -> str:
        return f"every {self.every:g}s" if self.every is not None else f"cron {self.cron}"


class DeliveryRetry(StrictModel):
    """Retries of one delivery across runs, before it is declared dead."""

    max_attempts: int = Field(10, ge=1, le=1000)
    backoff: Seconds = Field(30.0, ge=0, description="first wait; doubles per attempt, jittered")
    max_backoff: Seconds = Field(3600.0, ge=0)


class JobSettings(StrictModel):
    """How the engine follows an asynchronous target's jobs."""

    stuck_after: Seconds = Field(86400.0, gt=0, description="a job open longer is stuck")
    on_stuck: Literal["pending", "dead"] = Field(
        "pending", description="what a stuck job's deliveries become"
    )


class LegalHold(StrictModel):
    """Keys that must never be deleted in this target, whatever the source says."""

    key: str = Field(description="template over the deletion's fields, e.g. {SYKEY}")
    patterns: list[str] = Field(min_length=1, description="exact keys or glob patterns (admin*)")

    @field_validator("key")
    @classmethod
    def _template(cls, value: str) -> str:
        from connectors.kit.keys import KeyTemplate

        KeyTemplate(value)
        return value


class GuardSettings(StrictModel):
    """Stops a mass deletion nobody intended: over a limit, deliveries are held."""

    max_per_run: int | None = Field(None, ge=1, description="due deliveries in one run")
    max_per_hour: int | None = Field(None, ge=1, description="done in the last hour plus due")
    max_fraction: float | None = Field(
        None, gt=0, le=1, description="due / the target's population, where it can count it"
    )
    legal_hold: LegalHold | None = None


class SloSettings(StrictModel):
    """How late a deletion may reach its target before someone must be told."""

    max_lag: Seconds | None = Field(
        None,
        gt=0,
        description="the oldest deletion still waiting for a target (journaled, not yet done) "
        "may be this old; older is an SLO breach (/readyz 503, an alert)",
    )


MAX_CONCURRENCY = 32
ENGINE_TARGET_KEYS = {"connection", "retry", "jobs", "guard", "concurrency", "slo"}
ENGINE_SOURCE_KEYS = {"connection", "pipeline", "target", "follow_jobs_of"}


class TargetRef(StrictModel):
    """A target of another pipeline: `{pipeline: contacts, target: mdm_people}`."""

    pipeline: str
    target: str

    def describe(self) -> str:
        return f"{self.pipeline}/{self.target}"


class RawTarget(StrictModel):
    model_config = StrictModel.model_config | {"extra": "allow"}

    connection: str
    retry: DeliveryRetry = DeliveryRetry()
    jobs: JobSettings = JobSettings()
    guard: GuardSettings = GuardSettings()
    concurrency: int = Field(
        1,
        ge=1,
        le=MAX_CONCURRENCY,
        description="batches of a synchronous target in flight at once, all under the "
        "connection's calls_per_second",
    )
    slo: SloSettings | None = Field(None, description="overrides the pipeline's slo")


class RawSource(StrictModel):
    """Either a connection (and its connector's settings) or, for a chained pipeline,
    another pipeline's target whose done deliveries become this pipeline's deletions."""

    model_config = StrictModel.model_config | {"extra": "allow"}

    connection: str | None = None
    pipeline: str | None = None
    target: str | None = None
    follow_jobs_of: TargetRef | None = Field(
        None, description="a task source also reads the jobs this target of ours started"
    )


class AlertSettings(StrictModel):
    """When the log raises an alert event (one event name each, for log-based alerting)."""

    source_errors_in_a_row: int = Field(3, ge=1, description="alert_source_failing after this many")
    cursor_retention: Seconds | None = Field(
        None,
        description="the source keeps deletions this long; alert_cursor_beyond_retention when a "
        "stream's last good read is older (deletions may already be gone from the source)",
    )


class RawPipeline(StrictModel):
    schedule: Schedule
    alerts: AlertSettings = AlertSettings()
    slo: SloSettings = SloSettings()
    source: RawSource
    targets: dict[str, RawTarget] = Field(min_length=1)
    enabled: bool = True

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: dict[str, RawTarget]) -> dict[str, RawTarget]:
        import re

        for name in value:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"target name {name!r}: use letters, digits, _ . -")
        return value


class MetricsSettings(StrictModel):
    """The daemon's /metrics, /healthz and /readyz endpoints (off unless configured)."""

    host: str = Field("127.0.0.1", description="keep it on loopback unless a proxy guards it")
    port: int = Field(9108, ge=1, le=65535)
    stale_after_periods: float = Field(
        3.0,
        gt=0,
        description="/readyz fails (pipeline_overdue) when a pipeline has had no good run "
        "for this many periods of its schedule (a cron schedule counts as hourly)",
    )


class HealthSettings(StrictModel):
    """When /readyz and `status` call something unhealthy (each is also an alert)."""

    stall_after: Seconds = Field(
        900.0,
        gt=0,
        description="a target whose sends have all failed for this long is stalled",
    )
    failing_runs: int = Field(
        3, ge=1, description="a pipeline whose last this many runs failed is failing"
    )
    held_after: Seconds = Field(
        3600.0,
        gt=0,
        description="deliveries held by the guard for longer make /readyz fail (the alert "
        "is sent at once)",
    )


class WebhookSink(StrictModel):
    """A JSON POST of each alert; signed when `secret` is set (see the README)."""

    type: Literal["webhook"]
    name: str | None = None
    url: str
    secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key: each request carries X-Syncengine-Signature: "
        "sha256=<hex of HMAC(secret, '<timestamp>.<body>')> and X-Syncengine-Timestamp",
    )
    headers: dict[str, SecretStr] = Field(default_factory=dict)


class SlackSink(StrictModel):
    """A Slack (or Mattermost, Teams-compatible) incoming webhook."""

    type: Literal["slack"]
    name: str | None = None
    url: SecretStr = Field(description="the incoming webhook's URL: it is the credential")


class CommandSink(StrictModel):
    """A program run once per alert, the alert's JSON on its standard input."""

    type: Literal["command"]
    name: str | None = None
    command: list[str] = Field(min_length=1, description="argv; no shell")


AlertSink = Annotated[WebhookSink | SlackSink | CommandSink, Field(discriminator="type")]


class AlertDelivery(StrictModel):
    """How each alert is sent: retried with backoff, never holding a pipeline up."""

    timeout: Seconds = Field(10.0, gt=0, description="one attempt to one sink")
    max_attempts: int = Field(12, ge=1, le=1000)
    backoff: Seconds = Field(15.0, ge=0, description="first wait; doubles per attempt")
    max_backoff: Seconds = Field(1800.0, ge=0)


class AlertsSettings(StrictModel):
    """Where alerts go. Which conditions raise them is fixed (see the README)."""

    sinks: list[AlertSink] = Field(default_factory=list)
    delivery: AlertDelivery = AlertDelivery()
    check_every: Seconds = Field(
        30.0, gt=0, description="the daemon looks for new and resolved conditions this often"
    )

    def sink_names(self) -> list[str]:
        """Each sink's name as its notices are addressed: its own, or `type-index` (its
        place in the list), the one rule the outbox and the senders share."""
        return [sink.name or f"{sink.type}-{i}" for i, sink in enumerate(self.sinks)]


class RawConfig(StrictModel):
    state: StateSettings = StateSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings | None = None
    health: HealthSettings = HealthSettings()
    alerts: AlertsSettings = AlertsSettings()
    connections: dict[str, dict[str, Any]] = Field(min_length=1)
    pipelines: dict[str, RawPipeline] = Field(min_length=1)


class TargetConfig(StrictModel):
    name: str
    connection: str
    connection_type: str
    retry: DeliveryRetry
    jobs: JobSettings
    guard: GuardSettings = GuardSettings()
    settings: Any
    concurrency: int = 1
    slo: SloSettings | None = None


CHAIN = "pipeline"
"""The `connection_type` of a chained source: it reads the store, not a system."""


class SourceConfig(StrictModel):
    connection: str | None
    connection_type: str
    settings: Any = None
    chain: TargetRef | None = None
    follow_jobs_of: TargetRef | None = None

    def describe(self) -> str:
        if self.chain is not None:
            return f"{self.chain.describe()} (chained)"
        return str(self.connection)

    def upstream(self) -> list[str]:
        """Pipelines this source reads from, which must run first."""
        refs = (self.chain, self.follow_jobs_of)
        return [ref.pipeline for ref in refs if ref is not None]


class PipelineConfig(StrictModel):
    name: str
    schedule: Schedule
    alerts: AlertSettings = AlertSettings()
    slo: SloSettings = SloSettings()
    enabled: bool
    source: SourceConfig
    targets: dict[str, TargetConfig]


class Config(StrictModel):
    """The whole file, validated; connection and block settings are connector models."""

    path: str
    state: StateSettings
    logging: LoggingSettings
    metrics: MetricsSettings | None = None
    health: HealthSettings = HealthSettings()
    alerts: AlertsSettings = AlertsSettings()
    connections: dict[str, Any]
    pipelines: dict[str, PipelineConfig]
    secrets: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    """Rendered like errors ("file:line: path: message"); `validate` prints them."""
