"""A stateful emulator of the Reltio tenant API calls a bulk delete needs.

Emulated (apis.md section 2 and the OPS spec `Data Operation.json`):

    POST /oauth/token                                  Basic client credentials;
         grant_type (client_credentials | password | refresh_token) in the form
         body or the query string, as Reltio's own client sends it
    GET  /reltio/api/{tenant}/entities/{id}
    GET  /reltio/api/{tenant}/entities/_total[?filter=equals(type,'...')&activeness=]
         answers `{"total": N}` (OPS `getTotalByTenant`, schema TotalResult): the
         active entities; the emulator keeps no expired ones, so `not_active` is 0
    GET  /reltio/api/{tenant}/entities/_byCrosswalk/{value}?type=<source type>
         answers `[{"index": 0, "object": <entity>}]` as in the OPS spec, or the
         bare entity (knob crosswalk_answer="entity"); 404 when none has it
    POST /reltio/api/{tenant}/entities/_delete?mode=soft|hard&sendMail=
         body {"objects": {"list" | "uriList" | "uris": [...]}} or
         {"objects": {"filter": "equals(type,'configuration/entityTypes/X')",
         "excludeList": [...]}}; schedules a DeleteEntitiesTask and answers it,
         as a one-element array by default (older doc pages) or as the object
    GET  /reltio/api/{tenant}/tasks?type=&status=&offset=&max=   newest first
    GET  /reltio/api/{tenant}/tasks/{id}

A task is SCHEDULED, PROCESSING after `step_seconds`, and COMPLETED (or
COMPLETED_WITH_ERRORS) after twice that, computed lazily from the clock
whenever the state is read; the deletions apply at that moment, tasks in the
order they come due. An entity the task cannot delete (protected, or already
absent) is counted in `objectsFailedToDeleteCount`; only the first 100 IDs are
listed in `objectsFailedToDelete`, as the doc says, which is why a client must
re-check entities itself when the count exceeds the list. A task shows what it
was asked in `parameters` (or `taskParams`): `entityUriList`, or `filter` and
`excludeList`, so a reader of the task alone can tell which entities it
concerned.

Errors use Reltio's APIErrorRepresentation (`severity`, `errorMessage`,
`errorCode`, `errorDetailMessage`); OAuth errors use `error` and
`error_description`:

| situation                                   | HTTP | body                      |
|---------------------------------------------|------|---------------------------|
| token: no or bad client credentials         | 401  | error unauthorized        |
| token: bad username or password, bad        | 400  | error invalid_grant       |
|  refresh token                              |      |                           |
| token: missing or unknown grant_type        | 400  | error unsupported_grant_type |
| data call without a bearer token            | 401  | error unauthorized        |
| data call with an unknown or expired token  | 401  | error invalid_token       |
| unknown tenant (ASSUME: no public example)  | 403  | errorCode 804             |
| unknown entity, crosswalk or task           | 404  | errorCode 101             |
| body is not JSON                            | 400  | errorCode 150             |
| no `objects`, bad list, bad mode, a filter  | 400  | errorCode 100 (ASSUME)    |
|  other than equals(type,'...')              |      |                           |
| backpressure (knob backpressure_next)       | 503  | errorCode 2001            |
| entity read broken (knob read_errors)       | any  | errorCode 0 (ASSUME)      |
| look-up broken (knob lookup_errors)         | any  | errorCode 0 (ASSUME)      |
| throttled (fault knob throttle_rate)        | 429  | no Retry-After (knob)     |

Ground truth and the admin routes are never faulted:

    POST /_admin/seed     {"entities": [{"id", "type", "attributes", "crosswalks"}]}
    POST /_admin/protect  {"uris": [...]}  these entities refuse deletion
    GET  /_admin/entities                  the entities still present
    GET  /_admin/deleted                   [{uri, type, crosswalks, mode, task, at}], once each
    GET  /_admin/tasks                     every task, newest first
    POST /_admin/task_status {"id", "status", "error"?, "processed"?}  force a status
                                           (null: back to the clock); `error` is the
                                           task's error text, `processed` the number of
                                           its entities a FAILED or CANCELED task reached
    POST /_admin/delete_task  {"uris": [...]} or {"filter": "equals(type,'..')",
                              "excludeList": [...]}, optional "mode", "created_by":
                                           start a DeleteEntitiesTask as an operator
                                           would, without a token (a task the engine
                                           did not start, for a task source to read)
    POST /_admin/expire_tokens             every access token stops working
    POST /_admin/step     {"seconds": x}   move the emulator's clock forward
    GET|PUT /_admin/settings               the `Knobs` (task timing, answer shapes...)
    POST /_admin/reset                     entities, tasks, tokens and ground truth cleared
    GET|PUT /_admin/faults, GET|DELETE /_admin/requests  (connectors.emulation.kit)
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.emulation.admin import (
    SteppedEmulator,
    Unknown,
    admin_get,
    admin_post,
    dicts,
    settled,
)
from connectors.emulation.kit import DEMO_PEOPLE, Faults, apply_settings, run_alone

DELETE_TASK_TYPE = "com.reltio.businesslogic.tasks.delete.DeleteEntitiesTask"
FAILED_LIST_LIMIT = 100
INDIVIDUAL = "configuration/entityTypes/Individual"
GOOSE = "configuration/sources/GOOSE"
ERP = "configuration/sources/ERP"
BASE = "/reltio/api/{tenant}"
TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELED", "PLATFORM_TASK_FAILED"}
_TYPE_FILTER = re.compile(r"^\s*equals\(\s*type\s*,\s*'([^']+)'\s*\)\s*$")
_ID_CHARS = string.ascii_letters + string.digits


def _demo_ids(count: int) -> list[str]:
    rng = random.Random(360)
    return ["".join(rng.choice(_ID_CHARS) for _ in range(7)) for _ in range(count)]


DEMO_IDS = tuple(_demo_ids(len(DEMO_PEOPLE)))
"""Entity ids of the demo seed, fixed so a demo's output is the same every time."""


