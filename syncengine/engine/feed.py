"""What the pull has journaled so far, told to the pushes that run alongside it.

A push that finds nothing due while the pull is still journaling waits for
the next committed page instead of ending; once the pull is over, an empty
claim ends it as before. Each push takes a `Mark` as a claim starts, so a page
committed while that claim runs is never missed: the claim either sees its
deliveries or the push is woken to claim again. Several pushes (one per
target) share one feed; none of them can make another miss a page.

The feed also takes the store calls of the pull and of those pushes in turn,
first come first served. SQLite has one writer and its busy handler sleeps and
tries again, so a claim could wait behind slice after slice of the journal;
here it waits for one at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Mark:
    pages: int
    pull_over: bool


class JournalFeed:
    def __init__(self) -> None:
        self._pages = 0
        self._closed = False
        self._changed = asyncio.Event()
        self._turn = asyncio.Lock()  # hands itself to its waiters in the order they came

    async def store_call(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`call` off the event loop, after the store calls asked for before it."""
        async with self._turn:
            return await asyncio.to_thread(call, *args, **kwargs)

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
