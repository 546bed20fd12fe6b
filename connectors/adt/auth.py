"""Bearer tokens for the ADT data plane, and the one authenticated call path.

A client-credentials token is fetched on first use, cached until shortly
before it expires and registered with the HTTP client as a secret, so it is
scrubbed from every message. A data call answered 401 renews the token once
(it may have been revoked early); a second 401 is a credentials problem no
retry fixes. A static token cannot be renewed, so its first 401 is fatal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

import httpx

from connectors.adt.settings import AdtConnection
from connectors.contract import FatalError, RemoteError
from connectors.kit.http import (
    Action,
    Auth,
    ErrorRule,
    ErrorTable,
    HttpClient,
    Resolution,
    StaticAuth,
    excerpt,
    json_object,
    remote_error,
)
from connectors.kit.token_cache import CachedToken, TokenAuth, fetch_token

RENEW_BEFORE = 300.0
"""Seconds before expiry at which a cached token is renewed (capped at half its life)."""


def _credentials_fatal(name: str) -> Callable[[str], FatalError]:
    def fatal(what: str) -> FatalError:
        return FatalError(
            f"adt connection {name!r}: {what}; check connections.{name}.client_id, "
            "client_secret and scope, and that the app holds a role on the instance",
            connection=name,
        )

    return fatal


def _static_token(name: str, token: str) -> StaticAuth:
    def fatal(what: str) -> FatalError:
        return FatalError(
            f"adt connection {name!r}: the bearer token was rejected ({what}); "
            f"check connections.{name}.token",
            connection=name,
        )

    return StaticAuth({"Authorization": f"Bearer {token}"}, fatal)


class ClientCredentials:
    """The OAuth2 client-credentials grant against a Microsoft Entra token endpoint."""

    def __init__(
        self,
        name: str,
        connection: AdtConnection,
        http: HttpClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert connection.token_url is not None
        assert connection.client_id is not None and connection.client_secret is not None
        self._name = name
        self._url = connection.token_url
        self._form = {
            "grant_type": "client_credentials",
            "client_id": connection.client_id,
            "client_secret": connection.client_secret.get_secret_value(),
            "scope": connection.scope,
        }
        self._http = http
        self._cache = CachedToken(self._fetch, RENEW_BEFORE, clock)
        self.auth = TokenAuth(self._cache, _credentials_fatal(name))

    async def token(self) -> str:
        return await self._cache.get()

    async def _fetch(self) -> tuple[str, float]:
        return await fetch_token(self._http, self._url, self._form, self._refused)

    def _refused(self, why: str) -> FatalError:
        return FatalError(
            f"adt connection {self._name!r}: the token endpoint refused the client "
            f"credentials ({why}); check connections.{self._name}.token_url, client_id, "
            "client_secret and scope",
            connection=self._name,
        )


def token_auth(name: str, connection: AdtConnection, http: HttpClient) -> Auth:
    if connection.token is not None:
        return _static_token(name, connection.token.get_secret_value())
    return ClientCredentials(name, connection, http).auth


def classify(response: httpx.Response) -> Resolution | None:
    """ADT may give the wait in milliseconds instead of Retry-After."""
    if response.status_code != 429 or "retry-after" in response.headers:
        return None
    for header in ("retry-after-ms", "x-ms-retry-after-ms"):
        try:
            wait = float(response.headers[header]) / 1000
        except (KeyError, ValueError):
            continue
        return Resolution(Action.RETRY, "HTTP 429", max(0.0, wait))
    return None


def http_client(name: str, connection: AdtConnection) -> HttpClient:
    """The client of either ADT target: ADT's millisecond waits read as Retry-After."""
    return connection.http_client(name, base_url=connection.url, classify=classify)


def error_code(response: httpx.Response) -> str:
    """The service's error code: the x-ms-error-code header, else the ErrorResponse body."""
    header = str(response.headers.get("x-ms-error-code", "")).strip()
    if header:
        return header
    body = json_object(response)
    error = body.get("error") if body else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else ""


def _sub_domain_not_found(response: httpx.Response) -> bool:
    """A 404 without the service's error code but naming the sub-domain comes from the
    front door: the URL names no instance (or the token is for another tenant)."""
    body = json_object(response) or {}
    return (
        not error_code(response) and "sub-domain not found" in str(body.get("message", "")).lower()
    )


ERRORS: ErrorTable = (
    ErrorRule(401, Action.RENEW),
    ErrorRule(
        403,
        Action.FATAL,
        "adt connection {name!r}: HTTP 403 from {what}; the identity needs a data-plane "
        "role on the instance (e.g. Azure Digital Twins Data Owner)",
    ),
    ErrorRule(
        404,
        Action.FATAL,
        "adt connection {name!r}: {what}: Sub-domain not found; check connections.{name}.url "
        "and that the token is for the instance's tenant",
        when=_sub_domain_not_found,
    ),
)
"""What no retry can fix; everything else is returned for the caller to interpret."""


class AdtClient:
    """Authenticated data-plane calls: bearer token, api-version, one renewal on 401.

    Also turns the answers no retry can fix (403, an unknown sub-domain) into
    FatalError; everything else is returned for the caller to interpret.
    """

    def __init__(self, name: str, connection: AdtConnection, http: HttpClient) -> None:
        self.name = name
        self.http = http
        self.api_version = connection.api_version
        self._auth = token_auth(name, connection, http)

    async def call(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        path, _, given = path.partition("?")
        # httpx replaces a URL's query when params are passed, so a nextLink's own
        # query (its continuation) is carried over explicitly.
        query = {
            **dict(parse_qsl(given, keep_blank_values=True)),
            "api-version": self.api_version,
            **(params or {}),
        }
        return await self.http.call(
            method,
            path,
            idempotent=idempotent,
            auth=self._auth,
            errors=ERRORS,
            params=query,
            headers=headers,
        )

    def remote(self, what: str, response: httpx.Response) -> RemoteError:
        message = self.message(response)
        return remote_error(self.name, what, response, message, code=error_code(response))

    def message(self, response: httpx.Response) -> str:
        body = json_object(response)
        error = body.get("error") if body else None
        text = error.get("message") if isinstance(error, dict) else None
        return excerpt(text if isinstance(text, str) else response.text, self.http.secrets)
