"""Delete Reltio entities with the bulk delete API: one DeleteEntitiesTask per batch.

Each delivery names an entity, by a URI template or by a crosswalk looked up
first (`_byCrosswalk`); one that resolves to nothing is done ("absent") and
never sent. The rest go into one `POST entities/_delete` whose answer is a
task, polled until it ends.

What "done" means: the task ended in success and did not name the entity as
failed. Reltio lists at most 100 failed IDs, and counts an entity that was
already gone as failed too, so the target never guesses from the counts: an
entity the task names, every entity when the count exceeds the list or is
missing, and every entity of a task that failed or was cancelled is read
back one by one
(gone = done, still there = retry).

Every DONE outcome whose entity is gone from the tenant (deleted, or absent
when read) names it in `effect` (`entity_name`), the name a Reltio task
source gives the same entity as `origin`: when the engine later reads this
task as a source, it recognises these deletions as its own. A delivery whose
crosswalk resolves to no entity names none (there is no URI to name).

The API takes no client-chosen id, so after a lost answer the target
recognises its own task among the tenant's delete tasks by the entity URIs
it carries. With crosswalks, entities the task already deleted no longer
resolve: the task must then hold every entity still present, and only
entities now gone besides.

Crosswalk look-ups are the engine's `resolve` step: each result is kept with
the job as it arrives and comes back in `JobSpec.resolved`, so `submit` and
`find` look up only what was never resolved (or was resolved more than
RESOLVED_FOR ago), and `find` then sees exactly the URIs the task was given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from connectors.contract import (
    EXACT_KEYS,
    AmbiguousError,
    Delivery,
    Outcome,
    RemoteError,
    RetriableError,
)
from connectors.kit.handles import HandleKeys
from connectors.kit.http import HttpClient, as_int, excerpt
from connectors.kit.jobs import (
    JobHandle,
    JobProgress,
    JobSpec,
    JobState,
    Keep,
    map_status,
)
from connectors.kit.json_screen import loads
from connectors.kit.keys import KeyTemplate, UnmappedKey
from connectors.kit.paths import path_segment, segment_problem
from connectors.kit.target import HttpTarget
from connectors.reltio.auth import ReltioClient, classify, is_not_found, json_body
from connectors.reltio.reads import entity_present, gather
from connectors.reltio.settings import (
    CrosswalkSettings,
    ReltioConnection,
    ReltioTargetSettings,
    entity_name,
)

DELETE_TASK_TYPE = "com.reltio.businesslogic.tasks.delete.DeleteEntitiesTask"
ENTITY_PREFIX = "entities/"
TASK_PAGE = 100
TASK_PAGES = 5
_URIS = HandleKeys("uris", "the job handle has no entity for this delivery")
"""find() reads at most this many pages of the tenant's delete tasks, newest first."""
ABSENT = "absent"
RESOLVED_FOR = 600.0
"""Seconds a crosswalk look-up kept with its job may be used: a crosswalk moved to another
entity within that time could name the entity it left, as it could between a look-up
and a task reaching it at any time; beyond it, the crosswalk is looked up again."""

STATUS: dict[str, JobState] = {
    "SCHEDULED": JobState.QUEUED,
    "WAITING_FOR_QUEUE": JobState.QUEUED,
    "WAITING_FOR_RESOURCE": JobState.QUEUED,
    "THROTTLING": JobState.QUEUED,
    "PAUSING": JobState.QUEUED,
    "PAUSED": JobState.QUEUED,
    "PROCESSING": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "COMPLETED_WITH_ERRORS": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "PLATFORM_TASK_FAILED": JobState.FAILED,
    "ERROR": JobState.FAILED,
    "CANCELING": JobState.CANCELLED,
    "CANCELED": JobState.CANCELLED,
}
"""Reltio task `status` -> JobState (OPS enum plus support.reltio.com's additions);
anything else is still running. CANCELING is counted as ended: entities the
task did not reach are read back and retried, never waited for."""

