"""What every sandbox emulator shares: fault knobs, a request log, a loopback server.

Faults are injected around the vendor routes only (never `/_admin/...`), so
tests can break the API while still reading the emulator's ground truth.
"""

from __future__ import annotations

import argparse
import asyncio
import pkgutil
import random
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

ADMIN_PREFIX = "/_admin"

DEMO_PEOPLE: tuple[tuple[str, str], ...] = (
    ("jrossi", "Giulia Rossi"),
    ("mbianchi", "Marco Bianchi"),
    ("lverdi", "Luca Verdi"),
    ("fromano", "Francesca Romano"),
    ("acolombo", "Andrea Colombo"),
    ("sricci", "Sara Ricci"),
    ("mmarino", "Matteo Marino"),
    ("cgreco", "Chiara Greco"),
    ("abruno", "Alessandro Bruno"),
    ("egallo", "Elena Gallo"),
    ("dconti", "Davide Conti"),
    ("vdeluca", "Valentina De Luca"),
    ("smancini", "Simone Mancini"),
    ("acosta", "Alessia Costa"),
    ("pgiordano", "Paolo Giordano"),
)
"""One cast for every emulator's demo data (user name, full name): Goose's
contacts carry the user names that Mongoose's UserNames hold, so a demo's
deletions line up across systems."""
DEMO_EMPLOYEES: tuple[tuple[str, str], ...] = tuple(
    (f"E{n:04d}", name) for n, (_, name) in enumerate(DEMO_PEOPLE[:8], start=101)
)
"""Employee numbers for the first eight people, shared by the emulators that hold employees."""
MUTATING_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class Faults:
    """Knobs, each a fraction of vendor requests (0..1) or a duration in seconds.

    error_rate: answered 500 before anything is applied.
    throttle_rate: answered 429 with `Retry-After: retry_after`.
    timeout_rate: held for `hang_seconds` (past the client's timeout), not applied.
    drop_after_apply_rate: applied, then answered 500 (the answer is lost).
    echo_rate: answered 500, not applied, with a body echoing the request's headers,
    query and body, as careless servers do: a client must keep any secret it sent
    out of the error it raises and the logs it writes.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: float = 1.0
    timeout_rate: float = 0.0
    hang_seconds: float = 10.0
    drop_after_apply_rate: float = 0.0
    echo_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fault knobs: {sorted(unknown)}; known: {sorted(known)}")
        for name, value in values.items():
            setattr(self, name, value)
        if "seed" in values:
            self.rng = random.Random(self.seed)


@dataclass
class LoggedRequest:
    method: str
    path: str
    status: int
    mutating: bool
    fault: str = ""


@dataclass
class RequestLog:
    entries: list[LoggedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: LoggedRequest) -> None:
        with self.lock:
            self.entries.append(entry)

    def as_json(self) -> list[dict[str, Any]]:
        with self.lock:
            return [asdict(e) for e in self.entries]

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


class FaultMiddleware:
    """ASGI middleware applying `Faults` to vendor routes and logging every request.

    `is_mutating(method, path)` lets an emulator say which of its routes change
    data (Goose's reads are POSTs), so tests can count mutating calls.
    """

    def __init__(
        self,
        app: ASGIApp,
        faults: Faults,
        log: RequestLog,
        is_mutating: Callable[[str, str], bool],
    ) -> None:
        self.app = app
        self.faults = faults
        self.log = log
        self.is_mutating = is_mutating

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        mutating = self.is_mutating(method, path)
        f = self.faults
        if f.latency:
            await asyncio.sleep(f.latency)
        roll = f.rng.random()
        edge = 0.0
        for name, rate in (
            ("error", f.error_rate),
            ("throttle", f.throttle_rate),
            ("timeout", f.timeout_rate),
            ("drop_after_apply", f.drop_after_apply_rate),
            ("echo", f.echo_rate),
        ):
            edge += rate
            if roll < edge:
                await self._fault(name, scope, receive, send, method, path, mutating)
                return
        await self._forward(scope, receive, send, method, path, mutating)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, method: str, path: str, mutating: bool
    ) -> None:
        """Log as the answer starts, so a client that has its answer finds it logged."""

        async def capture(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.log.add(LoggedRequest(method, path, message["status"], mutating))
            await send(message)

        await self.app(scope, receive, capture)

    async def _fault(
        self,
        name: str,
        scope: Scope,
        receive: Receive,
        send: Send,
        method: str,
        path: str,
        mutating: bool,
    ) -> None:
        f = self.faults
        if name == "error":
            response: Response = JSONResponse({"error": "injected server error"}, status_code=500)
        elif name == "throttle":
            response = JSONResponse(
                {"error": "Too many requests, please try later"},
                status_code=429,
                headers={"Retry-After": f"{f.retry_after:g}"},
            )
        elif name == "echo":
            response = JSONResponse(
                {
                    "error": "injected: your request was",
                    "headers": dict(Request(scope).headers),
                    "query": scope["query_string"].decode("latin-1"),
                    "body": (await _body(receive)).decode("utf-8", "replace"),
                },
                status_code=500,
            )
        elif name == "timeout":
            await asyncio.sleep(f.hang_seconds)
            response = JSONResponse({"error": "injected timeout"}, status_code=504)
        else:

            async def discard(message: MutableMapping[str, Any]) -> None:
                return None

            await self.app(scope, receive, discard)
            response = JSONResponse({"error": "injected: applied, answer lost"}, status_code=500)
        self.log.add(LoggedRequest(method, path, response.status_code, mutating, fault=name))
        await response(scope, receive, send)


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def admin_routes(faults: Faults, log: RequestLog) -> list[BaseRoute]:
    """`/_admin/faults` (GET, PUT) and `/_admin/requests` (GET, DELETE)."""

    async def get_faults(request: Request) -> Response:
        return JSONResponse(asdict(faults))

    async def put_faults(request: Request) -> Response:
        try:
            faults.update(await request.json())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(asdict(faults))

    async def get_requests(request: Request) -> Response:
        return JSONResponse(log.as_json())

    async def clear_requests(request: Request) -> Response:
        log.clear()
        return JSONResponse({"cleared": True})

    return [
        Route(f"{ADMIN_PREFIX}/faults", get_faults, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/faults", put_faults, methods=["PUT"]),
        Route(f"{ADMIN_PREFIX}/requests", get_requests, methods=["GET"]),
        Route(f"{ADMIN_PREFIX}/requests", clear_requests, methods=["DELETE"]),
    ]


class Knobs(Protocol):
    """An emulator's behaviour switches: a dataclass whose `update` validates every value."""

    def update(self, values: Mapping[str, Any]) -> None: ...


def build_app(
    routes: Sequence[BaseRoute],
    faults: Faults,
    log: RequestLog,
    is_mutating: Callable[[str, str], bool] = lambda method, path: method in MUTATING_METHODS,
) -> ASGIApp:
    app = Starlette(routes=[*routes, *admin_routes(faults, log)])
    return FaultMiddleware(app, faults, log, is_mutating)


AsyncHandler = Callable[[Request], Awaitable[Response]]


SANDBOX_RETRY = {"max_attempts": 3, "base_delay": 0.05, "max_delay": 0.1}
"""Backoff for a job target's connection in the sandbox, whose emulators answer at once."""


@dataclass
class SandboxEmulator:
    """A connector's emulator as the sandbox runs it (see `contract.SandboxSpec`).

    `seed` is posted to its `/_admin/seed` route once it listens; `describe` gives
    the lines `syncengine sandbox` prints about it, from the URL it listens on;
    `emulator` is the emulator object itself, for tests that turn its knobs.

    The sandbox offers the demo and the end-to-end tests `<name>_url` (the emulator's
    root) and, by name, the `urls` (a path under the root, such as the API's base) and
    the `actions` (called with the root URL first: what a user of the system does).
    `connection` is its entry in a config run against the sandbox (but its `type`), under
    the name the shipped config.yaml gives it, pointed at the root URL it is given
    (end-to-end tests compose configs from these).
    """

    title: str
    seed: Any
    emulator: Any
    describe: Callable[[str], list[str]]
    urls: Mapping[str, str] = field(default_factory=dict)
    actions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    connection: tuple[str, Callable[[str], dict[str, Any]]] | None = None

    @property
    def app(self) -> ASGIApp:
        app: ASGIApp = self.emulator.app
        return app


def apply_settings(
    settings: Any, values: Mapping[str, Any], checks: Mapping[str, Callable[[Any], bool]]
) -> None:
    """Set an emulator's knobs from an admin request, all or none: an unknown name or a
    value its check refuses is a ValueError naming it, and nothing is changed."""
    known = {f.name for f in fields(settings)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}; known: {sorted(known)}")
    for name, value in values.items():
        if not checks[name](value):
            raise ValueError(f"bad value for {name}: {value!r}")
    for name, value in values.items():
        setattr(settings, name, value)


def run_alone(name: str, argv: Sequence[str] | None = None) -> None:
    """`python -m connectors.<name>.emulator`: that connector's emulator alone, as the
    sandbox runs it (its demo data, its port), in the foreground."""
    from connectors import load_registry

    spec = load_registry().get(name).sandbox
    assert spec is not None, f"{name} has no emulator"
    parser = argparse.ArgumentParser(description=f"The {name} emulator, as in the sandbox.")
    parser.add_argument("--port", type=int, default=spec.port)
    parser.add_argument("--step-seconds", type=float, default=0.5, help="how fast jobs advance")
    parser.add_argument("--empty", action="store_true", help="do not seed the demo data")
    args = parser.parse_args(argv)
    made: SandboxEmulator = pkgutil.resolve_name(spec.emulator)(args.step_seconds)
    if not args.empty:
        made.emulator.seed_json(made.seed)
    uvicorn.run(made.app, host="127.0.0.1", port=args.port, log_level="warning")
