"""`syncengine report`: evidence of erasure. For a period, every deletion a source
reported and, per target, what became of it, with the lag from the report to the
deletion.

Rows come from `state.evidence` a page at a time and are written as they come (CSV,
JSON Lines), or folded into a summary of bounded size (text, JSON): a report over
millions of deletions holds one page and, per target, a fixed-size lag digest.

Keys, origins and the raw fields are written as journaled: the report exists to name
the person whose record was erased, so it holds personal identifiers (secrets are
never journaled, and error texts were scrubbed of them on their way into the store).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from connectors.kit.settings import parse_duration
from state.evidence import EvidenceRow
from state.models import DeliveryStatus
from syncengine.engine.guard import LEGAL_HOLD

# --- the period --------------------------------------------------------------------

_AGE = re.compile(r"^\s*\d+(?:\.\d+)?\s*(ms|s|m|h|d)\s*$")


def parse_when(value: str, now: datetime) -> datetime:
    """An ISO 8601 time (`2025-01-31`, `2025-01-31 08:00`, `2025-01-31T08:00:00+01:00`;
    without a zone it is UTC, the store's clock) or an age before `now` (`30d`, `12h`,
    `90m`). Raises ValueError with what to write instead."""
    if _AGE.match(value):
        return now - timedelta(seconds=float(parse_duration(value)))
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r}: write an ISO time (2025-01-31, 2025-01-31T08:00:00Z, in UTC unless "
            "it names its zone) or an age such as 30d, 12h, 90m"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# --- what became of each deletion ---------------------------------------------------

DONE, HELD, LEGAL, DEAD, DROPPED = "done", "held", "legal_hold", "dead", "dropped"
PENDING, FAILED, IN_FLIGHT, ECHO, UNTARGETED = (
    "pending",
    "failed",
    "in_flight",
    "echo",
    "no_target",
)
OUTCOMES = (DONE, HELD, LEGAL, DEAD, DROPPED, PENDING, FAILED, IN_FLIGHT, ECHO, UNTARGETED)
"""done: deleted in the target (deleted_at, by the job or request named). held: a mass-
delete guard stopped it until an operator approves or rejects. legal_hold: dead because
the target's legal hold protects the key (never sent). dead: gave up, with its reason.
dropped: a dead letter an operator acknowledged. pending, failed (retried later),
in_flight: not deleted yet. echo: this engine's own delete reported back by a source,
journaled and not propagated. no_target: journaled with no delivery."""
WAITING = (PENDING, FAILED, IN_FLIGHT, HELD)
"""Not deleted yet, and may still be: what `oldest pending` looks at."""


_BY_STATUS: dict[str, str] = {
    DeliveryStatus.DONE: DONE,
    DeliveryStatus.HELD: HELD,
    DeliveryStatus.DEAD: DEAD,
    DeliveryStatus.DROPPED: DROPPED,
    DeliveryStatus.PENDING: PENDING,
    DeliveryStatus.FAILED: FAILED,
    DeliveryStatus.IN_FLIGHT: IN_FLIGHT,
}


def outcome(row: EvidenceRow) -> str:
    delivery = row.delivery
    if delivery is None:
        return ECHO if row.echo_of is not None else UNTARGETED
    if delivery.status == DeliveryStatus.DEAD and delivery.reason.startswith(LEGAL_HOLD):
        return LEGAL
    return _BY_STATUS.get(delivery.status, delivery.status)


def lag_seconds(row: EvidenceRow) -> tuple[float | None, float | None]:
    """(from the first source's report, from this hop's journaling) to the deletion in
    the target; None unless the target deleted it."""
    delivery = row.delivery
    if delivery is None or delivery.status != DeliveryStatus.DONE or not delivery.finished_at:
        return None, None
    return (
        (delivery.finished_at - row.ancestry.source_seen_at).total_seconds(),
        (delivery.finished_at - row.seen_at).total_seconds(),
    )


COLUMNS = (
    "seen_at",
    "pipeline",
    "hop",
    "stream",
    "key",
    "origin",
    "deletion_id",
    "target",
    "delivery_id",
    "outcome",
    "status",
    "deleted_at",
    "lag_s",
    "hop_lag_s",
    "job_id",
    "job_kind",
    "job_remote_id",
    "job_client_id",
    "detail",
    "effect",
    "reason",
    "attempts",
    "finished_at",
    "updated_at",
    "upstream_delivery_id",
    "upstream_pipeline",
    "upstream_target",
    "source_deletion_id",
    "source_pipeline",
    "source_key",
    "source_origin",
    "source_seen_at",
    "echo_of_delivery_id",
    "run_id",
    "fields",
)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat()


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def flat(row: EvidenceRow) -> dict[str, Any]:
    """One row of the report, in COLUMNS order; `fields` stays a mapping (JSON Lines)
    and is written as JSON text in CSV."""
    d, a = row.delivery, row.ancestry
    lag, hop_lag = lag_seconds(row)
    kind = outcome(row)
    reason = "" if d is None else d.reason
    if row.echo_of is not None and d is None:
        e = row.echo_of
        reason = (
            f"this engine's own delete (delivery {e.delivery_id}, {e.pipeline} -> {e.target}) "
            "reported back: journaled, not propagated again"
        )
    elif d is None:
        reason = "journaled with no target"
    return {
        "seen_at": _iso(row.seen_at),
        "pipeline": row.pipeline,
        "hop": a.hop,
        "stream": row.stream,
        "key": row.key,
        "origin": row.origin,
        "deletion_id": row.deletion_id,
        "target": None if d is None else d.target,
        "delivery_id": None if d is None else d.id,
        "outcome": kind,
        "status": None if d is None else d.status,
        "deleted_at": _iso(d.finished_at) if d is not None and kind == DONE else None,
        "lag_s": _round(lag),
        "hop_lag_s": _round(hop_lag),
        "job_id": None if d is None else d.job_id,
        "job_kind": None if d is None else d.job_kind,
        "job_remote_id": None if d is None else d.job_remote_id,
        "job_client_id": None if d is None else d.job_client_id,
        "detail": None if d is None else d.detail,
        "effect": None if d is None else d.effect,
        "reason": reason,
        "attempts": None if d is None else d.attempts,
        "finished_at": None if d is None else _iso(d.finished_at),
        "updated_at": None if d is None else _iso(d.updated_at),
        "upstream_delivery_id": a.upstream_delivery_id,
        "upstream_pipeline": a.upstream_pipeline,
        "upstream_target": a.upstream_target,
        "source_deletion_id": a.source_deletion_id,
        "source_pipeline": a.source_pipeline,
        "source_key": a.source_key,
        "source_origin": a.source_origin,
        "source_seen_at": _iso(a.source_seen_at),
        "echo_of_delivery_id": None if row.echo_of is None else row.echo_of.delivery_id,
        "run_id": row.run_id,
        "fields": row.fields,
    }


# --- streamed formats ---------------------------------------------------------------


def write_csv(rows: Iterable[EvidenceRow], out: TextIO) -> int:
    """RFC 4180 (CRLF, fields quoted where needed: commas, quotes, line breaks); an
    empty cell is a missing value; `fields` is JSON. Written row by row."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        values = flat(row)
        values["fields"] = json.dumps(values["fields"], ensure_ascii=False, sort_keys=True)
        writer.writerow(["" if v is None else v for v in values.values()])
        count += 1
    return count


