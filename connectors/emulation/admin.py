"""What every emulator object shares: its faults, request log, lock and app, and the
admin routes they all answer alike (seed, reset, settings, step, expire_tokens).

An emulator subclasses `Emulator` (or `SteppedEmulator` when its remote jobs move
with a clock) and writes only its vendor API: its routes, how a seed body maps onto
its state, what `reset` clears. Admin routes are built from small handlers here so
each answers a malformed body the same way: HTTP 400 and one line saying what to send.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, Concatenate, ParamSpec, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from connectors.emulation.kit import (
    ADMIN_PREFIX,
    MUTATING_METHODS,
    Faults,
    Knobs,
    RequestLog,
    build_app,
)

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="SteppedEmulator")


class Unknown(LookupError):
    """An admin request names something the emulator does not hold: HTTP 404."""


async def json_object(request: Request) -> dict[str, Any] | None:
    """The request's JSON object, or None for a body that is not one."""
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _refused(exc: Exception) -> Response:
    if isinstance(exc, Unknown):
        return JSONResponse({"error": str(exc.args[0])}, status_code=404)
    if isinstance(exc, KeyError):
        return JSONResponse({"error": f"the body lacks {exc.args[0]!r}"}, status_code=400)
    return JSONResponse({"error": str(exc)}, status_code=400)


def admin_post(
    path: str, act: Callable[[dict[str, Any]], Any], usage: str, method: str = "POST"
) -> Route:
    """POST (or `method`) `/_admin/<path>` with a JSON object, answered with what `act`
    returns.

    A body that is no object is a 400 carrying `usage`; `act` refuses a body by raising
    ValueError, TypeError or KeyError (400) or `Unknown` (404)."""

    async def handle(request: Request) -> Response:
        body = await json_object(request)
        if body is None:
            return JSONResponse({"error": usage}, status_code=400)
        try:
            return JSONResponse(act(body))
        except (ValueError, TypeError, LookupError) as exc:
            return _refused(exc)

    return Route(f"{ADMIN_PREFIX}/{path}", handle, methods=[method])


def admin_call(path: str, act: Callable[[], Any]) -> Route:
    """POST `/_admin/<path>` without a body (expire tokens, fail the next job...)."""

    async def handle(request: Request) -> Response:
        return JSONResponse(act())

    return Route(f"{ADMIN_PREFIX}/{path}", handle, methods=["POST"])


def admin_get(path: str, read: Callable[[Mapping[str, Any]], Any]) -> Route:
    """GET `/_admin/<path>` answered with `read(path parameters)`; `Unknown` is a 404."""

    async def handle(request: Request) -> Response:
        try:
            return JSONResponse(read(request.path_params))
        except Unknown as exc:
            return _refused(exc)

    return Route(f"{ADMIN_PREFIX}/{path}", handle, methods=["GET"])


def dicts(items: Any) -> list[dict[str, Any]]:
    """Ground-truth dataclasses as JSON rows."""
    return [asdict(item) for item in items]


def settings_routes(knobs: Knobs) -> list[BaseRoute]:
    """`/_admin/settings` GET and PUT; a ValueError from `knobs.update` is a 400."""

    async def get_settings(request: Request) -> Response:
        return JSONResponse(asdict(knobs))  # type: ignore[call-overload]

    def put(body: dict[str, Any]) -> Any:
        knobs.update(body)
        return asdict(knobs)  # type: ignore[call-overload]

    return [
        Route(f"{ADMIN_PREFIX}/settings", get_settings, methods=["GET"]),
        admin_post("settings", put, "send an object of settings", method="PUT"),
    ]


class Emulator:
    """The kit's share of an emulator object.

    `faults` and `log` are the vendor routes' fault knobs and request log
    (`connectors.emulation.kit`); `knobs`, when an emulator has behaviour switches, are served
    at `/_admin/settings`. `_lock` guards the emulator's state across server threads.
    """

    knobs: Knobs | None = None
    issues_tokens = False
    """It hands out tokens, kept in `_tokens` (token -> what the emulator notes about it),
    that `/_admin/expire_tokens` takes back and `reset` forgets."""
    seed_usage = "send a JSON object"
    """What `/_admin/seed` expects, for the 400 a malformed body gets."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.log = RequestLog()
        self._lock = threading.RLock()
        self._app: ASGIApp | None = None
        self._tokens: dict[str, Any] = {}

    # -- what each emulator writes ---------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """Its vendor routes and the admin routes only it has."""
        raise NotImplementedError

    def seed_json(self, body: dict[str, Any]) -> Any:
        """`/_admin/seed`: add the body's data and answer what was added."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget every piece of state `reset` drops (the lock is held)."""
        raise NotImplementedError

    def expire_tokens(self) -> int:
        """Every token issued stops working; answers how many there were."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
            return count

    def is_mutating(self, method: str, path: str) -> bool:
        """Which vendor calls change data, so tests can count them (reads may be POSTs)."""
        return method in MUTATING_METHODS

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """A vendor quirk applied around everything, faults included."""
        return app

    # -- shared ----------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._tokens.clear()
            self.clear()
        self.log.clear()

    def admin_routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            admin_post("seed", self.seed_json, self.seed_usage),
            admin_call("reset", self._answer_reset),
        ]
        if self.knobs is not None:
            routes += settings_routes(self.knobs)
        if self.issues_tokens:
            routes.append(admin_call("expire_tokens", lambda: {"expired": self.expire_tokens()}))
        return routes

    def _answer_reset(self) -> dict[str, bool]:
        self.reset()
        return {"reset": True}

    @property
    def app(self) -> ASGIApp:
        if self._app is None:
            routes = [*self.routes(), *self.admin_routes()]
            self._app = self.wrap(build_app(routes, self.faults, self.log, self.is_mutating))
        return self._app


class SteppedEmulator(Emulator):
    """An emulator whose remote jobs advance with a clock that tests move by `step`.

    Reads of job state go through `@settled` methods, which first bring every job to
    where the clock says it is; `/_admin/step` moves the clock.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        super().__init__(faults)
        self._offset = 0.0

    def _advance(self) -> None:
        """Bring every job to where the clock says it is (the lock is held)."""
        raise NotImplementedError

    def now_json(self) -> Any:
        """The emulator's time as `/_admin/step` answers it."""
        raise NotImplementedError

    def step(self, seconds: float) -> Any:
        """Move the clock forward; jobs advance as if that time had passed."""
        with self._lock:
            self._offset += seconds
            self._advance()
            return self.now_json()

    def admin_routes(self) -> list[BaseRoute]:
        return [
            *super().admin_routes(),
            admin_post("step", self._step_json, 'send {"seconds": <number >= 0>}'),
        ]

    def _step_json(self, body: dict[str, Any]) -> Any:
        seconds = body.get("seconds")
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise ValueError('send {"seconds": <number >= 0>}')
        return {"now": self.step(float(seconds))}


def settled(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """The method reads job state: under the lock, after the clock's due work is done."""

    def read(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            self._advance()
            return method(self, *args, **kwargs)

    read.__doc__ = method.__doc__
    return read
