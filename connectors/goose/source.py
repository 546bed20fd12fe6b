"""Reading Goose's DELETED service without losing what a lost answer carried.

`from: latest` makes Goose remember, per key and table, what it already
sent: once a call succeeds on its side, those deletions are never sent
again, even if the answer never reaches us. So a `latest` call is never
blindly re-sent. When the engine finds a call whose answer was never
journaled, `plan` turns the next call into a timestamp read from the start
of the last journaled call minus the overlap (not from the start of the
lost call: deletions made between the two would be lost), and the journal
drops the duplicates.

Each call says which span of time its answer covers, so that the journal
tells a re-read (a duplicate) from a record deleted again later (a new
deletion): a timestamp read covers [from, start of the call); a `latest`
call covers [start of the last journaled `latest` call, start of this one),
so successive `latest` calls never overlap (Goose never sends a deletion
twice that way) while a recovery read overlaps both the call before the lost
one and the `latest` call after it. Goose's rows carry no deletion time, so
that is as fine as it gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from connectors.contract import (
    CHUNK_RECORDS,
    JSON,
    AmbiguousError,
    FatalError,
    InFlightCall,
    MalformedAnswer,
    RejectedRecord,
    RemoteError,
    RetriableError,
    SourceCall,
    SourcePage,
    SourceRecord,
)
from connectors.goose.answer import AnswerParser, BadRow, JSONError, Malformed
from connectors.goose.settings import (
    DOCUMENTED_CALLS_PER_SECOND,
    TIMESTAMP_FORMAT,
    GooseConnection,
    GooseSourceSettings,
    parse_goose_time,
    record_name,
)
from connectors.kit.http import Action, HttpClient, Resolution, StreamedResponse, excerpt, scrub
from connectors.kit.json_screen import loads
from connectors.kit.source import HttpSource, Pages, joined

EPOCH = "1970-01-01 00:00:00"
LATEST = "latest"
RATE_LIMIT_PER_SECOND = "50"
RATE_LIMIT_PER_DAY = "51"
SQL_ERROR = "120"
RATE_LIMIT_WAIT = 1.0
"""Seconds to wait after error 50: Goose counts calls per second."""
_DST_LOOKAHEAD = timedelta(hours=3)
PAGE_BYTES = 4 * 1024 * 1024
"""Bytes of the answer past which the rows read so far make a page, however few:
what a page of large rows holds in memory stays bounded."""


def error_code(body: Any) -> str:
    """Goose sends error codes as numbers or as strings (120 and "120")."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", "")).strip()
    return ""


def classify(response: httpx.Response) -> Resolution | None:
    """Error 50 (too many calls this second) was not applied: back off and retry in-line.

    Goose answers errors with HTTP 200, so the shared client would take them
    for successes; every other Goose error is left to `fetch`.
    """
    try:
        body = loads(response.content)
    except (ValueError, httpx.ResponseNotRead):
        # A streamed answer is classified before its body is read: `fetch_pages`
        # tells error 50 once the answer is parsed.
        return None
    if error_code(body) == RATE_LIMIT_PER_SECOND:
        return Resolution(Action.RETRY, "Goose error 50 (max calls per second)", RATE_LIMIT_WAIT)
    return None


def goose_time(instant: datetime, zone: ZoneInfo) -> str:
    """The wall-clock time Goose compares `from` with, never later than `instant`'s.

    Goose compares local wall-clock times. When the clocks go back soon after
    `instant`, deletions made in the repeated hour carry earlier wall times
    than `instant`'s, so the read starts at the wall time of the smaller
    offset: a few duplicates instead of silent misses.
    """
    instant = instant.astimezone(UTC)
    offsets = [
        offset
        for when in (instant, instant + _DST_LOOKAHEAD)
        if (offset := when.astimezone(zone).utcoffset()) is not None
    ]
    wall = instant.replace(tzinfo=None) + min(offsets, default=timedelta())
    return wall.strftime(TIMESTAMP_FORMAT)


def goose_instant(wall: str, zone: ZoneInfo) -> datetime:
    """The earliest instant whose wall-clock time in `zone` is `wall`: where a `from`
    read begins (in the repeated hour, the first pass)."""
    naive = parse_goose_time(wall)
    return min(naive.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))