def demo_entities() -> list[dict[str, Any]]:
    """Individuals with a GOOSE crosswalk "0-1".."0-15" (Goose's demo RECORD_IDs; Goose
    reports the first twelve as deleted) and an ERP crosswalk (the user name)."""
    entities = []
    for n, ((user, name), entity_id) in enumerate(zip(DEMO_PEOPLE, DEMO_IDS, strict=True), 1):
        first, _, last = name.partition(" ")
        entities.append(
            {
                "id": entity_id,
                "type": INDIVIDUAL,
                "attributes": {
                    "FirstName": [{"value": first}],
                    "LastName": [{"value": last}],
                    "UserName": [{"value": user}],
                },
                "crosswalks": [{"type": GOOSE, "value": f"0-{n}"}, {"type": ERP, "value": user}],
            }
        )
    return entities


@dataclass
class Knobs:
    """Behaviour switches, changed in place by tests or `PUT /_admin/settings`."""

    step_seconds: float = 0.5
    answer_as_array: bool = True
    task_params_field: Literal["parameters", "taskParams"] = "parameters"
    """`parameters` as the doc examples; `taskParams` (string values) as PeriodicTaskTO."""
    crosswalk_answer: Literal["entries", "entity"] = "entries"
    token_lifetime: float = 3600.0
    backpressure_next: int = 0
    """The next this many data calls answer 503 errorCode 2001, unapplied."""
    failure_fields: Literal["always", "when_failed"] = "always"
    """`when_failed` leaves objectsFailedToDelete* out of a task without failures, as a
    doc example of a finished DeleteEntitiesTask does."""
    retry_after_header: bool = False
    """The spec defines no Retry-After on 429; the fault kit sends one unless this is off."""
    read_errors: dict[str, int] = field(default_factory=dict)
    """Entity URI -> HTTP status (400..599) its `GET` answers: an entity that cannot be
    read back while the rest of the tenant answers."""
    lookup_errors: dict[str, int] = field(default_factory=dict)
    """Crosswalk value -> HTTP status (400..599) its `_byCrosswalk` look-up answers: one
    look-up failing while the others answer."""

    def update(self, values: Mapping[str, Any]) -> None:
        checks: dict[str, Callable[[Any], bool]] = {
            "step_seconds": lambda v: _number(v) and v >= 0,
            "answer_as_array": lambda v: isinstance(v, bool),
            "task_params_field": lambda v: v in ("parameters", "taskParams"),
            "crosswalk_answer": lambda v: v in ("entries", "entity"),
            "failure_fields": lambda v: v in ("always", "when_failed"),
            "token_lifetime": lambda v: _number(v) and v > 0,
            "backpressure_next": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "retry_after_header": lambda v: isinstance(v, bool),
            "read_errors": _read_errors,
            "lookup_errors": _read_errors,
        }
        apply_settings(self, values, checks)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_errors(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 400 <= v <= 599
        for k, v in value.items()
    )


