"""The store's plain data: what the engine hands it and what it hands back.

Kept apart from the code that writes the tables, so each part of the store (journal,
deliveries, jobs) and the engine read the same types in one place.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol


@dataclass(frozen=True)
class NewRecord:
    """A record to journal (the store's own shape: it does not import connectors).

    `origin` names the record in its source system; `origin_delivery_id` links it
    to the upstream delivery it continues (chained pipelines). `rejected` is the
    reason for a record the source could not use: journaled, never sent, a dead
    letter to every target.
    """

    key: str
    fields: Mapping[str, Any]
    origin: str = ""
    origin_delivery_id: int | None = None
    rejected: str = ""


@dataclass(frozen=True)
class ReadWindow:
    """The span of source time one read covers, half-open [start, end), aware; None is
    unbounded. Two reads overlap when each starts before the other ends."""

    start: datetime | None = None
    end: datetime | None = None


UNBOUNDED = ReadWindow()
"""A read whose window is not known: it overlaps every other."""

MALFORMED = "malformed record"
"""How the dead letter of a record the source could not use begins (`dlq list --error`)."""

WITHDRAWN = "withdrawn"
"""How the reason of a record withdrawn with its malformed answer begins (`dlq list --error`)."""

CHUNK = 500
"""Keys per query: well under SQLite's and PostgreSQL's bound-parameter limits."""


@dataclass(frozen=True)
class CursorState:
    value: dict[str, Any] | None
    in_flight: dict[str, Any] | None
    in_flight_since: datetime | None


@dataclass(frozen=True)
class Cause:
    """A done delivery of this engine, found by the effect a source reports."""

    delivery_id: int
    pipeline: str
    target: str


@dataclass(frozen=True)
class JournalResult:
    new: int
    duplicates: int
    echoes: int = 0
    """New deletions this engine had caused itself: journaled, not propagated."""
    rejected: int = 0
    """New records the source could not use: journaled as dead letters."""
    withdrawn: int = 0
    """Duplicates of records withdrawn with a malformed answer: they stay dead."""

    def __add__(self, other: JournalResult) -> JournalResult:
        """Two journal calls of one answer, counted as one."""
        return JournalResult(
            new=self.new + other.new,
            duplicates=self.duplicates + other.duplicates,
            echoes=self.echoes + other.echoes,
            rejected=self.rejected + other.rejected,
            withdrawn=self.withdrawn + other.withdrawn,
        )


@dataclass(frozen=True)
class Withdrawal:
    """The deliveries of an answer found malformed, as its withdrawal left them."""

    sent: int
    """Done or being sent when the withdrawal began (a claim in progress finishes)."""
    withdrawn: int
    """Made dead by it: never sent."""


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    attempts: int
    stream: str
    key: str
    fields: dict[str, Any]
    approved: bool = False
    """An operator released it from a mass-delete hold (never from a legal hold)."""
    rejected: str = ""
    """Why its record must never be sent (withdrawn with a malformed answer): a claim
    makes it dead instead (see `state.claims.claim_due`)."""


@dataclass(frozen=True)
class GuardCounts:
    """What a mass-delete guard weighs, counted in the claim's own transaction."""

    due: int
    """Due deliveries of the target that no operator approved."""
    done_last_hour: int
    in_flight: int
    """Claimed and not answered yet (the items of open jobs)."""


class Screen(Protocol):
    """The guards, asked inside the claim's transaction, so nothing is sent on a verdict
    older than the claim (a delivery made due mid-run by a retry is screened too).

    The engine implements it; the store only applies the verdicts: a protected
    delivery becomes dead with the reason, and a hold holds every due delivery
    that no operator approved.
    """

    def protect(self, delivery: ClaimedDelivery) -> str | None:
        """Why this delivery must never be sent (approved or not), or None."""
        ...

    def hold(self, counts: GuardCounts) -> str | None:
        """Why the due deliveries no operator approved must wait, or None."""
        ...

    @property
    def weighs_limits(self) -> bool:
        """Whether `hold` can hold anything: without a limit, the claim spares itself
        the counts (each is a scan of the target's queue)."""
        ...

    def on_hold(self, count: int, reason: str) -> None:
        """`count` deliveries were just held for `reason`."""
        ...


@dataclass(frozen=True)
class RetryRule:
    """How a target's failed deliveries are retried before they are dead."""

    max_attempts: int = 10
    base_delay: float = 30.0
    max_delay: float = 3600.0

    def next_attempt(self, now: datetime, attempts: int, retry_after: float | None) -> datetime:
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempts - 1)))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return now + timedelta(seconds=delay)


@dataclass(frozen=True)
class OutcomeRecord:
    """A target's verdict in the store's own terms: done, retry or dead."""

    delivery_id: int
    kind: str
    reason: str = ""
    retry_after: float | None = None
    detail: str = ""
    effect: str = ""


LAG_BOUNDS: tuple[float, ...] = (
    1,
    5,
    15,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    14400,
    43200,
    86400,
    172800,
    604800,
)
"""Upper bounds, in seconds, of the propagation lag's buckets (from 1 s to 7 days): the
store counts into them and the metrics export them, so both read them from here."""


@dataclass
class LagCounts:
    """How long deliveries took from their journaling to their target's done, as bucket
    counts: the same size for one delivery as for a backfill of a million."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(LAG_BOUNDS) + 1))
    """Deliveries per bucket (not cumulative): `buckets[i]` took at most `LAG_BOUNDS[i]`
    and more than the bound before; the last one, more than seven days."""
    seconds: float = 0.0
    """The lags' sum."""

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def observe(self, seconds: float) -> None:
        # A clock stepped back between journaling and done is no negative lag.
        seconds = max(0.0, seconds)
        self.buckets[bisect.bisect_left(LAG_BOUNDS, seconds)] += 1
        self.seconds += seconds

    def add(self, other: LagCounts) -> None:
        for index, count in enumerate(other.buckets):
            self.buckets[index] += count
        self.seconds += other.seconds


@dataclass
class OutcomeCounts:
    done: int = 0
    retried: int = 0
    dead: int = 0
    lag: LagCounts = field(default_factory=LagCounts)
    """The propagation lag of the deliveries made done."""


@dataclass(frozen=True)
class TargetCounts:
    pipeline: str
    target: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueAge:
    """How long the oldest work of one target has waited (None: nothing waits)."""

    pipeline: str
    target: str
    oldest_waiting: datetime | None
    """The journaling time of the oldest delivery still to be done (pending, failed,
    in flight): the lag a deletion has already accumulated on its way to the target."""
    oldest_held: datetime | None
    """Since when the oldest delivery held by the guard has waited for an operator."""


class HeldCountMismatch(Exception):
    """An approval named a different number than the deliveries actually held."""

    def __init__(self, held: int) -> None:
        super().__init__(f"{held} deliveries are held")
        self.held = held


@dataclass(frozen=True)
class JobRecord:
    """A job row with the batch it carries, as the engine drives it."""

    id: int
    pipeline: str
    target: str
    kind: str
    client_id: str
    phase: str
    remote_id: str | None
    state: str
    handle: dict[str, Any] | None
    items: list[ClaimedDelivery]
    created_at: datetime
    next_poll_at: datetime | None
    cancel_requested: bool
    submit_attempts: int
    resolved: dict[str, Any] | None = None
