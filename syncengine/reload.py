"""What a configuration reload (SIGHUP) changes: which pipelines are new, gone or
different, judged by everything a pipeline's run depends on.

A pipeline is different when its own block changed, or a connection it uses, or the
lease every run takes: it is rebuilt for its next run. The rest keep their objects,
their HTTP clients and their schedule as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from syncengine.config import Config, PipelineConfig


@dataclass(frozen=True)
class ConfigChange:
    added: list[str]
    removed: list[str]
    changed: list[str]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _connections(pipe: PipelineConfig) -> set[str]:
    used = {target.connection for target in pipe.targets.values()}
    if pipe.source.connection is not None:
        used.add(pipe.source.connection)
    return used


def _depends_on(config: Config, name: str) -> tuple[Any, ...]:
    pipe = config.pipelines[name]
    connections = {c: config.connections[c] for c in sorted(_connections(pipe))}
    return (pipe, connections, config.state.lease)


def running(config: Config, only: str | None) -> set[str]:
    """The pipelines a daemon runs under `config` (as `build_runtime` chooses them)."""
    return {
        name
        for name, pipe in config.pipelines.items()
        if (only is None and pipe.enabled) or name == only
    }


def diff(old: Config, new: Config, only: str | None = None) -> ConfigChange:
    before, after = running(old, only), running(new, only)
    return ConfigChange(
        added=sorted(after - before),
        removed=sorted(before - after),
        changed=sorted(
            name for name in before & after if _depends_on(old, name) != _depends_on(new, name)
        ),
    )


def refused(old: Config, new: Config) -> list[str]:
    """What a reload cannot change while the daemon runs: the store it writes to."""
    if new.state.url != old.state.url or new.state.artifacts != old.state.artifacts:
        return ["state: the store cannot change while the daemon runs; restart the daemon"]
    return []


__all__ = ["ConfigChange", "diff", "refused", "running"]
