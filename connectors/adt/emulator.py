"""A stateful emulator of the Azure Digital Twins data plane, api-version 2023-10-31.

Emulated (apis.md section 1): twins (`GET`/`DELETE /digitaltwins/{id}`,
with `If-Match`), relationships (`GET /digitaltwins/{id}/relationships`,
`GET /digitaltwins/{id}/incomingrelationships`, `GET`/`DELETE
/digitaltwins/{id}/relationships/{relId}`), delete jobs (`POST
/jobs/deletions` with `operation-id` and `timeoutInMinutes`, `GET
/jobs/deletions[/{id}]`; there is no cancel), and a client-credentials token
endpoint (`POST /oauth2/token`) standing in for Microsoft Entra.

Every data call needs `api-version` and `Authorization: Bearer <token>`
(a configured static token, or one issued by the token endpoint and not yet
expired). Errors are `{"error": {"code", "message"}}` with the header
`x-ms-error-code`. Lists are paged: `{"value": [...], "nextLink": <url>}`,
at most `page_size` items (or `max-items-per-page`, if smaller); the
continuation is an offset, so deleting while paging skips items, as a
client that does so deserves.

A delete job is `notstarted`, then `running` after `step_seconds`, then
`succeeded` (every model, twin and relationship deleted at that moment) or
`failed` after another `step_seconds`. Time is read lazily from a clock the
tests can move (`step`). Assumptions where the vendor documents say nothing
(ASSUME in apis.md): the job id is its operation-id; a reused operation-id
is refused (`400 ValidationFailed`) before the one-job limit is checked
(`400 JobLimitReached`); a failed job deletes nothing; `nextLink` carries
`continuationToken` and `api-version`; an out-of-range `timeoutInMinutes`
is `400 InvalidArgument`.

Ground truth and admin routes are never faulted:

    POST /_admin/seed   {"models": [dtmi or {"@id": dtmi}], "twins": [{"id", "model",
                         "properties"?}], "relationships": [{"source", "id", "name",
                         "target", "properties"?}]}
    GET  /_admin/models, /_admin/twins, /_admin/relationships, /_admin/jobs
    GET  /_admin/deleted   {"twins": [{id, model, at}], "relationships": [{source, id,
                            name, target, at}], "purges": [{job, at, models, twins,
                            relationships}]}
    POST /_admin/step {"seconds": n}   move the clock (jobs advance)
    POST /_admin/fail_next_job         the next delete job created will fail
    POST /_admin/expire_tokens         every issued token stops working
    POST /_admin/reset                 state, clock offset, tokens and ground truth cleared
    GET|PUT /_admin/faults, GET|DELETE /_admin/requests  (connectors.emulation.kit)
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from connectors.emulation.admin import SteppedEmulator, admin_call, admin_get, settled
from connectors.emulation.kit import Faults, run_alone

API_VERSION = "2023-10-31"
TWIN_API_VERSIONS = ("2020-10-31", "2022-05-31", API_VERSION)
SCOPE = "https://digitaltwins.azure.net/.default"
PURGE_KEPT = timedelta(days=30)

Handler = Callable[[Request], Awaitable[Response]]


def demo_graph() -> dict[str, list[Any]]:
    """A small building: two floors, four rooms, six people (twin ids "0-1".."0-6", the
    Goose RECORD_IDs of the demo contacts), with relationships in and out of them."""
    building, floor, room, person = (
        f"dtmi:com:example:{kind};1" for kind in ("Building", "Floor", "Room", "Person")
    )
    people = {
        "0-1": "Giulia Rossi",
        "0-2": "Marco Bianchi",
        "0-3": "Luca Verdi",
        "0-4": "Francesca Romano",
        "0-5": "Andrea Colombo",
        "0-6": "Sara Ricci",
    }
    rooms = {"hq-f1-r101": "hq-f1", "hq-f1-r102": "hq-f1", "hq-f2-r201": "hq-f2"}
    rooms["hq-f2-r202"] = "hq-f2"
    seats = {"0-1": "hq-f1-r101", "0-2": "hq-f1-r101", "0-3": "hq-f1-r102"}
    seats.update({"0-4": "hq-f2-r201", "0-5": "hq-f2-r201", "0-6": "hq-f2-r202"})
    twins: list[dict[str, Any]] = [
        {"id": "hq", "model": building, "properties": {"name": "Head office, Milano"}},
        {"id": "hq-f1", "model": floor, "properties": {"level": 1}},
        {"id": "hq-f2", "model": floor, "properties": {"level": 2}},
    ]
    twins += [{"id": r, "model": room, "properties": {}} for r in rooms]
    twins += [{"id": p, "model": person, "properties": {"name": n}} for p, n in people.items()]
    edges = [("hq", "contains", "hq-f1"), ("hq", "contains", "hq-f2")]
    edges += [(f, "contains", r) for r, f in rooms.items()]
    edges += [(r, "occupiedBy", p) for p, r in seats.items()]
    edges += [(p, "worksIn", r) for p, r in seats.items()]
    edges += [(s, "reportsTo", t) for s, t in (("0-2", "0-1"), ("0-3", "0-1"), ("0-5", "0-4"))]
    edges.append(("0-6", "reportsTo", "0-4"))
    relationships = [
        {"source": s, "id": f"{s}-{name}-{t}", "name": name, "target": t} for s, name, t in edges
    ]
    return {
        "models": [building, floor, room, person],
        "twins": twins,
        "relationships": relationships,
    }


@dataclass
class _Twin:
    id: str
    model: str
    properties: dict[str, Any]
    etag: str
    updated: datetime

    def json(self) -> dict[str, Any]:
        return {
            "$dtId": self.id,
            "$etag": self.etag,
            "$metadata": {"$model": self.model, "$lastUpdateTime": _stamp(self.updated)},
            **self.properties,
        }


@dataclass
class _Relationship:
    source: str
    id: str
    name: str
    target: str
    properties: dict[str, Any]
    etag: str

    def json(self) -> dict[str, Any]:
        return {
            "$relationshipId": self.id,
            "$etag": self.etag,
            "$sourceId": self.source,
            "$targetId": self.target,
            "$relationshipName": self.name,
            **self.properties,
        }

    def incoming(self) -> dict[str, Any]:
        link = f"/digitaltwins/{quote(self.source, safe='')}/relationships/"
        return {
            "$relationshipId": self.id,
            "$sourceId": self.source,
            "$relationshipName": self.name,
            "$relationshipLink": link + quote(self.id, safe=""),
        }

    def plain(self) -> dict[str, Any]:
        return {"source": self.source, "id": self.id, "name": self.name, "target": self.target}


@dataclass
class _DeleteJob:
    id: str
    created: datetime
    timeout_in_minutes: int
    will_fail: bool
    status: str = "notstarted"
    finished: datetime | None = None
    error: dict[str, str] | None = None

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "createdDateTime": _stamp(self.created),
        }
        if self.finished is not None:
            body["finishedDateTime"] = _stamp(self.finished)
            body["purgeDateTime"] = _stamp(self.finished + PURGE_KEPT)
        if self.error is not None:
            body["error"] = dict(self.error)
        return body


@dataclass
class _Deleted:
    twins: list[dict[str, Any]] = field(default_factory=list)
    relationships: list[dict[str, Any]] = field(default_factory=list)
    purges: list[dict[str, Any]] = field(default_factory=list)


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _stamp(when: datetime) -> str:
    """RFC 3339 with seven fractional digits, as the vendor example writes them."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0+00:00")


