"""How a task source names its streams: one stream per remote task, `<prefix><id>`.

Shared by the task sources (DMM executions, Reltio tasks) so that a stream
name always maps back to exactly one task, and a name this source did not
make is refused instead of read as some other task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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


__all__ = ["TaskStreams"]
