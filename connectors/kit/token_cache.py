"""One cached OAuth2 access token per connection, fetched at most once at a time.

A token is fetched on first use and kept until shortly before it expires
(`renew_before` seconds, capped at half its life, so a short-lived token is
not renewed at every call). A data call refused with it can `forget` it:
the next call fetches a new one, unless another call already did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import httpx

from connectors.contract import FatalError, RemoteError
from connectors.kit.http import HttpClient, excerpt, json_object

Fetch = Callable[[], Awaitable[tuple[str, float]]]
"""Fetches a token: (the token, its lifetime in seconds)."""


def lifetime_seconds(value: Any) -> float:
    """`expires_in` as a number, or as a string (Entra's v1 endpoint); 0 when unreadable,
    so a token of unknown life is fetched again at the next call."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0


async def fetch_token(
    http: HttpClient,
    url: str,
    form: Mapping[str, str],
    refused: Callable[[str], FatalError],
    *,
    headers: Mapping[str, str] | None = None,
) -> tuple[str, float]:
    """An OAuth2 token endpoint's answer (RFC 6749 section 5): (access token, lifetime).

    A 400, 401 or 403 is the endpoint refusing the credentials (`invalid_client`,
    `invalid_grant`), which no retry fixes: `refused` builds the FatalError from
    "HTTP <status> [<error>] from <call>". The token (and a refresh token, if
    one comes) becomes a secret of the client, scrubbed from every message.
    """
    what = f"POST {httpx.URL(url).path}"
    response = await http.request(
        "POST",
        url,
        idempotent=True,
        content=urlencode(form).encode("utf-8"),
        headers={**(headers or {}), "Content-Type": "application/x-www-form-urlencoded"},
    )
    body = json_object(response) or {}
    if response.status_code in (400, 401, 403):
        code = body.get("error")
        raise refused(
            f"HTTP {response.status_code}"
            + (f" {code}" if isinstance(code, str) else "")
            + f" from {what}"
        )
    token = body.get("access_token")
    if not response.is_success or not isinstance(token, str) or not token:
        raise RemoteError(
            f"{http.connection}: {what}: HTTP {response.status_code}, no access_token: "
            f"{excerpt(response.text, http.secrets)}",
            connection=http.connection,
            code=str(response.status_code),
        )
    http.add_secret(token)
    refresh = body.get("refresh_token")
    if isinstance(refresh, str):
        http.add_secret(refresh)
    return token, lifetime_seconds(body.get("expires_in"))


class CachedToken:
    def __init__(
        self, fetch: Fetch, renew_before: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._renew_before = renew_before
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                started = self._clock()
                token, lifetime = await self._fetch()
                self._token = token
                early = min(self._renew_before, lifetime / 2)
                self._renew_at = started + max(0.0, lifetime - early)
            return self._token

    async def forget(self, used: str) -> None:
        async with self._lock:
            if self._token == used:
                self._token = None


class TokenAuth:
    """A cached token as the shared client's `Auth`: sent as `Authorization`
    (`<scheme> <token>`, or the raw token when `scheme` is empty); a refused token
    is forgotten, so the one re-send carries a fresh one."""

    def __init__(
        self,
        cache: CachedToken,
        fatal: Callable[[str], FatalError],
        *,
        scheme: str = "Bearer",
    ) -> None:
        self._cache = cache
        self._fatal = fatal
        self._prefix = f"{scheme} " if scheme else ""

    async def headers(self) -> dict[str, str]:
        return {"Authorization": self._prefix + await self._cache.get()}

    async def renew(self, what: str, used: Mapping[str, str]) -> None:
        await self._cache.forget(used.get("Authorization", "").removeprefix(self._prefix))

    def fatal(self, what: str) -> FatalError:
        return self._fatal(what)


__all__ = ["CachedToken", "Fetch", "TokenAuth", "fetch_token", "lifetime_seconds"]
