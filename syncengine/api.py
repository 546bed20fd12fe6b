"""syncengine from Python, for orchestrators (Dagster, Airflow, Prefect, a plain script).

    from syncengine import api

    summary = api.run_once("/etc/syncengine/config.yaml", pipeline="contacts")
    summary.raise_for_failure()          # api.RunFailed when a pipeline's run failed
    print(summary.to_json())             # what `run --once -o json` prints

Each call takes a configuration (a path, or a `Config` from `api.load`), opens the store,
does its work and closes the store: nothing is kept between calls. A run is the same
code path as `run --once`, under the same per-pipeline lease, so it never runs a
pipeline a daemon is running. Nothing here exits the process or installs a signal
handler: to stop a run early, pass a `StopToken` and call `stop.request(why)` from
wherever your orchestrator learns of it (the run finishes the batch it is sending).
Errors a caller can cause are typed (`ConfigInvalid`, `UnknownPipeline`,
`StoreUnavailable`), each with the one-line message the CLI would print.

Logs go through structlog like the CLI's. If the caller has not configured structlog,
the first call configures it (JSON lines on stderr); if it has, its processors are
kept and the redaction of secrets is put in before its renderer, so no secret is ever
logged, whoever set logging up.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from syncengine.engine.stop import StopToken

if TYPE_CHECKING:
    from state import Store
    from syncengine.config import Config
    from syncengine.engine import RunReport, Runtime

DEFAULT_JOB_WAIT = 120.0
"""Seconds a run follows its asynchronous jobs before returning (as `run --once`)."""


class SyncEngineError(Exception):
    """Base of every error this module raises; `str()` is one line for an operator."""


class ConfigInvalid(SyncEngineError):
    """The configuration file is wrong; `issues` holds one line per problem."""

    def __init__(self, file: str, issues: Sequence[str]) -> None:
        super().__init__(f"{file}: {len(issues)} problem(s): " + "; ".join(issues))
        self.file = file
        self.issues = list(issues)


class UnknownPipeline(SyncEngineError):
    """The pipeline named is not in the configuration."""


class StoreUnavailable(SyncEngineError):
    """The store cannot be opened (bad URL, damaged file, newer schema, manual migration)."""


class RunFailed(SyncEngineError):
    """Raised by `RunSummary.raise_for_failure` when a pipeline's run failed."""

    def __init__(self, summary: RunSummary) -> None:
        failed = [
            p
            for p in summary.pipelines
            if not p.ok and (p.error or p.outcome in ("failed", "partial"))
        ]
        lines = [f"{p.pipeline}: {p.outcome}: {p.error or 'failed'}" for p in failed]
        super().__init__("; ".join([*lines, *summary.nothing_through()]))
        self.summary = summary


@dataclass(frozen=True)
class TargetResult:
    target: str
    delivered: int
    retry_later: int
    dead: int
    held: int
    """Deliveries the mass-delete guard holds for an operator (in the store, after the run)."""
    waiting: int
    """Deliveries still due: pending, failed (retried later) or in flight."""
    jobs: list[str] = field(default_factory=list)
    failed: int = 0
    """Deliveries that did not get through in this run (retried later, or dead once their
    attempts ran out); a dead verdict of the target is an answer, not counted here."""
    failures: dict[str, int] = field(default_factory=dict)
    """`failed` by the class of its reason (unreachable, timeout, throttled, ...)."""
    first_error: str = ""
    """The first reason, scrubbed of every secret."""
    nothing_through: bool = False
    """It had deliveries to send in this run and the target decided none of them (done
    or dead): what makes `run --once` exit 1. Held deliveries are never sent, so a
    target whose work the guard holds is not this."""

    def nothing_through_line(self, pipeline: str) -> str:
        """One line for stderr: where, how many wait, and why."""
        from syncengine.engine.failures import classify

        dead = f", {self.dead} dead" if self.dead else ""
        return (
            f"{pipeline}/{self.target}: nothing got through: {self.retry_later} retry later"
            f"{dead}: {classify(self.first_error)}: {self.first_error}"
        )


