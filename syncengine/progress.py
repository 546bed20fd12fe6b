"""Progress of a backfill: a live bar per target on a terminal, plain lines otherwise.

Read from the store while the backfill runs, so it shows what is really
recorded (the target's queue draining), not what the code hopes.
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from state import Store
from syncengine.engine.runtime import PipelineRuntime

WAITING = ("pending", "failed", "in_flight", "held")


class BackfillProgress:
    def __init__(self, store: Store, pipe: PipelineRuntime, console: Console) -> None:
        self.store = store
        self.pipe = pipe
        self.console = console
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._counts()

    def _counts(self) -> dict[str, dict[str, int]]:
        counts = {c.target: c.counts for c in self.store.delivery_counts(self.pipe.name)}
        return {t: counts.get(t, {}) for t in self.pipe.targets}

    def _progress(self) -> dict[str, tuple[int, int]]:
        """(delivered since the start, delivered + still waiting) per target."""
        now = self._counts()
        out = {}
        for target, counts in now.items():
            done = sum(counts.get(s, 0) for s in ("done", "dead")) - sum(
                self._start[target].get(s, 0) for s in ("done", "dead")
            )
            waiting = sum(counts.get(s, 0) for s in WAITING)
            out[target] = (done, done + waiting)
        return out

    def _live(self) -> None:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as bar:
            tasks = {
                t: bar.add_task(f"backfill {self.pipe.name} -> {t}", total=None)
                for t in self.pipe.targets
            }
            while not self._stop.wait(0.3):
                for target, (done, total) in self._progress().items():
                    bar.update(tasks[target], completed=done, total=max(total, 1))
            for target, (done, total) in self._progress().items():
                bar.update(tasks[target], completed=done, total=max(total, 1))

    def __enter__(self) -> BackfillProgress:
        if self.console.is_terminal:
            self._thread = threading.Thread(target=self._live, daemon=True)
            self._thread.start()
        else:
            self.console.print(f"backfill {self.pipe.name}: started", highlight=False)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            return
        for target, (done, total) in self._progress().items():
            self.console.print(
                f"backfill {self.pipe.name} -> {target}: {done} delivered or settled, "
                f"{total - done} waiting",
                highlight=False,
            )
