"""What `status` and the run summary show, as plain data first, rendered second.

Only the store is read; nothing here holds or prints a secret (cursor
markers hold call parameters, which connectors keep free of credentials).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from state import DeletionNode, DeliveryNode, QueueAge, Store
from state.admin import StoreInfo
from state.models import (
    Deletion,
    Delivery,
    DeliveryStatus,
    PipelineLock,
    TargetHealth,
    utcnow,
)
from syncengine.config import Config
from syncengine.engine import RunReport
from syncengine.engine.lease import parse_owner
from syncengine.engine.plan import PipelinePlan
from syncengine.engine.push import PushReport
from syncengine.health import send_state

STATUSES = [s.value for s in DeliveryStatus]


def _age(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = int((now - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def collect_lease(lock: PipelineLock | None, now: datetime) -> dict[str, Any] | None:
    """Who runs the pipeline now (`held`), or who ran it last; None: it never ran.
    A lease is held for the length of a run: between runs a daemon holds none."""
    if lock is None:
        return None
    holder = parse_owner(lock.owner)
    return {
        "held": lock.expires_at > now,
        "owner": lock.owner,
        "host": holder.host if holder else lock.owner,
        "pid": holder.pid if holder else None,
        "since": _when(lock.acquired_at),
        "epoch": lock.epoch,
        "expires_at": _when(lock.expires_at),
    }


def collect_target_health(
    health: TargetHealth | None, ages: QueueAge | None, stall_after: float, now: datetime
) -> dict[str, Any]:
    """How the target's queue and sends stand: the oldest delivery still waiting and the
    oldest held, and whether its sends get through (`failing` since a run got nothing
    through; `stalled` once that lasts longer than `health.stall_after`)."""
    failing_since = health.failing_since if health is not None else None
    state = send_state(health, stall_after, now)
    return {
        "oldest_waiting_at": _when(ages.oldest_waiting if ages else None),
        "oldest_waiting_age": _age(ages.oldest_waiting if ages else None, now),
        "oldest_held_at": _when(ages.oldest_held if ages else None),
        "oldest_held_age": _age(ages.oldest_held if ages else None, now),
        "sends": state,
        "failing_since": _when(failing_since),
        "failed_runs": health.failed_runs if health is not None else 0,
        "last_ok_at": _when(health.last_ok_at if health is not None else None),
        "last_error": health.last_error if health is not None else "",
    }


def collect_status(store: Store, config: Config, pipeline: str | None = None) -> dict[str, Any]:
    now = utcnow()
    counts = {(c.pipeline, c.target): c.counts for c in store.delivery_counts(pipeline)}
    leases = {lock.pipeline: lock for lock in store.leases(now, released=True)}
    ages = {(a.pipeline, a.target): a for a in store.queue_ages(pipeline)}
    health = {(h.pipeline, h.target): h for h in store.target_health(pipeline)}
    stall_after = config.health.stall_after
    pipelines = []
    for name, pipe in config.pipelines.items():
        if pipeline is not None and name != pipeline:
            continue
        last = store.last_run(name)
        malformed = store.malformed_counts(name)
        streams = [
            {
                "stream": c.stream,
                "cursor": c.value,
                "in_flight_since": c.in_flight_since.isoformat() if c.in_flight_since else None,
                "last_success_at": c.last_success_at.isoformat() if c.last_success_at else None,
                "recoveries": c.recoveries,
                "last_recovery_at": c.last_recovery_at.isoformat() if c.last_recovery_at else None,
                "last_recovery": c.last_recovery,
                "consecutive_errors": c.consecutive_errors,
                "last_error": c.last_error,
                "malformed": malformed.get(c.stream, 0),
            }
            for c in store.cursors(name)
        ]
        targets = [
            {
                "target": t,
                **{s: counts.get((name, t), {}).get(s, 0) for s in STATUSES},
                **collect_target_health(
                    health.get((name, t)), ages.get((name, t)), stall_after, now
                ),
            }
            for t in pipe.targets
        ]
        pipelines.append(
            {
                "pipeline": name,
                "source": pipe.source.describe(),
                "enabled": pipe.enabled,
                "schedule": pipe.schedule.describe(),
                "lease": collect_lease(leases.get(name), now),
                "deletions": store.deletion_count(name),
                "streams": streams,
                "targets": targets,
                "last_run": None
                if last is None
                else {
                    "id": last.id,
                    "kind": last.kind,
                    "started_at": last.started_at.isoformat(),
                    "finished_at": last.finished_at.isoformat() if last.finished_at else None,
                    "age": _age(last.started_at, now),
                    "outcome": last.outcome,
                    "pulled": last.pulled,
                    "delivered": last.delivered,
                    "retried": last.retried,
                    "dead": last.dead,
                    "error": last.error,
                },
            }
        )
    return {
        "generated_at": now.isoformat(),
        "pipelines": pipelines,
        "jobs": collect_jobs(store, pipeline=pipeline, open_only=True),
    }


def collect_jobs(
    store: Store, *, pipeline: str | None = None, open_only: bool = True
) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "id": job.id,
            "pipeline": job.pipeline,
            "target": job.target,
            "kind": job.kind,
            "remote_id": job.remote_id,
            "phase": job.phase,
            "state": job.state,
            "items": job.items,
            "created_at": job.created_at.isoformat(),
            "age": _age(job.created_at, now),
            "next_poll_at": job.next_poll_at.isoformat() if job.next_poll_at else None,
            "error": job.error,
        }
        for job in store.jobs(pipeline=pipeline, open_only=open_only)
    ]


def collect_deliveries(
    store: Store,
    *,
    pipeline: str | None = None,
    target: str | None = None,
    status: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    return delivery_rows(
        store.deliveries(pipeline=pipeline, target=target, status=status, limit=limit)
    )


def delivery_rows(rows: list[tuple[Delivery, Deletion]]) -> list[dict[str, Any]]:
    now = utcnow()
    return [delivery_row(d, e, now) for d, e in rows]


def delivery_row(d: Delivery, e: Deletion, now: datetime) -> dict[str, Any]:
    """One delivery as `dlq list`, `held` and `deliveries list` show it. `reason` is why it
    is not done: the last failure, the guard's reason when held, why it died."""
    return {
        "id": d.id,
        "pipeline": d.pipeline,
        "target": d.target,
        "stream": e.stream,
        "key": e.record_key,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
        "reason": d.last_error,
        "detail": d.detail,
        "job_id": d.job_id,
        "created_at": d.created_at.isoformat(),
        "age": _age(d.created_at, now),
        "updated_at": d.updated_at.isoformat(),
        "fields": e.fields,
    }


