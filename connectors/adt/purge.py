"""Purge an Azure Digital Twins instance with a delete job, when a trigger arrives.

A delete job wipes every model, twin and relationship of the instance; it
cannot be scoped to records. So only deliveries whose key matches the
target's `trigger_keys` start one, and the connection's host must be
confirmed in the target block (`confirm_purge`). Every other delivery is
done without any call.

The engine's client id is sent as `operation-id`. ADT refuses a reused
operation-id (`400 ValidationFailed`), which makes re-sending safe and lets
a lost answer be resolved by reading `GET /jobs/deletions/{operation-id}`:
the emulator and this target assume the job's id is its operation-id, as in
the vendor example. Only one delete job can run per instance
(`400 JobLimitReached`): that is retried later, unless the running job is
our own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import httpx

from connectors.adt.auth import AdtClient, error_code, http_client
from connectors.adt.settings import AdtConnection, AdtPurgeSettings, check_purge_confirmation
from connectors.contract import (
    EXACT_KEYS,
    Delivery,
    Outcome,
    RemoteError,
    RetriableError,
)
from connectors.kit.http import HttpClient, excerpt, json_object
from connectors.kit.jobs import JobHandle, JobProgress, JobSpec, JobState, map_status
from connectors.kit.paths import path_segment, segment_problem
from connectors.kit.target import HttpTarget

JOBS_PATH = "/jobs/deletions"
NOT_A_TRIGGER = "not a purge trigger"
JOB_LIMIT_REACHED = "JobLimitReached"
VALIDATION_FAILED = "ValidationFailed"
JOB_NOT_FOUND = "DeleteJobNotFound"

STATUS = {
    "NOTSTARTED": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    # Not in the 2023-10-31 enum, which is extensible; azure-core's poller
    # treats it as terminal, so a job it ends is retried, not awaited forever.
    "CANCELED": JobState.CANCELLED,
    "CANCELLED": JobState.CANCELLED,
}
"""ADT `delete-job-status` -> JobState; anything else is still running."""


class AdtPurgeTarget(HttpTarget[AdtConnection, AdtPurgeSettings]):
    """Starts one delete job per batch that holds a trigger, and reports it per delivery."""

    kind = "adt_delete_job"
    key_match = EXACT_KEYS
    unscoped = "a purge: one trigger deletes every model, twin and relationship of the instance"

    api: AdtClient

    def problem(
        self, name: str, connection: AdtConnection, settings: AdtPurgeSettings
    ) -> str | None:
        return check_purge_confirmation(connection, settings, name)

    def client(self, name: str, connection: AdtConnection) -> HttpClient:
        return http_client(name, connection)

    def setup(self, connection: AdtConnection) -> None:
        self.api = AdtClient(self.name, connection, self._http)

    def triggers(self, items: Sequence[Delivery]) -> list[Delivery]:
        return [d for d in items if self.settings.is_trigger(d.key)]

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """Read-only: which deliveries would start the purge of the whole instance."""
        return [
            Outcome.done(
                d.delivery_id,
                f"would start a delete job wiping every model, twin and relationship of "
                f"{self.settings.confirm_purge}",
            )
            if self.settings.is_trigger(d.key)
            else Outcome.done(d.delivery_id, "not a purge trigger: nothing deleted")
            for d in batch
        ]

    async def submit(self, job: JobSpec) -> JobHandle:
        if not self.triggers(job.items):
            return self._no_job(job)
        what = f"POST {JOBS_PATH}"
        response = await self.api.call(
            "POST",
            JOBS_PATH,
            idempotent=True,
            params={"timeoutInMinutes": str(self.settings.timeout_in_minutes)},
            headers={"operation-id": job.client_id},
        )
        if response.is_success:
            return self._handle(what, response, {"operation_location": _location(response)})
        code = error_code(response)
        if response.status_code == 400 and code in (JOB_LIMIT_REACHED, VALIDATION_FAILED):
            # Both can mean our own job already exists (a lost answer, re-sent).
            ours = await self._adopt(job, what, response)
            if ours is not None:
                return ours
            why = (
                f"another delete job is running on the instance ({JOB_LIMIT_REACHED}); "
                "submitting again later"
                if code == JOB_LIMIT_REACHED
                else f"{VALIDATION_FAILED} ({self.api.message(response)}) and no delete job "
                f"{job.client_id!r} can be read; trying again later"
            )
            raise RetriableError(
                f"{self.name}: {what}: {why}",
                connection=self.name,
                retry_after=self.settings.poll_interval,
            )
        raise self.api.remote(what, response)

    async def _adopt(self, job: JobSpec, what: str, refused: httpx.Response) -> JobHandle | None:
        """Our own job, when the POST was refused because it already exists."""
        try:
            return await self.find(job)
        except RetriableError as exc:
            raise RetriableError(
                f"{self.name}: {what}: {error_code(refused)}, and reading delete job "
                f"{job.client_id!r} failed: {exc}",
                connection=self.name,
                retry_after=exc.retry_after or self.settings.poll_interval,
            ) from None

    async def find(self, job: JobSpec) -> JobHandle | None:
        """A job this spec started, read by its operation-id; errors are retriable here,
        since the engine must never resubmit on a guess."""
        if not self.triggers(job.items):
            return self._no_job(job)
        path = f"{JOBS_PATH}/{path_segment(job.client_id)}"
        what = f"GET {path}"
        response = await self.api.call("GET", path, idempotent=True)
        if response.status_code == 404 and error_code(response) in (JOB_NOT_FOUND, ""):
            return None
        if not response.is_success:
            error = self.api.remote(what, response)
            raise RetriableError(str(error), connection=self.name)
        try:
            return self._handle(what, response, {"adopted": True})
        except RemoteError as exc:
            raise RetriableError(str(exc), connection=self.name) from None

    async def poll(self, job: JobSpec, handle: JobHandle) -> JobProgress:
        if not handle.remote_id:
            return JobProgress(
                JobState.SUCCEEDED,
                outcomes=[Outcome.done(d.delivery_id, NOT_A_TRIGGER) for d in job.items],
                detail={"job": None},
            )
        path = f"{JOBS_PATH}/{path_segment(handle.remote_id)}"
        what = f"GET {path}"
        response = await self.api.call("GET", path, idempotent=True)
        body = json_object(response)
        if not response.is_success or body is None:
            raise self.api.remote(what, response)
        raw = body.get("status")
        if not isinstance(raw, str):
            raise RemoteError(
                f"{self.name}: {what}: a delete job without status", connection=self.name
            )
        state = map_status(raw, STATUS)
        detail = _job_detail(body)
        if not state.terminal:
            return JobProgress(
                state, detail=detail, poll_after=self.settings.poll_interval, message=raw
            )
        return JobProgress(
            state,
            outcomes=self._outcomes(job, state, handle.remote_id, body),
            detail=detail,
            message=self._failure(body) if state is not JobState.SUCCEEDED else "",
        )

    def _outcomes(
        self, job: JobSpec, state: JobState, job_id: str, body: Mapping[str, Any]
    ) -> list[Outcome]:
        """Triggers share the job's fate; a job that did not succeed is retried (a new job)."""
        if state is JobState.SUCCEEDED:
            purged = Outcome.done(
                0,
                f"purged by delete job {job_id} (finished {body.get('finishedDateTime')}, "
                f"job record kept until {body.get('purgeDateTime')})",
            )
        else:
            purged = Outcome.retry(0, f"delete job {job_id} {state.value}: {self._failure(body)}")
        return [
            replace(purged, delivery_id=d.delivery_id)
            if self.settings.is_trigger(d.key)
            else Outcome.done(d.delivery_id, NOT_A_TRIGGER)
            for d in job.items
        ]

    def _failure(self, body: Mapping[str, Any]) -> str:
        error = body.get("error")
        if not isinstance(error, dict):
            return "no error given"
        text = f"{error.get('code', '?')}: {error.get('message', '')}".strip()
        return excerpt(text, self._http.secrets)

    def _no_job(self, job: JobSpec) -> JobHandle:
        return JobHandle(
            remote_id="",
            state=JobState.SUCCEEDED,
            detail={
                "job": None,
                "reason": "no delivery key matches trigger_keys",
                "outcomes": {str(d.delivery_id): NOT_A_TRIGGER for d in job.items},
            },
        )

    def _handle(self, what: str, response: httpx.Response, extra: Mapping[str, Any]) -> JobHandle:
        body = json_object(response)
        job_id = body.get("id") if body else None
        status = body.get("status") if body else None
        if not isinstance(job_id, str) or segment_problem(job_id) or not isinstance(status, str):
            raise RemoteError(
                f"{self.name}: {what}: HTTP {response.status_code} without a DeleteJob "
                f"(id, status): {self.api.message(response)}",
                connection=self.name,
            )
        assert body is not None
        return JobHandle(
            remote_id=job_id,
            state=map_status(status, STATUS),
            detail={**_job_detail(body), **extra},
        )


def _location(response: httpx.Response) -> str:
    """Operation-Location without its query (only api-version, but never keep a query)."""
    return str(response.headers.get("operation-location", "")).split("?", 1)[0]


def _job_detail(body: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("id", "status", "createdDateTime", "finishedDateTime", "purgeDateTime", "error")
    return {k: body[k] for k in keys if body.get(k) is not None}


__all__ = ["STATUS", "AdtPurgeTarget"]