def _as_utc(text: str) -> datetime:
    """An ISO timestamp from the cursor; one written without an offset is UTC."""
    when = datetime.fromisoformat(text)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class GooseSource(HttpSource[GooseConnection, GooseSourceSettings]):
    """One stream per table of the Goose DELETED service."""

    def client(self) -> HttpClient:
        return self.connection.http_client(
            self.name,
            secrets=[self._key],
            classify=classify,
            default_calls_per_second=DOCUMENTED_CALLS_PER_SECOND,
        )

    @property
    def _key(self) -> str:
        return self.connection.key.get_secret_value()

    def streams(self) -> Sequence[str]:
        return list(self.settings.tables)

    def window_start(self, cursor: JSON | None) -> str:
        """The `from` of a timestamp read: the last journaled call's start minus the overlap.

        With no journaled call yet: the configured start, else the epoch. A
        timestamp is sent even then, rather than leaving `from` out, because
        Goose ignores `imc` without `from` and would hand back the deletions
        made with our own key.
        """
        last = (cursor or {}).get("last_ok_started_at")
        if last:
            since = _as_utc(str(last)) - timedelta(seconds=self.settings.overlap)
            return goose_time(since, self.connection.zone)
        return self.settings.start or EPOCH

    def plan(
        self,
        stream: str,
        cursor: JSON | None,
        interrupted: InFlightCall | None,
        now: datetime,
    ) -> SourceCall:
        started = now.astimezone(UTC)
        latest = self.settings.mode == "latest" and interrupted is None
        since = LATEST if latest else self.window_start(cursor)
        if latest:
            previous = (cursor or {}).get("latest_since")
            begins = _as_utc(str(previous)) if previous else None
        else:
            begins = goose_instant(since, self.connection.zone)
        return SourceCall(
            stream=stream,
            params={"table": stream, "from": since, "imc": self.settings.imc},
            started_at=started,
            recovery=interrupted is not None,
            window_start=begins,
            window_end=started,
            cursor=cursor,
        )

    def plan_backfill(self, stream: str, since: str, now: datetime) -> SourceCall:
        """A timestamp read from `since` ("yyyy-mm-dd hh:mm:ss" in the connection's zone)
        onward; Goose cannot bound a read at the end. Raises ValueError on a bad time."""
        try:
            datetime.strptime(since, TIMESTAMP_FORMAT)
        except ValueError:
            raise ValueError(f'{since!r}: write "yyyy-mm-dd hh:mm:ss"') from None
        started = now.astimezone(UTC)
        return SourceCall(
            stream=stream,
            params={"table": stream, "from": since, "imc": self.settings.imc},
            started_at=started,
            window_start=goose_instant(since, self.connection.zone),
            window_end=started,
        )

    async def fetch(self, call: SourceCall) -> SourcePage:
        """The whole answer as one page (for `plan`, which previews a call)."""
        return await joined(self.fetch_pages(call))

    async def fetch_pages(self, call: SourceCall) -> AsyncGenerator[SourcePage, None]:
        """The answer in pages of at most CHUNK_RECORDS records, read as it arrives.

        Error 50 (too many calls this second) was not applied: the call is sent
        again after the client's wait, in-line, as long as no row was handed out.
        """
        body = {"code": self.connection.code, "key": self._key, **call.params}
        # A timestamp read can be re-sent freely; a lost `latest` answer is gone for good.
        timestamp_read = call.params.get("from") != LATEST
        where = f"{self.name}: table {call.stream}"
        for attempt in range(1, self.http.retry.max_attempts + 1):
            answer = Answer(self, where, call.stream)
            async with self.http.stream(
                "POST", self.connection.url, json=body, idempotent=timestamp_read
            ) as response:
                await self._check_status(where, response)
                async for part in response.aiter_bytes():
                    for page in answer.feed(part):
                        yield page
                for page in answer.close(response.received):
                    yield page
            error = answer.error()
            if error is None:
                for page in answer.held():
                    yield page
                yield answer.pages.last(self._next_cursor(call), more=self._more(call))
                return
            if not (answer.rate_limited() and attempt < self.http.retry.max_attempts):
                raise error
            await asyncio.sleep(self.http.retry.wait(attempt, RATE_LIMIT_WAIT))

    @staticmethod
    def _next_cursor(call: SourceCall) -> JSON:
        """`latest_since` is where the next `latest` call's window begins: the start of
        the last journaled `latest` call, kept across timestamp reads (a recovery)."""
        started = call.started_at.astimezone(UTC).isoformat()
        cursor: JSON = {"last_ok_started_at": started}
        if call.params.get("from") == LATEST:
            cursor["latest_since"] = started
        elif (call.cursor or {}).get("latest_since"):
            cursor["latest_since"] = (call.cursor or {})["latest_since"]
        return cursor

    def _more(self, call: SourceCall) -> bool:
        """After a recovery read in latest mode, go back to `latest` in the same run,
        unless one call per run is all the pipeline allows."""
        return (
            call.recovery and self.settings.mode == "latest" and self.settings.max_calls_per_run > 1
        )

    async def _check_status(self, where: str, response: StreamedResponse) -> None:
        status = response.status_code
        conn = f"connections.{self.name}"
        if 300 <= status < 400 or status in (401, 403, 404, 405):
            raise FatalError(
                f"{where}: HTTP {status} from {self.http.describe('POST', self.connection.url)}; "
                f"check {conn}.url (the DELETED service, e.g. https://api.gooseapp.com/deleted/)",
                connection=self.name,
            )
        if status >= 400:
            text = (await response.read_refusal()).decode("utf-8", "replace")
            raise RemoteError(
                f"{where}: HTTP {status}: {excerpt(text, self._secrets())}",
                connection=self.name,
                code=str(status),
            )

    def _record(self, stream: str, row: Any) -> SourceRecord | RejectedRecord:
        """A row as a record, or as a reject when it cannot be one (handed back, not
        raised: one bad row must not stop its table, which every re-read would fetch)."""
        problem = _row_problem(row, stream)
        if problem is not None:
            fields = row if isinstance(row, dict) else {"row": row}
            return RejectedRecord(stream=stream, fields=fields, reason=problem)
        key = str(row["RECORD_ID"])
        origin = record_name(self.connection.code, stream, key)
        return SourceRecord(stream=stream, key=key, fields=row, origin=origin)

    def _secrets(self) -> list[str]:
        return [self._key, *self.http.secrets]

    def _clean(self, text: str) -> str:
        return scrub(text, self._secrets())

    def _error(self, where: str, table: str, answer: dict[str, Any]) -> Exception:
        code = error_code(answer)
        error = answer.get("error")
        description = (
            self._clean(str(error.get("description", ""))) if isinstance(error, dict) else ""
        )
        conn = f"connections.{self.name}"
        if code == "110":
            return FatalError(
                f"{where}: Goose rejected the key (110 {description or 'Key not authorized'}); "
                f"check {conn}.key and {conn}.code",
                connection=self.name,
            )
        if code == "111":
            return FatalError(
                f"{where}: Goose rejected this machine's IP or the key "
                f"(111 {description or 'IP or Key not authorized'}); ask Goose to allow this "
                f"machine's IP address, and check {conn}.key and {conn}.code",
                connection=self.name,
            )
        if code == RATE_LIMIT_PER_SECOND:
            return RetriableError(
                f"{where}: Goose rate limit (50 {description})",
                connection=self.name,
                retry_after=RATE_LIMIT_WAIT,
            )
        if code == RATE_LIMIT_PER_DAY:
            return RetriableError(
                f"{where}: Goose daily call limit reached (51 {description}); retrying next run",
                connection=self.name,
            )
        if code == SQL_ERROR:
            return RemoteError(
                f"{where}: Goose SQL error (120 {description}); check that table {table} "
                f"exists for company {self.connection.code} (the pipeline's source.tables)",
                connection=self.name,
                code=code,
            )
        return RemoteError(
            f"{where}: Goose error {code or '(no code)'} {description}".rstrip(),
            connection=self.name,
            code=code,
        )