class DeliveryPage:
    """One page of `deliveries list`, read from the store while it is printed: the
    rows are streamed (a chunk at a time), and one row past the page says whether
    there is a next one, whose `--after` is `next_after` once the page is read."""

    def __init__(
        self,
        store: Store,
        *,
        pipeline: str | None,
        target: str | None,
        status: str | None,
        after: int,
        limit: int,
    ) -> None:
        self.store = store
        self.pipeline, self.target, self.status = pipeline, target, status
        self.after = after
        self.limit = limit
        self.shown = 0
        self.next_after: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        now = utcnow()
        last = None
        rows = self.store.page(
            pipeline=self.pipeline,
            target=self.target,
            status=self.status,
            after=self.after,
            limit=self.limit + 1,
        )
        for delivery, deletion in rows:
            if self.shown == self.limit:
                self.next_after = last
                return
            yield delivery_row(delivery, deletion, now)
            self.shown += 1
            last = delivery.id


def write_delivery_page(page: DeliveryPage, write: Callable[[str], object]) -> None:
    """The page as one JSON object, `{"deliveries": [...], "next_after": id or null}`,
    written a row at a time."""
    write('{\n  "deliveries": [')
    for n, row in enumerate(page):
        body = textwrap.indent(json.dumps(row, indent=2, default=str), "    ")
        write(("," if n else "") + "\n" + body)
    write(("\n  " if page.shown else "") + "],\n")
    write(f'  "next_after": {json.dumps(page.next_after)}\n}}\n')


