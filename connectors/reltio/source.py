"""Reading which entities a Reltio DeleteEntitiesTask removed, once the task has ended.

One stream per task (`task-<id>`), read with `GET tasks/{id}` until the task
ends, then once more never: the stream is finished. Reads are repeatable
(the task and the entities are read, nothing is changed), so a call whose
answer was never journaled is simply made again.

What is reported: the entities the task was asked to delete (its
`entityUriList`, in its order) minus those it failed to delete, and only
ones this source can vouch for, in pages of at most CHUNK_RECORDS (each
page's entities read back, when they must be, just before it is handed
over). Reltio lists at most 100 failed IDs, counts an entity that was
already gone as failed too, and a task that failed or was cancelled says
nothing about how far it got. So the failure list is trusted only when it is
complete (its count equals its length) on a task that completed; otherwise
every asked entity not named as failed is read back, and only those Reltio
answers "not found" for are reported. An entity that could not be read makes
the read retriable from there on (the pages before it stand, and the next
read's copy of them is dropped by the journal): reporting it would risk
propagating a deletion that never happened, leaving it out would lose one.

Filter-based tasks (`objects.filter`, optionally with an `excludeList`) are
never sources. The task records the filter, not the entities it matched,
and its `objectsFailedToDelete` names only failures: which entities it
removed is written nowhere (bulk tasks do not even reach the activity log by
default). Re-running the filter afterwards would "find" entities deleted by
anyone, or miss entities whose attributes changed, so such a task finishes
its stream with no records and a problem saying why.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx

from connectors.contract import (
    CHUNK_RECORDS,
    JSON,
    MalformedAnswer,
    RemoteError,
    RetriableError,
    SourcePage,
    SourceRecord,
)
from connectors.kit.http import HttpClient, excerpt
from connectors.kit.jobs import JobState, map_status
from connectors.kit.json_screen import DuplicateKey, loads
from connectors.kit.paths import path_segment
from connectors.kit.source import Pages
from connectors.kit.task_streams import TaskSourceBase, TaskStreams
from connectors.reltio.auth import ReltioClient, classify, is_not_found
from connectors.reltio.reads import entity_present, gather
from connectors.reltio.settings import (
    ReltioConnection,
    ReltioSourceSettings,
    entity_name,
    task_id_problem,
)
from connectors.reltio.target import (
    STATUS,
    as_int,
    current_state,
    entity_uri,
    is_delete_entities_task,
    task_object,
    task_params,
    task_uri_list,
)

STREAM_PREFIX = "task-"
NOT_FOUND = "NOT_FOUND"
"""The cursor's `status` for a task Reltio does not know."""
FILTER_EXCERPT = 120
ERROR_EXCERPT = 200


