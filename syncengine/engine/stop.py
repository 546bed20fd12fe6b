"""A stop request that work checks between batches, so a signal never cuts a batch."""

from __future__ import annotations

import asyncio


class StopToken:
    def __init__(self, parent: StopToken | None = None) -> None:
        self._event = asyncio.Event()
        self._parent = parent
        self.reason = ""

    def child(self) -> StopToken:
        """A token for one run: stopped with its parent, or on its own (a lost lease)
        without stopping anything else."""
        return StopToken(parent=self)

    def request(self, reason: str = "stop requested") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def why(self) -> str:
        """The reason of whichever stop was requested, this token's or its parent's."""
        if self._event.is_set():
            return self.reason
        return self._parent.why() if self._parent is not None else ""

    def is_set(self) -> bool:
        return self._event.is_set() or (self._parent is not None and self._parent.is_set())

    async def wait(self) -> None:
        await self._event.wait()