def write_jsonl(rows: Iterable[EvidenceRow], out: TextIO) -> int:
    """One JSON object per line, null for a missing value."""
    count = 0
    for row in rows:
        out.write(json.dumps(flat(row), ensure_ascii=False) + "\n")
        count += 1
    return count


# --- the summary --------------------------------------------------------------------

EXACT = 10_000
"""Lags kept exactly per target; past this, the digest's buckets take over."""
FLOOR = 0.001
"""The smallest lag told apart from zero (a millisecond)."""
GROWTH = 1.02
"""Each bucket is 2 % wider than the one below, so a lag read from the bucket's middle
is within 1 % of the true one. Ten years in milliseconds is about 1,340 buckets."""


@dataclass
class LagDigest:
    """Percentiles of lags in bounded memory: exact while there are at most EXACT
    lags (a sorted list), then a histogram of log-spaced buckets whose answers are
    within 1 % (relative) of the exact nearest-rank percentile; the maximum (and the
    minimum) are always exact."""

    count: int = 0
    low: float = math.inf
    high: float = -math.inf
    exact: list[float] | None = field(default_factory=list)
    buckets: dict[int, int] = field(default_factory=dict)

    def add(self, lag: float) -> None:
        self.count += 1
        self.low, self.high = min(self.low, lag), max(self.high, lag)
        if self.exact is not None:
            self.exact.append(lag)
            if len(self.exact) <= EXACT:
                return
            kept, self.exact = self.exact, None
            for value in kept:
                self._bucket(value)
            return
        self._bucket(lag)

    def _bucket(self, lag: float) -> None:
        index = 0 if lag < FLOOR else 1 + int(math.log(lag / FLOOR) / math.log(GROWTH))
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def percentile(self, p: float) -> float | None:
        """The nearest-rank percentile: the smallest lag with at least p % of them at or
        below it."""
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        if self.exact is not None:
            self.exact.sort()  # nearly free once sorted: Timsort finds the run
            return self.exact[rank - 1]
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                if index == 0:
                    middle = 0.0
                else:
                    bottom = FLOOR * GROWTH ** (index - 1)
                    middle = math.sqrt(bottom * bottom * GROWTH)
                return min(max(middle, self.low), self.high)
        return self.high

    @property
    def is_exact(self) -> bool:
        return self.exact is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "p50_s": _round(self.percentile(50)),
            "p95_s": _round(self.percentile(95)),
            "max_s": _round(self.high) if self.count else None,
            "exact": self.is_exact,
        }


