"""Cancelling a job on an operator's request (`syncengine jobs cancel`).

The decision lives here rather than in the CLI so that every way of asking (the
command, a future API) applies the same rules: a job never submitted is ended
here alone, under the pipeline's lock so a running pass cannot submit it at the
same moment; a submitted one is stopped through the target's API only where its
connector declares that it can (`Capabilities.cancel`); a job whose submission
answer was lost is left for the engine to find first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from connectors import load_registry
from connectors.contract import Cancellable, CannotCancel, ConnectorError, JobHandle
from state import Store
from state.models import OPEN_PHASES, JobPhase
from syncengine.config import Config
from syncengine.engine.pipeline import OWNER
from syncengine.engine.runtime import PipelineRuntime, build_pipeline


class CancelRefused(Exception):
    """The job cannot be cancelled now; the message tells the operator why and what to do.

    `failed` is true when the target's API was asked and answered with an error (as
    opposed to a request the engine refused before asking anything)."""

    def __init__(self, message: str, *, failed: bool = False) -> None:
        super().__init__(message)
        self.failed = failed


@dataclass(frozen=True)
class Cancelled:
    """What cancelling did: `released` deliveries were made dead when the job had never
    been submitted (else the remote job was asked to stop and the next run settles it)."""

    job_id: int
    kind: str
    remote_id: str
    submitted: bool
    released: int = 0


def cancel_job(config: Config, store: Store, job_id: int, config_name: str) -> Cancelled:
    """Cancel job `job_id`; raises CancelRefused. `config_name` is for the hints."""
    job = store.job(job_id)
    if job is None:
        raise CancelRefused(f"no job #{job_id}; see: syncengine jobs list -c {config_name}")
    if job.phase not in OPEN_PHASES:
        raise CancelRefused(f"job #{job_id} is {job.phase} already; nothing to cancel")
    pipeline = config.pipelines.get(job.pipeline)
    if pipeline is None or job.target not in pipeline.targets:
        raise CancelRefused(
            f"job #{job_id} belongs to {job.pipeline}/{job.target}, not in {config_name}"
        )
    if job.phase == JobPhase.CREATED:
        lease = store.acquire_lock(job.pipeline, OWNER, config.state.lease)
        if lease is None:
            raise CancelRefused(
                f"job #{job_id}: pipeline {job.pipeline} is running right now and may be "
                "submitting it; try again in a moment"
            )
        try:
            released = store.release_job(
                job_id,
                to_dead=True,
                reason="job cancelled by an operator before it was submitted",
                phase=JobPhase.CANCELLED,
                lease=lease,
            )
        finally:
            store.release_lock(job.pipeline, OWNER)
        return Cancelled(job_id, job.kind, "", submitted=False, released=released)
    if not job.remote_id:
        raise CancelRefused(
            f"job #{job_id} may have been submitted but its answer was lost; run the pipeline "
            "once so the engine finds it, then cancel it"
        )
    where = f"job #{job_id} ({job.kind} {job.remote_id})"
    able = load_registry().get(pipeline.targets[job.target].connection_type).capabilities
    if not able.cancel:
        raise CancelRefused(f"{where}: {able.no_cancel or 'its API cannot stop a job'}")
    pipe = build_pipeline(config, pipeline, store)
    try:
        asyncio.run(_cancel(pipe, job.target, JobHandle(remote_id=job.remote_id)))
    except CannotCancel as exc:
        raise CancelRefused(f"{where}: {exc}") from None
    except ConnectorError as exc:
        raise CancelRefused(f"{where}: cancel failed: {exc}", failed=True) from None
    store.request_cancel(job_id)
    return Cancelled(job_id, job.kind, job.remote_id, submitted=True)


async def _cancel(pipe: PipelineRuntime, target: str, handle: JobHandle) -> None:
    """Ask, then close every client the pipeline opened, in the one event loop."""
    try:
        await cast(Cancellable, pipe.targets[target].target).cancel(handle)
    finally:
        await pipe.source.aclose()
        for runtime in pipe.targets.values():
            await runtime.target.aclose()
