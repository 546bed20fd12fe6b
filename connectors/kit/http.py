"""One HTTP client per connection: timeouts, classified retries, a rate limit, and
for every call a total deadline and a cap on its answer's bytes (a server that never
stops sending is cut off, as a lost answer).

The client returns responses or raises a classified `ConnectorError`; it
never logs or prints a body. Error messages carry the method, the path
(never the query string, which may hold credentials) and a truncated body,
both scrubbed of every known secret value (some APIs take a password as a
path segment).
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypedDict, Unpack, cast

import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from connectors.contract import AmbiguousError, FatalError, RemoteError, RetriableError
from connectors.kit import redact
from connectors.kit.json_screen import loads

BODY_EXCERPT = 300
REDACTED = redact.REDACTED

ERROR_BODY_BYTES = 64 * 1024
"""What is read of a refused answer's body: far more than any vendor's error says, and
a server that keeps sending costs nothing more (the rest is never read)."""

CALL_DEADLINE = 30 * 60.0
"""Seconds one call may take, retries and its whole answer included, unless configured."""

MAX_ANSWER_BYTES = 4 * 1024**3
"""Bytes one answer may hold, unless configured: far beyond any real answer."""


secret_listeners: list[Callable[[str], None]] = []
"""Called with every secret a client learns (configured or obtained at run time),
so the process's log redaction knows values it was never configured with."""


class Body(TypedDict, total=False):
    """What a request carries besides its method and URL, as httpx takes it."""

    json: Any
    params: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    content: bytes | None


class Action(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    AMBIGUOUS = "ambiguous"
    RENEW = "renew"
    """The credentials expired: renew them once and send again."""
    FATAL = "fatal"
    """No retry can fix it: stop with a message naming the setting to fix."""
    REMOTE = "remote"
    """The server refused this call; the caller decides what that means for its records."""


@dataclass(frozen=True)
class Resolution:
    """A response classified: what the retry loop should do with it."""

    action: Action
    reason: str = ""
    retry_after: float | None = None


Classifier = Callable[[httpx.Response], Resolution | None]
"""Connector-specific classification; None falls back to the default table."""

Observer = Callable[[str, str, int, float], None]
"""(connection, method, status or 0 for a transport error, seconds) for metrics."""

observers: list[Observer] = []
"""Called after every request of every client (metrics), besides a client's own observer."""

# Statuses whose request was certainly not applied.
_NOT_APPLIED = {408, 425, 429}
# Statuses where the server may have applied the request before failing.
_MAYBE_APPLIED = {500, 502, 503, 504}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def default_classify(response: httpx.Response) -> Resolution:
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if response.status_code in _NOT_APPLIED:
        return Resolution(Action.RETRY, f"HTTP {response.status_code}", retry_after)
    if response.status_code in _MAYBE_APPLIED:
        return Resolution(Action.AMBIGUOUS, f"HTTP {response.status_code}", retry_after)
    return Resolution(Action.OK)


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (an HTML error page, a list)."""
    try:
        body = loads(response.content)
    except ValueError:  # not JSON, not UTF-8, or nested too deep to walk
        return None
    return body if isinstance(body, dict) else None


def as_int(value: Any) -> int | None:
    """A count or code from a JSON answer: an int, or digits in a string (some APIs
    quote their numbers); never a bool, which JSON keeps apart and Python does not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True)
class ErrorRule:
    """One row of a connector's error table: an answer with `status` (and, if given,
    a body for which `when` holds) resolves to `action`.

    `message` (FATAL and REMOTE) is a template over {name} (the connection), {what}
    (method and path) and {detail} (the vendor's own words, scrubbed). The first
    matching row wins, so a narrow row goes before a broad one.
    """

    status: int
    action: Action
    message: str = ""
    when: Callable[[httpx.Response], bool] | None = None

    def matches(self, response: httpx.Response) -> bool:
        return response.status_code == self.status and (self.when is None or self.when(response))


