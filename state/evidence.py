"""Reading the journal as evidence of erasure: every deletion a source reported in a
period and what each target did with it, for `syncengine report`.

A report may cover millions of deletions while a daemon keeps writing, so it is read
in keyset pages over (seen_at, id), each page a short read of its own: memory is one
page, whatever the period, and no transaction stays open for the length of an
export (a long one would keep SQLite's WAL from being checkpointed and PostgreSQL's
vacuum from reclaiming rows). Pages are taken in the order sources reported them;
a deletion journaled while the report runs, inside the period, is read if its page
has not been passed yet.

A chained pipeline's deletion continues an upstream delivery (`origin_delivery_id`):
each row says which hop it is and names the first deletion of its path, so the same
record deleted in Reltio and then in the ERP reads as one story. Ancestors are looked
up per page, a level at a time, through a bounded cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.engine import Connection, Engine, Row
from sqlmodel import SQLModel

from state.base import DELETION, DELIVERY
from state.lineage import MAX_DEPTH

JOB = SQLModel.metadata.tables["job"]

PAGE = 500
"""Deletions per page: one page's rows are all a report holds (and under the bound-
parameter limits of both databases, for the look-ups keyed by the page's ids)."""

ANCESTRY_CACHE = 20_000
"""Ancestries remembered across pages: the upstream deletions of a period are mostly
the same few recent ones, so each is read once; the bound keeps memory flat."""


@dataclass(frozen=True)
class EvidenceFilter:
    since: datetime | None = None
    """Deletions the source reported at or after this (deletion.seen_at), aware."""
    until: datetime | None = None
    """... and before this (half-open)."""
    pipeline: str | None = None
    target: str | None = None
    """Only deliveries to targets of this name (and deletions that have one)."""
    key: str | None = None
    """A glob pattern (`*`, `?`) on the record key or its origin name, ASCII case
    ignored on both databases."""


@dataclass(frozen=True)
class Ancestry:
    """Where a deletion stands on its path: hop 1 is where a source first reported it."""

    hop: int
    upstream_delivery_id: int | None
    upstream_pipeline: str | None
    upstream_target: str | None
    source_deletion_id: int
    source_pipeline: str
    source_key: str
    source_origin: str | None
    source_seen_at: datetime


@dataclass(frozen=True)
class EvidenceDelivery:
    id: int
    target: str
    status: str
    attempts: int
    reason: str
    detail: str
    effect: str | None
    finished_at: datetime | None
    updated_at: datetime
    job_id: int | None
    job_kind: str | None
    job_client_id: str | None
    job_remote_id: str | None
    job_state: str | None


@dataclass(frozen=True)
class Echoed:
    """The delivery of this engine that a source reported back (an echo)."""

    delivery_id: int
    pipeline: str
    target: str


@dataclass(frozen=True)
class EvidenceRow:
    """One deletion and one of its deliveries (None: the deletion has none, an echo)."""

    deletion_id: int
    pipeline: str
    stream: str
    key: str
    origin: str | None
    fields: dict[str, Any]
    seen_at: datetime
    run_id: int | None
    rejected: str | None
    ancestry: Ancestry
    echo_of: Echoed | None
    delivery: EvidenceDelivery | None


def like_pattern(glob: str) -> str:
    """A glob (`*` any run, `?` one character) as a LIKE pattern escaped with `\\`, in
    lower case: LIKE's own wildcards and the escape in a key are matched literally."""
    escaped = glob.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


_DELETION_COLUMNS = (
    DELETION.c.id,
    DELETION.c.pipeline,
    DELETION.c.stream,
    DELETION.c.record_key,
    DELETION.c.origin,
    DELETION.c.fields,
    DELETION.c.seen_at,
    DELETION.c.run_id,
    DELETION.c.rejected,
    DELETION.c.origin_delivery_id,
    DELETION.c.echo_of_delivery_id,
)