T = TypeVar("T")


def entity_uri(text: str) -> str | None:
    """`entities/<id>` from a URI or a bare id; None when it is neither, or when the id
    could not be one path segment (`..` would read `GET {tenant}/`)."""
    text = text.strip()
    entity_id = text.removeprefix(ENTITY_PREFIX)
    if not entity_id or any(ch in entity_id for ch in "/?#") or any(c.isspace() for c in text):
        return None
    if segment_problem(entity_id) is not None:
        return None
    return ENTITY_PREFIX + entity_id


def check_entity_key(key: str) -> None:
    """UnsafeKey when the entity id a key names would address another path; a key that
    is simply not an entity URI is left to `entity_uri`."""
    entity_id = key.strip().removeprefix(ENTITY_PREFIX)
    if entity_id:
        path_segment(entity_id)


def task_object(body: Any) -> dict[str, Any] | None:
    """The task from a `_delete` or `tasks/{id}` answer: an object or a one-element array;
    None without an id that can be read back as one path segment (`tasks/{id}`)."""
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        return None
    return body if segment_problem(body["id"]) is None else None


def is_delete_entities_task(task: Mapping[str, Any]) -> bool:
    kind = task.get("type")
    return isinstance(kind, str) and kind.rsplit(".", 1)[-1] == "DeleteEntitiesTask"