class ReltioTaskSource(TaskSourceBase[ReltioConnection, ReltioSourceSettings]):
    """The entities Reltio DeleteEntitiesTasks deleted, one stream per task.

    Cursor of a stream: `{"finished": false, "status": <raw>}` while the task
    runs, then `{"finished": true, "status": <raw>, "deleted": n, "failed": k}`
    where n entities were reported and k asked entities were not (named as
    failed, or still present when read back).
    """

    kind = "reltio_tasks"
    param = "task"

    def client(self) -> HttpClient:
        return self.connection.http_client(
            self.name, base_url=self.connection.tenant_url, classify=classify
        )

    def naming(self) -> TaskStreams:
        return TaskStreams(self.name, STREAM_PREFIX, "Reltio task", task_id_problem)

    def listed(self) -> list[str]:
        return self.settings.tasks

    def opened(self) -> None:
        self.api = ReltioClient(self.name, self.connection, self.http)

    # -- reading one task --------------------------------------------------------------

    async def read(
        self, stream: str, task_id: str, params: Mapping[str, Any]
    ) -> AsyncGenerator[SourcePage, None]:
        path = f"/tasks/{path_segment(task_id)}"
        what = f"GET {path}"
        response = await self.api.call("GET", path, idempotent=True)
        if is_not_found(response):
            yield _ended(
                NOT_FOUND,
                problem=f"Reltio does not know task {task_id} (HTTP 404); nothing read — "
                "check the task id",
            )
            return
        task = task_object(self._task_body(what, response)) if response.is_success else None
        if task is None:
            raise self.api.remote(what, response)
        if task["id"] != task_id:
            raise RemoteError(
                f"{self.name}: {what}: answered task {task['id']!r}", connection=self.name
            )
        raw = _status(task)
        if not raw:
            raise RemoteError(f"{self.name}: {what}: a task without status", connection=self.name)
        if not is_delete_entities_task(task):
            kind = task.get("type")
            shown = excerpt(str(kind), self.http.secrets) if kind else "task without a type"
            yield _ended(
                raw,
                problem=f"task {task_id} is a {shown}, not a DeleteEntitiesTask: it deletes "
                "no entities this source can name; nothing read",
            )
            return
        asked = task_uri_list(task)
        if asked is None:
            yield _ended(
                raw,
                problem=f"task {task_id} deleted the entities matching a filter "
                f"({self._selection(task)}); Reltio's task does not list which entities it "
                "removed, so none are reported (a guess could propagate deletions that never "
                "happened)",
            )
            return
        state = map_status(raw, STATUS)
        if not state.terminal:
            yield SourcePage(records=[], cursor={"finished": False, "status": raw})
            return
        pages = Pages(CHUNK_RECORDS)
        candidates, complete = self._candidates(task, asked, state)
        for start in range(0, len(candidates), pages.size):
            part = candidates[start : start + pages.size]
            gone = part if complete else await self._gone(task, part)
            for uri in gone:
                page = pages.add(self._record(stream, task_id, task, raw, uri))
                if page is not None:
                    yield page
        problem = ""
        if state is not JobState.SUCCEEDED:
            problem = (
                f"task {task_id} ended {raw}{self._error(task)}; {pages.handed} of {len(asked)} "
                "entities are gone and reported"
            )
        yield pages.last(
            _ended_cursor(raw, pages.handed, len(asked) - pages.handed), problem=problem
        )

    def _task_body(self, what: str, response: httpx.Response) -> Any:
        """The task as JSON, None when it is not JSON. A key given twice (two statuses,
        two entity lists) makes the answer malformed: which one counts is a guess."""
        try:
            return loads(response.content, unique_keys=True)
        except DuplicateKey as exc:
            raise MalformedAnswer(
                f"{self.name}: {what}: a malformed answer: {exc}; nothing of it is used",
                connection=self.name,
            ) from None
        except ValueError:
            return None

    def _candidates(
        self, task: Mapping[str, Any], asked: list[str], state: JobState
    ) -> tuple[list[str], bool]:
        """The asked entities not named as failed, in the task's order, and whether they
        are all gone: the failure list is complete (only on a task that succeeded)."""
        current = current_state(task)
        listed_raw = current.get("objectsFailedToDelete")
        listed_raw = listed_raw if isinstance(listed_raw, list) else []
        listed = [entity_uri(str(u)) for u in listed_raw]
        failed = {u for u in listed if u is not None}
        counted = as_int(current.get("objectsFailedToDeleteCount"))
        complete = (
            state is JobState.SUCCEEDED
            and counted is not None
            and counted == len(listed_raw)
            and None not in listed
        )
        return [u for u in asked if u not in failed], complete

    async def _gone(self, task: Mapping[str, Any], candidates: list[str]) -> list[str]:
        """The candidates read back as gone, in order; RetriableError when one of them
        cannot be read."""
        present = await gather(candidates, lambda uri: entity_present(self.api, uri))
        unreadable = [(u, r) for u, r in present.items() if isinstance(r, RemoteError)]
        if unreadable:
            uri, error = unreadable[0]
            raise RetriableError(
                f"{self.name}: task {task.get('id')}: cannot tell whether {len(unreadable)} "
                f"entities are gone (e.g. {uri}: {error}); nothing more reported, the task is "
                "read again next run",
                connection=self.name,
            )
        return [u for u in candidates if present[u] is False]

    def _record(
        self, stream: str, task_id: str, task: Mapping[str, Any], raw: str, uri: str
    ) -> SourceRecord:
        mode = task_params(task).get("mode")
        return SourceRecord(
            stream=stream,
            key=uri,
            fields={
                "uri": uri,
                "entity_id": uri.removeprefix("entities/"),
                "task": task_id,
                "mode": str(mode) if mode is not None else None,
                "task_status": raw,
            },
            origin=entity_name(self.connection.tenant_url, uri),
        )

    def _selection(self, task: Mapping[str, Any]) -> str:
        """The filter a task selected its entities with, shortened for a message."""
        params = task_params(task)
        text = params.get("filter")
        if not text and params.get("entityType"):
            text = f"entity type {params['entityType']}"
        if not text:
            text = "no entityUriList in its parameters"
        excluded = params.get("excludeList")
        if excluded:
            text = f"{text}, excludeList {excluded}"
        return excerpt(str(text), self.http.secrets, FILTER_EXCERPT)

    def _error(self, task: Mapping[str, Any]) -> str:
        error = task.get("error") or task.get("internalErrorDetails")
        return f": {excerpt(str(error), self.http.secrets, ERROR_EXCERPT)}" if error else ""


def _status(task: Mapping[str, Any]) -> str:
    raw = task.get("status")
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    fallback = current_state(task).get("status")
    return fallback.strip() if isinstance(fallback, str) else ""


def _ended(status: str, *, problem: str) -> SourcePage:
    """The one page of a task that names no entity to report."""
    return SourcePage(records=[], cursor=_ended_cursor(status, 0, 0), problem=problem)


def _ended_cursor(status: str, deleted: int, failed: int) -> JSON:
    return {"finished": True, "status": status, "deleted": deleted, "failed": failed}


__all__ = ["NOT_FOUND", "STREAM_PREFIX", "ReltioTaskSource"]