@dataclass
class Waiting:
    seen_at: datetime
    """When the first source reported it."""
    key: str
    deletion_id: int
    outcome: str


@dataclass
class TargetSummary:
    hop: int
    pipeline: str
    target: str | None
    counts: dict[str, int] = field(default_factory=dict)
    lag: LagDigest = field(default_factory=LagDigest)
    oldest_pending: Waiting | None = None

    def add(self, row: EvidenceRow) -> None:
        kind = outcome(row)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        lag, _ = lag_seconds(row)
        if lag is not None:
            self.lag.add(lag)
        if kind in WAITING:
            when = row.ancestry.source_seen_at
            if self.oldest_pending is None or when < self.oldest_pending.seen_at:
                self.oldest_pending = Waiting(when, row.key, row.deletion_id, kind)


@dataclass
class Summary:
    since: datetime | None
    until: datetime | None
    generated_at: datetime
    deletions: int = 0
    rows: int = 0
    targets: dict[tuple[int, str, str | None], TargetSummary] = field(default_factory=dict)
    _last_deletion: int | None = None

    def add(self, row: EvidenceRow) -> None:
        self.rows += 1
        if row.deletion_id != self._last_deletion:
            # Rows of one deletion come together (the store pages by deletion).
            self.deletions += 1
            self._last_deletion = row.deletion_id
        target = None if row.delivery is None else row.delivery.target
        group = (row.ancestry.hop, row.pipeline, target)
        if group not in self.targets:
            self.targets[group] = TargetSummary(*group)
        self.targets[group].add(row)

    def ordered(self) -> list[TargetSummary]:
        return [
            self.targets[g]
            for g in sorted(self.targets, key=lambda g: (g[0], g[1], g[2] is None, g[2] or ""))
        ]

    def as_json(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "generated_at": _iso(self.generated_at),
            "deletions": self.deletions,
            "rows": self.rows,
            "targets": [
                {
                    "hop": t.hop,
                    "pipeline": t.pipeline,
                    "target": t.target,
                    "counts": {k: t.counts.get(k, 0) for k in OUTCOMES if t.counts.get(k)},
                    "lag": t.lag.as_json(),
                    "oldest_pending": None
                    if t.oldest_pending is None
                    else {
                        "seen_at": _iso(t.oldest_pending.seen_at),
                        "age_s": _round(
                            (self.generated_at - t.oldest_pending.seen_at).total_seconds()
                        ),
                        "key": t.oldest_pending.key,
                        "deletion_id": t.oldest_pending.deletion_id,
                        "outcome": t.oldest_pending.outcome,
                    },
                }
                for t in self.ordered()
            ],
        }