@dataclass(frozen=True)
class PipelineResult:
    pipeline: str
    outcome: str
    ok: bool
    error: str
    pulled: int
    duplicates: int
    recoveries: int
    stream_errors: dict[str, str]
    malformed: dict[str, int]
    targets: list[TargetResult]


@dataclass(frozen=True)
class RunSummary:
    """What one run of each pipeline did; plain data, JSON-serialisable."""

    pipelines: list[PipelineResult]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.pipelines)

    @property
    def exit_code(self) -> int:
        """What `run --once` exits with: 0, or 1 when a pipeline's run failed or a target
        that had work got none of it through."""
        return 0 if self.ok else 1

    def nothing_through(self) -> list[str]:
        """One line per target that had work and got none of it through."""
        return [
            t.nothing_through_line(p.pipeline)
            for p in self.pipelines
            for t in p.targets
            if t.nothing_through
        ]

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code} | asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def raise_for_failure(self) -> RunSummary:
        if not self.ok:
            raise RunFailed(self)
        return self


def summarize(reports: Sequence[RunReport], store: Store) -> RunSummary:
    """The run's reports, with what the store holds after them (held, still due)."""
    counts = {(c.pipeline, c.target): c.counts for c in store.delivery_counts()}
    results = []
    for report in reports:
        targets = []
        for name, push in report.targets.items():
            waiting = counts.get((report.pipeline, name), {})
            targets.append(
                TargetResult(
                    target=name,
                    delivered=push.done,
                    retry_later=push.retried,
                    dead=push.dead,
                    held=waiting.get("held", 0),
                    waiting=sum(waiting.get(s, 0) for s in ("pending", "failed", "in_flight")),
                    jobs=list(push.jobs),
                    failed=push.not_through,
                    failures=dict(push.failures),
                    first_error=push.first_error,
                    nothing_through=push.nothing_through,
                )
            )
        results.append(
            PipelineResult(
                pipeline=report.pipeline,
                outcome=report.outcome.value,
                ok=not report.failed
                and not report.cancelled
                and not any(t.nothing_through for t in targets),
                error=report.error,
                pulled=report.pull.pulled,
                duplicates=report.pull.duplicates,
                recoveries=report.pull.recoveries,
                stream_errors=dict(report.pull.errors),
                malformed=dict(report.pull.malformed),
                targets=targets,
            )
        )
    return RunSummary(results)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """The configuration at `path`, validated (`ConfigInvalid` with every problem);
    `env` replaces the process environment for `${VAR}` substitution."""
    from syncengine.config import ConfigError, load_config
    from syncengine.logs import remember_secrets

    try:
        config = load_config(path, env=env)
    except ConfigError as exc:
        raise ConfigInvalid(exc.file, [issue.render(exc.file) for issue in exc.issues]) from None
    remember_secrets(config.secrets)
    return config


def _config(config: Config | str | os.PathLike[str], pipeline: str | None) -> Config:
    from syncengine.logs import remember_secrets

    loaded = config if not isinstance(config, str | os.PathLike) else load(config)
    remember_secrets(loaded.secrets)  # a Config built elsewhere is redacted too
    if pipeline is not None and pipeline not in loaded.pipelines:
        raise UnknownPipeline(
            f"{loaded.path}: no pipeline named {pipeline!r}; defined: {', '.join(loaded.pipelines)}"
        )
    return loaded


def open_store(config: Config) -> Store:
    from state import Store, StoreError
    from syncengine.logs import SECRETS

    try:
        return Store.open(
            config.state.url, scrub=SECRETS.scrub, migrate=config.state.migrate == "auto"
        )
    except StoreError as exc:
        raise StoreUnavailable(f"{config.path}: {exc}") from None