class Evidence:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ancestry: OrderedDict[int, Ancestry] = OrderedDict()

    def rows(self, where: EvidenceFilter, page: int = PAGE) -> Iterator[EvidenceRow]:
        """Every matching deletion with each of its deliveries, in the order sources
        reported them (seen_at, then id), read a page at a time."""
        after: tuple[datetime, int] | None = None
        while True:
            with self.engine.connect() as conn:
                deletions = conn.execute(self._page(where, after, page)).all()
                if not deletions:
                    return
                deliveries = self._deliveries(conn, [d.id for d in deletions], where.target)
                links = self._links(
                    conn,
                    [
                        link
                        for d in deletions
                        for link in (d.origin_delivery_id, d.echo_of_delivery_id)
                        if link is not None
                    ],
                )
                ancestries = self._ancestries(conn, deletions, links)
            for d in deletions:
                echo = links.get(d.echo_of_delivery_id) if d.echo_of_delivery_id else None
                base = dict(
                    deletion_id=d.id,
                    pipeline=d.pipeline,
                    stream=d.stream,
                    key=d.record_key,
                    origin=d.origin,
                    fields=dict(d.fields or {}),
                    seen_at=d.seen_at,
                    run_id=d.run_id,
                    rejected=d.rejected,
                    ancestry=ancestries[d.id],
                    echo_of=None if echo is None else Echoed(echo.id, echo.pipeline, echo.target),
                )
                found = deliveries.get(d.id)
                if not found:
                    if where.target is None:
                        yield EvidenceRow(**base, delivery=None)
                    continue
                for delivery in found:
                    yield EvidenceRow(**base, delivery=delivery)
            if len(deletions) < page:
                return
            last = deletions[-1]
            after = (last.seen_at, last.id)

    def _page(
        self, where: EvidenceFilter, after: tuple[datetime, int] | None, page: int
    ) -> Select[Any]:
        query = select(*_DELETION_COLUMNS)
        seen = DELETION.c.seen_at
        if where.since is not None:
            query = query.where(seen >= where.since)
        if where.until is not None:
            query = query.where(seen < where.until)
        if where.pipeline is not None:
            query = query.where(DELETION.c.pipeline == where.pipeline)
        if where.target is not None:
            query = query.where(
                exists().where(
                    DELIVERY.c.deletion_id == DELETION.c.id, DELIVERY.c.target == where.target
                )
            )
        if where.key is not None:
            pattern = like_pattern(where.key)
            query = query.where(
                or_(
                    func.lower(DELETION.c.record_key).like(pattern, escape="\\"),
                    func.lower(DELETION.c.origin).like(pattern, escape="\\"),
                )
            )
        if after is not None:
            query = query.where(
                or_(seen > after[0], and_(seen == after[0], DELETION.c.id > after[1]))
            )
        return query.order_by(seen, DELETION.c.id).limit(page)

    def _deliveries(
        self, conn: Connection, deletion_ids: Sequence[int], target: str | None
    ) -> dict[int, list[EvidenceDelivery]]:
        d, j = DELIVERY.c, JOB.c
        query = (
            select(
                d.deletion_id,
                d.id,
                d.target,
                d.status,
                d.attempts,
                d.last_error,
                d.detail,
                d.effect,
                d.finished_at,
                d.updated_at,
                d.job_id,
                j.kind,
                j.client_id,
                j.remote_id,
                j.state,
            )
            .select_from(DELIVERY.outerjoin(JOB, j.id == d.job_id))
            .where(d.deletion_id.in_(deletion_ids))
            .order_by(d.deletion_id, d.id)
        )
        if target is not None:
            query = query.where(d.target == target)
        found: dict[int, list[EvidenceDelivery]] = {}
        for r in conn.execute(query):
            found.setdefault(r.deletion_id, []).append(
                EvidenceDelivery(
                    r.id,
                    r.target,
                    r.status,
                    r.attempts,
                    r.last_error or "",
                    r.detail or "",
                    r.effect,
                    r.finished_at,
                    r.updated_at,
                    r.job_id,
                    r.kind,
                    r.client_id,
                    r.remote_id,
                    r.state,
                )
            )
        return found

    def _links(self, conn: Connection, delivery_ids: Sequence[int]) -> dict[int, Row[Any]]:
        """Linked deliveries (upstream or echoed) with the deletion each carried."""
        if not delivery_ids:
            return {}
        query = (
            select(
                DELIVERY.c.id,
                DELIVERY.c.pipeline,
                DELIVERY.c.target,
                *[c.label(f"up_{c.name}") for c in _DELETION_COLUMNS],
            )
            .join(DELETION, DELETION.c.id == DELIVERY.c.deletion_id)
            .where(DELIVERY.c.id.in_(sorted(set(delivery_ids))))
        )
        return {r.id: r for r in conn.execute(query)}

    def _ancestries(
        self, conn: Connection, deletions: Sequence[Row[Any]], links: dict[int, Row[Any]]
    ) -> dict[int, Ancestry]:
        """Each deletion's place on its path. The upstream deletions are read a level
        at a time for the whole page (one query per level), stopping where the cache
        knows the rest; a link to a delivery no longer stored ends the path there."""
        nodes = {d.id: _Node.of(d) for d in deletions}
        parents: dict[int, tuple[Row[Any], int]] = {}
        """deletion id -> (the upstream delivery it continues, that delivery's deletion)"""
        climbing = [n for n in nodes.values() if n.link is not None and not self._known(n.id)]
        for _ in range(MAX_DEPTH):
            if not climbing:
                break
            wanted = [n.link for n in climbing if n.link is not None and n.link not in links]
            links = links | self._links(conn, wanted)
            above: list[_Node] = []
            for node in climbing:
                link = links.get(node.link) if node.link is not None else None
                if link is None:
                    continue
                parent = _Node.of(link, prefix="up_")
                parents[node.id] = (link, parent.id)
                if parent.id not in nodes:
                    nodes[parent.id] = parent
                    if parent.link is not None and not self._known(parent.id):
                        above.append(parent)
            climbing = above
        return {d.id: self._resolve(d.id, nodes, parents, 0) for d in deletions}

    def _resolve(
        self,
        deletion_id: int,
        nodes: dict[int, _Node],
        parents: dict[int, tuple[Row[Any], int]],
        depth: int,
    ) -> Ancestry:
        known = self._ancestry.get(deletion_id)
        if known is not None:
            self._ancestry.move_to_end(deletion_id)
            return known
        node = nodes[deletion_id]
        if deletion_id not in parents or depth >= MAX_DEPTH:
            found = Ancestry(1, None, None, None, node.id, node.pipeline, node.key, node.origin,
                             node.seen_at)  # fmt: skip
        else:
            link, parent_id = parents[deletion_id]
            up = self._resolve(parent_id, nodes, parents, depth + 1)
            found = Ancestry(
                up.hop + 1,
                link.id,
                link.pipeline,
                link.target,
                up.source_deletion_id,
                up.source_pipeline,
                up.source_key,
                up.source_origin,
                up.source_seen_at,
            )
        self._ancestry[deletion_id] = found
        if len(self._ancestry) > ANCESTRY_CACHE:
            self._ancestry.popitem(last=False)
        return found

    def _known(self, deletion_id: int) -> bool:
        return deletion_id in self._ancestry


@dataclass(frozen=True)
class _Node:
    """What a deletion's ancestry needs of its row."""

    id: int
    pipeline: str
    key: str
    origin: str | None
    seen_at: datetime
    link: int | None

    @classmethod
    def of(cls, row: Row[Any], prefix: str = "") -> _Node:
        m = row._mapping
        return cls(
            m[f"{prefix}id"],
            m[f"{prefix}pipeline"],
            m[f"{prefix}record_key"],
            m[f"{prefix}origin"],
            m[f"{prefix}seen_at"],
            m[f"{prefix}origin_delivery_id"],
        )


__all__ = [
    "Ancestry",
    "Echoed",
    "Evidence",
    "EvidenceDelivery",
    "EvidenceFilter",
    "EvidenceRow",
    "like_pattern",
]