TABLE_ROWS = 500
"""Rows per table of a long text page: a table is laid out whole, so a page of a
million rows is printed as tables of this many, each with its header."""


def render_delivery_page(
    page: DeliveryPage, console: Console, next_command: Callable[[int], str]
) -> None:
    rows: list[dict[str, Any]] = []
    for row in page:
        rows.append(row)
        if len(rows) == TABLE_ROWS:
            _delivery_table(rows, console)
            rows = []
    if rows or not page.shown:
        _delivery_table(rows, console)
    console.print(f"{page.shown} deliveries", highlight=False)
    if page.next_after is not None:
        console.print(
            f"next page: {next_command(page.next_after)}", highlight=False, soft_wrap=True
        )


def _delivery_table(rows: list[dict[str, Any]], console: Console) -> None:
    now = utcnow()
    table = Table(
        "id",
        "pipeline",
        "target",
        "stream",
        "key",
        "status",
        "attempts",
        "next attempt",
        "reason",
        "job",
        "age",
    )
    for row in rows:
        due = row["next_attempt_at"]
        waiting = row["status"] == "failed" and due is not None
        table.add_row(
            str(row["id"]),
            row["pipeline"],
            row["target"],
            # Keys, streams and reasons are text, never rich markup (see render_deliveries).
            Text(row["stream"]),
            Text(row["key"]),
            row["status"],
            str(row["attempts"]),
            _until(datetime.fromisoformat(due), now) if waiting else "-",
            Text((row["detail"] if row["status"] == "done" else row["reason"]) or "-"),
            f"#{row['job_id']}" if row["job_id"] is not None else "-",
            row["age"],
        )
    console.print(table)


def _until(when: datetime, now: datetime) -> str:
    seconds = int((when - now).total_seconds())
    if seconds <= 0:
        return "due now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"in {seconds // size}{unit}"
    return f"in {seconds}s"


def render_deliveries(rows: list[dict[str, Any]], console: Console, title: str) -> None:
    table = Table("id", "pipeline", "target", "stream", "key", "attempts", "reason", title=title)
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["pipeline"],
            row["target"],
            # What a source or target wrote is text, never rich markup: a key or an id
            # like `[abc]` would otherwise vanish from the table.
            Text(row["stream"]),
            Text(row["key"]),
            str(row["attempts"]),
            Text(row["reason"] or ""),
        )
    console.print(table)
    console.print(f"{len(rows)} deliveries")


def render_jobs(jobs: list[dict[str, Any]], console: Console, title: str) -> None:
    table = Table(
        "job", "pipeline", "target", "kind", "remote id", "status", "age", "items", title=title
    )
    for job in jobs:
        table.add_row(
            f"#{job['id']}",
            job["pipeline"],
            job["target"],
            job["kind"],
            job["remote_id"] or "-",
            job["state"] or job["phase"],
            job["age"],
            str(job["items"]),
        )
    console.print(table)


def render_store_info(info: StoreInfo, console: Console) -> None:
    say = console.print
    say(f"store: {info.where} ({info.backend})", highlight=False)
    if info.revision is None:
        say("schema: none (a new store: the first command that opens it creates it)")
        return
    behind = f" (behind {info.head}: run `syncengine state migrate`)" if info.behind else ""
    say(f"schema: revision {info.revision}{behind}", highlight=False)
    if info.size_bytes is not None:
        say(f"size: {info.size_bytes:,} bytes", highlight=False)
    counts = ", ".join(f"{status} {n:,}" for status, n in sorted(info.deliveries.items()))
    say(f"deletions: {info.deletions:,}; deliveries: {counts or 'none'}", highlight=False)
    say(f"open jobs: {info.open_jobs:,}", highlight=False)
    now = utcnow()
    for lease in info.leases:
        live = "held" if lease.expires_at > now else "expired"
        say(
            f"lease {lease.pipeline}: {live} by {lease.owner} (epoch {lease.epoch}, "
            f"until {lease.expires_at:%Y-%m-%d %H:%M:%S} UTC)",
            highlight=False,
        )