ErrorTable = Sequence[ErrorRule]

DEFAULT_RENEW: ErrorTable = (ErrorRule(401, Action.RENEW),)
"""Without a table of its own, a 401 means the credentials expired."""


def remote_error(
    connection: str,
    what: str,
    response: httpx.Response,
    message: str,
    *,
    code: str = "",
    label: str = "",
) -> RemoteError:
    """A call the server refused and the connector could not read otherwise: the status,
    the vendor's error `code` (shown after `label`, and the error's code; the status
    when there is none) and its words, already scrubbed."""
    shown = f" {label}{code}" if code else ""
    return RemoteError(
        f"{connection}: {what}: HTTP {response.status_code}{shown}: {message}",
        connection=connection,
        code=code or str(response.status_code),
    )


def resolve(table: ErrorTable, response: httpx.Response) -> ErrorRule | None:
    """The first row of `table` that matches the answer, or None (the caller reads it)."""
    return next((rule for rule in table if rule.matches(response)), None)


class Auth(Protocol):
    """How a connection authenticates its calls (after httpx's `Auth.auth_flow`: the
    client asks for headers, sends, and on an expired answer asks once to renew).

    `renew` forgets the credentials `used` so the next `headers` fetches new ones,
    or raises FatalError when they cannot be renewed (a static token); `fatal`
    builds the error for credentials still refused after renewal, naming the
    settings to check.
    """

    async def headers(self) -> dict[str, str]: ...

    async def renew(self, what: str, used: Mapping[str, str]) -> None: ...

    def fatal(self, what: str) -> FatalError: ...


