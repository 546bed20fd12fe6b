"""A stop request that work checks between batches, so a signal never cuts a batch."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from syncengine.logs import get_logger


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


class Shutdown:
    """SIGTERM and SIGINT as the README promises: the first asks the runs to stop at
    their next stop point (the batch being sent finishes and is recorded); the second
    cancels the runs in `tasks` at once (what they were sending is handed back to
    pending). Later signals change nothing: the cancelled runs are writing that down.

    Used as a context manager inside the event loop, which it installs the handlers on.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, stop: StopToken) -> None:
        self.stop = stop
        self.tasks: set[asyncio.Task[Any]] = set()
        self.received = 0
        self.log = get_logger("syncengine.shutdown")

    @property
    def forced(self) -> bool:
        """A second signal came: the runs were cancelled, not stopped."""
        return self.received > 1

    def cut(self, task: asyncio.Task[Any]) -> bool:
        """Whether `task` ended by this shutdown's cancellation, rather than the caller
        itself being cancelled (which must go on propagating)."""
        current = asyncio.current_task()
        return self.forced and task.cancelled() and (current is None or not current.cancelling())

    def __enter__(self) -> Shutdown:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.remove_signal_handler(sig)

    def _on_signal(self, signum: int) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            self.log.info("shutdown_requested", signal=name, running=len(self.tasks))
            self.stop.request(f"{name} received")
        elif self.received == 2:
            self.log.warning(
                "shutdown_forced",
                signal=name,
                cancelling=len(self.tasks),
                effect="the sends under way are cut and handed back to pending",
            )
            for task in self.tasks:
                task.cancel()
        else:
            self.log.warning("shutdown_in_progress", signal=name, running=len(self.tasks))
