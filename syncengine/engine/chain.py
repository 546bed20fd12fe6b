"""A chained pipeline's source: another pipeline's target, read from the store.

What a target really deleted (its deliveries that ended `done`, not what was
asked) becomes a deletion of the chained pipeline, with the same stream, key
and fields and a link to the upstream delivery, so `trace` can follow one
record across hops. Deliveries that ended dead are never handed over.

There is no remote cursor to lose: the store is asked for done deliveries
whose key the chained pipeline has not journaled yet, so a crash between a
read and its journal simply reads them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from connectors.contract import JSON, InFlightCall, SourceCall, SourcePage, SourceRecord
from state import Store
from syncengine.config import TargetRef

PAGE = 500


class ChainSource:
    def __init__(self, pipeline: str, upstream: TargetRef, store: Store) -> None:
        self.pipeline = pipeline
        self.upstream = upstream
        self.store = store
        self._links: dict[tuple[str, str], int] = {}

    def streams(self) -> Sequence[str]:
        return self.store.lineage.streams_with_deliveries(
            self.upstream.pipeline, self.upstream.target
        )

    def plan(
        self,
        stream: str,
        cursor: JSON | None,
        interrupted: InFlightCall | None,
        now: datetime,
    ) -> SourceCall:
        return SourceCall(stream, {"chained_from": self.upstream.describe()}, now)

    async def fetch(self, call: SourceCall) -> SourcePage:
        handovers = await asyncio.to_thread(
            self.store.lineage.handovers,
            self.pipeline,
            self.upstream.pipeline,
            self.upstream.target,
            call.stream,
            PAGE,
        )
        self._links = {(call.stream, h.key): h.delivery_id for h in handovers}
        records = [SourceRecord(call.stream, h.key, h.fields) for h in handovers]
        cursor: JSON = {"chained_from": self.upstream.describe()}
        if handovers:
            cursor["last_delivery"] = handovers[-1].delivery_id
        return SourcePage(records, cursor, more=len(handovers) == PAGE)

    def link(self, record: SourceRecord) -> int | None:
        """The upstream delivery a record of the last page continues."""
        return self._links.get((record.stream, record.key))

    async def aclose(self) -> None:
        return None


__all__ = ["ChainSource"]
