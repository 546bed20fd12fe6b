"""Pruning finished history, in batches short enough never to delay a claim.

What may go, and what stays whatever the settings say (DESIGN.md, Retention):

- A deletion goes with all its deliveries, and with every deletion that continues
  or echoes one of them (its family: a chain's hops go together), only when every
  member may go. A member may go when each of its deliveries is done or dropped
  and finished before the cutoff (pending, in flight, failed, held and dead stay),
  it was seen before the cutoff, its stream has no call in flight (a recovery
  re-read may reach back to any of the stream's reads), and a later read of its
  stream can no longer take its key for a duplicate: its read window ends
  `reread_margin` before the stream's newest read ended, or, unbounded, its stream
  is finished (a task read to its end is never read again). A record continuing
  an upstream delivery is a duplicate by that link, not by its window: it goes
  with the delivery it continues, never before (the chain would take it over
  again).
- A done delivery that a chained pipeline, or a source following its jobs, reads
  (`readers`) stays until each reader has continued it.
- A job goes once it is no longer open, finished before the cutoff, and carries no
  delivery any more. A run goes once finished before its own cutoff, except the
  newest of each pipeline and kind and the newest good one (health reads them).
  An alert notice goes once sent or given up before the cutoff; alert conditions
  stay (one row per condition for ever: their episode numbers must not restart).
- Cursors, in-flight markers, leases and target health are never pruned.

Each batch is its own transaction, and its facts are read again inside it, so a
delivery claimed or a link journaled since the batch was chosen keeps its family.
What went is written to `prune_log` in the same transaction, per pipeline.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, not_, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from state.models import OPEN_PHASES, DeliveryStatus, RunOutcome, aware, utcnow

_T = SQLModel.metadata.tables
DELETION, DELIVERY, JOB, RUN = _T["deletion"], _T["delivery"], _T["job"], _T["run"]
CURSOR, NOTICE, LOG = _T["cursor"], _T["alert_notice"], _T["prune_log"]
FINISHED = (DeliveryStatus.DONE, DeliveryStatus.DROPPED)
MAX_DEPTH = 32
"""Chains are acyclic by configuration; the bound only protects against a corrupt store."""
VACUUM_STEP = 2000
"""Pages an incremental vacuum gives back per statement (8 MB of 4 KiB pages)."""


@dataclass(frozen=True)
class RetentionPolicy:
    """What to prune, in the store's terms (the engine builds it from `state.retention`)."""

    keep_done: timedelta | None
    keep_runs: timedelta | None
    batch: int = 1000
    pause: float = 0.05
    reread_margin: timedelta = timedelta(days=1)
    setting: str = ""
    """How the operator wrote it, for the prune log (`keep_done: 400d`)."""
    readers: Mapping[tuple[str, str], Sequence[str]] = field(default_factory=dict)
    """(pipeline, target) -> pipelines reading that target's done deliveries (chained
    sources and sources following its jobs)."""


@dataclass
class PruneReport:
    deletions: int = 0
    deliveries: int = 0
    jobs: int = 0
    runs: int = 0
    notices: int = 0
    batches: int = 0
    seconds: float = 0.0
    size_before: int | None = None
    size_after: int | None = None
    dry_run: bool = False
    per_pipeline: dict[str, int] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.deletions + self.deliveries + self.jobs + self.runs + self.notices


@dataclass(frozen=True)
class _Row:
    id: int
    pipeline: str
    stream: str
    seen_at: datetime
    window_end: datetime | None
    linked: bool
    """Continues an upstream delivery: a duplicate by that link, not by its window."""