class StaticAuth:
    """Credentials that cannot be renewed (a static token, an API key): the first
    expired answer is already fatal."""

    def __init__(self, headers: Mapping[str, str], fatal: Callable[[str], FatalError]) -> None:
        self._headers = dict(headers)
        self._fatal = fatal

    async def headers(self) -> dict[str, str]:
        return dict(self._headers)

    async def renew(self, what: str, used: Mapping[str, str]) -> None:
        raise self._fatal(f"HTTP 401 from {what}")

    def fatal(self, what: str) -> FatalError:
        return self._fatal(what)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` without any secret, in any form a server may echo it in (see `redact`)."""
    return redact.scrub(text, secrets)


def excerpt(text: str, secrets: Sequence[str], limit: int = BODY_EXCERPT) -> str:
    """A body trimmed for an error message, with every secret scrubbed first."""
    cleaned = scrub(text, secrets)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "..."


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, honouring Retry-After.

    A server that asks for a wait longer than `max_retry_after` is not
    obeyed in-line: the error is raised with its retry_after so the engine
    can reschedule the work instead of blocking a run.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int) -> float:
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        return random.uniform(0, ceiling)

    def wait(self, attempt: int, retry_after: float | None) -> float:
        delay = self.backoff(attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


class _Retry(Exception):
    def __init__(self, error: RetriableError) -> None:
        super().__init__(str(error))
        self.error = error


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:g} {unit}"
    return f"{count} bytes"


class _Limits:
    """One call's deadline (on the event loop's clock, set when the call begins, so
    retries count) and its answer's byte cap. Either ends the call as a lost answer
    (`AmbiguousError`): the server may have applied it, and what it said is cut off."""

    def __init__(self, connection: str, what: str, seconds: float, max_bytes: int) -> None:
        self.connection = connection
        self.what = what
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.deadline = asyncio.get_running_loop().time() + seconds

    def late(self, received: int) -> AmbiguousError:
        return AmbiguousError(
            f"connections.{self.connection}.call_deadline: {self.what} had no complete answer "
            f"after {self.seconds:g}s ({received} bytes of its body read); "
            "raise the setting if this is real",
            connection=self.connection,
        )

    def too_large(self) -> AmbiguousError:
        return AmbiguousError(
            f"connections.{self.connection}.max_answer_bytes: the answer to {self.what} passed "
            f"{_size(self.max_bytes)}; raise the setting if this is real",
            connection=self.connection,
        )

    @asynccontextmanager
    async def watch(self, received: int) -> AsyncIterator[None]:
        """Awaits under the deadline. Checked on entry too: a read that never has to wait
        (data already buffered) would never give the timeout a chance to fire."""
        if asyncio.get_running_loop().time() >= self.deadline:
            raise self.late(received)
        try:
            async with asyncio.timeout_at(self.deadline):
                yield
        except TimeoutError:
            raise self.late(received) from None

    async def next(self, parts: AsyncIterator[bytes], received: int) -> bytes | None:
        async with self.watch(received):
            return await anext(parts, None)


def _chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The decoded body in parts. httpx types it as an iterator, yet it is a generator,
    which a reader that stops early closes at once rather than whenever it is collected."""
    return cast(AsyncGenerator[bytes, None], response.aiter_bytes())


async def _read_body(response: httpx.Response, limit: int, limits: _Limits) -> bool:
    """At most `limit` bytes of the body, kept in `response` (so `.text` and `.json()`
    read them) and the response closed; True when more followed, which is never read."""
    parts: list[bytes] = []
    size = 0
    chunks = _chunks(response)
    try:
        while size <= limit and (part := await limits.next(chunks, size)) is not None:
            parts.append(part)
            size += len(part)
    finally:
        await chunks.aclose()
        await response.aclose()
    # Where httpx keeps a body read whole (`Response.aread`); a body read in parts
    # under a cap is kept the same way, so every reader of the response sees it.
    response._content = b"".join(parts)[:limit]
    return size > limit


async def _refusal_text(response: httpx.Response, limits: _Limits) -> str:
    """The start of a refused streamed answer's body, for its excerpt; a refusal that
    breaks off or outlasts the deadline leaves none (its classification already says
    what to do)."""
    try:
        await _read_body(response, ERROR_BODY_BYTES, limits)
    except (httpx.HTTPError, AmbiguousError):
        return ""
    return response.text


_CANNOT_CONNECT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSPORT_FAILURES = (
    *_CANNOT_CONNECT,
    httpx.TimeoutException,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.DecodingError,
)


def _transport_failure(exc: Exception) -> tuple[type[RetriableError], str]:
    """What a request that got no usable answer means: never sent (safe to send again),
    or possibly applied with the answer lost."""
    name = type(exc).__name__
    if isinstance(exc, _CANNOT_CONNECT):
        return RetriableError, f"cannot connect ({name})"
    if isinstance(exc, httpx.DecodingError):
        # The server answered, but with a body its own Content-Encoding cannot
        # decode: whatever it did with the request, its answer is lost.
        return AmbiguousError, (
            "the answer could not be decoded (its Content-Encoding does not match its body)"
        )
    return AmbiguousError, f"no complete answer ({name})"


class StreamedResponse:
    """An accepted answer whose body is read as it arrives, once, within its call's
    deadline and byte cap."""

    def __init__(
        self, response: httpx.Response, what: str, connection: str, limits: _Limits
    ) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self._response = response
        self._what = what
        self._connection = connection
        self._limits = limits
        self.received = 0
        """Bytes of the body read so far, for a message about a broken answer."""

    async def read_refusal(self) -> bytes:
        """The start of a refused answer's body (at most ERROR_BODY_BYTES), for its
        message; the rest is never read."""
        parts: list[bytes] = []
        size = 0
        async with aclosing(self.aiter_bytes()) as body:
            async for part in body:
                parts.append(part)
                size += len(part)
                if size >= ERROR_BODY_BYTES:
                    break
        return b"".join(parts)[:ERROR_BODY_BYTES]

    async def aiter_bytes(self) -> AsyncGenerator[bytes, None]:
        parts = _chunks(self._response)
        try:
            while (part := await self._limits.next(parts, self.received)) is not None:
                self.received += len(part)
                if self.received > self._limits.max_bytes:
                    raise self._limits.too_large()
                yield part
        except (httpx.TimeoutException, httpx.TransportError, httpx.DecodingError) as exc:
            # Whatever the server did with the request, the rest of its answer is lost.
            raise AmbiguousError(
                f"{self._what}: the answer broke off after {self.received} bytes "
                f"({type(exc).__name__})",
                connection=self._connection,
            ) from None
        finally:
            await parts.aclose()


class HttpClient:
    """An httpx.AsyncClient with one retry loop and one rate limit.

    `idempotent=False` requests are re-sent only when the failure proves the
    server did not apply them (connection refused, 429, 408); an ambiguous
    failure is raised as `AmbiguousError` for the caller to resolve.
    """

    def __init__(
        self,
        *,
        connection: str,
        base_url: str = "",
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        calls_per_second: float | None = None,
        secrets: Sequence[str] = (),
        classify: Classifier | None = None,
        observer: Observer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] | None = None,
        call_deadline: float = CALL_DEADLINE,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.connection = connection
        self.call_deadline = call_deadline
        self.max_answer_bytes = max_answer_bytes
        self.retry = retry or RetryPolicy()
        self.secrets: list[str] = []
        for secret in secrets:
            self.add_secret(secret)
        self._classify = classify
        self._observer = observer
        # Evenly spaced calls: a bucket of `calls_per_second` would let a burst
        # through at once and trip a server counting calls per second.
        self._limiter = AsyncLimiter(1, 1.0 / calls_per_second) if calls_per_second else None
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=transport,
        )
        self._sleep = sleep

    def add_secret(self, value: str) -> None:
        """Register a value obtained at run time (a token) for scrubbing."""
        if value and value not in self.secrets:
            self.secrets.append(value)
            for listener in secret_listeners:
                listener(value)

    async def aclose(self) -> None:
        await self._client.aclose()

    def describe(self, method: str, url: str) -> str:
        path = httpx.URL(url).path if "://" in url else url.split("?", 1)[0]
        return f"{method} {scrub(path, self.secrets)}"

    async def request(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        **body: Unpack[Body],
    ) -> httpx.Response:
        what = self.describe(method, url)
        limits = self._limits(what)
        return await self._retrying(idempotent, lambda: self._once(method, url, what, body, limits))

    def _limits(self, what: str) -> _Limits:
        return _Limits(self.connection, what, self.call_deadline, self.max_answer_bytes)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        **body: Unpack[Body],
    ) -> AsyncIterator[StreamedResponse]:
        """`request` whose body is read as it arrives (an answer too large to hold).

        The status and headers are classified and retried exactly as `request` does,
        before any of the body is read (a connector classifier sees an unread
        response: `httpx.ResponseNotRead` on reading it). Once the body flows, nothing
        is re-sent: a body that breaks off is an `AmbiguousError`, the answer is lost,
        and so is one still arriving at the call's deadline or past its byte cap.
        """
        what = self.describe(method, url)
        limits = self._limits(what)
        response = await self._retrying(
            idempotent, lambda: self._once(method, url, what, body, limits, stream=True)
        )
        try:
            yield StreamedResponse(response, f"{self.connection}: {what}", self.connection, limits)
        finally:
            await response.aclose()

    async def _retrying(
        self, idempotent: bool, once: Callable[[], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        def should_retry(exc: BaseException) -> bool:
            return isinstance(exc, _Retry) and self._resend(exc.error, idempotent)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            ra = exc.error.retry_after if isinstance(exc, _Retry) else None
            return self.retry.wait(state.attempt_number, ra)

        kwargs: dict[str, Any] = {"stop": stop_after_attempt(self.retry.max_attempts)}
        if self._sleep is not None:
            kwargs["sleep"] = self._sleep
        retrying = AsyncRetrying(
            retry=retry_if_exception(should_retry), wait=wait, reraise=True, **kwargs
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await once()
        except _Retry as exc:
            raise exc.error from None
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _resend(self, error: RetriableError, idempotent: bool) -> bool:
        """Not when the server may have applied a request that must not run twice, nor
        when it asks for a wait too long to block on (the engine reschedules it)."""
        if isinstance(error, AmbiguousError) and not idempotent:
            return False
        wait = error.retry_after
        return wait is None or wait <= self.retry.max_retry_after

    async def call(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        auth: Auth,
        errors: ErrorTable = DEFAULT_RENEW,
        detail: Callable[[httpx.Response], str] | None = None,
        **body: Unpack[Body],
    ) -> httpx.Response:
        """`request`, authenticated by `auth` and judged by the connector's `errors` table.

        An answer the table resolves to RENEW renews the credentials once and is sent
        again; the same answer again raises `auth.fatal`. A FATAL row raises
        FatalError, a REMOTE row RemoteError, both with the row's message; any other
        answer is returned for the connector to read.
        """
        what = self.describe(method, url)

        async def send(auth_headers: Mapping[str, str]) -> httpx.Response:
            sent = body.copy()
            sent["headers"] = {**(body.get("headers") or {}), **auth_headers}
            return await self.request(method, url, idempotent=idempotent, **sent)

        used = await auth.headers()
        response = await send(used)
        rule = resolve(errors, response)
        if rule is not None and rule.action is Action.RENEW:
            await auth.renew(what, used)
            response = await send(await auth.headers())
            rule = resolve(errors, response)
            if rule is not None and rule.action is Action.RENEW:
                raise auth.fatal(f"HTTP {response.status_code} from {what} even with a fresh token")
        if rule is None or rule.action not in (Action.FATAL, Action.REMOTE):
            return response
        text = rule.message.format(
            name=self.connection,
            what=what,
            detail=(detail or self.body_excerpt)(response),
        )
        if rule.action is Action.FATAL:
            raise FatalError(text, connection=self.connection)
        raise RemoteError(text, connection=self.connection, code=str(response.status_code))

    def body_excerpt(self, response: httpx.Response) -> str:
        return excerpt(response.text, self.secrets)

    async def _once(
        self,
        method: str,
        url: str,
        what: str,
        body: Body,
        limits: _Limits,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """One attempt. Every answer is received as a stream, so that a whole one is read
        under the call's deadline and byte cap too (httpx alone bounds only each read);
        a refusal's body is read only up to ERROR_BODY_BYTES."""
        if self._limiter is not None:
            await self._limiter.acquire()
        started = time.monotonic()
        try:
            request = self._client.build_request(method, url, **body)
            async with limits.watch(0):
                response = await self._client.send(request, stream=True)
            refused = response.status_code >= 400
            if not stream:
                cap = ERROR_BODY_BYTES if refused else limits.max_bytes
                if await _read_body(response, cap, limits) and not refused:
                    raise limits.too_large()
        except _TRANSPORT_FAILURES as exc:
            self._observe(method, 0, started)
            error_type, why = _transport_failure(exc)
            raise _Retry(
                error_type(f"{self.connection}: {what}: {why}", connection=self.connection)
            ) from None
        self._observe(method, response.status_code, started)
        resolution = (self._classify(response) if self._classify else None) or default_classify(
            response
        )
        if resolution.action is Action.OK:
            return response
        text = await _refusal_text(response, limits) if stream else response.text
        message = (
            f"{self.connection}: {what}: {resolution.reason or response.status_code}: "
            f"{excerpt(text, self.secrets)}"
        )
        error_type = RetriableError if resolution.action is Action.RETRY else AmbiguousError
        raise _Retry(
            error_type(message, connection=self.connection, retry_after=resolution.retry_after)
        )

    def _observe(self, method: str, status: int, started: float) -> None:
        took = time.monotonic() - started
        for observer in (self._observer, *observers):
            if observer is not None:
                observer(self.connection, method, status, took)
