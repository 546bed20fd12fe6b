"""Retention as the engine applies it: the store's policy built from `state.retention`
and the pipelines that read other pipelines' deliveries, and one logged prune."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from state.retention import PruneReport, Retention, RetentionPolicy
from syncengine.config import Config
from syncengine.logs import get_logger

log = get_logger("syncengine.prune")


def _written(seconds: float) -> str:
    """A duration as an operator writes it (400d, 12h, 90s) for the prune log."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def policy(config: Config) -> RetentionPolicy | None:
    """None when `state.retention` is unset: nothing is pruned."""
    retention = config.state.retention
    if retention is None:
        return None
    readers: dict[tuple[str, str], list[str]] = {}
    for name, pipe in config.pipelines.items():
        for ref in (pipe.source.chain, pipe.source.follow_jobs_of):
            if ref is not None:
                readers.setdefault((ref.pipeline, ref.target), []).append(name)
    setting = ", ".join(
        f"{name}: {_written(value)}"
        for name, value in (("keep_done", retention.keep_done), ("keep_runs", retention.keep_runs))
        if value is not None
    )
    return RetentionPolicy(
        keep_done=None if retention.keep_done is None else timedelta(seconds=retention.keep_done),
        keep_runs=None if retention.keep_runs is None else timedelta(seconds=retention.keep_runs),
        batch=retention.batch,
        pause=retention.pause,
        reread_margin=timedelta(seconds=retention.reread_margin),
        setting=setting,
        readers=readers,
    )


def prune(
    retention: Retention,
    rules: RetentionPolicy,
    *,
    stop: Callable[[], bool] = lambda: False,
) -> PruneReport:
    """One prune, logged (the daemon's; `state prune` prints its report instead)."""
    report = retention.prune(rules, stop=stop)
    log.info(
        "store_pruned",
        setting=rules.setting,
        deletions=report.deletions,
        deliveries=report.deliveries,
        jobs=report.jobs,
        runs=report.runs,
        notices=report.notices,
        batches=report.batches,
        seconds=round(report.seconds, 3),
        size_before=report.size_before,
        size_after=report.size_after,
    )
    return report


__all__ = ["policy", "prune"]
