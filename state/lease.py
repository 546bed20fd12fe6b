"""The lease a run holds on its pipeline, and the fencing check every write makes.

A lease can be lost without its holder noticing: a process paused (SIGSTOP, a
long GC, a frozen VM) past its expiry while another daemon took the pipeline
over. So the holder's writes do not trust its memory: each one checks, in its
own transaction, that the lock row still names this owner and this epoch.
An expired lease nobody took is still ours: the check is "nobody else took it".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col
from sqlmodel import select as select_rows

from state.base import PIPELINE_LOCK, StoreBase
from state.models import PipelineLock, utcnow

LOCK_WAIT_MS = 2000
"""How long taking a lease waits for its holder's write in progress before calling it held."""
LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's lock_timeout error."""


@dataclass(frozen=True)
class Lease:
    """One owner's hold on one pipeline; `epoch` grows each time the lease changes hands."""

    pipeline: str
    owner: str
    epoch: int


class LeaseLost(Exception):
    """Another process took the pipeline over: this holder must send and record nothing
    more (what it left in flight, the new owner releases and sends again)."""

    def __init__(self, lease: Lease, holder: str | None) -> None:
        super().__init__(
            f"pipeline {lease.pipeline}: lease epoch {lease.epoch} lost to "
            f"{holder or 'nobody (released)'}"
        )
        self.lease = lease


_HOLDER = select(PIPELINE_LOCK.c.owner, PIPELINE_LOCK.c.epoch).where(
    PIPELINE_LOCK.c.pipeline == bindparam("b_pipeline")
)
_HOLDER_LOCKED = _HOLDER.with_for_update(read=True, key_share=True)


def check_lease(s: Session | Connection, lease: Lease | None, *, lock_row: bool) -> None:
    """Raise LeaseLost unless the lock row still names this owner and epoch.

    `lock_row` takes the row's lock (PostgreSQL) so a takeover waits until this
    transaction is over: whatever it writes is written by the epoch's owner.
    """
    if lease is None:
        return
    query = _HOLDER_LOCKED if lock_row else _HOLDER
    row = s.execute(query, {"b_pipeline": lease.pipeline}).first()
    if row is None or row.owner != lease.owner or row.epoch != lease.epoch:
        raise LeaseLost(lease, None if row is None else row.owner)


class Leases(StoreBase):
    """The pipeline locks: one holder per pipeline at a time, its lease renewed on a timer."""

    def acquire_lock(
        self,
        pipeline: str,
        owner: str,
        ttl: float,
        now: datetime | None = None,
        replace: str | None = None,
    ) -> Lease | None:
        """Take or renew the pipeline's lease; None while another owner holds it.

        `replace` names a holder proven dead (the engine checks its pid, where it
        shares the holder's boot and PID namespace), whose unexpired lease may be
        taken over. Changing hands moves the epoch
        on; the same owner keeps its epoch. The row lock (FOR UPDATE) waits for
        the old holder's fenced writes in progress, which hold it shared.
        """
        now = now or utcnow()
        expires = now + timedelta(seconds=ttl)
        try:
            return self._acquire(pipeline, owner, now, expires, replace)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                return None  # its holder is in the middle of a fenced write: held
            raise

    def _acquire(
        self, pipeline: str, owner: str, now: datetime, expires: datetime, replace: str | None
    ) -> Lease | None:
        with self._tx() as s:
            if self.locks_rows:
                s.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT_MS}ms'"))
            lock = s.get(PipelineLock, pipeline, with_for_update=self.locks_rows)
            if lock is None:
                s.add(
                    PipelineLock(
                        pipeline=pipeline, owner=owner, expires_at=expires, epoch=1, acquired_at=now
                    )
                )
                return Lease(pipeline, owner, 1)
            if lock.owner not in (owner, replace) and lock.expires_at > now:
                return None
            if lock.owner != owner or lock.expires_at <= now:
                lock.acquired_at = now
            if lock.owner != owner:
                lock.epoch += 1
            lock.owner = owner
            lock.expires_at = expires
            return Lease(pipeline, owner, lock.epoch)

    def renew_lease(self, lease: Lease, ttl: float, now: datetime | None = None) -> bool:
        """Extend a held lease; False when another owner (or epoch) holds it now.

        A plain UPDATE, which PostgreSQL lets run beside this owner's own fenced
        writes (they hold the row KEY SHARE): renewal never waits behind a long
        transaction of its own holder.
        """
        expires = (now or utcnow()) + timedelta(seconds=ttl)
        with self._tx() as s:
            result = s.execute(
                update(PipelineLock)
                .where(
                    col(PipelineLock.pipeline) == lease.pipeline,
                    col(PipelineLock.owner) == lease.owner,
                    col(PipelineLock.epoch) == lease.epoch,
                )
                .values(expires_at=expires)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release_lock(self, pipeline: str, owner: str) -> None:
        """Let the lease go at once. The row stays, expired, so the epoch never goes
        back: a paused holder of an older epoch can never match it again."""
        with self._tx() as s:
            lock = s.get(PipelineLock, pipeline, with_for_update=self.locks_rows)
            if lock is not None and lock.owner == owner:
                lock.expires_at = utcnow()

    def leases(self, now: datetime | None = None, *, released: bool = False) -> list[PipelineLock]:
        """The leases held now (unexpired), one per pipeline under way somewhere;
        `released` adds the expired ones, whose row names the last holder."""
        now = now or utcnow()
        with Session(self.engine) as s:
            rows = select_rows(PipelineLock).where(col(PipelineLock.pipeline) != "__healthz__")
            if not released:
                rows = rows.where(col(PipelineLock.expires_at) > now)
            return list(s.exec(rows.order_by(col(PipelineLock.pipeline))).all())

    def lock_holder(self, pipeline: str, now: datetime | None = None) -> str | None:
        now = now or utcnow()
        with Session(self.engine) as s:
            lock = s.get(PipelineLock, pipeline)
            return lock.owner if lock is not None and lock.expires_at > now else None
