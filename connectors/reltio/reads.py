"""Reads the Reltio target and the task source share: is an entity still there, asked
for many entities a few at a time.

Only Reltio's own "object not found" (404 errorCode 101) means gone; any
other answer that is not a success is an error about that entity, kept with
it so one unreadable entity never passes for a deleted one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from connectors.contract import FatalError, RemoteError, RetriableError
from connectors.kit.paths import path_segment
from connectors.reltio.auth import ReltioClient, is_not_found

CONCURRENCY = 8
"""Lookups and re-checks in flight at once (each is one GET)."""

T = TypeVar("T")


async def entity_present(api: ReltioClient, uri: str) -> bool:
    """True when `GET <uri>` finds the entity, False on 404 errorCode 101. `uri` is an
    `entities/<id>` that `entity_uri` accepted, so its id is one safe segment."""
    kind, _, entity_id = uri.partition("/")
    path = f"/{kind}/{path_segment(entity_id)}"
    response = await api.call("GET", path, idempotent=True)
    if is_not_found(response):
        return False
    if not response.is_success:
        raise api.remote(f"GET {path}", response)
    return True


async def gather(
    keys: Sequence[str], work: Callable[[str], Awaitable[T]], concurrency: int = CONCURRENCY
) -> dict[str, T | RemoteError]:
    """work(key) for every key, a few at a time. A RemoteError stays with its key;
    the first FatalError or RetriableError stops new work and is raised once the work
    under way has ended (a FatalError first, since no retry fixes it), so what that work
    did is never lost. Any other error is raised the same way, before those."""
    results: dict[str, T | RemoteError] = {}
    stopped: list[Exception] = []
    slots = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        async with slots:
            if stopped:
                return
            try:
                results[key] = await work(key)
            except RemoteError as exc:
                results[key] = exc
            except Exception as exc:
                stopped.append(exc)

    await asyncio.gather(*(one(key) for key in keys))
    if stopped:
        raise min(stopped, key=_urgency)
    return results


def _urgency(error: Exception) -> int:
    """Which error a stopped gather raises: an unexpected one, then FatalError, then the
    first RetriableError."""
    return 2 if isinstance(error, RetriableError) else 1 if isinstance(error, FatalError) else 0


__all__ = ["CONCURRENCY", "entity_present", "gather"]
