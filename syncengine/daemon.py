"""The long-lived daemon: each pipeline on its schedule, one run of it at a time.

Schedules are rebuilt from the YAML at every start (APScheduler's memory
job store; all durable state lives in our own tables). SIGTERM/SIGINT ask
running pipelines to stop after their current batch, and the daemon waits for
them before it stops the scheduler (whose shutdown cancels whatever job is still
running); a second signal cancels them (claimed deliveries are released,
nothing is lost).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from state import StoreError
from state.models import utcnow
from syncengine.config import Schedule
from syncengine.engine import RunReport, Runtime, StopToken, run_pipeline
from syncengine.engine.stop import Shutdown
from syncengine.logs import get_logger

CRON_JOB_WAIT = 60.0
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


class Daemon:
    def __init__(
        self, runtime: Runtime, on_report: Callable[[RunReport], None] | None = None
    ) -> None:
        self.runtime = runtime
        self.stop = StopToken()
        self.on_report = on_report
        self.shutdown = Shutdown(self.stop)
        self._jobs: set[asyncio.Task[object]] = set()
        """The scheduler's job tasks under way, each awaiting its pipeline's run."""
        self._stopped_pipelines: dict[str, str] = {}
        self._store_error: StoreError | None = None
        self.log = get_logger("syncengine.daemon")

    async def _job(self, name: str) -> None:
        if self.stop.is_set() or name in self._stopped_pipelines:
            return
        job = asyncio.current_task()
        assert job is not None
        self._jobs.add(job)
        try:
            await self._run(name)
        finally:
            self._jobs.discard(job)

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

    async def serve(self) -> int:
        # The scheduler's package pulls in multiprocessing and thread pools: loaded here
        # so that `run --once` and the other commands never pay for it.
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(timezone="UTC")
        with self.shutdown:
            return await self._serve()

    async def _serve(self) -> int:
        for name, pipe in self.runtime.pipelines.items():
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
            self.log.info(
                "pipeline_scheduled", pipeline=name, schedule=pipe.config.schedule.describe()
            )
        self._scheduler.start()
        self.log.info("daemon_started", pipelines=len(self.runtime.pipelines))
        await self.stop.wait()
        # No new run starts; the runs under way end at their next stop point (or on
        # a second signal) before the scheduler's shutdown, which cancels its jobs.
        self._scheduler.pause()
        await asyncio.sleep(0)  # a job submitted just before starts, sees the stop, ends
        while self._jobs:
            await asyncio.wait(list(self._jobs))
        self._scheduler.shutdown(wait=False)
        self.log.info("daemon_stopped", reason=self.stop.reason, forced=self.shutdown.forced)
        if self._store_error is not None:
            raise self._store_error
        return 1 if self._stopped_pipelines or self.shutdown.forced else 0
