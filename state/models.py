"""The durable model: deletions journaled, deliveries per target, cursors, runs, locks.

Times are stored as naive UTC and handed out as aware UTC (`UTCDateTime`),
so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, overload
from weakref import WeakKeyDictionary

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


Scrub = Callable[[str], str]
_scrubbers: WeakKeyDictionary[Dialect, Scrub] = WeakKeyDictionary()


def scrub_error_text(engine: Engine, scrub: Scrub) -> None:
    """Pass every error message written through `engine` through `scrub` first.

    Error text quotes remote answers, which may echo a secret; the engine
    knows the secrets, the store only applies what it is given. Keyed by the
    engine's dialect, the one engine-specific thing a column type sees.
    """
    _scrubbers[engine.dialect] = scrub


class ErrorText(TypeDecorator[str]):
    """Text that may quote a remote answer: scrubbed of secrets on its way in."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        scrub = _scrubbers.get(dialect)
        return value if not value or scrub is None else scrub(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """A time read past `UTCDateTime` (Core rows, MIN()/MAX(), which come back without
    the column's type on some drivers) as aware UTC: the store keeps naive UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    FAILED = "failed"
    HELD = "held"
    DEAD = "dead"
    DROPPED = "dropped"
    """A dead delivery an operator acknowledged: kept for the record, never retried."""


class RunOutcome(enum.StrEnum):
    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


def _delivery_link(name: str) -> Column[Any]:
    """A deletion pointing at a delivery, while each delivery points at its deletion: the
    constraint is added after both tables exist (use_alter), which breaks the cycle."""
    return Column(
        Integer, ForeignKey("delivery.id", use_alter=True, name=name), index=True, nullable=True
    )


class Deletion(SQLModel, table=True):
    """One record deleted in a source, and the window of the read that reported it.

    Not unique per (pipeline, stream, key): a record restored and deleted again
    is a new deletion. The journal takes a key for a duplicate only when a read
    whose window overlaps holds it already. No constraint can say that, and none
    is needed: one pipeline's journal is written by the holder of its lease only.
    """

    __tablename__ = "deletion"
    __table_args__ = (
        Index("ix_deletion_key", "pipeline", "stream", "record_key"),
        # Pruning and period reports select deletions by when they were seen.
        Index("ix_deletion_seen_at", "seen_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(index=True)
    stream: str
    record_key: str
    fields: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    seen_at: datetime = Field(sa_type=UTCDateTime)
    run_id: int | None = None
    window_start: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """The source time the read covered, [start, end); None is unbounded."""
    window_end: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rejected: str | None = Field(default=None, sa_type=Text)
    """Set for a record the source could not use (no key, a malformed row): the reason.
    Kept with its redacted fields as a dead letter to every target; never sent."""
    origin: str | None = None
    """The record's name in its source system (`goose:DEV001:CON_TRO:0-1`)."""
    origin_delivery_id: int | None = Field(
        default=None, sa_column=_delivery_link("fk_deletion_origin_delivery")
    )
    """The upstream delivery this deletion continues (a chained pipeline, or a source
    following this engine's own jobs): the link `trace` follows."""
    echo_of_delivery_id: int | None = Field(
        default=None, sa_column=_delivery_link("fk_deletion_echo_of_delivery")
    )
    """Set when the source reported a deletion this engine itself made through that
    delivery: journaled for the record, never propagated again."""


class Delivery(SQLModel, table=True):
    """One deletion for one target, and where it stands."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("deletion_id", "target", name="uq_delivery"),
        Index("ix_delivery_queue", "pipeline", "target", "status", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    deletion_id: int = Field(foreign_key="deletion.id")
    pipeline: str
    target: str
    status: str = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str = Field(default="", sa_type=ErrorText)
    detail: str = ""
    claim: str | None = None
    claim_epoch: int | None = None
    """The lease epoch of the run that claimed it last (see `PipelineLock.epoch`)."""
    job_id: int | None = Field(
        default=None,
        # Named as migration 0002 names it: a store created from these models and one
        # migrated to them must be the same to every later migration.
        sa_column=Column(
            Integer, ForeignKey("job.id", name="fk_delivery_job"), index=True, nullable=True
        ),
    )
    approved: bool = False
    """Released by an operator from `held`: the mass-delete guard lets it pass."""
    effect: str | None = Field(default=None, index=True)
    """On done: the record's name in the target's system, as a source reading that
    system would report it; how the journal recognises its own deletions coming back."""
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Cursor(SQLModel, table=True):
    """What to ask a source stream for next, and the call currently in flight.

    `in_flight` is set durably before a call and cleared in the transaction
    that journals its answer; finding it set means the answer was lost.
    """

    __tablename__ = "cursor"

    pipeline: str = Field(primary_key=True)
    stream: str = Field(primary_key=True)
    value: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    in_flight: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    in_flight_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    recoveries: int = 0
    last_recovery_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_recovery: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    consecutive_errors: int = 0
    last_error: str = Field(default="", sa_type=ErrorText)
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Run(SQLModel, table=True):
    """One pull/push cycle of a pipeline with its counts and outcome."""

    __tablename__ = "run"

    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(index=True)
    kind: str = "run"
    started_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    outcome: str = RunOutcome.RUNNING
    pulled: int = 0
    duplicates: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    error: str = Field(default="", sa_type=ErrorText)
    fatal: bool = False
    """Ended on a FatalError (credentials or configuration rejected): the daemon stops
    the pipeline until its configuration changes."""


class PipelineLock(SQLModel, table=True):
    """A lease so that one pipeline never runs twice at once, across processes.

    `epoch` is the fencing token: it grows each time the lease changes hands and
    never goes back (a released lease keeps its row, expired), so a holder that
    was paused past its lease finds, at its next write, that it is no longer
    the epoch's owner, and writes nothing.
    """

    __tablename__ = "pipeline_lock"

    pipeline: str = Field(primary_key=True)
    owner: str
    expires_at: datetime = Field(sa_type=UTCDateTime)
    epoch: int = 1
    acquired_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """When this owner took the lease (`status` shows it: held since)."""


class JobPhase(enum.StrEnum):
    """Where a job stands on our side; the remote status is kept in `state`.

    created: the row and its batch exist, nothing was sent. submitting: the
    request may have been sent (a crash here means: look for the remote job
    before sending again). open: the remote job exists and is polled.
    rescreened: its batch met the guards again before a (re)submission and no longer
    passed whole; what they still allow went to a new job, under a new client id.
    """

    CREATED = "created"
    SUBMITTING = "submitting"
    OPEN = "open"
    FINISHED = "finished"
    STUCK = "stuck"
    CANCELLED = "cancelled"
    RESCREENED = "rescreened"


OPEN_PHASES = (JobPhase.CREATED, JobPhase.SUBMITTING, JobPhase.OPEN)


class Job(SQLModel, table=True):
    """An asynchronous operation on a target and the fixed batch it carries."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_open", "pipeline", "target", "phase", "next_poll_at"),)

    id: int | None = Field(default=None, primary_key=True)
    pipeline: str
    target: str
    kind: str
    client_id: str = Field(unique=True)
    remote_id: str | None = None
    phase: str = JobPhase.CREATED
    state: str = ""
    items: int = 0
    next_poll_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    submit_attempts: int = 0
    polls: int = 0
    error: str = Field(default="", sa_type=ErrorText)
    handle: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    detail: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    resolved: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    """Look-ups done for this batch before submission, by key, each with the time it
    may be used until; cleared when the job ends (see connectors.contract.Resolving)."""
    cancel_requested: bool = False
    claim_epoch: int | None = None
    """The lease epoch of the run that fixed its batch."""
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class TargetHealth(SQLModel, table=True):
    """Whether a target's sends get through, as the runs that pushed to it found.

    Written once per run per target that had something to send, so a target
    whose every send fails is seen as failing since its first failed run, and
    stalled once that lasts longer than `health.stall_after`.
    """

    __tablename__ = "target_health"

    pipeline: str = Field(primary_key=True)
    target: str = Field(primary_key=True)
    failing_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    """The first run of the current streak of runs that got nothing through; None
    while sends get through."""
    failed_runs: int = 0
    last_ok_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str = Field(default="", sa_type=ErrorText)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class ConditionState(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class AlertCondition(SQLModel, table=True):
    """Something wrong that someone must be told about, once, until it resolves.

    One row per condition key for ever (`target_stalled:pipe/target`): opening it
    again is an UPDATE from resolved to open that only one process can win, so
    several daemons and cron runs raise one alert per episode, not one each.
    """

    __tablename__ = "alert_condition"

    key: str = Field(primary_key=True)
    kind: str
    pipeline: str | None = None
    target: str | None = None
    state: str = ConditionState.OPEN
    episode: int = 1
    since: datetime = Field(sa_type=UTCDateTime)
    """When the condition began (its evidence), not when it was noticed."""
    opened_at: datetime = Field(sa_type=UTCDateTime)
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    message: str = Field(default="", sa_type=ErrorText)
    command: str = ""
    """What unsticks it, when a command does."""
    blocks_ready: bool = True
    """Whether /readyz answers 503 while it is open."""


class AlertNotice(SQLModel, table=True):
    """One alert (a condition opened or resolved) for one sink: the outbox.

    Written in the transaction that opens or resolves the condition, so no alert
    is lost to a crash; sent and retried by whichever process claims it first.
    """

    __tablename__ = "alert_notice"
    __table_args__ = (Index("ix_alert_notice_due", "sent_at", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    condition_key: str
    episode: int
    event: str
    """opened | resolved"""
    sink: str
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    gave_up_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str = Field(default="", sa_type=ErrorText)
    created_at: datetime = Field(sa_type=UTCDateTime)


class PruneLog(SQLModel, table=True):
    """What one prune removed of one pipeline: the evidence `trace` shows for a key
    no longer in the store.

    One row per prune and pipeline, not per key: a tombstone per key would keep
    the store growing with every deletion, which is what pruning is for. So the
    answer for a key is "deletions of this pipeline seen between these times were
    pruned then, under this setting", never "this key was".
    """

    __tablename__ = "prune_log"

    id: int | None = Field(default=None, primary_key=True)
    pipeline: str = Field(index=True)
    pruned_at: datetime = Field(sa_type=UTCDateTime)
    setting: str
    """The retention that decided it, as written (`keep_done: 400d`)."""
    cutoff: datetime = Field(sa_type=UTCDateTime)
    """Deliveries finished before this were old enough."""
    deletions: int = 0
    deliveries: int = 0
    first_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
