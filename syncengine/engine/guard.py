"""Checks made before anything is sent to a target: legal hold, then the
mass-delete guard.

A protected key is never sent: its delivery becomes dead with the reason,
and the check runs again before every send, so a retry by hand cannot slip
past it. Over a mass-delete limit, every due delivery not approved by an
operator is held: nothing is sent and nothing is lost until someone runs
`syncengine approve` or `reject`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from connectors.keys import KeyTemplate, UnmappedKey
from state import OutcomeRecord, Store
from state.models import utcnow
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime


@dataclass
class GuardReport:
    protected: int = 0
    held: int = 0
    reasons: list[str] = field(default_factory=list)


async def _population(target: TargetRuntime) -> int | None:
    count = getattr(target.target, "population", None)
    if count is None:
        return None
    value = await count()
    return int(value) if value is not None else None


def apply_legal_hold(store: Store, pipe: PipelineRuntime, target: TargetRuntime) -> int:
    hold = target.config.guard.legal_hold
    if hold is None:
        return 0
    template = KeyTemplate(hold.key)
    protected = []
    for delivery in store.due_deliveries(pipe.name, target.name):
        try:
            key = template.render(delivery.fields)
        except UnmappedKey:
            continue
        pattern = next((p for p in hold.patterns if fnmatchcase(key, p)), None)
        if pattern is not None:
            protected.append(
                OutcomeRecord(
                    delivery.id, "dead", reason=f"legal hold: key {key!r} matches {pattern!r}"
                )
            )
    if protected:
        store.record_outcomes(protected, target.rule)
    return len(protected)


async def review(
    store: Store, pipe: PipelineRuntime, target: TargetRuntime, log: Any
) -> GuardReport:
    report = GuardReport(protected=apply_legal_hold(store, pipe, target))
    if report.protected:
        log.warning("legal_hold_applied", protected=report.protected)
    guard = target.config.guard
    due = store.count_due_unapproved(pipe.name, target.name)
    if not due:
        return report
    if guard.max_per_run is not None and due > guard.max_per_run:
        report.reasons.append(f"{due} deletions due, max_per_run is {guard.max_per_run}")
    if guard.max_per_hour is not None:
        recent = store.count_done_since(pipe.name, target.name, utcnow() - timedelta(hours=1))
        if recent + due > guard.max_per_hour:
            report.reasons.append(
                f"{recent} done in the last hour + {due} due exceeds max_per_hour "
                f"{guard.max_per_hour}"
            )
    if guard.max_fraction is not None:
        population = await _population(target)
        if population is not None and population > 0 and due / population > guard.max_fraction:
            report.reasons.append(
                f"{due} of the target's {population} records ({due / population:.0%}) exceeds "
                f"max_fraction {guard.max_fraction:.0%}"
            )
    if report.reasons:
        reason = "guard: " + "; ".join(report.reasons)
        report.held = store.hold_due(pipe.name, target.name, reason)
        log.error(
            "alert_guard_tripped",
            held=report.held,
            reasons=report.reasons,
            hint=f"inspect with `syncengine held`, then `syncengine approve --pipeline {pipe.name} "
            f"--target {target.name} --count {report.held}` or `syncengine reject`",
        )
    return report
