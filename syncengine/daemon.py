"""The long-lived daemon: each pipeline on its schedule, one run of it at a time.

Schedules are rebuilt from the YAML at every start (APScheduler's memory
job store; all durable state lives in our own tables). SIGTERM/SIGINT ask
running pipelines to stop after their current batch, and the daemon waits for
them before it stops the scheduler (whose shutdown cancels whatever job is still
running); a second signal cancels them (claimed deliveries are released,
nothing is lost). SIGHUP reloads the configuration between runs (see
`Daemon.reload_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from datetime import timedelta

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from connectors.contract import ConnectorError
from state import StoreError
from state.models import utcnow
from state.retention import Retention
from syncengine.alerts import Notifier
from syncengine.config import Config, ConfigError, Schedule
from syncengine.engine import RunReport, Runtime, StopToken, run_pipeline
from syncengine.engine.pull import one_line
from syncengine.engine.runtime import PipelineRuntime, build_pipeline
from syncengine.engine.stop import Shutdown
from syncengine.health import check_conditions
from syncengine.logs import get_logger
from syncengine.prune import policy as prune_policy
from syncengine.prune import prune
from syncengine.reload import diff, refused

CRON_JOB_WAIT = 60.0
PRUNE_JOB = "__prune__"
FIRST_PRUNE_AFTER = 60.0
"""The first prune waits this long after start, so the pipelines' first runs go first."""
MAX_JOB_WAIT = 300.0


def job_wait_for(schedule: Schedule) -> float:
    """How long a daemon run follows its open jobs: half a period, so polling keeps
    pace with the jobs' own poll intervals without delaying the next pull."""
    period = schedule.every if schedule.every is not None else 2 * CRON_JOB_WAIT
    return min(period / 2, MAX_JOB_WAIT)


def trigger_for(schedule: Schedule) -> IntervalTrigger | CronTrigger:
    if schedule.every is not None:
        return IntervalTrigger(seconds=schedule.every)
    assert schedule.cron is not None
    return CronTrigger.from_crontab(schedule.cron)


Reloader = Callable[[], Config]
"""Reads and validates the configuration file again; raises ConfigError when it is wrong."""


