"""A stop request that work checks between batches, so a signal never cuts a batch."""

from __future__ import annotations

import asyncio


class StopToken:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()
