"""What the pull has journaled so far, told to the pushes that run alongside it.

A push that finds nothing due while the pull is still journaling waits for
the next committed page instead of ending; once the pull is over, an empty
claim ends it as before. Each push takes a `Mark` as a claim starts, so a page
committed while that claim runs is never missed: the claim either sees its
deliveries or the push is woken to claim again. Several pushes (one per
target) share one feed; none of them can make another miss a page.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    pages: int
    pull_over: bool


class JournalFeed:
    def __init__(self) -> None:
        self._pages = 0
        self._closed = False
        self._changed = asyncio.Event()

    def journaled(self) -> None:
        """A page and its deliveries are committed."""
        self._pages += 1
        self._wake()

    def close(self) -> None:
        """The pull is over: nothing more will be journaled in this run."""
        self._closed = True
        self._wake()

    def mark(self) -> Mark:
        return Mark(self._pages, self._closed)

    async def wait(self, since: Mark) -> None:
        """Until a page is committed after `since` was taken, or the pull is over."""
        while self._pages == since.pages and not self._closed:
            await self._changed.wait()

    def _wake(self) -> None:
        # A fresh event per change: every waiter of the old one wakes and checks again.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