def _etag() -> str:
    return f'W/"{uuid.uuid4()}"'


def _error(status: int, code: str, message: str) -> Response:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"x-ms-error-code": code},
    )


def _twin_not_found(twin_id: str) -> _Refused:
    return _Refused(
        404,
        "DigitalTwinNotFound",
        f"There is no digital twin instance that exists with the ID {twin_id}. Please verify "
        "that the twin id is valid and ensure that the twin is not deleted. See section on "
        "querying the twins https://aka.ms/adtv2query.",
    )


class AdtEmulator(SteppedEmulator):
    """In-memory models, twins, relationships and delete jobs, safe across threads."""

    issues_tokens = True
    _tokens: dict[str, datetime]
    seed_usage = 'send {"models": [], "twins": [], ...}'

    def __init__(
        self,
        host_label: str | None = None,
        tokens: Sequence[str] = ("sandbox-token",),
        clients: Mapping[str, str] | None = None,
        step_seconds: float = 0.5,
        *,
        page_size: int = 3,
        token_lifetime: int = 3599,
        faults: Faults | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.host_label = host_label
        self.tokens = set(tokens)
        self.clients = dict(clients if clients is not None else {"syncengine": "secret"})
        self.step_seconds = step_seconds
        self.page_size = page_size
        self.token_lifetime = token_lifetime
        super().__init__(faults)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._models: dict[str, dict[str, Any]] = {}
        self._twins: dict[str, _Twin] = {}
        self._relationships: dict[tuple[str, str], _Relationship] = {}
        self._jobs: dict[str, _DeleteJob] = {}
        self._deleted = _Deleted()
        self._fail_next_job = False

    def is_mutating(self, method: str, path: str) -> bool:
        return method == "DELETE" or (method == "POST" and path == "/jobs/deletions")

    def now(self) -> datetime:
        return self.clock() + timedelta(seconds=self._offset)

    def now_json(self) -> str:
        return _stamp(self.now())

    # -- ground truth and admin helpers (also served under /_admin) -------------------

    def seed(self, graph: Mapping[str, Iterable[Any]]) -> dict[str, int]:
        """Add models, twins and relationships; refuses what ADT would refuse (a twin of
        an unknown model, a relationship to a missing twin, a duplicate id)."""
        unknown = set(graph) - {"models", "twins", "relationships"}
        if unknown:
            raise ValueError(
                f"unknown seed keys {sorted(unknown)}; use models, twins, relationships"
            )
        counts = {"models": 0, "twins": 0, "relationships": 0}
        with self._lock:
            self._advance()
            for model in graph.get("models", []):
                model_id = model if isinstance(model, str) else model.get("@id")
                if not isinstance(model_id, str) or not model_id.startswith("dtmi:"):
                    raise ValueError(f"a model needs a dtmi id, got {model!r}")
                self._models[model_id] = (
                    {"@id": model_id} if isinstance(model, str) else dict(model)
                )
                counts["models"] += 1
            for twin in graph.get("twins", []):
                twin_id, model_id = twin.get("id"), twin.get("model")
                if not isinstance(twin_id, str) or not twin_id or twin_id in self._twins:
                    raise ValueError(f"twin id {twin_id!r} is missing or already used")
                if model_id not in self._models:
                    raise ValueError(f"twin {twin_id!r}: unknown model {model_id!r}")
                props = dict(twin.get("properties") or {})
                self._twins[twin_id] = _Twin(twin_id, model_id, props, _etag(), self.now())
                counts["twins"] += 1
            for rel in graph.get("relationships", []):
                key = (rel.get("source"), rel.get("id"))
                if not all(isinstance(k, str) and k for k in key) or key in self._relationships:
                    raise ValueError(f"relationship {key!r} is missing an id or already used")
                for end in ("source", "target"):
                    if rel.get(end) not in self._twins:
                        raise ValueError(f"relationship {key!r}: no twin {rel.get(end)!r}")
                self._relationships[key] = _Relationship(
                    rel["source"],
                    rel["id"],
                    str(rel.get("name") or "relatedTo"),
                    rel["target"],
                    dict(rel.get("properties") or {}),
                    _etag(),
                )
                counts["relationships"] += 1
        return counts

    @settled
    def models(self) -> list[str]:
        return list(self._models)

    @settled
    def twins(self) -> list[dict[str, Any]]:
        return [t.json() for t in self._twins.values()]

    @settled
    def twin_ids(self) -> set[str]:
        return set(self._twins)

    @settled
    def relationships(self) -> list[dict[str, Any]]:
        return [r.plain() for r in self._relationships.values()]

    @settled
    def jobs(self) -> list[dict[str, Any]]:
        return [{**j.json(), "timeoutInMinutes": j.timeout_in_minutes} for j in self._jobs.values()]

    @settled
    def deleted(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "twins": [dict(d) for d in self._deleted.twins],
            "relationships": [dict(d) for d in self._deleted.relationships],
            "purges": [dict(d) for d in self._deleted.purges],
        }

    def fail_next_job(self) -> None:
        with self._lock:
            self._fail_next_job = True

    def clear(self) -> None:
        self._models.clear()
        self._twins.clear()
        self._relationships.clear()
        self._jobs.clear()
        self._deleted = _Deleted()
        self._fail_next_job = False
        self._offset = 0.0

    # -- job lifecycle ----------------------------------------------------------------

    def _advance(self) -> None:
        """Bring every job to where the clock says it is (the lock is held)."""
        now = self.now()
        step = timedelta(seconds=self.step_seconds)
        for job in self._jobs.values():
            if job.status in ("succeeded", "failed"):
                continue
            if now >= job.created + 2 * step:
                self._finish(job, job.created + 2 * step)
            elif now >= job.created + step:
                job.status = "running"

    def _finish(self, job: _DeleteJob, when: datetime) -> None:
        job.finished = when
        if job.will_fail:
            job.status = "failed"
            job.error = {
                "code": "InternalError",
                "message": f"Delete job {job.id} failed; the instance may be partly deleted.",
            }
            return
        job.status = "succeeded"
        self._deleted.purges.append(
            {
                "job": job.id,
                "at": _stamp(when),
                "models": len(self._models),
                "twins": len(self._twins),
                "relationships": len(self._relationships),
            }
        )
        self._models.clear()
        self._twins.clear()
        self._relationships.clear()

    # -- request plumbing -------------------------------------------------------------

    def _data(self, handler: Handler, versions: Sequence[str] = TWIN_API_VERSIONS) -> Handler:
        """api-version, then the bearer token, then the handler; a refusal is an
        ErrorResponse."""

        async def checked(request: Request) -> Response:
            version = request.query_params.get("api-version")
            if not version:
                return _error(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                )
            if version not in versions:
                return _error(
                    400,
                    "UnsupportedApiVersion",
                    f"The HTTP resource does not support the API version '{version}'. "
                    f"Supported: {', '.join(versions)}.",
                )
            if not self._authorized(request):
                response = _error(401, "Unauthorized", "The access token is missing or invalid.")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
            try:
                with self._lock:
                    self._advance()
                return await handler(request)
            except _Refused as exc:
                return _error(exc.status, exc.code, exc.message)

        return checked

    def _authorized(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        if token in self.tokens:
            return True
        with self._lock:
            expires = self._tokens.get(token)
            return expires is not None and self.now() < expires

    def _base(self, request: Request) -> str:
        if self.host_label:
            return f"https://{self.host_label}"
        return str(request.base_url).rstrip("/")

    def _page(self, request: Request, items: list[dict[str, Any]], path: str) -> Response:
        token = request.query_params.get("continuationToken")
        offset = 0
        if token is not None:
            try:
                offset = int(base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii"))
            except (binascii.Error, ValueError, UnicodeError):
                raise _Refused(400, "BadRequest", "The continuation token is invalid.") from None
        size = self.page_size
        asked = request.headers.get("max-items-per-page", "")
        if asked.isdigit() and int(asked) > 0:
            size = min(size, int(asked))
        body: dict[str, Any] = {"value": items[offset : offset + size]}
        if offset + size < len(items):
            following = base64.urlsafe_b64encode(str(offset + size).encode("ascii")).decode()
            query = urlencode(
                {"continuationToken": following, "api-version": request.query_params["api-version"]}
            )
            body["nextLink"] = f"{self._base(request)}{path}?{query}"
        return JSONResponse(body)

    # -- vendor routes ----------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return self._vendor_routes() + self._admin_routes()

    def _vendor_routes(self) -> list[BaseRoute]:
        jobs = (API_VERSION,)
        return [
            Route("/oauth2/token", self._token, methods=["POST"]),
            Route("/digitaltwins/{id}", self._data(self._get_twin), methods=["GET"]),
            Route("/digitaltwins/{id}", self._data(self._delete_twin), methods=["DELETE"]),
            Route(
                "/digitaltwins/{id}/relationships",
                self._data(self._list_relationships),
                methods=["GET"],
            ),
            Route(
                "/digitaltwins/{id}/incomingrelationships",
                self._data(self._list_incoming),
                methods=["GET"],
            ),
            Route(
                "/digitaltwins/{id}/relationships/{rel}",
                self._data(self._get_relationship),
                methods=["GET"],
            ),
            Route(
                "/digitaltwins/{id}/relationships/{rel}",
                self._data(self._delete_relationship),
                methods=["DELETE"],
            ),
            Route("/jobs/deletions", self._data(self._add_job, jobs), methods=["POST"]),
            Route("/jobs/deletions", self._data(self._list_jobs, jobs), methods=["GET"]),
            Route("/jobs/deletions/{id}", self._data(self._get_job, jobs), methods=["GET"]),
        ]

    async def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8")).items()}
        if form.get("grant_type") != "client_credentials":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "AADSTS70003: only client_credentials is supported.",
                },
                status_code=400,
            )
        client, secret = form.get("client_id", ""), form.get("client_secret")
        if client not in self.clients or self.clients[client] != secret:
            return JSONResponse(
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                },
                status_code=401,
            )
        if form.get("scope") != SCOPE:
            return JSONResponse(
                {
                    "error": "invalid_scope",
                    "error_description": f"AADSTS1002012: the scope must be {SCOPE}.",
                },
                status_code=400,
            )
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = self.now() + timedelta(seconds=self.token_lifetime)
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": self.token_lifetime, "access_token": token}
        )

    def _twin(self, twin_id: str) -> _Twin:
        twin = self._twins.get(twin_id)
        if twin is None:
            raise _twin_not_found(twin_id)
        return twin

    async def _get_twin(self, request: Request) -> Response:
        with self._lock:
            twin = self._twin(request.path_params["id"])
            return JSONResponse(twin.json(), headers={"ETag": twin.etag})

    async def _delete_twin(self, request: Request) -> Response:
        twin_id = request.path_params["id"]
        with self._lock:
            twin = self._twin(twin_id)
            _check_if_match(request, twin.etag)
            if any(twin_id in (r.source, r.target) for r in self._relationships.values()):
                raise _Refused(
                    400,
                    "RelationshipsNotDeleted",
                    "All relationships referencing the digital twin must already be deleted.",
                )
            del self._twins[twin_id]
            self._deleted.twins.append(
                {"id": twin_id, "model": twin.model, "at": _stamp(self.now())}
            )
        return Response(status_code=204)

    async def _list_relationships(self, request: Request) -> Response:
        twin_id = request.path_params["id"]
        name = request.query_params.get("relationshipName")
        with self._lock:
            self._twin(twin_id)
            items = [
                r.json()
                for r in self._relationships.values()
                if r.source == twin_id and (name is None or r.name == name)
            ]
        return self._page(request, items, f"/digitaltwins/{quote(twin_id, safe='')}/relationships")

    async def _list_incoming(self, request: Request) -> Response:
        twin_id = request.path_params["id"]
        with self._lock:
            self._twin(twin_id)
            items = [r.incoming() for r in self._relationships.values() if r.target == twin_id]
        path = f"/digitaltwins/{quote(twin_id, safe='')}/incomingrelationships"
        return self._page(request, items, path)

    def _relationship(self, request: Request) -> _Relationship:
        twin_id, rel_id = request.path_params["id"], request.path_params["rel"]
        self._twin(twin_id)
        rel = self._relationships.get((twin_id, rel_id))
        if rel is None:
            raise _Refused(
                404,
                "RelationshipNotFound",
                f"There is no relationship with the ID {rel_id} on the digital twin {twin_id}.",
            )
        return rel

    async def _get_relationship(self, request: Request) -> Response:
        with self._lock:
            rel = self._relationship(request)
            return JSONResponse(rel.json(), headers={"ETag": rel.etag})

    async def _delete_relationship(self, request: Request) -> Response:
        with self._lock:
            rel = self._relationship(request)
            _check_if_match(request, rel.etag)
            del self._relationships[(rel.source, rel.id)]
            self._deleted.relationships.append({**rel.plain(), "at": _stamp(self.now())})
        return Response(status_code=204)

    async def _add_job(self, request: Request) -> Response:
        raw_timeout = request.query_params.get("timeoutInMinutes", "720")
        try:
            timeout = int(raw_timeout)
        except ValueError:
            timeout = 0
        if not 15 <= timeout <= 1440:
            raise _Refused(
                400,
                "InvalidArgument",
                f"timeoutInMinutes must be an integer from 15 to 1440, got {raw_timeout!r}.",
            )
        operation_id = request.headers.get("operation-id") or str(uuid.uuid4())
        with self._lock:
            if operation_id in self._jobs:
                raise _Refused(400, "ValidationFailed", "Operation-Id already exists.")
            if any(j.status in ("notstarted", "running") for j in self._jobs.values()):
                raise _Refused(
                    400,
                    "JobLimitReached",
                    "The maximum number of delete jobs allowed has been reached.",
                )
            job = _DeleteJob(operation_id, self.now(), timeout, self._fail_next_job)
            self._fail_next_job = False
            self._jobs[operation_id] = job
            body = job.json()
        location = (
            f"{self._base(request)}/jobs/deletions/{quote(operation_id, safe='')}"
            f"?api-version={API_VERSION}"
        )
        return JSONResponse(
            body,
            status_code=202,
            headers={"Operation-Location": location, "Operation-Id": operation_id},
        )

    async def _list_jobs(self, request: Request) -> Response:
        with self._lock:
            items = [j.json() for j in self._jobs.values()]
        return self._page(request, items, "/jobs/deletions")

    async def _get_job(self, request: Request) -> Response:
        job_id = request.path_params["id"]
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise _Refused(
                    404, "DeleteJobNotFound", f"There is no delete job with the ID {job_id}."
                )
            return JSONResponse(job.json())

    # -- admin routes -----------------------------------------------------------------

    def _admin_routes(self) -> list[BaseRoute]:
        return [
            admin_get("models", lambda _: self.models()),
            admin_get("twins", lambda _: self.twins()),
            admin_get("relationships", lambda _: self.relationships()),
            admin_get("jobs", lambda _: self.jobs()),
            admin_get("deleted", lambda _: self.deleted()),
            admin_call("fail_next_job", self._fail_next_job_json),
        ]

    def seed_json(self, body: dict[str, Any]) -> Any:
        try:
            return self.seed(body)
        except AttributeError as exc:
            raise ValueError(str(exc)) from exc

    def _fail_next_job_json(self) -> dict[str, bool]:
        self.fail_next_job()
        return {"fail_next_job": True}


def _check_if_match(request: Request, etag: str) -> None:
    wanted = request.headers.get("if-match")
    if wanted is not None and wanted.strip() not in ("*", etag):
        raise _Refused(412, "PreconditionFailed", "The If-Match etag does not match.")


if __name__ == "__main__":
    run_alone("adt")