async def run_pipelines(
    runtime: Runtime,
    stop: StopToken,
    job_wait: float,
    started: Callable[[str, asyncio.Task[RunReport]], None] | None = None,
) -> list[RunReport]:
    """Each pipeline of `runtime` once, in run order, until `stop` is set, then the
    alerts they queued. `started(task)` sees each run's task as it starts (the CLI's
    second signal cancels it)."""
    from syncengine.engine import run_pipeline

    reports: list[RunReport] = []
    for pipe in runtime.pipelines.values():
        if stop.is_set():
            break
        task = asyncio.create_task(
            run_pipeline(
                runtime.store,
                pipe,
                stop,
                job_wait=job_wait,
                artifacts_dir=runtime.config.state.artifacts,
            )
        )
        if started is not None:
            started(pipe.name, task)
        reports.append(await task)
    await check_after_runs(runtime, [r.pipeline for r in reports])
    if runtime.config.alerts.sinks and not stop.is_set():
        # The alerts these runs queued, within a bounded time; what is left stays in
        # the store's outbox for the next run or a daemon. A stopped run skips this.
        from syncengine.alerts import Notifier, once_deadline

        await Notifier(runtime.store, runtime.config).flush(once_deadline(runtime.config))
    return reports


async def check_after_runs(runtime: Runtime, pipelines: list[str]) -> None:
    """Record the conditions of the pipelines just run (and queue their alerts). It never
    fails the run: a check that cannot be made is logged, the next run checks again."""
    from syncengine.engine.pull import one_line
    from syncengine.health import check_conditions
    from syncengine.logs import get_logger

    if not pipelines:
        return
    try:
        await asyncio.to_thread(check_conditions, runtime.store, runtime.config, pipelines)
    except Exception as exc:
        get_logger("syncengine.health").warning(
            "conditions_check_failed", pipelines=pipelines, error=one_line(exc)
        )


async def arun_once(
    config: Config | str | os.PathLike[str],
    *,
    pipeline: str | None = None,
    job_wait: float = DEFAULT_JOB_WAIT,
    stop: StopToken | None = None,
) -> RunSummary:
    """One run of every enabled pipeline (or of `pipeline`), inside the caller's loop."""
    from syncengine.engine import build_runtime
    from syncengine.logs import ensure_redacted

    loaded = _config(config, pipeline)
    ensure_redacted(loaded.logging.level)
    store = open_store(loaded)
    try:
        runtime = build_runtime(loaded, store, only=pipeline)
        try:
            reports = await run_pipelines(runtime, stop or StopToken(), job_wait)
        finally:
            await runtime.aclose()
        return summarize(reports, store)
    finally:
        store.close()


def run_once(
    config: Config | str | os.PathLike[str],
    *,
    pipeline: str | None = None,
    job_wait: float = DEFAULT_JOB_WAIT,
    stop: StopToken | None = None,
) -> RunSummary:
    """`arun_once` from synchronous code (not from inside a running event loop)."""
    return asyncio.run(arun_once(config, pipeline=pipeline, job_wait=job_wait, stop=stop))


def plan(
    config: Config | str | os.PathLike[str], *, pipeline: str | None = None
) -> list[dict[str, Any]]:
    """What a run would delete, per pipeline and target; reads only (as `plan -o json`)."""
    from syncengine.engine import build_runtime
    from syncengine.engine.plan import plan_pipeline
    from syncengine.logs import ensure_redacted

    loaded = _config(config, pipeline)
    ensure_redacted(loaded.logging.level)
    store = open_store(loaded)

    async def main() -> list[dict[str, Any]]:
        runtime = build_runtime(loaded, store, only=pipeline)
        try:
            return [
                (await plan_pipeline(store, pipe)).as_json() for pipe in runtime.pipelines.values()
            ]
        finally:
            await runtime.aclose()

    try:
        return asyncio.run(main())
    finally:
        store.close()


def status(
    config: Config | str | os.PathLike[str], *, pipeline: str | None = None
) -> dict[str, Any]:
    """Cursors, deliveries per status and the last run, per pipeline (as `status -o json`)."""
    from syncengine.status import collect_status

    loaded = _config(config, pipeline)
    store = open_store(loaded)
    try:
        return collect_status(store, loaded, pipeline)
    finally:
        store.close()


__all__ = [
    "DEFAULT_JOB_WAIT",
    "ConfigInvalid",
    "PipelineResult",
    "RunFailed",
    "RunSummary",
    "StopToken",
    "StoreUnavailable",
    "SyncEngineError",
    "TargetResult",
    "UnknownPipeline",
    "arun_once",
    "load",
    "plan",
    "run_once",
    "status",
]
