"""Keeping a run's lease alive from a thread of its own, and naming its holder.

The renewal must not wait for the run: not for the event loop, and not for a long
store call of the run (a journal of a big answer). So a plain thread renews it
every third of its time, through its own pooled connection, and tells the run
when another process has taken the pipeline over.

A lease is taken over before it expires only on proof that its holder is gone: its
pid absent here. A pid means something only in the PID namespace of the boot that
gave it (containers with host networking share a hostname, not their pids), so the
holder's name records its boot id and PID namespace, and a pid is looked up only
when both are ours. Where either cannot be read, nothing is taken over early.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from state import Lease, Store
from syncengine.logs import get_logger

UNKNOWN = "-"


def _boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    try:
        boot = Path(path).read_text().strip()
    except OSError:
        return UNKNOWN
    return boot if re.fullmatch(r"[0-9a-f-]{8,64}", boot) else UNKNOWN


def _pid_namespace(path: str = "/proc/self/ns/pid") -> str:
    """The namespace's inode ("pid:[4026531836]"): unique among the namespaces of one boot."""
    try:
        link = str(Path(path).readlink())
    except OSError:
        return UNKNOWN
    found = re.fullmatch(r"pid:\[(\d+)\]", link)
    return found.group(1) if found else UNKNOWN


HOST = socket.gethostname()
BOOT = _boot_id()
PID_NAMESPACE = _pid_namespace()


def owner_name(pid: int, boot: str = BOOT, pid_namespace: str = PID_NAMESPACE) -> str:
    """A lease holder's name: `host:pid:nonce:boot id:PID namespace`."""
    return f"{HOST}:{pid}:{uuid.uuid4().hex[:8]}:{boot}:{pid_namespace}"


@dataclass(frozen=True)
class Holder:
    """A lease holder's name read back (see `owner_name`): the one place it is parsed."""

    host: str
    pid: int
    nonce: str
    boot: str
    pid_namespace: str


def parse_owner(owner: str) -> Holder | None:
    """The parts of a holder's name; None for a name of another form (an older version's)."""
    parts = owner.split(":")
    if len(parts) != 5 or not parts[1].isdigit():
        return None
    host, pid, nonce, boot, pid_namespace = parts
    return Holder(host, int(pid), nonce, boot, pid_namespace)


def holder_is_gone(holder: str | None) -> bool:
    """Proof that a lease's holder no longer exists (SIGKILL, OOM), so waiting for its
    expiry would only delay recovery: a process of this host, this boot and this PID
    namespace, whose pid is absent. Anything less (another namespace, an unreadable
    one, a name without them) is no proof, and the lease runs to its expiry."""
    found = None if holder is None else parse_owner(holder)
    if found is None:
        return False
    here = (HOST, BOOT, PID_NAMESPACE)
    if UNKNOWN in here or (found.host, found.boot, found.pid_namespace) != here:
        return False
    if found.pid == os.getpid():
        return False
    try:
        os.kill(found.pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


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