def summarize(
    rows: Iterator[EvidenceRow], since: datetime | None, until: datetime | None, now: datetime
) -> Summary:
    summary = Summary(since, until, now)
    for row in rows:
        summary.add(row)
    return summary


def duration(seconds: float | None) -> str:
    """A lag for people: 0.84s, 12.3s, 4m 05s, 3h 20m, 2d 04h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    whole = int(seconds)
    for big, small, name, sub in ((86400, 3600, "d", "h"), (3600, 60, "h", "m"), (60, 1, "m", "s")):
        if whole >= big:
            return f"{whole // big}{name} {(whole % big) // small:02d}{sub}"
    return f"{seconds:.0f}s"


_SHOWN = (
    (DONE, "done"),
    (HELD, "held"),
    (LEGAL, "legal hold"),
    (DEAD, "dead"),
    (DROPPED, "dropped"),
)


def render_summary(summary: Summary, console: Console) -> None:
    since = _iso(summary.since) or "the first deletion"
    until = _iso(summary.until) or _iso(summary.generated_at)
    console.print(
        f"Evidence of erasure: deletions reported from {since} to {until}: "
        f"{summary.deletions} deletions, {summary.rows} rows",
        highlight=False,
    )
    echoes = any(t.counts.get(ECHO) for t in summary.targets.values())
    outcomes = Table(
        *_where_columns(),
        *[_number(label) for _, label in _SHOWN],
        _number("waiting"),
        *([_number("echo")] if echoes else []),
        title="what became of each deletion",
    )
    lags = Table(
        *_where_columns(),
        _number("deleted"),
        _number("lag p50"),
        _number("p95"),
        _number("max"),
        Column("oldest pending (key, age)"),
        title="lag from the first source's report to the deletion",
    )
    for t in summary.ordered():
        where = (str(t.hop), t.pipeline, t.target or "(no target)")
        waiting = sum(t.counts.get(k, 0) for k in (PENDING, FAILED, IN_FLIGHT))
        outcomes.add_row(
            *where,
            *[str(t.counts.get(k, 0)) for k, _ in _SHOWN],
            str(waiting),
            *([str(t.counts.get(ECHO, 0))] if echoes else []),
        )
        oldest = "-"
        if t.oldest_pending is not None:
            age = (summary.generated_at - t.oldest_pending.seen_at).total_seconds()
            oldest = f"{t.oldest_pending.key}, {duration(age)} ({t.oldest_pending.outcome})"
        lags.add_row(
            *where,
            str(t.lag.count),
            duration(t.lag.percentile(50)),
            duration(t.lag.percentile(95)),
            duration(t.lag.high if t.lag.count else None),
            # A key is text a source wrote, never rich markup.
            Text(oldest),
        )
    console.print(outcomes)
    console.print(lags)
    console.print(
        "waiting: pending, failed (retried later) or in flight; oldest pending: the "
        "longest-waiting deletion not deleted yet (waiting or held)",
        highlight=False,
    )


def _where_columns() -> list[Column]:
    return [
        Column("hop", justify="right"),
        Column("pipeline", no_wrap=True),
        Column("target", no_wrap=True),
    ]


def _number(header: str) -> Column:
    return Column(header, justify="right")


__all__ = [
    "COLUMNS",
    "OUTCOMES",
    "LagDigest",
    "Summary",
    "flat",
    "outcome",
    "parse_when",
    "render_summary",
    "summarize",
    "write_csv",
    "write_jsonl",
]
