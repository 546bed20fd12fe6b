"""The two calls the Mongoose target makes (LoadCollection, and DeleteItems or
UpdateCollection), authenticated in the connection's way, in its API version.

GetSecurityToken (user and password) or an ION API bearer token; one renewal
on 401, then a FatalError naming the settings. connectors/mongoose/api.py says
where each version's calls go; this module sends them and reads the answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from connectors.contract import FatalError, RemoteError
from connectors.kit.http import (
    DEFAULT_RENEW,
    Action,
    Auth,
    ErrorRule,
    ErrorTable,
    HttpClient,
    StaticAuth,
    excerpt,
    json_object,
    remote_error,
)
from connectors.kit.token_cache import CachedToken, TokenAuth
from connectors.mongoose import api
from connectors.mongoose.settings import MongooseConnection

# --- authentication ------------------------------------------------------------


class _SecurityToken:
    """GetSecurityToken, fetched once and kept until refused; sent raw as
    Authorization (no "Bearer").

    Asked for with credentials in headers, as documented. A v2 server older
    than the header form answers it 404: the documented path form
    (`/ido/token/{config}/{user}/{password}`) is tried once, and kept for the
    connection if the server knows it. The password then travels in the path,
    so its encoded form is a secret of the client, scrubbed from every message.
    """

    def __init__(self, name: str, connection: MongooseConnection, http: HttpClient) -> None:
        assert connection.user is not None and connection.password is not None
        self._name = name
        spoken = api.dialect(connection.api)
        secret = connection.password.get_secret_value()
        self._url_hint = spoken.url_hint
        self._by_headers = spoken.token_by_headers(connection.config, connection.user, secret)
        self._by_path = spoken.token_by_path(connection.config, connection.user, secret)
        self._path_known = False
        http.add_secret(api.segment(secret))
        self._http = http
        # The token carries no lifetime: it is kept until a call is refused with it.
        self.auth = TokenAuth(CachedToken(self._fetch, 0.0), self.fatal, scheme="")

    def fatal(self, what: str) -> FatalError:
        return FatalError(
            f"mongoose connection {self._name!r}: credentials rejected ({what}); "
            f"check connections.{self._name}.user/password and "
            f"connections.{self._name}.config",
            connection=self._name,
        )

    async def _fetch(self) -> tuple[str, float]:
        path_form = self._by_path if self._path_known else None
        call = path_form or self._by_headers
        response = await self._get(call)
        if response.status_code == 404 and path_form is None and self._by_path is not None:
            tried, call = call.what, self._by_path
            response = await self._get(call)
            if response.status_code == 404:
                raise self._not_found(f"{tried} and {call.what} answered 404")
            self._path_known = True
        what = call.what
        if response.status_code in (401, 403):
            raise self.fatal(f"HTTP {response.status_code} from {what}")
        if response.status_code == 404:
            raise self._not_found(f"{what} answered 404")
        body = json_object(response)
        token = api.read_token(body) if body is not None else None
        if not response.is_success or token is None:
            message = excerpt(response.text, self._http.secrets)
            if response.is_success:
                raise self.fatal(f"{what} gave no token: {message}")
            raise RemoteError(
                f"{self._name}: {what}: HTTP {response.status_code}: {message}",
                connection=self._name,
                code=str(response.status_code),
            )
        self._http.add_secret(token)
        return token, math.inf

    async def _get(self, call: api.Call) -> httpx.Response:
        return await self._http.request(
            call.method, call.path, idempotent=True, headers=call.headers
        )

    def _not_found(self, what: str) -> FatalError:
        return FatalError(
            f"mongoose connection {self._name!r}: {what}; check "
            f"connections.{self._name}.url ({self._url_hint}) and connections.{self._name}.api",
            connection=self._name,
        )


def _bearer_token(name: str, connection: MongooseConnection) -> StaticAuth:
    """An ION API OAuth2 token: the configuration travels in a header."""
    assert connection.token is not None

    def fatal(what: str) -> FatalError:
        return FatalError(
            f"mongoose connection {name!r}: the ION API bearer token was rejected "
            f"({what}); check connections.{name}.token and connections.{name}.config",
            connection=name,
        )

    headers = {
        "Authorization": f"Bearer {connection.token.get_secret_value()}",
        "X-Infor-MongooseConfig": connection.config,
    }
    return StaticAuth(headers, fatal)


# --- the API -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeleteAnswer:
    ok: bool
    message: str = ""


class MongooseApi:
    """The two calls the target makes, in the connection's API version,
    authenticated, with one renewal on 401."""

    def __init__(self, name: str, connection: MongooseConnection, http: HttpClient) -> None:
        self.name = name
        self.http = http
        self.dialect = api.dialect(connection.api)
        self._auth: Auth = (
            _bearer_token(name, connection)
            if connection.token is not None
            else _SecurityToken(name, connection, http).auth
        )
        not_allowed = ErrorRule(
            405,
            Action.FATAL,
            "mongoose connection {name!r}: {what} is not allowed (HTTP 405); "
            + self.dialect.not_allowed(name).replace("{", "{{").replace("}", "}}"),
        )
        self._delete_errors: ErrorTable = (*DEFAULT_RENEW, not_allowed)

    async def authenticate(self) -> bool:
        """Fetch a security token now, when the connection uses one (FatalError when the
        credentials are refused); False for a bearer token, which only a call can prove."""
        if isinstance(self._auth, StaticAuth):
            return False
        await self._auth.headers()
        return True

    async def load(
        self, ido: str, props: Sequence[str], where: str, cap: str = api.ALL_ROWS
    ) -> list[list[Any]]:
        """LoadCollection (every row, or at most `cap`); rows as positional lists in
        `props` order, whichever shape the server sent them in."""
        call = self.dialect.load(ido, props, where, cap)
        response = await self._call(call, idempotent=True)
        body = json_object(response)
        if not response.is_success or body is None:
            raise self._remote(call.what, response)
        try:
            return api.read_rows(body, props)
        except api.BadAnswer as exc:
            raise RemoteError(
                f"{self.name}: {call.what}: {excerpt(str(exc), self.http.secrets)}",
                connection=self.name,
                code=exc.code,
            ) from None

    async def delete_items(self, ido: str, item_ids: Sequence[str], method: str) -> DeleteAnswer:
        """DeleteItems (v1) or UpdateCollection with Action 4 (v2). An error answer is
        returned, not raised: the caller re-checks.

        Sent as idempotent: after a lost answer the re-send either deletes or
        fails on rows already gone, which the caller's re-check resolves.
        """
        call = self.dialect.delete(ido, item_ids, method)
        response = await self._call(call, idempotent=True, errors=self._delete_errors)
        answer = json_object(response)
        if not response.is_success or answer is None:
            return DeleteAnswer(False, str(self._remote(call.what, response)))
        if self.dialect.deleted(answer):
            return DeleteAnswer(True)
        return DeleteAnswer(False, excerpt(api.message(answer), self.http.secrets))

    async def _call(
        self, call: api.Call, *, idempotent: bool, errors: ErrorTable = DEFAULT_RENEW
    ) -> httpx.Response:
        return await self.http.call(
            call.method,
            call.path,
            idempotent=idempotent,
            auth=self._auth,
            errors=errors,
            params=call.params,
            json=call.json,
        )

    def _remote(self, what: str, response: httpx.Response) -> RemoteError:
        return remote_error(self.name, what, response, self.http.body_excerpt(response))
