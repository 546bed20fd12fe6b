"""Keeping a run's lease alive from a thread of its own.

The renewal must not wait for the run: not for the event loop, and not for a long
store call of the run (a journal of a big answer). So a plain thread renews it
every third of its time, through its own pooled connection, and tells the run
when another process has taken the pipeline over.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from state import Lease, Store
from syncengine.logs import get_logger


class LeaseKeeper:
    def __init__(
        self, store: Store, lease: Lease, ttl: float, on_lost: Callable[[str], None]
    ) -> None:
        """`on_lost` is called once, from the keeper's thread, when the lease is gone."""
        self.store = store
        self.lease = lease
        self.ttl = ttl
        self.on_lost = on_lost
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, name=f"lease-{lease.pipeline}", daemon=True
        )
        self.log = get_logger(pipeline=lease.pipeline)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Blocks until a renewal in progress ends: call it off the event loop."""
        self._stopped.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stopped.wait(self.ttl / 3):
            try:
                held = self.store.renew_lease(self.lease, self.ttl)
            except Exception as exc:  # a failed renewal is retried; the lease has time left
                self.log.warning("lease_renewal_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            if not held:
                self.log.error(
                    "lease_lost",
                    epoch=self.lease.epoch,
                    reason="another process took the pipeline over",
                )
                self.on_lost("pipeline lease taken over by another process")
                return
