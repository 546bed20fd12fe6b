"""What the task sources (DMM executions, Reltio tasks) share: one stream per remote
task, `<prefix><id>`, read once the task has ended.

A stream name always maps back to exactly one task, and a name this source did
not make is refused instead of read as some other task. A task source only ever
reads: a call whose answer was lost is made again as it was, and the journal
drops what the first one had already journaled.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, ClassVar

from connectors.contract import (
    JSON,
    AmbiguousError,
    InFlightCall,
    RetriableError,
    SourceCall,
    SourcePage,
)
from connectors.kit.source import ConnectionT, HttpSource, SettingsT, joined


def _same(task_id: str) -> str:
    return task_id


class TaskStreams:
    def __init__(
        self,
        source: str,
        prefix: str,
        what: str,
        problem: Callable[[str], str | None],
        normal: Callable[[str], str] = _same,
    ) -> None:
        """`problem` says why an id cannot name a task; `normal` writes an id one way only,
        so the same task registered twice (`007`, `7`) is one stream."""
        self.source = source
        self.prefix = prefix
        self.what = what
        self.problem = problem
        self.normal = normal

    def stream(self, task_id: str) -> str:
        """The stream of a task; ValueError, for the operator, when the id names none."""
        problem = self.problem(task_id)
        if problem is not None:
            raise ValueError(f"{self.source}: {problem}")
        return f"{self.prefix}{self.normal(task_id)}"

    def task_id(self, stream: str) -> str:
        """The task a stream reads; ValueError for a stream this source never named."""
        task_id = stream.removeprefix(self.prefix)
        if (
            not stream.startswith(self.prefix)
            or self.problem(task_id) is not None
            or self.normal(task_id) != task_id
        ):
            raise ValueError(
                f"{self.source}: stream {stream!r} is not a {self.what} stream ({self.prefix}<id>)"
            )
        return task_id

    @staticmethod
    def finished(cursor: dict[str, Any] | None) -> bool:
        return cursor is not None and cursor.get("finished") is True


class TaskSourceBase(HttpSource[ConnectionT, SettingsT]):
    """A source with one stream per remote task, its answers read in bounded pages.

    A subclass names its streams (`naming`), the tasks its settings list (`listed`)
    and reads one task (`read`); `param` is the task id's name in a call's params.
    """

    param: ClassVar[str]

    @abstractmethod
    def naming(self) -> TaskStreams: ...

    @cached_property
    def _streams(self) -> TaskStreams:
        return self.naming()

    @abstractmethod
    def listed(self) -> Sequence[str]:
        """The task ids the settings list."""

    @abstractmethod
    def read(
        self, stream: str, task_id: str, params: Mapping[str, Any]
    ) -> AsyncGenerator[SourcePage, None]:
        """One task's answer, in pages of at most CHUNK_RECORDS records."""

    def read_params(self, cursor: JSON | None) -> dict[str, Any]:
        """What a call needs besides the task id, from the stream's cursor."""
        return {}

    # -- Source, StreamingSource and TaskSource ---------------------------------------

    def streams(self) -> Sequence[str]:
        return [self.task_stream(task) for task in self.listed()]

    def task_stream(self, task_id: str) -> str:
        """The stream of a task; ValueError (for the operator) when `task_id` names none."""
        return self._streams.stream(task_id)

    def task_id(self, stream: str) -> str:
        return self._streams.task_id(stream)

    def finished(self, cursor: JSON | None) -> bool:
        return self._streams.finished(cursor)

    def plan(
        self, stream: str, cursor: JSON | None, interrupted: InFlightCall | None, now: datetime
    ) -> SourceCall:
        """The read the cursor points at. An interrupted call needs no recovery window:
        nothing is consumed, the same params read the same answer again."""
        params = {self.param: self.task_id(stream), **self.read_params(cursor)}
        return SourceCall(stream=stream, params=params, started_at=now.astimezone(UTC))

    async def fetch(self, call: SourceCall) -> SourcePage:
        return await joined(self.fetch_pages(call))

    async def fetch_pages(self, call: SourceCall) -> AsyncGenerator[SourcePage, None]:
        task_id = str(call.params.get(self.param) or self.task_id(call.stream))
        try:
            async with aclosing(self.read(call.stream, task_id, call.params)) as pages:
                async for page in pages:
                    yield page
        except AmbiguousError as exc:
            # Only reads were sent: whatever happened to the answer, nothing changed.
            raise RetriableError(
                str(exc), connection=self.name, retry_after=exc.retry_after
            ) from None


__all__ = ["TaskSourceBase", "TaskStreams"]
