"""The plan: what a run would delete, found without changing anything anywhere.

The source is read the way a recovery reads it (a timestamp read; never
Goose's `latest`, which would move the server's cursor), nothing is
journaled, and each target answers read-only through `preview`. What the
journal already holds is left out of "new" but its due deliveries are
planned too: they are what the next run would send.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, cast

from connectors.contract import (
    Backfillable,
    ConnectorError,
    Delivery,
    InFlightCall,
    OutcomeKind,
    Previewable,
)
from state import Store
from state.models import utcnow
from syncengine.engine.guard import legal_hold
from syncengine.engine.pull import new_records, read_window, streams_to_read
from syncengine.engine.runtime import PipelineRuntime, TargetRuntime

PLAN_MARKER = {"purpose": "plan: a read that moves no cursor"}


@dataclass
class PlannedItem:
    stream: str
    key: str
    action: str
    """delete | absent | skip | unmapped | legal hold | unknown"""
    detail: str = ""
    journaled: bool = False


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


async def _preview(target: TargetRuntime, batch: list[Delivery]) -> list[PlannedItem]:
    items: list[PlannedItem] = []
    allowed: list[Delivery] = []
    for delivery in batch:
        held = legal_hold(target.config.guard.legal_hold, target.target.key_match, delivery.fields)
        if held is not None:
            items.append(PlannedItem(delivery.stream, delivery.key, "legal hold", held))
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
        due = [
            Delivery(c.id, c.stream, c.key, c.fields) for c in store.due_deliveries(pipe.name, name)
        ]
        target_plan = TargetPlan(name)
        try:
            planned_due = await _preview(target, due)
            for item in planned_due:
                item.journaled = True
            target_plan.items = planned_due + await _preview(target, fresh)
        except ConnectorError as exc:
            plan.errors.append(f"{name}: {exc}")
        plan.targets.append(target_plan)
    return plan
