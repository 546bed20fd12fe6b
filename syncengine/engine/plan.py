"""The plan: what a run would delete, found without changing anything anywhere.

The source is read the way a recovery reads it (a timestamp read; never
Goose's `latest`, which would move the server's cursor), nothing is
journaled, and each target answers read-only through `preview`. What the
journal already holds is left out of "new" but its due deliveries are
planned too: they are what the next run would send.

The guards give the run's verdicts: the legal hold from the same check, and the
mass-delete limits from the same function over the same counts the run's first
claim weighs (read from the store, plus the new deletions it would journal,
less those the legal hold protects), so a plan that says "delete" is not
followed by a run that holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

from connectors.contract import (
    Backfillable,
    ConnectorError,
    Delivery,
    InFlightCall,
    OutcomeKind,
    Previewable,
)
from state import ClaimedDelivery, Store
from state.models import utcnow
from syncengine.engine.guard import (
    count_population,
    legal_hold,
    mass_delete_limits,
    weighs_limits,
)
from syncengine.engine.pull import new_records, read_window, streams_to_read
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime

PLAN_MARKER = {"purpose": "plan: a read that moves no cursor"}


@dataclass
class PlannedItem:
    stream: str
    key: str
    action: str
    """delete | absent | skip | unmapped | legal hold | held | unknown"""
    detail: str = ""
    journaled: bool = False
    held_by: list[str] = field(default_factory=list)
    """For `held`: the limits (max_per_run, max_per_hour, max_fraction) that would hold it."""


@dataclass(frozen=True)
class Hold:
    """Why a run would hold every due delivery no operator approved."""

    limits: list[str]
    reasons: list[str]

    @property
    def detail(self) -> str:
        return f"held by {' and '.join(dict.fromkeys(self.limits))}: {'; '.join(self.reasons)}"


@dataclass
class TargetPlan:
    target: str
    items: list[PlannedItem] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for item in self.items if item.action == action)


@dataclass
class PipelinePlan:
    pipeline: str
    reads: list[dict[str, Any]] = field(default_factory=list)
    new: int = 0
    already_journaled: int = 0
    targets: list[TargetPlan] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def _preview(
    target: TargetRuntime,
    batch: list[Delivery],
    hold: Hold | None = None,
    approved: frozenset[int] = frozenset(),
) -> list[PlannedItem]:
    items: list[PlannedItem] = []
    allowed: list[Delivery] = []
    for delivery in batch:
        held = legal_hold(target.config.guard.legal_hold, target.target.key_match, delivery.fields)
        if held is not None:
            items.append(PlannedItem(delivery.stream, delivery.key, "legal hold", held))
        elif hold is not None and delivery.delivery_id not in approved:
            item = PlannedItem(delivery.stream, delivery.key, "held", hold.detail)
            item.held_by = list(hold.limits)
            items.append(item)
        else:
            allowed.append(delivery)
    if not target.capabilities.preview:
        items += [
            PlannedItem(d.stream, d.key, "delete", "this target cannot preview its keys")
            for d in allowed
        ]
        return items
    by_id = {d.delivery_id: d for d in allowed}
    previewer = cast(Previewable, target.target)
    size = max(1, target.target.batch_size)
    for start in range(0, len(allowed), size):
        chunk = allowed[start : start + size]
        for outcome in await previewer.preview(chunk):
            delivery = by_id[outcome.delivery_id]
            if outcome.kind is OutcomeKind.DEAD:
                action, detail = "unmapped", outcome.reason
            elif outcome.kind is OutcomeKind.RETRY:
                action, detail = "unknown", outcome.reason
            elif outcome.detail.startswith("would "):
                action, detail = "delete", outcome.detail
            else:
                action, detail = (
                    ("absent" if outcome.detail == "absent" else "skip"),
                    outcome.detail,
                )
            items.append(PlannedItem(delivery.stream, delivery.key, action, detail))
    return items


async def plan_pipeline(
    store: Store, pipe: PipelineRuntime, since: str | None = None
) -> PipelinePlan:
    """`since` plans a backfill from that time instead of the next run."""
    plan = PipelinePlan(pipe.name)
    fresh: list[Delivery] = []
    next_id = -1
    for stream in streams_to_read(store, pipe):
        cursor = store.cursor(pipe.name, stream)
        now = utcnow()
        if since is not None and isinstance(pipe.source, Backfillable):
            call = pipe.source.plan_backfill(stream, since, now)
        else:
            call = pipe.source.plan(stream, cursor.value, InFlightCall(now, PLAN_MARKER), now)
        plan.reads.append({"stream": stream, **dict(call.params)})
        try:
            page = await pipe.source.fetch(call)
        except ConnectorError as exc:
            plan.errors.append(f"{stream}: {exc}")
            continue
        known = store.known_keys(
            pipe.name, stream, new_records(pipe.source, page.records), read_window(call)
        )
        plan.already_journaled += len(known)
        for record in page.records:
            if record.key not in known and all(d.key != record.key for d in fresh):
                fresh.append(Delivery(next_id, stream, record.key, record.fields))
                next_id -= 1
    plan.new = len(fresh)
    for name, target in pipe.targets.items():
        due = store.due_deliveries(pipe.name, name)
        journaled = sorted(due + store.unsent_job_deliveries(pipe.name, name), key=lambda c: c.id)
        target_plan = TargetPlan(name)
        try:
            hold = await _hold(store, pipe.name, target, due, fresh)
            approved = frozenset(c.id for c in journaled if c.approved)
            planned_due = await _preview(
                target,
                [Delivery(c.id, c.stream, c.key, c.fields) for c in journaled],
                hold,
                approved,
            )
            for item in planned_due:
                item.journaled = True
            target_plan.items = planned_due + await _preview(target, fresh, hold)
        except ConnectorError as exc:
            plan.errors.append(f"{name}: {exc}")
        plan.targets.append(target_plan)
    return plan


async def _hold(
    store: Store,
    pipeline: str,
    target: TargetRuntime,
    due: list[ClaimedDelivery],
    fresh: list[Delivery],
) -> Hold | None:
    """The mass-delete verdict of the run's first claim: the counts the claim weighs
    (`store.guard_counts`), once the run has journaled the new deletions and the legal
    hold has taken out what it protects, as the claim does before weighing again."""
    guard = target.config.guard
    if not weighs_limits(guard):
        return None

    def protected(fields: Mapping[str, Any]) -> bool:
        return legal_hold(guard.legal_hold, target.target.key_match, fields) is not None

    counts = store.guard_counts(pipeline, target.name)
    weighed = (
        counts.due
        - sum(1 for c in due if not c.approved and protected(c.fields))
        + sum(1 for d in fresh if not protected(d.fields))
    )
    if weighed <= 0:
        return None
    population = await count_population(target)
    crossed = mass_delete_limits(guard, replace(counts, due=weighed), 0, population)
    if not crossed:
        return None
    return Hold([limit for limit, _ in crossed], [reason for _, reason in crossed])