def _since(when: str | None, now: datetime) -> str:
    """How long the oldest has waited: "12m" (or "-" when nothing waits). `lag` is the
    oldest waiting delivery's age: how late the target is on its deletions."""
    return "-" if when is None else _age(datetime.fromisoformat(when), now).removesuffix(" ago")


def _lease_line(lease: dict[str, Any] | None) -> str:
    if lease is None:
        return "not running (never run)"
    pid = f" pid {lease['pid']}" if lease["pid"] is not None else ""
    since = lease["since"][:19].replace("T", " ") + " UTC" if lease["since"] else "-"
    until = datetime.fromisoformat(lease["expires_at"])
    if not lease["held"]:
        return (
            f"not running; last run by {lease['host']}{pid} (lease epoch {lease['epoch']}, "
            f"released {until:%Y-%m-%d %H:%M:%S} UTC)"
        )
    return (
        f"running on {lease['host']}{pid} since {since} "
        f"(lease epoch {lease['epoch']}, renewed until {until:%H:%M:%S} UTC)"
    )


def render_status(data: dict[str, Any], console: Console) -> None:
    now = utcnow()
    for pipe in data["pipelines"]:
        last = pipe["last_run"]
        headline = f"[bold]{pipe['pipeline']}[/bold]  from {pipe['source']}  {pipe['schedule']}"
        if not pipe["enabled"]:
            headline += "  (disabled)"
        if last is None:
            headline += "  never run"
        else:
            headline += f"  last run #{last['id']} {last['age']}: {last['outcome']}"
            if last["error"]:
                headline += f" ({last['error']})"
        console.print(headline)
        console.print(f"  {_lease_line(pipe['lease'])}", highlight=False)
        streams = Table(
            "stream", "cursor", "in flight", "last success", "recoveries", "errors", "malformed"
        )
        for s in pipe["streams"]:
            since = datetime.fromisoformat(s["in_flight_since"]) if s["in_flight_since"] else None
            ok = datetime.fromisoformat(s["last_success_at"]) if s["last_success_at"] else None
            rec = str(s["recoveries"])
            if s["last_recovery_at"]:
                rec += f" (last {_age(datetime.fromisoformat(s['last_recovery_at']), now)})"
            streams.add_row(
                s["stream"],
                ", ".join(f"{k}={v}" for k, v in (s["cursor"] or {}).items()) or "-",
                f"since {_age(since, now)}" if since else "-",
                _age(ok, now),
                rec,
                f"{s['consecutive_errors']}: {s['last_error']}"
                if s["consecutive_errors"]
                else s["last_error"] or "-",
                str(s["malformed"]),
            )
        if pipe["streams"]:
            console.print(streams)
        targets = Table("target", *STATUSES, "lag", "held for", "sends")
        for t in pipe["targets"]:
            targets.add_row(
                t["target"],
                *(str(t[s]) for s in STATUSES),
                _since(t["oldest_waiting_at"], now),
                _since(t["oldest_held_at"], now),
                t["sends"] or "-",
            )
        console.print(targets)
        for t in pipe["targets"]:
            if t["failing_since"]:
                failing = _age(datetime.fromisoformat(t["failing_since"]), now)
                console.print(
                    Text(
                        f"  {t['target']}: {t['sends']}: nothing got through since {failing} "
                        f"({t['failed_runs']} run(s)); last error: {t['last_error'] or '-'}"
                    )
                )
    if data["jobs"]:
        render_jobs(data["jobs"], console, "open jobs")


