"""The contract for asynchronous targets: submit a fixed batch as a job, poll it.

The engine writes a job row (with its batch and a client-chosen id) before
calling `submit`, so a crash at any point leaves a row to resume from. After
an interrupted submission the engine calls `find` first: a target whose API
lets it recognise its own job (ADT by operation-id, Reltio by the task's
parameters) adopts it instead of starting a second one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from connectors.contract import Delivery, KeyMatch, Outcome, OutcomeKind


class JobState(enum.StrEnum):
    """A small set every API's statuses map onto; `terminal` says polling ends."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def map_status(
    raw: str, table: Mapping[str, JobState], default: JobState = JobState.RUNNING
) -> JobState:
    """Map an API's status string; unknown strings are treated as still running
    (never as success), so a new vendor status can only delay, not lose."""
    return table.get(raw.strip().upper(), default)


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    """An outcome decided before submission, as JSON for the job handle: the engine
    stores the handle and gives it back at every poll, after any restart."""
    data: dict[str, Any] = {"kind": outcome.kind.value}
    if outcome.reason:
        data["reason"] = outcome.reason
    if outcome.detail:
        data["detail"] = outcome.detail
    if outcome.retry_after is not None:
        data["retry_after"] = outcome.retry_after
    if outcome.effect:
        data["effect"] = outcome.effect
    return data


def outcome_from_json(delivery_id: int, data: Any) -> Outcome:
    """The stored outcome again; one that cannot be read is retried, never assumed done."""
    if not isinstance(data, dict) or data.get("kind") not in {k.value for k in OutcomeKind}:
        return Outcome.retry(delivery_id, f"unreadable outcome in the job handle: {data!r}")
    retry_after = data.get("retry_after")
    return Outcome(
        delivery_id,
        OutcomeKind(data["kind"]),
        reason=str(data.get("reason", "")),
        retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
        detail=str(data.get("detail", "")),
        effect=str(data.get("effect", "")),
    )


def item_outcomes(
    items: Sequence[Delivery],
    settled: Any,
    keys: Mapping[str, str],
    by_key: Mapping[str, Outcome],
    missing: str,
) -> list[Outcome]:
    """One outcome per item of a finished job: the one decided before submission (stored
    in the handle as `settled`, by delivery id), else the fate of the key it carried
    (`keys`: delivery id -> key), else a retry saying `missing`: never assumed done."""
    decided = settled if isinstance(settled, dict) else {}
    outcomes = []
    for d in items:
        ident = str(d.delivery_id)
        if ident in decided:
            outcomes.append(outcome_from_json(d.delivery_id, decided[ident]))
        elif ident in keys and keys[ident] in by_key:
            outcomes.append(replace(by_key[keys[ident]], delivery_id=d.delivery_id))
        else:
            outcomes.append(Outcome.retry(d.delivery_id, missing))
    return outcomes


@dataclass(frozen=True)
class JobSpec:
    """The job as recorded before submission: its id, the client-chosen id and the
    batch it carries. The batch never changes once the row is written."""

    job_id: int
    client_id: str
    items: Sequence[Delivery]


@dataclass(frozen=True)
class JobHandle:
    """What identifies the remote job once it exists."""

    remote_id: str
    state: JobState = JobState.QUEUED
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobProgress:
    """One poll. `outcomes` is set once the job is terminal: one per item."""

    state: JobState
    outcomes: Sequence[Outcome] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)
    poll_after: float | None = None
    message: str = ""
    artifacts: Mapping[str, bytes] = field(default_factory=dict)
    """Files worth keeping with the job (a DMM log zip); the engine stores them
    beside the state and records a pointer, connectors never write files."""


class CannotCancel(Exception):
    """The API offers no way to cancel this kind of job; the message says why."""


@runtime_checkable
class AsyncTarget(Protocol):
    batch_size: int
    kind: str
    key_match: KeyMatch

    async def submit(self, job: JobSpec) -> JobHandle:
        """Start the remote job. Raises AmbiguousError when the answer was lost."""
        ...

    async def find(self, job: JobSpec) -> JobHandle | None:
        """After an interrupted submit: the remote job this spec started, if any."""
        ...

    async def poll(self, job: JobSpec, handle: JobHandle) -> JobProgress: ...

    async def cancel(self, handle: JobHandle) -> None:
        """Ask the API to stop the job, or raise CannotCancel."""
        ...

    async def aclose(self) -> None: ...
