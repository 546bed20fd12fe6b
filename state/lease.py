"""The lease a run holds on its pipeline, and the fencing check every write makes.

A lease can be lost without its holder noticing: a process paused (SIGSTOP, a
long GC, a frozen VM) past its expiry while another daemon took the pipeline
over. So the holder's writes do not trust its memory: each one checks, in its
own transaction, that the lock row still names this owner and this epoch.
An expired lease nobody took is still ours: the check is "nobody else took it".
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from state.models import PipelineLock


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


def check_lease(s: Session, lease: Lease | None, *, lock_row: bool) -> None:
    """Raise LeaseLost unless the lock row still names this owner and epoch.

    `lock_row` takes the row's lock (PostgreSQL) so a takeover waits until this
    transaction is over: whatever it writes is written by the epoch's owner.
    """
    if lease is None:
        return
    row = s.get(
        PipelineLock,
        lease.pipeline,
        with_for_update={"read": True, "key_share": True} if lock_row else None,
    )
    if row is None or row.owner != lease.owner or row.epoch != lease.epoch:
        raise LeaseLost(lease, None if row is None else row.owner)