class Answer:
    """One DELETED answer being read: its rows turned into pages of records as they
    come, and its envelope checked at the end (status, `total` against the rows).

    A full page is handed on only once a row after it has been read: the answer's
    last page, full or not, waits for the end of the body and the envelope's check,
    so an answer of one page that turns out malformed sends nothing.
    """

    def __init__(self, source: GooseSource, where: str, stream: str) -> None:
        self._source = source
        self._where = where
        self._stream = stream
        self._parser = AnswerParser()
        self.pages = Pages(CHUNK_RECORDS)
        self._full: SourcePage | None = None
        """The last full page, held until a row follows it."""
        self._page_bytes = 0
        """Bytes of the answer read since the last page was completed."""

    def feed(self, data: bytes) -> Iterator[SourcePage]:
        for start in range(0, len(data), PAGE_BYTES):
            part = data[start : start + PAGE_BYTES]
            yield from self._take(partial(self._parser.feed, part), 0)
            self._page_bytes += len(part)
            if self._page_bytes > PAGE_BYTES:  # large rows: a page of fewer of them
                self._page_bytes = 0
                yield from self._hold(self.pages.flush())

    def close(self, received: int) -> list[SourcePage]:
        """The pages the end of the body completes; raises if the JSON is cut short."""
        return self._take(self._parser.close, received)

    def error(self) -> Exception | None:
        """What is wrong with the whole answer once read, or None: it can be trusted."""
        answer = self._parser.envelope
        if not isinstance(answer, dict):
            return AmbiguousError(
                f"{self._where}: the answer is not a JSON object", connection=self._source.name
            )
        if str(answer.get("status", "")).upper() != "OK":
            return self._source._error(self._where, self._stream, answer)
        result = answer.get("result")
        data = result.get("data") if isinstance(result, dict) else None
        total = result.get("total") if isinstance(result, dict) else None
        if not isinstance(data, list) or not _same_count(total, self._parser.rows):
            listed = self._parser.rows if isinstance(data, list) else "no"
            return AmbiguousError(
                f"{self._where}: the answer lists {listed} records but says total={total!r}; "
                "treating it as truncated",
                connection=self._source.name,
            )
        return None

    def rate_limited(self) -> bool:
        return error_code(self._parser.envelope) == RATE_LIMIT_PER_SECOND

    def held(self) -> list[SourcePage]:
        """The full page still held, once the whole answer was found sound."""
        full, self._full = self._full, None
        return [full] if full is not None else []

    def _take(self, parse: Callable[[], list[Any]], received: int) -> list[SourcePage]:
        try:
            rows = parse()
        except JSONError:
            raise AmbiguousError(
                f"{self._where}: the answer is not complete JSON ({received} bytes); "
                "Goose may have advanced its cursor",
                connection=self._source.name,
            ) from None
        except Malformed as exc:
            raise MalformedAnswer(
                f"{self._where}: a malformed answer: {exc}; nothing more of it is used",
                connection=self._source.name,
            ) from None
        add, record, stream = self.pages.add, self._source._record, self._stream
        full: list[SourcePage] = []
        for row in rows:
            if self._full is not None:
                full.append(self._full)
                self._full = None
            if isinstance(row, BadRow):
                page = add(_bad_row(stream, row))
            else:
                page = add(record(stream, row))
            if page is not None:
                self._full, self._page_bytes = page, 0
        return full

    def _hold(self, page: SourcePage | None) -> list[SourcePage]:
        """Hold `page` until a row follows it; the one it replaces goes on now."""
        if page is None:
            return []
        before, self._full = self._full, page
        return [before] if before is not None else []