class BadTaskRequest(ValueError):
    """A delete request the emulator refuses (HTTP 400 errorCode 100 on the vendor route)."""


@dataclass
class Task:
    id: str
    created: float
    step: float
    mode: str
    send_mail: bool
    created_by: str
    uris: list[str] | None = None
    filter_type: str | None = None
    filter: str = ""
    exclude: list[str] = field(default_factory=list)
    forced: str | None = None
    error: str | None = None
    applied_at: float | None = None
    deleted: int = 0
    failed: list[str] = field(default_factory=list)

    @property
    def due(self) -> float:
        return self.created + 2 * self.step


@dataclass(frozen=True)
class DeletedEntity:
    uri: str
    type: str
    crosswalks: list[dict[str, Any]]
    mode: str
    task: str
    at: str


@dataclass
class _Token:
    principal: str
    expires: float


class ReltioEmulator(SteppedEmulator):
    """One tenant's entities and delete tasks behind Reltio's routes, safe across threads.

    `clock` gives seconds since the epoch; `step()` moves it forward, so tests
    can walk a task through its states without sleeping.
    """

    knobs: Knobs
    issues_tokens = True
    _tokens: dict[str, _Token]
    seed_usage = 'send {"entities": [{...}, ...]}'

    def __init__(
        self,
        tenant: str = "TENANT",
        clients: Mapping[str, str] | None = None,
        users: Mapping[str, str] | None = None,
        step_seconds: float = 0.5,
        *,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenant = tenant
        self.clients = dict(clients if clients is not None else {"syncengine": "secret"})
        self.users = dict(users or {})
        super().__init__(faults)
        self.knobs = Knobs(step_seconds=step_seconds)
        self.clock = clock
        self._entities: dict[str, dict[str, Any]] = {}
        self._protected: set[str] = set()
        self._deleted: list[DeletedEntity] = []
        self._tasks: dict[str, Task] = {}
        self._refresh: dict[str, str] = {}

    def is_mutating(self, method: str, path: str) -> bool:
        return method == "POST" and path.rstrip("/").endswith("/entities/_delete")

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return _RetryAfterFilter(app, self.knobs)

    def now(self) -> float:
        return self.clock() + self._offset

    def now_json(self) -> float:
        return self.now()

    # -- ground truth and admin helpers (also served under /_admin) ----------

    def seed(self, entities: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Add entities: `id` (or `uri`), `type`, `attributes`, `crosswalks`."""
        added = []
        with self._lock:
            for given in entities:
                entity_id = str(given.get("id") or "").strip() or _new_id()
                uri = str(given.get("uri") or f"entities/{entity_id}")
                entity = {
                    "uri": uri,
                    "type": str(given.get("type") or INDIVIDUAL),
                    "createdTime": int(self.now() * 1000),
                    "attributes": dict(given.get("attributes") or {}),
                    "crosswalks": [
                        {"type": str(c["type"]), "value": str(c["value"])}
                        for c in given.get("crosswalks") or []
                    ],
                }
                self._entities[uri] = entity
                added.append(json.loads(json.dumps(entity)))
        return added

    def protect(self, uris: Iterable[str]) -> int:
        """These entities refuse deletion (a task lists them as failed)."""
        with self._lock:
            self._protected.update(uris)
            return len(self._protected)

    @settled
    def entities(self) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(e)) for e in self._entities.values()]

    @settled
    def deleted(self) -> list[DeletedEntity]:
        return list(self._deleted)

    @settled
    def tasks(self) -> list[dict[str, Any]]:
        """Every task as the API shows it, newest first."""
        ordered = sorted(self._tasks.values(), key=lambda t: t.created, reverse=True)
        return [self._task_json(t) for t in ordered]

    @settled
    def task(self, task_id: str) -> dict[str, Any] | None:
        task = self._tasks.get(task_id)
        return self._task_json(task) if task is not None else None

    def force_status(
        self,
        task_id: str,
        status: str | None,
        *,
        error: str | None = None,
        processed: int | None = None,
    ) -> dict[str, Any]:
        """Show `status` from now on; COMPLETED applies the deletions first, FAILED and
        CANCELED stop a task that has not applied them, after its first `processed`
        entities when given (a task that failed half-way). None returns to the clock.

        `error` is shown as the task's `error` (PeriodicTaskTO) while it has ended.
        """
        upper = status.upper() if status is not None else None
        stops = upper in TERMINAL and not (upper or "").startswith("COMPLETED")
        if processed is not None and (not stops or processed < 0):
            raise BadTaskRequest(
                "processed (>= 0) goes with a status that ends a task unfinished, "
                f"e.g. FAILED or CANCELED, not {status!r}"
            )
        with self._lock:
            self._advance()
            task = self._tasks[task_id]
            completes = upper is not None and upper.startswith("COMPLETED")
            if completes and task.applied_at is None:
                self._apply(task, self.now())
            elif processed is not None and task.applied_at is None:
                self._apply(task, self.now(), limit=processed)
            task.forced = upper
            if upper is None:
                task.error = None
            elif error is not None:
                task.error = error
            return self._task_json(task)

    def create_task(
        self,
        *,
        uris: Sequence[str] | None = None,
        filter_text: str | None = None,
        exclude: Sequence[str] = (),
        mode: str = "soft",
        created_by: str = "operator",
    ) -> dict[str, Any]:
        """Start a DeleteEntitiesTask as an operator would (the engine did not start it):
        `uris`, or `filter_text` equals(type,'...') with `exclude`. Raises BadTaskRequest."""
        objects: dict[str, Any] = (
            {"list": list(uris)}
            if uris is not None
            else {"filter": filter_text, "excludeList": list(exclude)}
        )
        task = self._new_task(objects, mode, False, created_by)
        return self._schedule(task)

    def _new_task(self, objects: Any, mode: str, send_mail: bool, created_by: str) -> Task:
        """The task a `_delete` body asks for; BadTaskRequest says what is wrong."""
        if mode not in ("soft", "hard"):
            raise BadTaskRequest(f"Invalid value of parameter mode: {mode}")
        if not isinstance(objects, dict):
            raise BadTaskRequest("The request must have an 'objects' property")
        listed = next((objects[k] for k in ("list", "uriList", "uris") if k in objects), None)
        task = Task(
            id=str(uuid.uuid4()),
            created=0.0,
            step=self.knobs.step_seconds,
            mode=mode,
            send_mail=send_mail,
            created_by=created_by,
        )
        if listed is not None:
            if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
                raise BadTaskRequest("objects.list must be an array of entity URIs")
            if not listed:
                raise BadTaskRequest("objects.list is empty")
            task.uris = list(listed)
            return task
        text = objects.get("filter")
        exclude = objects.get("excludeList", [])
        match = _TYPE_FILTER.match(text) if isinstance(text, str) else None
        if match is None:
            raise BadTaskRequest(
                "The emulator supports objects.list or a filter equals(type,'...') only"
            )
        if not isinstance(exclude, list) or not all(isinstance(u, str) for u in exclude):
            raise BadTaskRequest("objects.excludeList must be an array of entity URIs")
        task.filter, task.filter_type, task.exclude = str(text), match.group(1), exclude
        return task

    def _schedule(self, task: Task) -> dict[str, Any]:
        with self._lock:
            self._advance()
            task.created = self.now()
            self._tasks[task.id] = task
            return self._task_json(task)

    def expire_tokens(self) -> int:
        with self._lock:
            self._refresh.clear()
            return super().expire_tokens()

    def clear(self) -> None:
        self._entities.clear()
        self._protected.clear()
        self._deleted.clear()
        self._tasks.clear()
        self._refresh.clear()
        self._offset = 0.0

    # -- task lifecycle (callers hold the lock) ---------------------------------------

    def _advance(self) -> None:
        now = self.now()
        pending = [
            t
            for t in self._tasks.values()
            if t.applied_at is None and t.forced is None and t.due <= now
        ]
        for task in sorted(pending, key=lambda t: (t.due, t.created)):
            self._apply(task, task.due)

    def _apply(self, task: Task, at: float, limit: int | None = None) -> None:
        if task.uris is not None:
            targets = list(dict.fromkeys(task.uris))
        else:
            targets = [
                uri
                for uri, e in self._entities.items()
                if e["type"] == task.filter_type and uri not in task.exclude
            ]
        if limit is not None:
            targets = targets[:limit]
        when = datetime.fromtimestamp(at, UTC).isoformat()
        for uri in targets:
            entity = self._entities.get(uri)
            if entity is None or uri in self._protected:
                task.failed.append(uri.removeprefix("entities/"))
                continue
            del self._entities[uri]
            task.deleted += 1
            self._deleted.append(
                DeletedEntity(uri, entity["type"], entity["crosswalks"], task.mode, task.id, when)
            )
        task.applied_at = at

    def _status(self, task: Task) -> str:
        if task.forced is not None:
            return task.forced
        if task.applied_at is not None:
            return "COMPLETED_WITH_ERRORS" if task.failed else "COMPLETED"
        if self.now() >= task.created + task.step:
            return "PROCESSING"
        return "SCHEDULED"

    def _task_json(self, task: Task) -> dict[str, Any]:
        status = self._status(task)
        now = self.now()
        started = task.created + task.step
        ended = task.applied_at if status.startswith("COMPLETED") else None
        if ended is None and status in TERMINAL:
            ended = now
        params: dict[str, Any] = {"tenantId": self.tenant, "mode": task.mode}
        if task.send_mail:
            params["sendMail"] = True
        if task.uris is not None:
            params["entityUriList"] = list(task.uris)
            name = f"{task.mode.capitalize()} Delete Entities"
        else:
            params["entityType"] = (task.filter_type or "").rsplit("/", 1)[-1]
            params["filter"] = task.filter
            if task.exclude:
                params["excludeList"] = list(task.exclude)
            name = f"{task.mode.capitalize()} Delete Entities By Type: {task.filter_type}"
        if self.knobs.task_params_field == "taskParams":
            params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
        state: dict[str, Any] = {}
        if task.applied_at is not None:
            state = {
                "numberOfProcessedObjects": task.deleted,
                "objectsFailedToDeleteCount": len(task.failed),
                "objectsFailedToDelete": task.failed[:FAILED_LIST_LIMIT],
                "entityType": task.filter_type or "all types",
                "numberOfFailedToPublishEvents": 0,
                "status": "Completed",
            }
            if not task.failed and self.knobs.failure_fields == "when_failed":
                del state["objectsFailedToDeleteCount"], state["objectsFailedToDelete"]
        elif status == "PROCESSING":
            state = {"numberOfProcessedObjects": 0, "status": "Processing"}
        body: dict[str, Any] = {
            "id": task.id,
            "groupId": task.id,
            "createdBy": task.created_by,
            "createdTime": int(task.created * 1000),
            "updatedBy": task.created_by,
            "updatedTime": int(min(now, ended or now) * 1000),
            "type": DELETE_TASK_TYPE,
            "status": status,
            "name": name,
            "createdOnHost": "reltio-emulator",
            "parallelExecution": False,
            self.knobs.task_params_field: params,
            "currentState": state,
        }
        if now >= started or ended is not None:
            body["startTime"] = int(min(started, ended or started) * 1000)
        if task.error is not None and status in TERMINAL | {"ERROR", "CANCELING"}:
            body["error"] = task.error
        if ended is not None:
            body["endTime"] = int(ended * 1000)
            took = max(0.0, ended - task.created)
            body["duration"] = f"{took:.0f}s"
            body["throughput"] = round(task.deleted / took, 6) if took else float(task.deleted)
        return body

    # -- vendor routes ---------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return self._vendor_routes() + self._admin_routes()

    def _vendor_routes(self) -> list[BaseRoute]:
        return [
            Route("/oauth/token", self._token, methods=["POST"]),
            Route(
                f"{BASE}/entities/_byCrosswalk/{{value:path}}", self._by_crosswalk, methods=["GET"]
            ),
            Route(f"{BASE}/entities/_delete", self._delete, methods=["POST"]),
            Route(f"{BASE}/entities/_total", self._total, methods=["GET"]),
            Route(f"{BASE}/entities/{{id}}", self._entity, methods=["GET"]),
            Route(f"{BASE}/tasks", self._list_tasks, methods=["GET"]),
            Route(f"{BASE}/tasks/{{id}}", self._get_task, methods=["GET"]),
        ]

    async def _token(self, request: Request) -> Response:
        client = _basic_client(request.headers.get("authorization", ""))
        if client is None or self.clients.get(client[0]) != client[1]:
            return _oauth_error(
                401, "unauthorized", "Full authentication is required to access this resource"
            )
        form = dict(request.query_params)
        form.update(parse_qsl((await request.body()).decode("utf-8", "replace")))
        grant = form.get("grant_type", "")
        with self._lock:
            if grant == "client_credentials":
                principal = client[0]
            elif grant == "password":
                username = form.get("username", "")
                if username not in self.users or self.users[username] != form.get("password"):
                    return _oauth_error(400, "invalid_grant", "Invalid Username or Password")
                principal = username
            elif grant == "refresh_token":
                known = self._refresh.get(form.get("refresh_token", ""))
                if known is None:
                    return _oauth_error(400, "invalid_grant", "Invalid refresh token")
                principal = known
            else:
                return _oauth_error(
                    400, "unsupported_grant_type", f"Unsupported grant type: {grant}"
                )
            token, refresh = str(uuid.uuid4()), str(uuid.uuid4())
            lifetime = self.knobs.token_lifetime
            self._tokens[token] = _Token(principal, self.now() + lifetime)
            self._refresh[refresh] = principal
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "bearer",
                "refresh_token": refresh,
                "expires_in": int(lifetime),
                "scope": "clients_api configuration_api entities_api",
            }
        )

    def _authorize(self, request: Request) -> tuple[str, Response | None]:
        """(principal, None) or ("", the error answer); holds no lock."""
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return "", _oauth_error(
                401, "unauthorized", "Full authentication is required to access this resource"
            )
        token = auth.removeprefix("Bearer ").strip()
        with self._lock:
            known = self._tokens.get(token)
            if known is not None and known.expires <= self.now():
                del self._tokens[token]
                known = None
            backpressure = self.knobs.backpressure_next > 0
            if known is not None and backpressure:
                self.knobs.backpressure_next -= 1
        if known is None:
            return "", _oauth_error(401, "invalid_token", f"Token is invalid: {token}")
        if request.path_params.get("tenant") != self.tenant:
            return "", _error(
                403, 804, "Security error. This endpoint is forbidden for current user."
            )
        if backpressure:
            return "", _error(
                503,
                2001,
                "Internal application error.",
                "Too many requests in parallel: API backpressure",
            )
        return known.principal, None

    async def _entity(self, request: Request) -> Response:
        _, refused = self._authorize(request)
        if refused is not None:
            return refused
        uri = f"entities/{request.path_params['id']}"
        broken = self.knobs.read_errors.get(uri)
        if broken is not None:
            return _error(broken, 0, f"Emulated failure reading {uri}")
        with self._lock:
            self._advance()
            entity = self._entities.get(uri)
            answer = json.loads(json.dumps(entity)) if entity is not None else None
        if answer is None:
            return _not_found(uri)
        return JSONResponse(answer)

    async def _total(self, request: Request) -> Response:
        _, refused = self._authorize(request)
        if refused is not None:
            return refused
        text = request.query_params.get("filter")
        match = _TYPE_FILTER.match(text) if text is not None else None
        if text is not None and match is None:
            return _error(400, 100, "The emulator supports a filter equals(type,'...') only")
        activeness = request.query_params.get("activeness", "active")
        if activeness not in ("all", "active", "not_active"):
            return _error(400, 100, f"Unknown activeness {activeness!r}")
        with self._lock:
            self._advance()
            total = sum(
                1
                for e in self._entities.values()
                if activeness != "not_active" and (match is None or e["type"] == match.group(1))
            )
        return JSONResponse({"total": total})

    async def _by_crosswalk(self, request: Request) -> Response:
        _, refused = self._authorize(request)
        if refused is not None:
            return refused
        value = request.path_params["value"]
        broken = self.knobs.lookup_errors.get(value)
        if broken is not None:
            return _error(broken, 0, f"Emulated failure looking up crosswalk {value}")
        source = request.query_params.get("type", "")
        if not source:
            return _error(400, 100, "Parameter 'type' is required")
        if not source.startswith("configuration/sources/"):
            source = f"configuration/sources/{source}"
        with self._lock:
            self._advance()
            found = [
                json.loads(json.dumps(e))
                for e in self._entities.values()
                if any(c["type"] == source and c["value"] == value for c in e["crosswalks"])
            ]
        if not found:
            return _not_found(f"crosswalk {source}/{value}")
        if self.knobs.crosswalk_answer == "entity":
            return JSONResponse(found[0])
        return JSONResponse([{"index": i, "object": e} for i, e in enumerate(found)])

    async def _delete(self, request: Request) -> Response:
        principal, refused = self._authorize(request)
        if refused is not None:
            return refused
        mode = request.query_params.get("mode", "soft").lower()
        send_mail = request.query_params.get("sendMail", "false").lower() == "true"
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(
                400,
                150,
                "Failed to parse content as JSON",
                "Expecting request content in JSON format, failed to parse.",
            )
        objects = body.get("objects") if isinstance(body, dict) else None
        try:
            task = self._new_task(objects, mode, send_mail, principal)
        except BadTaskRequest as exc:
            return _error(400, 100, str(exc))
        answer = self._schedule(task)
        return JSONResponse([answer] if self.knobs.answer_as_array else answer)

    async def _list_tasks(self, request: Request) -> Response:
        _, refused = self._authorize(request)
        if refused is not None:
            return refused
        query = request.query_params
        try:
            offset = int(query.get("offset", "0"))
            limit = int(query.get("max", "50"))
        except ValueError:
            return _error(400, 100, "offset and max must be integers")
        if offset < 0 or limit <= 0:
            return _error(400, 2001, "Internal application error.", "'max' must be > 0")
        wanted_type = query.get("type", "")
        wanted_status = query.get("status", "").upper()
        tasks = [
            t
            for t in self.tasks()
            if (not wanted_type or wanted_type in (t["type"], t["type"].rsplit(".", 1)[-1]))
            and (not wanted_status or t["status"] == wanted_status)
        ]
        return JSONResponse(tasks[offset : offset + limit])

    async def _get_task(self, request: Request) -> Response:
        _, refused = self._authorize(request)
        if refused is not None:
            return refused
        task_id = request.path_params["id"]
        task = self.task(task_id)
        if task is None:
            return _not_found(task_id)
        return JSONResponse(task)

    # -- admin routes -----------------------------------------------------------------

    def _admin_routes(self) -> list[BaseRoute]:
        return [
            admin_post("protect", self._protect_json, _PROTECT_USAGE),
            admin_get("entities", lambda _: self.entities()),
            admin_get("deleted", lambda _: dicts(self.deleted())),
            admin_get("tasks", lambda _: self.tasks()),
            admin_post("task_status", self._task_status_json, _TASK_STATUS_USAGE),
            admin_post("delete_task", self._delete_task_json, _DELETE_TASK_USAGE),
        ]

    def seed_json(self, body: dict[str, Any]) -> Any:
        entities = body.get("entities")
        if not isinstance(entities, list) or not all(isinstance(e, dict) for e in entities):
            raise ValueError(self.seed_usage)
        return self.seed(entities)

    def _protect_json(self, body: dict[str, Any]) -> Any:
        uris = body.get("uris")
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise ValueError(_PROTECT_USAGE)
        return {"protected": self.protect(uris)}

    def _task_status_json(self, body: dict[str, Any]) -> Any:
        task_id, status = body.get("id"), body.get("status")
        error, processed = body.get("error"), body.get("processed")
        if (
            not isinstance(task_id, str)
            or not (status is None or isinstance(status, str))
            or not (error is None or isinstance(error, str))
            or not (processed is None or type(processed) is int)
        ):
            raise ValueError(_TASK_STATUS_USAGE)
        try:
            return self.force_status(task_id, status, error=error, processed=processed)
        except KeyError:
            raise Unknown(f"unknown task {task_id}") from None

    def _delete_task_json(self, body: dict[str, Any]) -> Any:
        mode, created_by = body.get("mode", "soft"), body.get("created_by", "operator")
        uris, text = body.get("uris"), body.get("filter")
        if (uris is None) == (text is None) or not (
            isinstance(mode, str) and isinstance(created_by, str)
        ):
            raise ValueError(_DELETE_TASK_USAGE)
        objects = (
            {"list": uris}
            if uris is not None
            else {"filter": text, "excludeList": body.get("excludeList", [])}
        )
        return self._schedule(self._new_task(objects, mode.lower(), False, created_by))


_PROTECT_USAGE = 'send {"uris": ["entities/..", ...]}'
_TASK_STATUS_USAGE = (
    'send {"id": "..", "status": "FAILED"} (optionally "error": "text", "processed": '
    "<entities reached>)"
)
_DELETE_TASK_USAGE = (
    'send {"uris": ["entities/..", ...]} or {"filter": '
    '"equals(type,\'configuration/entityTypes/..\')", "excludeList": [...]}, optionally '
    '"mode": "soft" | "hard" and "created_by"'
)


class _RetryAfterFilter:
    """Drops Retry-After from 429 answers unless the knob keeps it: Reltio's spec
    defines no headers on 429, so a client must back off on its own."""

    def __init__(self, app: ASGIApp, knobs: Knobs) -> None:
        self.app = app
        self.knobs = knobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.knobs.retry_after_header:
            await self.app(scope, receive, send)
            return

        async def strip(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 429:
                message = dict(message)
                message["headers"] = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"
                ]
            await send(message)

        await self.app(scope, receive, strip)


def _new_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(7))


def _basic_client(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else None


def _oauth_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def _error(status: int, code: int, message: str, detail: str = "") -> Response:
    return JSONResponse(
        {
            "severity": "Error",
            "errorMessage": message,
            "errorCode": code,
            "errorDetailMessage": detail or message,
        },
        status_code=status,
    )


def _not_found(what: str) -> Response:
    return _error(404, 101, f"Object with id={what} not found", "No object with specified id found")


if __name__ == "__main__":
    run_alone("reltio")