def failures_line(pipeline: str, target: str, push: PushReport) -> Text:
    """Per target that failed sends: how many did not get through, by class, and the
    first reason (plain text: a reason may hold brackets that are not markup)."""
    classes = ", ".join(f"{cls} {n}" for cls, n in sorted(push.failures.items()))
    line = Text(f"{pipeline} -> {target}: ")
    if push.nothing_through:
        line.append("nothing got through", style="red")
        line.append(": ")
    line.append(f"{push.not_through} failed", style="yellow")
    line.append(f" ({classes}); first: {push.first_error}")
    return line


def render_summary(reports: list[RunReport], store: Store, console: Console) -> None:
    """The end-of-run table: what each pipeline pulled and each target received."""
    table = Table(title="syncengine run summary")
    for column in (
        "pipeline",
        "target",
        "outcome",
        "pulled",
        "duplicates",
        "delivered",
        "retry later",
        "dead",
        "held",
        "waiting",
    ):
        table.add_column(
            column, justify="left" if column in ("pipeline", "target", "outcome") else "right"
        )
    counts = {(c.pipeline, c.target): c.counts for c in store.delivery_counts()}
    for report in reports:
        first = True
        for target, push in report.targets.items() or {"-": None}.items():
            waiting = counts.get((report.pipeline, target), {})
            table.add_row(
                report.pipeline if first else "",
                target,
                report.outcome.value if first else "",
                str(report.pull.pulled) if first else "",
                str(report.pull.duplicates) if first else "",
                str(push.done) if push else "-",
                str(push.retried) if push else "-",
                str(push.dead) if push else "-",
                str(waiting.get("held", 0)),
                str(sum(waiting.get(s, 0) for s in ("pending", "failed", "in_flight"))),
            )
            first = False
    console.print(table)
    for report in reports:
        if report.error:
            console.print(f"[red]{report.pipeline}[/red]: {report.error}")
        for target, push in report.targets.items():
            if push.failures:
                console.print(
                    failures_line(report.pipeline, target, push), highlight=False, soft_wrap=True
                )
            if push.jobs:
                more = f"; and {push.more_jobs} more" if push.more_jobs else ""
                console.print(f"{report.pipeline} -> {target}: jobs {'; '.join(push.jobs)}{more}")
            open_jobs = [
                j
                for j in store.jobs(pipeline=report.pipeline, open_only=True)
                if j.target == target
            ]
            for job in open_jobs:
                console.print(
                    f"{report.pipeline} -> {target}: job #{job.id} {job.remote_id or ''} still "
                    f"{job.state or job.phase}; followed by the next run"
                )
        if report.pull.echoes:
            console.print(
                f"{report.pipeline}: {report.pull.echoes} deletion(s) reported back by the source "
                "were made by this engine itself: journaled, not propagated again"
            )
        for stream, problem in report.pull.problems.items():
            console.print(f"[yellow]{report.pipeline}[/yellow] {stream}: {problem}")
        for stream, count in report.pull.malformed.items():
            console.print(
                f"[yellow]{report.pipeline}[/yellow] {stream}: {count} malformed record(s) the "
                "source sent could not be used; the rest of the answer went on. They are dead "
                "letters with the reason: syncengine dlq list --error malformed",
                highlight=False,
            )
        if report.pull.recoveries:
            console.print(
                f"{report.pipeline}: recovered {report.pull.recoveries} interrupted source call(s) "
                "by re-reading their window"
            )