class _Streams:
    """What each stream's later reads may still need, read once per prune: a stale
    answer only keeps more (windows only move forward, markers are re-read per batch).

    A later read of a stream starts no earlier than its last journaled call began,
    minus the source's overlap; that call began no earlier than the newest window end
    journaled, nor than a call's length before the cursor last moved. `reread_margin`
    stands for the overlap plus a call's length.
    """

    def __init__(self, conn: Connection, margin: timedelta) -> None:
        self.margin = margin
        self.newest: dict[tuple[str, str], datetime | None] = {
            (p, s): aware(w)
            for p, s, w in conn.execute(
                select(
                    DELETION.c.pipeline, DELETION.c.stream, func.max(DELETION.c.window_end)
                ).group_by(DELETION.c.pipeline, DELETION.c.stream)
            )
        }
        self.finished: set[tuple[str, str]] = set()
        cursors = select(
            CURSOR.c.pipeline, CURSOR.c.stream, CURSOR.c.value, CURSOR.c.last_success_at
        )
        for p, s, value, journaled in conn.execute(cursors):
            if isinstance(value, dict) and value.get("finished") is True:
                self.finished.add((p, s))
            # A read that found nothing leaves no deletion, but its journal moved the
            # cursor: its call began at most a call's length before that (the margin
            # covers the overlap and the call).
            newest = self.newest.get((p, s))
            journaled = aware(journaled)
            if journaled is not None and (newest is None or journaled > newest):
                self.newest[(p, s)] = journaled

    def reread_safe(self, row: _Row) -> bool:
        """True when no later read of its stream can take its key for a duplicate."""
        if row.linked:
            return True
        stream = (row.pipeline, row.stream)
        if row.window_end is None:
            return stream in self.finished
        newest = self.newest.get(stream)
        return newest is not None and row.window_end <= newest - self.margin


def _in_flight(conn: Connection) -> set[tuple[str, str]]:
    # Read as values: a cleared marker is JSON null, which SQL does not see as NULL.
    rows = conn.execute(select(CURSOR.c.pipeline, CURSOR.c.stream, CURSOR.c.in_flight))
    return {(p, s) for p, s, marker in rows if marker is not None}


class _Family:
    """One batch's candidate roots and everything linked to their deliveries."""

    def __init__(self) -> None:
        self.levels: list[list[_Row]] = []
        self.root_of: dict[int, int] = {}
        self.bad: set[int] = set()
        self.delivery_count: dict[int, int] = defaultdict(int)

    def members(self, root_ok: Callable[[int], bool]) -> list[list[int]]:
        return [[r.id for r in level if root_ok(self.root_of[r.id])] for level in self.levels]


def _expand(
    conn: Connection,
    roots: list[_Row],
    cutoff: datetime,
    streams: _Streams,
    busy: set[tuple[str, str]],
    readers: Mapping[tuple[str, str], Sequence[str]],
) -> _Family:
    family = _Family()
    level = roots
    for first in roots:
        family.root_of[first.id] = first.id
    for _ in range(MAX_DEPTH):
        if not level:
            break
        family.levels.append(level)
        for row in level:
            if (
                row.seen_at > cutoff
                or (row.pipeline, row.stream) in busy
                or not streams.reread_safe(row)
            ):
                family.bad.add(family.root_of[row.id])
        ids = [r.id for r in level]
        deliveries = conn.execute(
            select(
                DELIVERY.c.id,
                DELIVERY.c.deletion_id,
                DELIVERY.c.pipeline,
                DELIVERY.c.target,
                DELIVERY.c.status,
                DELIVERY.c.finished_at,
            ).where(DELIVERY.c.deletion_id.in_(ids))
        ).all()
        owner: dict[int, int] = {}
        needs: dict[int, set[str]] = {}
        for did, deletion_id, pipeline, target, status, finished in deliveries:
            root = family.root_of[deletion_id]
            owner[did] = root
            family.delivery_count[deletion_id] += 1
            finished_at = aware(finished)
            if status not in FINISHED or finished_at is None or finished_at > cutoff:
                family.bad.add(root)
            wanted = readers.get((pipeline, target), ())
            if status == DeliveryStatus.DONE and wanted:
                needs[did] = set(wanted)
        if not owner:
            break
        children = _children(conn, list(owner))
        level = []
        for cid, pipeline, stream, seen, end, origin, echo in children:
            parent = origin if origin in owner else echo
            family.root_of[cid] = owner[parent]
            if origin in needs:
                needs[origin].discard(pipeline)
            linked = origin is not None
            level.append(_Row(cid, pipeline, stream, aware(seen), aware(end), linked))
        for did, missing in needs.items():
            if missing:
                family.bad.add(owner[did])
    else:
        family.bad.update(family.root_of.values())
    return family