def task_params(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task's parameters: `parameters` in doc examples, `taskParams` in PeriodicTaskTO."""
    params = task.get("parameters") or task.get("taskParams")
    return params if isinstance(params, dict) else {}


def task_uris(task: Mapping[str, Any]) -> set[str] | None:
    """The entity URIs a DeleteEntitiesTask was given, or None for any other task."""
    listed = task_uri_list(task)
    return set(listed) if listed is not None else None


def task_uri_list(task: Mapping[str, Any]) -> list[str] | None:
    """The entity URIs a DeleteEntitiesTask was given, in its order and once each; None for
    any other task and for a task selecting entities by a filter.

    PeriodicTaskTO's `taskParams` values are strings, so a list may arrive
    JSON-encoded; entries that are not entity URIs or ids are left out.
    """
    if not is_delete_entities_task(task):
        return None
    listed = task_params(task).get("entityUriList")
    if isinstance(listed, str):
        try:
            listed = loads(listed)
        except ValueError:
            listed = [part for part in listed.strip("[]").split(",") if part.strip()]
    if not isinstance(listed, list):
        return None
    uris = (entity_uri(str(u).strip().strip('"')) for u in listed)
    return list(dict.fromkeys(u for u in uris if u is not None))


def current_state(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task's `currentState`: an object in every example, a JSON string in PeriodicTaskTO."""
    state = task.get("currentState")
    if isinstance(state, str):
        try:
            state = loads(state)
        except ValueError:
            return {}
    return state if isinstance(state, dict) else {}


@dataclass(frozen=True)
class Plan:
    """Per delivery: the entity URI it deletes, or an outcome known before any task."""

    uris: dict[int, str]
    outcomes: dict[int, Outcome]
    keyed: int
    """Deliveries that produced a key (for crosswalks: whose lookup was attempted)."""

    def uri_list(self) -> list[str]:
        return list(dict.fromkeys(self.uris.values()))

    def detail(self) -> dict[str, Any]:
        return _URIS.detail(self.uris, self.outcomes)


class ReltioDeleteTarget(HttpTarget[ReltioConnection, ReltioTargetSettings]):
    """Deletes the entities deliveries name, one bulk delete task per batch."""

    kind = "reltio_delete"
    key_match = EXACT_KEYS
    """Entity URIs and crosswalk values are compared as they are written."""
    resolved_for = RESOLVED_FOR

    api: ReltioClient

    def client(self, name: str, connection: ReltioConnection) -> HttpClient:
        return connection.http_client(name, base_url=connection.tenant_url, classify=classify)

    def setup(self, connection: ReltioConnection) -> None:
        self.tenant_url = connection.tenant_url
        self._entity: KeyTemplate | None = self.settings.entity_template()
        self._crosswalk: CrosswalkSettings | None = self.settings.crosswalk
        self.api = ReltioClient(self.name, connection, self._http)

    async def population(self) -> int | None:
        """How many active entities the tenant holds (`GET entities/_total`), for the
        mass-delete guard's max_fraction; None when the answer carries no count."""
        path = "/entities/_total"
        response = await self.api.call("GET", path, idempotent=True)
        body = json_body(response)
        if not response.is_success or not isinstance(body, dict):
            raise self.api.remote(f"GET {path}", response)
        return as_int(body.get("total"))

    # -- the AsyncTarget contract ---------------------------------------------------

    async def resolve(self, job: JobSpec, keep: Keep) -> None:
        """Look up the crosswalks not yet resolved for this job, each result kept as it
        arrives; with URI templates there is nothing to look up."""
        if self._crosswalk is None:
            return
        keyed, _ = self._keys(job.items)
        wanted = [k for k in dict.fromkeys(k for _, k in keyed) if k not in job.resolved]

        async def one(value: str) -> None:
            await keep(value, {"uris": await self._lookup(value)})

        await self._gather(wanted, one)

    async def submit(self, job: JobSpec) -> JobHandle:
        try:
            plan = await self._plan(job.items, strict=False, resolved=job.resolved)
        except AmbiguousError as exc:
            # Only lookups (reads) were sent: nothing to find, the batch may simply be sent later.
            raise RetriableError(
                str(exc), connection=self.name, retry_after=exc.retry_after
            ) from None
        uris = plan.uri_list()
        if not uris:
            return JobHandle("", JobState.SUCCEEDED, {**plan.detail(), "task": None})
        path = "/entities/_delete"
        what = f"POST {path}"
        response = await self.api.call(
            "POST",
            path,
            idempotent=False,
            params={
                "mode": self.settings.mode,
                "sendMail": "true" if self.settings.send_mail else "false",
            },
            json={"objects": {"list": uris}},
        )
        if not response.is_success:
            raise self.api.remote(what, response)
        task = task_object(json_body(response))
        if task is None:
            raise AmbiguousError(
                f"{self.name}: {what}: HTTP {response.status_code} without a task (id, "
                f"status): {excerpt(response.text, self._http.secrets)}; the task may exist",
                connection=self.name,
            )
        raw = str(task.get("status") or "")
        return JobHandle(
            task["id"],
            map_status(raw, STATUS),
            {**plan.detail(), "task": task["id"], "status": raw, "mode": self.settings.mode},
        )

    async def find(self, job: JobSpec) -> JobHandle | None:
        """The newest delete task carrying this job's entities. Errors are retriable here:
        the engine must never resubmit on a guess."""
        try:
            return await self._find(job)
        except RemoteError as exc:
            raise RetriableError(
                f"{exc}; cannot tell whether the delete task exists", connection=self.name
            ) from None

    async def _find(self, job: JobSpec) -> JobHandle | None:
        plan = await self._plan(job.items, strict=True, resolved=job.resolved)
        wanted = set(plan.uri_list())
        if not wanted:
            return None
        for task in await self._delete_tasks():
            carried = task_uris(task)
            if carried is None or not await self._carries(carried, wanted, plan):
                continue
            raw = str(task.get("status") or "")
            return JobHandle(
                task["id"],
                map_status(raw, STATUS),
                {
                    **plan.detail(),
                    "task": task["id"],
                    "status": raw,
                    "mode": self.settings.mode,
                    "adopted": True,
                },
            )
        return None

    async def _carries(self, carried: set[str], wanted: set[str], plan: Plan) -> bool:
        if self._crosswalk is None:
            return carried == wanted
        if not wanted <= carried or len(carried) > plan.keyed:
            return False
        extra = sorted(carried - wanted)
        present = await self._gather(extra, self._present)
        return all(value is False for value in present.values())

    async def _delete_tasks(self) -> list[dict[str, Any]]:
        path = "/tasks"
        tasks: list[dict[str, Any]] = []
        for page in range(TASK_PAGES):
            params = {
                "type": DELETE_TASK_TYPE,
                "offset": str(page * TASK_PAGE),
                "max": str(TASK_PAGE),
            }
            response = await self.api.call("GET", path, idempotent=True, params=params)
            body = json_body(response)
            if not response.is_success or not isinstance(body, list):
                raise self.api.remote(f"GET {path}", response)
            tasks.extend(t for t in body if task_object(t) is not None)
            if len(body) < TASK_PAGE:
                break
        return sorted(tasks, key=lambda t: as_int(t.get("createdTime")) or 0, reverse=True)

    async def poll(self, job: JobSpec, handle: JobHandle) -> JobProgress:
        known = handle.detail
        if not handle.remote_id:
            return JobProgress(
                JobState.SUCCEEDED, outcomes=_URIS.outcomes(job, known, {}), detail={"task": None}
            )
        path = f"/tasks/{path_segment(handle.remote_id)}"
        what = f"GET {path}"
        response = await self.api.call("GET", path, idempotent=True)
        if is_not_found(response):
            # Reltio may forget old tasks: what each entity became is read back instead.
            gone = {"error": "Reltio does not know this task (HTTP 404)"}
            return await self._settle(
                job, known, handle.remote_id, gone, JobState.FAILED, "NOT_FOUND"
            )
        task = task_object(json_body(response)) if response.is_success else None
        if task is None:
            raise self.api.remote(what, response)
        raw = task.get("status")
        if not isinstance(raw, str) or not raw:
            state_status = current_state(task).get("status")
            raw = state_status if isinstance(state_status, str) and state_status else ""
        if not raw:
            raise RemoteError(f"{self.name}: {what}: a task without status", connection=self.name)
        state = map_status(raw, STATUS)
        if not state.terminal:
            return JobProgress(
                state,
                detail=_task_detail(task, raw),
                poll_after=self.settings.poll_interval,
                message=raw,
            )
        return await self._settle(job, known, handle.remote_id, task, state, raw)

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """What `submit` would send, read-only: each entity looked up or read."""
        try:
            plan = await self._plan(batch, strict=False)
            uris = plan.uri_list()
            present: dict[str, bool | RemoteError] = (
                dict.fromkeys(uris, True)
                if self._crosswalk is not None
                else await self._gather(uris, self._present)
            )
        except RetriableError as exc:
            return [Outcome.retry(d.delivery_id, str(exc), exc.retry_after) for d in batch]
        outcomes = []
        for d in batch:
            if d.delivery_id in plan.outcomes:
                outcomes.append(plan.outcomes[d.delivery_id])
                continue
            uri = plan.uris[d.delivery_id]
            found = present[uri]
            if isinstance(found, RemoteError):
                outcomes.append(Outcome.retry(d.delivery_id, str(found)))
            elif found:
                outcomes.append(Outcome.done(d.delivery_id, f"would delete {uri}"))
            else:
                outcomes.append(Outcome.done(d.delivery_id, ABSENT, self.effect(uri)))
        return outcomes

    def effect(self, uri: str) -> str:
        """The name a DONE outcome gives the entity it leaves gone (see `entity_name`)."""
        return entity_name(self.tenant_url, uri)

    # -- planning: which entity each delivery deletes ------------------------------

    def _keys(
        self, items: Sequence[Delivery]
    ) -> tuple[list[tuple[Delivery, str]], dict[int, Outcome]]:
        """Each delivery's key (entity URI or crosswalk value), or its dead outcome."""
        outcomes: dict[int, Outcome] = {}
        keyed: list[tuple[Delivery, str]] = []
        template = self._entity or (self._crosswalk.value_template() if self._crosswalk else None)
        assert template is not None
        for d in items:
            try:
                key = template.render(d.fields)
                if self._crosswalk is None:
                    check_entity_key(key)
                else:
                    path_segment(key)
            except UnmappedKey as exc:
                outcomes[d.delivery_id] = Outcome.dead(d.delivery_id, exc.verdict)
            else:
                keyed.append((d, key))
        return keyed, outcomes

    async def _plan(
        self,
        items: Sequence[Delivery],
        *,
        strict: bool,
        resolved: Mapping[str, Any] | None = None,
    ) -> Plan:
        """`strict` (for find) turns a lookup's error into RetriableError instead of a
        per-delivery retry, since a guessed URI set could adopt the wrong task.
        `resolved`: the job's look-ups already made (see `resolve`), used as they are."""
        uris: dict[int, str] = {}
        keyed, outcomes = self._keys(items)
        if self._crosswalk is None:
            for d, key in keyed:
                uri = entity_uri(key)
                if uri is None:
                    outcomes[d.delivery_id] = Outcome.dead(
                        d.delivery_id,
                        f"no key: {key!r} is not a Reltio entity URI or id (entities/<id>)",
                    )
                else:
                    uris[d.delivery_id] = uri
            return Plan(uris, outcomes, len(keyed))
        found: dict[str, list[str] | RemoteError] = dict(_known(resolved or {}))
        missing = [k for k in dict.fromkeys(k for _, k in keyed) if k not in found]
        found.update(await self._gather(missing, self._lookup))
        for d, key in keyed:
            result = found[key]
            if isinstance(result, RemoteError):
                if strict:
                    raise result
                outcomes[d.delivery_id] = Outcome.retry(d.delivery_id, str(result))
            elif not result:
                outcomes[d.delivery_id] = Outcome.done(d.delivery_id, ABSENT)
            elif len(result) > 1:
                outcomes[d.delivery_id] = Outcome.dead(
                    d.delivery_id,
                    f"ambiguous: {len(result)} entities have crosswalk "
                    f"{self._crosswalk.type} {key!r} ({', '.join(result)}); nothing deleted",
                )
            else:
                uris[d.delivery_id] = result[0]
        return Plan(uris, outcomes, len(keyed))

    async def _lookup(self, value: str) -> list[str]:
        """The URIs of the entities holding this crosswalk; [] when none does."""
        assert self._crosswalk is not None
        path = f"/entities/_byCrosswalk/{path_segment(value)}"
        what = f"GET {path}"
        response = await self.api.call(
            "GET", path, idempotent=True, params={"type": self._crosswalk.type}
        )
        if is_not_found(response):
            return []
        body = json_body(response)
        if not response.is_success:
            raise self.api.remote(what, response)
        entries = body if isinstance(body, list) else [body]
        uris: list[str] = []
        for entry in entries:
            entity = entry.get("object", entry) if isinstance(entry, dict) else None
            uri = entity_uri(str(entity.get("uri", ""))) if isinstance(entity, dict) else None
            if uri is None:
                raise RemoteError(
                    f"{self.name}: {what}: an answer without an entity URI: "
                    f"{excerpt(response.text, self._http.secrets)}",
                    connection=self.name,
                )
            uris.append(uri)
        return list(dict.fromkeys(uris))

    async def _present(self, uri: str) -> bool:
        return await entity_present(self.api, uri)

    async def _gather(
        self, keys: Sequence[str], work: Callable[[str], Awaitable[T]]
    ) -> dict[str, T | RemoteError]:
        return await gather(keys, work)

    # -- settling a finished task ----------------------------------------------------

    async def _settle(
        self,
        job: JobSpec,
        known: Mapping[str, Any],
        task_id: str,
        task: Mapping[str, Any],
        state: JobState,
        raw: str,
    ) -> JobProgress:
        current = current_state(task)
        listed_raw = current.get("objectsFailedToDelete")
        listed = {
            uri
            for uri in (
                entity_uri(str(u)) for u in (listed_raw if isinstance(listed_raw, list) else [])
            )
            if uri is not None
        }
        counted = as_int(current.get("objectsFailedToDeleteCount"))
        count = len(listed) if counted is None else counted
        submitted = list(dict.fromkeys(str(u) for u in _URIS.read(known).values()))
        # A doc example of a finished DeleteEntitiesTask carries no failure fields at
        # all: without a count, nothing says the task deleted everything.
        trusted = state is JobState.SUCCEEDED and counted is not None and count <= len(listed)
        to_check = [u for u in submitted if not trusted or u in listed]
        present = await self._gather(to_check, self._present)
        failure = self._failure(task, raw)
        by_uri: dict[str, Outcome] = {}
        for uri in submitted:
            if uri not in present:
                by_uri[uri] = Outcome.done(0, f"deleted by task {task_id}", self.effect(uri))
                continue
            found = present[uri]
            if isinstance(found, RemoteError):
                by_uri[uri] = Outcome.retry(0, f"task {task_id} {raw}; re-check failed: {found}")
            elif not found:
                by_uri[uri] = Outcome.done(
                    0,
                    ABSENT if uri in listed else f"absent after task {task_id}",
                    self.effect(uri),
                )
            elif uri in listed:
                by_uri[uri] = Outcome.retry(
                    0,
                    f"Reltio task {task_id} ({raw}) could not delete {uri}: listed in "
                    f"objectsFailedToDelete ({count} failed in all)",
                )
            elif state is JobState.SUCCEEDED:
                by_uri[uri] = Outcome.retry(
                    0,
                    f"{uri} still present after Reltio task {task_id} ({raw}; {count} failed, "
                    f"{len(listed)} listed)",
                )
            else:
                by_uri[uri] = Outcome.retry(
                    0, f"{uri} still present after Reltio task {task_id} ended {failure}"
                )
        detail = {**_task_detail(task, raw), "task": task_id, "checked": len(present)}
        return JobProgress(
            state,
            outcomes=_URIS.outcomes(job, known, by_uri),
            detail=detail,
            message="" if state is JobState.SUCCEEDED else f"task {task_id} {failure}",
        )

    def _failure(self, task: Mapping[str, Any], raw: str) -> str:
        error = task.get("error") or task.get("internalErrorDetails")
        text = raw if not error else f"{raw}: {error}"
        return excerpt(str(text), self._http.secrets)


def _known(resolved: Mapping[str, Any]) -> dict[str, list[str]]:
    """Crosswalk value -> entity URIs from the job's kept look-ups; an entry of another
    shape is left out, so its crosswalk is looked up again."""
    known: dict[str, list[str]] = {}
    for value, result in resolved.items():
        listed = result.get("uris") if isinstance(result, dict) else None
        if not isinstance(listed, list):
            continue
        uris = [entity_uri(u) if isinstance(u, str) else None for u in listed]
        if all(u is not None for u in uris):
            known[value] = [u for u in uris if u is not None]
    return known


def _task_detail(task: Mapping[str, Any], raw: str) -> dict[str, Any]:
    current = current_state(task)
    detail: dict[str, Any] = {"task": task.get("id"), "status": raw}
    for key in ("numberOfProcessedObjects", "objectsFailedToDeleteCount"):
        if as_int(current.get(key)) is not None:
            detail[key] = as_int(current.get(key))
    listed = current.get("objectsFailedToDelete")
    if isinstance(listed, list):
        detail["objectsFailedToDeleteListed"] = len(listed)
    for key in ("createdTime", "startTime", "endTime", "duration"):
        if task.get(key) is not None:
            detail[key] = task[key]
    return detail


__all__ = [
    "DELETE_TASK_TYPE",
    "STATUS",
    "ReltioDeleteTarget",
    "as_int",
    "current_state",
    "entity_uri",
    "is_delete_entities_task",
    "task_object",
    "task_params",
    "task_uri_list",
    "task_uris",
]