class Daemon:
    def __init__(
        self,
        runtime: Runtime,
        on_report: Callable[[RunReport], None] | None = None,
        reload: Reloader | None = None,
        only: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.stop = StopToken()
        self.on_report = on_report
        self.shutdown = Shutdown(self.stop)
        self._reload = reload
        self._only = only
        self._reloading = asyncio.Lock()
        self._jobs: set[asyncio.Task[object]] = set()
        """The scheduler's job tasks under way, each awaiting its pipeline's run."""
        self._running: set[str] = set()
        self._retired: list[tuple[str, PipelineRuntime]] = []
        """Pipelines a reload replaced or removed, closed once no run of theirs is under way."""
        self._stopped_pipelines: dict[str, str] = {}
        self._store_error: StoreError | None = None
        self.notifier = Notifier(runtime.store, runtime.config)
        """Sends alerts in its own task, so a slow or dead sink never holds a run up."""
        self.log = get_logger("syncengine.daemon")

    async def _job(self, name: str) -> None:
        if self.stop.is_set() or name in self._stopped_pipelines:
            return
        if name not in self.runtime.pipelines:
            return  # removed by a reload after this run was scheduled
        job = asyncio.current_task()
        assert job is not None
        self._jobs.add(job)
        self._running.add(name)
        try:
            await self._run(name)
        finally:
            self._jobs.discard(job)
            self._running.discard(name)
            await self._close_retired()

    async def _run(self, name: str) -> None:
        pipe = self.runtime.pipelines[name]
        task = asyncio.create_task(
            run_pipeline(
                self.runtime.store,
                pipe,
                self.stop,
                job_wait=job_wait_for(pipe.config.schedule),
                artifacts_dir=self.runtime.config.state.artifacts,
            )
        )
        self.shutdown.tasks.add(task)
        try:
            report = await task
        except StoreError as exc:
            # A damaged store stops everything: no pipeline can record what it does.
            self._store_error = exc
            self.stop.request(str(exc))
            return
        except asyncio.CancelledError:
            if not self.shutdown.cut(task):
                raise
            # The run recorded itself as interrupted and handed back what it was
            # sending: a forced shutdown, said once by the signal's log line.
            return
        finally:
            self.shutdown.tasks.discard(task)
        if self.on_report is not None:
            self.on_report(report)
        if report.fatal:
            self._stopped_pipelines[name] = report.error
            self.log.error(
                "pipeline_stopped",
                pipeline=name,
                error=report.error,
                hint="fix the configuration or credentials, then restart the daemon",
            )
            if self._scheduler.get_job(name) is not None:
                self._scheduler.remove_job(name)
            if len(self._stopped_pipelines) == len(self.runtime.pipelines):
                self.stop.request("every pipeline stopped on a fatal error")
        await self._check_conditions([name])

    async def _check_conditions(self, pipelines: list[str]) -> None:
        """Record what is wrong now (and queue its alerts). Never fails a run nor the
        daemon: a check that cannot be made is logged, and the next one tries again."""
        try:
            changed = await asyncio.to_thread(
                check_conditions, self.runtime.store, self.runtime.config, pipelines
            )
        except Exception as exc:
            self.log.warning("conditions_check_failed", pipelines=pipelines, error=one_line(exc))
            return
        if changed:
            self.notifier.wake()  # the alerts just queued go out now, not at the next poll

    async def _watch_conditions(self) -> None:
        """Every `alerts.check_every`, the conditions of the pipelines this daemon runs
        (held deliveries age, a target stays stalled, an SLO passes between runs)."""
        while not self.stop.is_set():
            config = self.runtime.config
            await self._check_conditions(
                [self._only] if self._only is not None else list(config.pipelines)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), config.alerts.check_every)

    async def serve(self) -> int:
        # The scheduler's package pulls in multiprocessing and thread pools: loaded here
        # so that `run --once` and the other commands never pay for it.
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(timezone="UTC")
        with self.shutdown:
            return await self._serve()

    def _schedule(self, name: str, pipe: PipelineRuntime) -> None:
        self._scheduler.add_job(
            self._job,
            trigger_for(pipe.config.schedule),
            args=[name],
            id=name,
            name=name,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=utcnow(),
        )
        self.log.info("pipeline_scheduled", pipeline=name, schedule=pipe.config.schedule.describe())

    def _on_hangup(self) -> None:
        self.log.info("reload_requested", signal="SIGHUP")
        task = asyncio.get_running_loop().create_task(self.reload_config())
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def reload_config(self) -> bool:
        """Read the file again and apply it between runs: pipelines added, removed or
        changed take effect at their next run; runs under way, their leases and what
        they have in flight are untouched. A file that does not validate changes
        nothing. True when the new configuration was applied."""
        if self._reload is None:
            return False
        async with self._reloading:
            return await self._apply_reload(self._reload)

    async def _apply_reload(self, reload: Reloader) -> bool:
        old = self.runtime.config
        try:
            new = reload()
        except ConfigError as exc:
            self._reload_failed([issue.render(exc.file) for issue in exc.issues])
            return False
        problems = refused(old, new)
        if problems:
            self._reload_failed([f"{new.path}: {p}" for p in problems])
            return False
        change = diff(old, new, self._only)
        try:
            rebuilt = {
                name: build_pipeline(new, new.pipelines[name], self.runtime.store)
                for name in [*change.added, *change.changed]
            }
        except ConnectorError as exc:
            self._reload_failed([str(exc)])
            return False
        self.runtime.config = new
        self.notifier.config = new
        for name in change.removed:
            if self._scheduler.get_job(name) is not None:
                self._scheduler.remove_job(name)
            self._retired.append((name, self.runtime.pipelines.pop(name)))
            self._stopped_pipelines.pop(name, None)
        for name, pipe in rebuilt.items():
            previous = self.runtime.pipelines.get(name)
            if previous is not None:
                self._retired.append((name, previous))
            self.runtime.pipelines[name] = pipe
            # A pipeline stopped for its credentials gets another chance once it changed.
            self._stopped_pipelines.pop(name, None)
            if previous is None or previous.config.schedule != pipe.config.schedule:
                self._schedule(name, pipe)
        await self._close_retired()
        self.log.info(
            "config_reloaded",
            added=change.added,
            removed=change.removed,
            changed=change.changed,
            unchanged=len(self.runtime.pipelines) - len(rebuilt),
        )
        return True

    def _reload_failed(self, problems: list[str]) -> None:
        self.log.error(
            "alert_config_reload_failed",
            problems=problems,
            kept="the configuration running before the reload",
        )

    async def _close_retired(self) -> None:
        keep = []
        for name, pipe in self._retired:
            if name in self._running:
                keep.append((name, pipe))
                continue
            await pipe.aclose()
        self._retired = keep

    async def _prune(self) -> None:
        """Prune the store by `state.retention`, off the event loop: short batches with
        pauses between them, so a claim never waits long for the writer; it stops
        between batches when the daemon stops."""
        rules = prune_policy(self.runtime.config)
        if rules is None or self.stop.is_set():
            return
        retention = Retention(self.runtime.store.engine)
        try:
            await asyncio.to_thread(prune, retention, rules, stop=self.stop.is_set)
        except Exception as exc:  # the next prune tries again; the pipelines go on
            self.log.error("store_prune_failed", error=one_line(exc))

    def _schedule_pruning(self) -> None:
        retention = self.runtime.config.state.retention
        if retention is None:
            return
        self._scheduler.add_job(
            self._prune,
            IntervalTrigger(seconds=retention.every),
            id=PRUNE_JOB,
            name=PRUNE_JOB,
            replace_existing=True,
            max_instances=1,
            coalesce=True,
            next_run_time=utcnow() + timedelta(seconds=min(retention.every, FIRST_PRUNE_AFTER)),
        )

    async def _serve(self) -> int:
        for name, pipe in self.runtime.pipelines.items():
            self._schedule(name, pipe)
        self._schedule_pruning()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            return await self._serve_until_stopped()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await self._close_retired()

    async def _serve_until_stopped(self) -> int:
        self._scheduler.start()
        alerts_stop = StopToken()
        alerts = asyncio.create_task(self.notifier.run(alerts_stop))
        self.log.info("daemon_started", pipelines=len(self.runtime.pipelines))
        watch = asyncio.create_task(self._watch_conditions())
        await self.stop.wait()
        # No new run starts; the runs under way end at their next stop point (or on
        # a second signal) before the scheduler's shutdown, which cancels its jobs.
        self._scheduler.pause()
        await asyncio.sleep(0)  # a job submitted just before starts, sees the stop, ends
        while self._jobs:
            await asyncio.wait(list(self._jobs))
        await watch  # ends after the check under way, before the store is closed
        self._scheduler.shutdown(wait=False)
        # After the runs: the alerts their ends queued get a short grace to go out.
        alerts_stop.request("daemon stopping")
        await alerts
        self.log.info("daemon_stopped", reason=self.stop.reason, forced=self.shutdown.forced)
        if self._store_error is not None:
            raise self._store_error
        return 1 if self._stopped_pipelines or self.shutdown.forced else 0