def _children(conn: Connection, parents: list[int]) -> list[Any]:
    """The deletions that continue or echo one of `parents`: one query per link, each
    on its own index (an OR of the two made PostgreSQL scan the whole journal each
    batch, which made a prune of a million quadratic)."""
    columns = (
        DELETION.c.id,
        DELETION.c.pipeline,
        DELETION.c.stream,
        DELETION.c.seen_at,
        DELETION.c.window_end,
        DELETION.c.origin_delivery_id,
        DELETION.c.echo_of_delivery_id,
    )
    found: dict[int, Any] = {}
    for link in (DELETION.c.origin_delivery_id, DELETION.c.echo_of_delivery_id):
        for row in conn.execute(select(*columns).where(link.in_(parents))):
            found[row[0]] = row
    return list(found.values())


class Retention:
    """Prunes one store by a `RetentionPolicy`; `sleep` is how it pauses between batches."""

    def __init__(self, engine: Engine, sleep: Callable[[float], None] = time.sleep) -> None:
        self.engine = engine
        self.sleep = sleep
        self.sqlite = engine.dialect.name == "sqlite"

    def size(self) -> int | None:
        from state.admin import store_size

        return store_size(self.engine)

    def prune(
        self,
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        now: datetime | None = None,
        stop: Callable[[], bool] = lambda: False,
    ) -> PruneReport:
        """Remove what `policy` lets go, batch by batch; `stop` is asked between batches
        (a daemon shutting down). With `dry_run`, each batch is rolled back: the counts
        are what a prune would remove now."""
        started = time.monotonic()
        now = now or utcnow()
        report = PruneReport(dry_run=dry_run, size_before=self.size())
        if policy.keep_done is not None:
            cutoff = now - policy.keep_done
            self._deletions(policy, cutoff, now, report, dry_run, stop)
            for name, query in (("jobs", self._jobs), ("notices", self._notices)):
                self._simple(query(cutoff, policy.batch), name, policy, report, dry_run, stop)
        if policy.keep_runs is not None:
            runs = self._runs(now - policy.keep_runs, policy.batch)
            self._simple(runs, "runs", policy, report, dry_run, stop)
        if not dry_run and report.removed and self.sqlite:
            self.give_back(policy.pause, stop)
        report.size_after = self.size()
        report.seconds = time.monotonic() - started
        return report

    def _deletions(
        self,
        policy: RetentionPolicy,
        cutoff: datetime,
        now: datetime,
        report: PruneReport,
        dry_run: bool,
        stop: Callable[[], bool],
    ) -> None:
        with self.engine.connect() as conn:
            streams = _Streams(conn, policy.reread_margin)
        logs: dict[str, int] = {}
        after = 0
        while not stop():
            with self.engine.connect() as conn:
                roots = self._roots(conn, after, cutoff, policy.batch)
            if not roots:
                return
            after = roots[-1].id
            with self.engine.connect() as conn:
                transaction = conn.begin()
                try:
                    removed = self._batch(conn, roots, policy, cutoff, now, streams, logs, dry_run)
                finally:
                    if dry_run:
                        transaction.rollback()
                    else:
                        transaction.commit()
            deletions, deliveries, per_pipeline = removed
            report.deletions += deletions
            report.deliveries += deliveries
            for pipeline, count in per_pipeline.items():
                report.per_pipeline[pipeline] = report.per_pipeline.get(pipeline, 0) + count
            report.batches += 1
            if policy.pause:
                self.sleep(policy.pause)

    @staticmethod
    def _roots(conn: Connection, after: int, cutoff: datetime, batch: int) -> list[_Row]:
        query = (
            select(
                DELETION.c.id,
                DELETION.c.pipeline,
                DELETION.c.stream,
                DELETION.c.seen_at,
                DELETION.c.window_end,
            )
            .where(
                DELETION.c.id > after,
                DELETION.c.seen_at <= cutoff,
                DELETION.c.origin_delivery_id.is_(None),
                DELETION.c.echo_of_delivery_id.is_(None),
            )
            .order_by(DELETION.c.id)
            .limit(batch)
        )
        return [
            _Row(i, p, s, aware(seen), aware(end), False)
            for i, p, s, seen, end in conn.execute(query)
        ]

    def _batch(
        self,
        conn: Connection,
        roots: list[_Row],
        policy: RetentionPolicy,
        cutoff: datetime,
        now: datetime,
        streams: _Streams,
        logs: dict[str, int],
        dry_run: bool,
    ) -> tuple[int, int, dict[str, int]]:
        """One transaction: the batch's families read again and removed where whole."""
        family = _expand(conn, roots, cutoff, streams, _in_flight(conn), policy.readers)
        ok = {r.id for r in roots} - family.bad
        levels = family.members(lambda root: root in ok)
        deletions = deliveries = 0
        per_pipeline: dict[str, list[datetime]] = defaultdict(list)
        carried: dict[str, int] = defaultdict(int)
        by_id = {r.id: r for level in family.levels for r in level}
        for level in reversed(levels):
            if not level:
                continue
            deliveries += int(
                conn.execute(delete(DELIVERY).where(DELIVERY.c.deletion_id.in_(level))).rowcount
                or 0
            )
            deletions += int(
                conn.execute(delete(DELETION).where(DELETION.c.id.in_(level))).rowcount or 0
            )
            for deletion_id in level:
                row = by_id[deletion_id]
                per_pipeline[row.pipeline].append(row.seen_at)
                carried[row.pipeline] += family.delivery_count[deletion_id]
        if not dry_run:
            self._log(conn, per_pipeline, carried, policy, cutoff, now, logs)
        return deletions, deliveries, {p: len(seen) for p, seen in per_pipeline.items()}

    @staticmethod
    def _log(
        conn: Connection,
        per_pipeline: Mapping[str, list[datetime]],
        carried: Mapping[str, int],
        policy: RetentionPolicy,
        cutoff: datetime,
        now: datetime,
        logs: dict[str, int],
    ) -> None:
        """Counts added to this prune's row for each pipeline, in the batch's transaction."""
        for pipeline, seen in per_pipeline.items():
            first, last = min(seen), max(seen)
            if pipeline not in logs:
                logs[pipeline] = int(
                    conn.execute(
                        insert(LOG)
                        .values(
                            pipeline=pipeline,
                            pruned_at=now,
                            setting=policy.setting,
                            cutoff=cutoff,
                            deletions=0,
                            deliveries=0,
                            first_seen_at=first,
                            last_seen_at=last,
                        )
                        .returning(LOG.c.id)
                    ).scalar_one()
                )
            row = conn.execute(
                select(LOG.c.first_seen_at, LOG.c.last_seen_at).where(LOG.c.id == logs[pipeline])
            ).one()
            conn.execute(
                update(LOG)
                .where(LOG.c.id == logs[pipeline])
                .values(
                    deletions=LOG.c.deletions + len(seen),
                    deliveries=LOG.c.deliveries + carried[pipeline],
                    first_seen_at=min(first, aware(row[0]) or first),
                    last_seen_at=max(last, aware(row[1]) or last),
                )
            )

    def _jobs(self, cutoff: datetime, batch: int) -> Any:
        carried = select(DELIVERY.c.id).where(DELIVERY.c.job_id == JOB.c.id).exists()
        return (
            select(JOB.c.id)
            .where(
                JOB.c.phase.not_in([str(p) for p in OPEN_PHASES]),
                JOB.c.finished_at.is_not(None),
                JOB.c.finished_at <= cutoff,
                not_(carried),
            )
            .order_by(JOB.c.id)
            .limit(batch),
            JOB,
        )

    def _notices(self, cutoff: datetime, batch: int) -> Any:
        return (
            select(NOTICE.c.id)
            .where(or_(NOTICE.c.sent_at <= cutoff, NOTICE.c.gave_up_at <= cutoff))
            .order_by(NOTICE.c.id)
            .limit(batch),
            NOTICE,
        )

    def _runs(self, cutoff: datetime, batch: int) -> Any:
        newest = (
            select(func.max(RUN.c.id))
            .where(RUN.c.outcome != RunOutcome.RUNNING)
            .group_by(RUN.c.pipeline, RUN.c.kind)
        )
        newest_ok = (
            select(func.max(RUN.c.id))
            .where(RUN.c.outcome == RunOutcome.OK)
            .group_by(RUN.c.pipeline)
        )
        return (
            select(RUN.c.id)
            .where(
                RUN.c.outcome != RunOutcome.RUNNING,
                RUN.c.finished_at.is_not(None),
                RUN.c.finished_at <= cutoff,
                RUN.c.id.not_in(newest),
                RUN.c.id.not_in(newest_ok),
            )
            .order_by(RUN.c.id)
            .limit(batch),
            RUN,
        )

    def _simple(
        self,
        what: tuple[Any, Any],
        name: str,
        policy: RetentionPolicy,
        report: PruneReport,
        dry_run: bool,
        stop: Callable[[], bool],
    ) -> None:
        """Rows that go on their own (no family), a batch per transaction."""
        query, table = what
        if dry_run:
            with self.engine.connect() as conn:
                count = conn.execute(
                    select(func.count()).select_from(query.limit(None).subquery())
                ).scalar_one()
            setattr(report, name, int(count))
            return
        while not stop():
            with self.engine.begin() as conn:
                ids = list(conn.execute(query).scalars())
                if ids:
                    conn.execute(delete(table).where(table.c.id.in_(ids)))
            if not ids:
                return
            setattr(report, name, getattr(report, name) + len(ids))
            report.batches += 1
            if policy.pause:
                self.sleep(policy.pause)

    def give_back(self, pause: float, stop: Callable[[], bool] = lambda: False) -> None:
        """SQLite: return free pages to the file system a step at a time (a store made
        with auto_vacuum=INCREMENTAL; a no-op otherwise), then truncate the WAL. Each
        step is its own short write, outside any transaction."""
        while not stop():
            free = self._pragma("PRAGMA freelist_count")
            if not free or self._pragma("PRAGMA auto_vacuum") != 2:
                break
            self._script(f"PRAGMA incremental_vacuum({VACUUM_STEP});")
            if pause:
                self.sleep(pause)
        self._pragma("PRAGMA wal_checkpoint(TRUNCATE)")

    def _script(self, statement: str) -> None:
        """As a script: Python's sqlite3 steps an `incremental_vacuum` pragma once through
        `execute` (one page freed), through `executescript` to its end."""
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            driver.executescript(statement)
        finally:
            raw.close()

    def _pragma(self, statement: str) -> int:
        """A SQLite pragma on a connection of its own, in autocommit (the engine's own
        connections begin every statement with BEGIN IMMEDIATE)."""
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            rows = driver.execute(statement).fetchall()
            return int(rows[0][0]) if rows and rows[0] and rows[0][0] is not None else 0
        finally:
            raw.close()

    def vacuum(self) -> None:
        """Once, for a store made before auto_vacuum: rewrite the file with
        auto_vacuum=INCREMENTAL (holds the writer for the whole copy: stop daemons
        first). PostgreSQL: a plain VACUUM of the pruned tables (autovacuum does the same
        by itself)."""
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            if self.sqlite:
                driver.execute("PRAGMA auto_vacuum=INCREMENTAL")
                driver.execute("VACUUM")
                driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                driver.autocommit = True  # VACUUM refuses to run in a transaction
                for table in ("delivery", "deletion", "job", "run", "alert_notice"):
                    driver.execute(f"VACUUM (ANALYZE) {table}")
        finally:
            raw.close()


