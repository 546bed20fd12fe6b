"""What every HTTP source shares: its client, and answers handed over in bounded pages.

A source's answer can be far larger than memory should hold (a million-row Goose
answer, a DMM log zip, a Reltio task naming thousands of entities). Each source
turns its answer into records one at a time and gives them to `Pages`, which
hands back a `partial` page every `size` records; the answer's last page carries
the cursor. The engine journals each page as it comes (see `StreamingSource`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import Generic, TypeVar

from connectors.contract import (
    CHUNK_RECORDS,
    JSON,
    RejectedRecord,
    SourcePage,
    SourceRecord,
)
from connectors.kit.http import HttpClient

ConnectionT = TypeVar("ConnectionT")
SettingsT = TypeVar("SettingsT")


class Pages:
    """Records gathered into pages of at most `size` (records and rejects together)."""

    def __init__(self, size: int = CHUNK_RECORDS) -> None:
        self.size = size
        self.records: list[SourceRecord] = []
        self.rejected: list[RejectedRecord] = []
        self.handed = 0
        """Records (not rejects) in the pages handed out so far and in the one being filled."""

    def add(self, item: SourceRecord | RejectedRecord) -> SourcePage | None:
        """A full page to hand out once `item` fills one, else None."""
        if isinstance(item, SourceRecord):
            self.records.append(item)
            self.handed += 1
        else:
            self.rejected.append(item)
        if len(self.records) + len(self.rejected) < self.size:
            return None
        return self.flush()

    def flush(self) -> SourcePage | None:
        """What is gathered as a page before it is full (a page of large rows), or None."""
        if not self.records and not self.rejected:
            return None
        page = SourcePage(records=self.records, rejected=self.rejected, cursor={}, partial=True)
        self.records, self.rejected = [], []
        return page

    def last(self, cursor: JSON, *, more: bool = False, problem: str = "") -> SourcePage:
        """The answer's last page: what is left, with the cursor that follows the answer."""
        return SourcePage(
            records=self.records,
            rejected=self.rejected,
            cursor=cursor,
            more=more,
            problem=problem,
        )


async def joined(pages: AsyncGenerator[SourcePage, None]) -> SourcePage:
    """A paged answer as one page (for `fetch`, which `plan` uses to preview a call)."""
    records: list[SourceRecord] = []
    rejected: list[RejectedRecord] = []
    last: SourcePage | None = None
    async with aclosing(pages) as each:
        async for last in each:
            records.extend(last.records)
            rejected.extend(last.rejected)
    assert last is not None, "a paged answer ends with its last page or raises"
    return replace(last, records=records, rejected=rejected)


class HttpSource(Generic[ConnectionT, SettingsT]):
    """A source reading one connection over one HTTP client, which it closes."""

    def __init__(
        self,
        name: str,
        connection: ConnectionT,
        settings: SettingsT,
        *,
        http: HttpClient | None = None,
    ) -> None:
        self.name = name
        self.connection = connection
        self.settings = settings
        self.http = http or self.client()
        self.opened()

    def client(self) -> HttpClient:
        """The client built from the connection when none is given (tests give one)."""
        raise NotImplementedError

    def opened(self) -> None:
        """What a source builds on its client at once (an API wrapper that registers the
        connection's secrets for scrubbing before anything can be logged)."""

    async def aclose(self) -> None:
        await self.http.aclose()


__all__ = ["HttpSource", "Pages", "joined"]
