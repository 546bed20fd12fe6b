"""Helpers for asynchronous targets: status tables, outcomes kept in a job handle.

The job protocol itself (`AsyncTarget`, `JobSpec`, `JobHandle`...) lives in
connectors.contract with the rest of the contract, and is re-exported here.

The engine writes a job row (with its batch and a client-chosen id) before
calling `submit`, so a crash at any point leaves a row to resume from. After
an interrupted submission the engine calls `find` first: a target whose API
lets it recognise its own job (ADT by operation-id, Reltio by the task's
parameters) adopts it instead of starting a second one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from connectors.contract import (
    AsyncTarget,
    Cancellable,
    CannotCancel,
    Delivery,
    JobHandle,
    JobProgress,
    JobSpec,
    JobState,
    Keep,
    Outcome,
    OutcomeKind,
    Resolving,
)


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


__all__ = [
    "AsyncTarget",
    "Cancellable",
    "CannotCancel",
    "JobHandle",
    "JobProgress",
    "JobSpec",
    "JobState",
    "Keep",
    "Resolving",
    "item_outcomes",
    "map_status",
    "outcome_from_json",
    "outcome_to_json",
]