def prune_notes(engine: Engine, pipelines: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Per pipeline: what prunes removed, over which seen times, the last prune's time and
    setting (for `trace`, when a key is not, or not wholly, in the store)."""
    query = select(
        LOG.c.pipeline,
        func.sum(LOG.c.deletions),
        func.min(LOG.c.first_seen_at),
        func.max(LOG.c.last_seen_at),
        func.max(LOG.c.pruned_at),
    ).group_by(LOG.c.pipeline)
    if pipelines is not None:
        query = query.where(LOG.c.pipeline.in_(list(pipelines)))
    notes: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for pipeline, count, first, last, pruned_at in conn.execute(query.order_by(LOG.c.pipeline)):
            setting = conn.execute(
                select(LOG.c.setting)
                .where(LOG.c.pipeline == pipeline)
                .order_by(LOG.c.id.desc())
                .limit(1)
            ).scalar_one()
            notes.append(
                {
                    "pipeline": pipeline,
                    "deletions": int(count or 0),
                    "first_seen_at": _iso(first),
                    "last_seen_at": _iso(last),
                    "pruned_at": _iso(pruned_at),
                    "setting": setting,
                }
            )
    return notes


def _iso(value: datetime | None) -> str | None:
    moment = aware(value)
    return None if moment is None else moment.isoformat()


__all__ = ["PruneReport", "Retention", "RetentionPolicy", "prune_notes"]
