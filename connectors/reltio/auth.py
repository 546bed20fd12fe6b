"""Reltio OAuth2 tokens and the one authenticated call path to a tenant.

A token is fetched from the auth server with the client's Basic credentials
(and a user's, for the password grant), cached until shortly before it
expires and registered with the HTTP client as a secret, so it is scrubbed
from every message. A data call answered `401 invalid_token` renews it once,
as Reltio's own client does: tokens can be revoked early. Another 401, or a
refusal at the token endpoint, is a credentials problem no retry fixes.

Only a 404 carrying Reltio's OBJECT_NOT_FOUND code (errorCode 101) means an
object is absent. A 404 without Reltio's error body comes from a wrong path
(a mistyped tenant_url), and treating it as "absent" would report deletions
that never happened.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any, Unpack

import httpx

from connectors.contract import FatalError, RemoteError
from connectors.kit.http import (
    Action,
    Body,
    ErrorRule,
    ErrorTable,
    HttpClient,
    Resolution,
    as_int,
    excerpt,
    remote_error,
)
from connectors.kit.json_screen import loads
from connectors.kit.token_cache import CachedToken, TokenAuth, fetch_token
from connectors.reltio.settings import ReltioConnection

RENEW_BEFORE = 60.0
"""Seconds before expiry at which a cached token is renewed (capped at half its life)."""
OBJECT_NOT_FOUND = 101
BACKPRESSURE = 2001
INVALID_TOKEN = "invalid_token"  # noqa: S105 - an OAuth error code, not a secret


def json_body(response: httpx.Response) -> Any:
    try:
        return loads(response.content)
    except ValueError:  # not JSON, not UTF-8, or nested too deep to walk
        return None


def error_code(response: httpx.Response) -> int | None:
    """`errorCode` of Reltio's APIErrorRepresentation, when the body is one."""
    body = json_body(response)
    return as_int(body.get("errorCode")) if isinstance(body, dict) else None


def classify(response: httpx.Response) -> Resolution | None:
    """Reltio's backpressure answer (503, errorCode 2001) refused the call unapplied,
    so even a bulk delete may be sent again; other 503s stay ambiguous."""
    if response.status_code == 503 and error_code(response) == BACKPRESSURE:
        return Resolution(Action.RETRY, "HTTP 503 backpressure (errorCode 2001)")
    return None


class ReltioTokens:
    """Access tokens from the auth server, one fetch at a time."""

    def __init__(
        self,
        name: str,
        connection: ReltioConnection,
        http: HttpClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._url = connection.auth_url
        pair = f"{connection.client_id}:{connection.client_secret.get_secret_value()}"
        self._basic = base64.b64encode(pair.encode("utf-8")).decode("ascii")
        http.add_secret(self._basic)
        self._form: dict[str, str] = {"grant_type": connection.grant}
        if connection.grant == "password":
            assert connection.username is not None and connection.password is not None
            self._form["username"] = connection.username
            self._form["password"] = connection.password.get_secret_value()
        self._http = http
        self._cache = CachedToken(self._fetch, RENEW_BEFORE, clock)
        self.auth = TokenAuth(self._cache, self.fatal)
        self.checks = (
            "connections.{name}.auth_url, client_id and client_secret"
            + (", username and password" if "username" in self._form else "")
            + f" (grant: {self._form['grant_type']})"
        )
        """The settings to check when credentials are refused: a template over {name}."""

    def fatal(self, what: str) -> FatalError:
        return FatalError(
            f"reltio connection {self._name!r}: credentials rejected ({what}); check "
            + self.checks.format(name=self._name),
            connection=self._name,
        )

    async def token(self) -> str:
        return await self._cache.get()

    async def _fetch(self) -> tuple[str, float]:
        return await fetch_token(
            self._http,
            self._url,
            self._form,
            self.fatal,
            headers={"Authorization": f"Basic {self._basic}"},
        )


class ReltioClient:
    """Authenticated tenant calls: bearer token, one renewal on `401 invalid_token`.

    Turns what no retry can fix into FatalError (401 after renewal, 403, a
    404 that is not Reltio's); every other answer is returned for the
    caller to interpret.
    """

    def __init__(self, name: str, connection: ReltioConnection, http: HttpClient) -> None:
        self.name = name
        self.http = http
        self.tokens = ReltioTokens(name, connection, http)
        self._errors: ErrorTable = (
            ErrorRule(401, Action.RENEW, when=_invalid_token),
            ErrorRule(
                401,
                Action.FATAL,
                "reltio connection {name!r}: credentials rejected (HTTP 401 from {what}: "
                "{detail}); check " + self.tokens.checks,
            ),
            ErrorRule(
                403,
                Action.FATAL,
                "reltio connection {name!r}: HTTP 403 from {what}: {detail}; the client needs "
                "the roles to read and delete entities and read tasks of this tenant (check "
                "connections.{name}.client_id and tenant_url)",
            ),
            ErrorRule(
                404,
                Action.FATAL,
                "reltio connection {name!r}: {what} answered 404 without a Reltio error; "
                "check connections.{name}.tenant_url (it ends with /reltio/api/<tenantId>)",
                when=lambda response: error_code(response) is None,
            ),
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        **body: Unpack[Body],
    ) -> httpx.Response:
        auth, errors = self.tokens.auth, self._errors
        return await self.http.call(
            method,
            path,
            idempotent=idempotent,
            auth=auth,
            errors=errors,
            detail=self.message,
            **body,
        )

    def remote(self, what: str, response: httpx.Response) -> RemoteError:
        code = error_code(response)
        shown = "" if code is None else str(code)
        message = self.message(response)
        return remote_error(self.name, what, response, message, code=shown, label="errorCode ")

    def message(self, response: httpx.Response) -> str:
        """Reltio's errorMessage (or an OAuth error_description), else the body, scrubbed."""
        body = json_body(response)
        text: Any = None
        if isinstance(body, dict):
            text = body.get("errorMessage") or body.get("error_description") or body.get("error")
        return excerpt(text if isinstance(text, str) else response.text, self.http.secrets)


def is_not_found(response: httpx.Response) -> bool:
    return response.status_code == 404 and error_code(response) == OBJECT_NOT_FOUND


def _invalid_token(response: httpx.Response) -> bool:
    body = json_body(response)
    if isinstance(body, dict) and body.get("error") == INVALID_TOKEN:
        return True
    return INVALID_TOKEN in response.text


__all__ = [
    "ReltioClient",
    "ReltioTokens",
    "classify",
    "error_code",
    "is_not_found",
    "json_body",
]