def render_plans(plans: list[PipelinePlan], console: Console) -> None:
    for plan in plans:
        reads = "; ".join(", ".join(f"{k}={v}" for k, v in read.items()) for read in plan.reads)
        console.print(
            f"[bold]{plan.pipeline}[/bold]: "
            + (f"read {reads}" if reads else "no stream to read yet")
            + f": {plan.new} new deletion(s), {plan.already_journaled} already journaled",
            highlight=False,
        )
        for error in plan.errors:
            console.print(f"  [red]error[/red]: {error}", highlight=False)
        for target in plan.targets:
            counts = ", ".join(
                f"{target.count(a)} {a}"
                for a in ("delete", "absent", "skip", "unmapped", "legal hold", "held", "unknown")
                if target.count(a)
            )
            table = Table(
                "stream",
                "key",
                "action",
                "detail",
                title=f"-> {target.target}: {counts or 'nothing'}",
            )
            for item in target.items:
                table.add_row(Text(item.stream), Text(item.key), item.action, Text(item.detail))
            if target.items:
                console.print(table)
            else:
                console.print(f"  -> {target.target}: nothing to do")
    console.print("Plan only: nothing was journaled, sent or moved.")


def collect_trace(store: Store, key: str, pipeline: str | None = None) -> list[DeletionNode]:
    """Every path the key is on, each from the deletion where it was first seen."""
    roots = dict.fromkeys(store.lineage.root(i) for i in store.lineage.find(key, pipeline))
    trees = [store.lineage.tree(root) for root in roots]
    return [t for t in trees if t is not None]


def collect_pruned(
    store: Store, pipeline: str | None, trees: list[DeletionNode]
) -> list[dict[str, Any]]:
    """What prunes removed of the pipelines a trace concerns (the one asked for, those its
    paths pass through, or every pipeline when nothing was found): a key not found, or
    found only in part, may have been among them."""
    from state.retention import prune_notes

    pipelines: set[str] | None = None
    if pipeline is not None:
        pipelines = {pipeline}
    elif trees:
        pipelines = set()
        stack = list(trees)
        while stack:
            node = stack.pop()
            pipelines.add(node.pipeline)
            for delivery in node.deliveries:
                stack.extend(delivery.continued)
    return prune_notes(store.engine, pipelines)


def render_pruned(notes: list[dict[str, Any]], console: Console, found: bool) -> None:
    lead = "earlier deletions may have been pruned" if found else "it may have been pruned"
    console.print(f"{lead}:", highlight=False)
    for note in notes:
        console.print(
            f"  {note['pipeline']}: {note['deletions']:,} deletions seen "
            f"{_day(note['first_seen_at'])} to {_day(note['last_seen_at'])} were pruned, "
            f"last at {_day(note['pruned_at'])} under {note['setting']}",
            highlight=False,
        )


def _day(iso: str | None) -> str:
    return "-" if iso is None else iso[:19].replace("T", " ")


def _delivery_label(d: DeliveryNode) -> str:
    what = d.detail if d.status == "done" else d.reason
    label = f"-> [bold]{d.target}[/bold]: {d.status}" + (f", {what}" if what else "")
    if d.job is not None:
        label += (
            f"  (job #{d.job['id']} {d.job['kind']} {d.job['remote_id'] or '-'} "
            f"{d.job['state'] or d.job['phase']})"
        )
    return label


def _deletion_label(node: DeletionNode, how: str) -> str:
    origin = f" ({node.origin})" if node.origin else ""
    return (
        f"{how}[bold]{node.pipeline}[/bold] {node.stream} {node.key}{origin}, "
        f"journaled {node.seen_at[:19].replace('T', ' ')}"
    )


def render_trace(trees: list[DeletionNode], console: Console) -> None:
    from rich.tree import Tree

    def grow(branch: Tree, node: DeletionNode) -> None:
        for delivery in node.deliveries:
            child = branch.add(_delivery_label(delivery), highlight=False)
            for next_hop in delivery.continued:
                grow(
                    child.add(_deletion_label(next_hop, "carried on by "), highlight=False),
                    next_hop,
                )
            for echo in delivery.echoes:
                child.add(
                    _deletion_label(echo, "reported back to ")
                    + ": made by this engine, not propagated again",
                    highlight=False,
                )

    for node in trees:
        root = Tree(_deletion_label(node, "seen in "), highlight=False)
        grow(root, node)
        console.print(root)