def _bad_row(stream: str, row: BadRow) -> RejectedRecord:
    fields = row.fields if isinstance(row.fields, dict) else {"row": row.fields}
    return RejectedRecord(stream=stream, fields=fields, reason=row.reason)


def _row_problem(row: Any, table: str) -> str | None:
    """Why a row of a DELETED answer names no record of `table`, or None.

    RECORD_ID is Goose's key (varchar(25)); a number is taken as written. A row
    whose TABLE names another table is not a deletion of this one. Called once per
    row, so the usual row (a string RECORD_ID) is tested first.
    """
    if not isinstance(row, dict):
        return f"a row that is not an object ({type(row).__name__})"
    record_id = row.get("RECORD_ID")
    if isinstance(record_id, str):
        if not record_id.strip():
            return "a record without RECORD_ID"
    elif record_id is None:
        return "a record without RECORD_ID"
    elif isinstance(record_id, bool) or not isinstance(record_id, int):
        return f"RECORD_ID is a {type(record_id).__name__}, not a string"
    named = row.get("TABLE")
    if isinstance(named, str) and named.strip() and named.strip().upper() != table.upper():
        return f"TABLE {named!r} is not the table read ({table})"
    return None


def _same_count(total: Any, listed: int) -> bool:
    """`total` must be present and agree with the rows: a cut answer is not trusted."""
    if isinstance(total, bool):
        return False
    try:
        return int(total) == listed
    except (TypeError, ValueError):
        return False


def build_source(name: str, connection: Any, settings: Any) -> GooseSource:
    if not isinstance(connection, GooseConnection) or not isinstance(settings, GooseSourceSettings):
        raise TypeError(
            f"{name}: a Goose source needs GooseConnection and GooseSourceSettings, "
            f"got {type(connection).__name__} and {type(settings).__name__}"
        )
    return GooseSource(name, connection, settings)


__all__ = [
    "GooseSource",
    "build_source",
    "classify",
    "error_code",
    "goose_instant",
    "goose_time",
]
