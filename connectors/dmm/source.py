"""Reading which records DMM delete executions deleted, once an execution has ended.

One stream per execution (`execution-<MainExecutionTrackerId>`). While the
execution is Queued or InProgress a read returns nothing and the stream stays
open; once it is Complete or InError its log is read and the records it names
as deleted are reported (log format: connectors/dmm/logs.py). Every call is a
read, so a call whose answer was never journaled is simply made again and
gives the same records (the journal de-duplicates them).

Two ways to read the log (`logs_from`):

- `outputs`: GetExecutionOutputs' base64 zip, which may hold several log
  files, read in one call with the Report and the ErrorReport. The answer is
  read as it arrives, the zip spooled to a temporary file (a zip is read from
  its end) and its files unpacked line by line, so the records are handed over
  in pages of at most CHUNK_RECORDS and memory stays constant in the size of
  the log.
- `status`: GetExecutionStatus' base64 log pages, one page per call (the
  cursor names the next page), so a very long log is journaled page by page.
  The page size is pinned in the cursor once paging started: a changed
  `log_records` would move the page boundaries and skip lines.

What is reported is only what the log names: a line that does not parse is
never guessed at, a log or a page that cannot be read raises RemoteError
(nothing is journaled: a zip is unpacked once, keeping nothing, before its
first line is read; the read is retried next run), and an execution whose
log names fewer deleted records than its report counts finishes with a
problem for the operator rather than silently: re-reading would not help, and
inventing records would propagate deletions nobody can name. A record is
reported once per page; one the log names again in a later page is reported
again, and the journal keeps it once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tempfile
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from functools import cached_property
from typing import IO, Any

import httpx

from connectors.contract import (
    CHUNK_RECORDS,
    JSON,
    FatalError,
    MalformedAnswer,
    RemoteError,
    SourcePage,
    SourceRecord,
)
from connectors.dmm.client import (
    TOKEN_HEADER,
    DmmClient,
    Operation,
    errors,
    is_dmm_body,
    succeeded,
)
from connectors.dmm.logs import (
    MAX_LOG_BYTES,
    LogEvent,
    check_log_zip,
    iter_events,
    log_zip_lines,
    open_log_zip,
    split_lines,
)
from connectors.dmm.settings import (
    DmmConnection,
    DmmSourceSettings,
    execution_id_problem,
    normal_execution_id,
    record_name,
)
from connectors.dmm.target import STATUS
from connectors.kit.http import Action, HttpClient, excerpt, json_object, resolve
from connectors.kit.jobs import map_status
from connectors.kit.json_screen import DuplicateKey, loads
from connectors.kit.source import Pages
from connectors.kit.spooled_json import Spooled, SpoolingParser, base64_to_file, text_chunks
from connectors.kit.task_streams import TaskSourceBase, TaskStreams

STREAM_PREFIX = "execution-"
NOT_FOUND = "NotFound"
ERROR_EXCERPT = 200
_INTEGER = re.compile(r"-?[0-9]+")
_COUNTERS = ("deleted", "failed", "logged")
"""Running totals a `status` read carries from page to page, in its params and cursor:
records reported, records that could not be deleted, deleted lines in the log (every
entity, before the `entities` filter)."""


class _Tally:
    """What a stretch of log (a whole zip or one page) says, its records in pages."""

    def __init__(self, record: Callable[[LogEvent], SourceRecord], entities: set[str]) -> None:
        self._record = record
        self._entities = entities
        self._seen: set[str] = set()
        self.pages = Pages(CHUNK_RECORDS)
        self.failed: Counter[str] = Counter()
        """Failed lines per entity (case-folded), after the `entities` filter."""
        self.logged = 0

    def read(self, events: Iterable[LogEvent]) -> Iterator[SourcePage]:
        """Full pages of the records `events` name, as they fill; the rest stays in
        `pages` for the answer's last page."""
        for event in events:
            if event.kind == "deleted":
                self.logged += 1
            if self._entities and event.entity.casefold() not in self._entities:
                continue
            if event.kind == "failed":
                self.failed[event.entity.casefold()] += 1
                continue
            record = self._record(event)
            if record.key in self._seen:
                continue
            self._seen.add(record.key)
            page = self.pages.add(record)
            if page is not None:
                self._seen.clear()
                yield page

    @property
    def deleted(self) -> int:
        return self.pages.handed


class DmmOutputsSource(TaskSourceBase[DmmConnection, DmmSourceSettings]):
    """The records DMM delete executions deleted, one stream per execution.

    Cursor of a stream: `{"finished": false, "status": <raw>}` while the execution
    runs; in `status` mode, between pages, `{"finished": false, "status", "page": n,
    "log_records", "deleted", "failed", "logged"}`; at the end `{"finished": true,
    "status", "deleted": n, "failed": k}` (plus `page` and `logged` in `status`
    mode), where n records were reported and k could not be deleted.
    """

    kind = "dmm_outputs"
    param = "execution"

    def client(self) -> HttpClient:
        return self.connection.http_client(self.name, base_url=self.connection.url)

    def naming(self) -> TaskStreams:
        return TaskStreams(
            self.name, STREAM_PREFIX, "DMM execution", execution_id_problem, normal_execution_id
        )

    def listed(self) -> list[str]:
        return self.settings.executions

    def opened(self) -> None:
        self.api = DmmClient(self.name, self.connection, self.http)

    @cached_property
    def _entities(self) -> set[str]:
        return {entity.casefold() for entity in self.settings.entities}

    def execution_id(self, stream: str) -> str:
        return self.task_id(stream)

    def read_params(self, cursor: JSON | None) -> dict[str, Any]:
        """In `status` mode, the log page the cursor points at and the totals so far."""
        if self.settings.logs_from != "status":
            return {}
        cursor = cursor or {}
        page = _positive(cursor.get("page"))
        if page is None:
            return {
                "page": 1,
                "log_records": self.settings.log_records,
                **dict.fromkeys(_COUNTERS, 0),
            }
        records = _positive(cursor.get("log_records")) or self.settings.log_records
        return {
            "page": page,
            "log_records": records,
            **{c: _count(cursor.get(c)) for c in _COUNTERS},
        }

    def read(
        self, stream: str, task_id: str, params: Mapping[str, Any]
    ) -> AsyncGenerator[SourcePage, None]:
        if self.settings.logs_from == "status":
            return self._read_page(stream, task_id, params)
        return self._read_outputs(stream, task_id)

    # -- reading one execution -----------------------------------------------------------

    async def _status(
        self, execution: str, extra: Mapping[str, Any], unknown: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], str, SourcePage | None]:
        """GetExecutionStatus' answer and its Status, and the stream's one page when there
        is no log to read yet or ever (an execution still running, or unknown: its cursor
        then holds `unknown` too)."""
        answer = await self.api.call(
            "status",
            {"MainExecutionTrackerId": _tracker(execution), "IncludeReports": True, **extra},
            idempotent=True,
        )
        raw = self._raw_status(answer)
        if raw.upper() == NOT_FOUND.upper():
            return answer, raw, self._not_found(execution, unknown)
        if not succeeded(answer):
            raise self._refused("status", answer)
        if not map_status(raw, STATUS).terminal:
            return answer, raw, SourcePage(records=[], cursor={"finished": False, "status": raw})
        return answer, raw, None

    def _raw_status(self, answer: Mapping[str, Any]) -> str:
        """DMM's Status; RemoteError for an answer without one."""
        raw = answer.get("Status")
        if not isinstance(raw, str) or not raw.strip():
            said = self.api.error_message(answer) or excerpt(json.dumps(answer), self.api.secrets)
            raise RemoteError(
                f"{self.name}: POST {self.api.path('status')}: an answer without Status: {said}",
                connection=self.name,
            )
        return raw.strip()

    def _not_found(self, execution: str, extra: Mapping[str, Any] | None = None) -> SourcePage:
        return SourcePage(
            records=[],
            cursor={
                "finished": True,
                "status": NOT_FOUND,
                "deleted": 0,
                "failed": 0,
                **(extra or {}),
            },
            problem=f"DMM knows no execution {execution}; nothing read — check the tracker id",
        )

    def _refused(self, operation: Operation, answer: Mapping[str, Any]) -> RemoteError:
        message = self.api.error_message(answer) or "Success is not true, no ErrorMessage"
        return RemoteError(
            f"{self.name}: POST {self.api.path(operation)}: {message}", connection=self.name
        )

    async def _read_outputs(self, stream: str, execution: str) -> AsyncGenerator[SourcePage, None]:
        status, raw, only = await self._status(execution, {"IncludeLogs": False})
        if only is not None:
            yield only
            return
        parser = SpoolingParser()
        try:
            answer = await self._outputs(execution, parser)
            if not succeeded(answer):
                raise self._refused("outputs", answer)
            reported = self._error_report(answer.get("ErrorReport"))
            tally = _Tally(lambda event: self._record(stream, execution, event), self._entities)
            with tempfile.TemporaryFile() as file:
                lines = self._zip_lines(execution, answer.get("Logs"), file)
                for page in tally.read(iter_events(lines)):
                    yield page
        finally:
            parser.discard()  # the spooled strings of the answer: read by now
        failed = tally.failed
        notes: list[str] = []
        if reported is None:
            notes.append("its ErrorReport is unreadable")
        else:
            # Per entity, the larger count (a Counter union): a failure the log names is
            # counted once, and the ErrorReport adds those it does not name (a WhereClause
            # that could not run, a log that names fewer records).
            failed = failed | reported
        error = self.api.error_message(answer) or self.api.error_message(status)
        report = answer.get("Report")
        counted = _count_or_none(report.get("NRecords")) if isinstance(report, dict) else None
        cursor, problem = self._ending(
            execution,
            raw,
            error,
            deleted=tally.deleted,
            failed=sum(failed.values()),
            logged=tally.logged,
            counted=counted,
            notes=notes,
        )
        yield tally.pages.last(cursor, problem=problem)

    async def _outputs(self, execution: str, parser: SpoolingParser) -> dict[str, Any]:
        """GetExecutionOutputs' answer, read as it arrives; its Logs (a long string) stay
        in a temporary file, as a `Spooled`."""
        path = self.api.path("outputs")
        body = {
            "MainExecutionTrackerId": _tracker(execution),
            "IncludeLogs": True,
            "IncludeReports": True,
            "IncludeErrorReport": True,
            "IncludeFiles": False,
        }
        token = {TOKEN_HEADER: self.connection.token.get_secret_value()}
        async with self.http.stream(
            "POST", path, idempotent=True, json=body, headers=token
        ) as response:
            if not 200 <= response.status_code < 300:
                refusal = httpx.Response(
                    response.status_code,
                    content=await response.read_refusal(),
                    headers={"content-type": response.headers.get("content-type", "")},
                )
                return self._refusal(refusal)
            async for part in response.aiter_bytes():
                parser.feed(part)
        try:
            answer = parser.close()
        except DuplicateKey as exc:
            raise MalformedAnswer(
                f"{self.name}: POST {path}: a malformed answer: {exc}; nothing of it is used",
                connection=self.name,
            ) from None
        except ValueError as exc:
            answer = str(exc)
        if not isinstance(answer, dict):
            raise RemoteError(
                f"{self.name}: POST {path}: HTTP {response.status_code}, an answer that is not "
                f"a JSON object: {excerpt(str(answer), self.api.secrets)}",
                connection=self.name,
                code=str(response.status_code),
            )
        return answer

    def _refusal(self, response: httpx.Response) -> dict[str, Any]:
        """A refused GetExecutionOutputs (a small answer, read whole), judged as
        `DmmClient.call` judges any answer: DMM's own refusal is returned."""
        what = f"POST {self.api.path('outputs')}"
        rule = resolve(errors("outputs"), response)
        if rule is not None and rule.action in (Action.FATAL, Action.REMOTE):
            text = rule.message.format(name=self.name, what=what, detail=self.api.message(response))
            if rule.action is Action.FATAL:
                raise FatalError(text, connection=self.name)
            raise RemoteError(text, connection=self.name, code=str(response.status_code))
        answer = json_object(response)
        if answer is None or not is_dmm_body(answer):
            raise RemoteError(
                f"{self.name}: {what}: HTTP {response.status_code}: {self.api.message(response)}",
                connection=self.name,
                code=str(response.status_code),
            )
        return answer

    async def _read_page(
        self, stream: str, execution: str, params: Mapping[str, Any]
    ) -> AsyncGenerator[SourcePage, None]:
        page = _positive(params.get("page")) or 1
        records = _positive(params.get("log_records")) or self.settings.log_records
        so_far = {c: _count(params.get(c)) for c in _COUNTERS}
        answer, raw, only = await self._status(
            execution, {"IncludeLogs": True, "LogRecords": records, "LogPage": page}, {"page": page}
        )
        if only is not None:
            yield only
            return
        pages = answer.get("LogNumPages")
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
            raise self._unreadable(execution, f"LogNumPages is {pages!r}")
        if pages == 0 and page == 1:
            lines: list[str] = []
        elif page > pages:
            raise self._unreadable(
                execution,
                f"log page {page} was asked but DMM now counts {pages} pages of {records} lines",
            )
        else:
            lines = self._page_lines(execution, page, answer.get("Logs"))
        tally = _Tally(lambda event: self._record(stream, execution, event), self._entities)
        for part in tally.read(iter_events(lines)):
            yield part
        deleted = so_far["deleted"] + tally.deleted
        failed = so_far["failed"] + sum(tally.failed.values())
        logged = so_far["logged"] + tally.logged
        if page < pages:
            cursor = {
                "finished": False,
                "status": raw,
                "page": page + 1,
                "log_records": records,
                "deleted": deleted,
                "failed": failed,
                "logged": logged,
            }
            yield tally.pages.last(cursor, more=True)
            return
        report = answer.get("Report")
        counted = (
            _count_or_none(report.get("CompletedRecords")) if isinstance(report, dict) else None
        )
        ended, problem = self._ending(
            execution,
            raw,
            self.api.error_message(answer),
            deleted=deleted,
            failed=failed,
            logged=logged,
            counted=counted,
            notes=[],
        )
        yield tally.pages.last({**ended, "page": page, "logged": logged}, problem=problem)

    # -- the log -----------------------------------------------------------------------

    def _zip_lines(self, execution: str, logs: Any, file: IO[bytes]) -> Iterator[str]:
        """The lines of the log zip `logs`, once it is spooled to `file` and checked whole."""
        if (isinstance(logs, str) and not logs.strip()) or not isinstance(logs, str | Spooled):
            raise self._unreadable(execution, "GetExecutionOutputs returned no Logs")
        try:
            base64_to_file(text_chunks(logs), file)
            archive = open_log_zip(file)
            entries = check_log_zip(archive)
        except ValueError as exc:
            raise self._unreadable(execution, f"the outputs' Logs: {exc}") from None
        with archive:
            try:
                for _, line in log_zip_lines(archive, entries):
                    yield line
            except ValueError as exc:
                raise self._unreadable(execution, f"the outputs' Logs: {exc}") from None

    def _page_lines(self, execution: str, page: int, logs: Any) -> list[str]:
        if not isinstance(logs, str) or not logs.strip():
            # A page DMM counts holds at least one line: an empty one was lost on the way.
            raise self._unreadable(execution, f"log page {page} holds no Logs")
        try:
            data = _b64(logs)
        except ValueError:
            raise self._unreadable(execution, f"log page {page} is not base64") from None
        if len(data) > MAX_LOG_BYTES:
            raise self._unreadable(
                execution, f"log page {page} is {len(data)} bytes, more than {MAX_LOG_BYTES}"
            )
        return split_lines(data.decode("utf-8", errors="replace").removeprefix("\ufeff"))

    def _unreadable(self, execution: str, why: str) -> RemoteError:
        hint = (
            "; or set logs_from: status to read GetExecutionStatus pages instead"
            if self.settings.logs_from == "outputs"
            else ""
        )
        return RemoteError(
            f"{self.name}: execution {execution}: cannot read its log: "
            f"{excerpt(why, self.api.secrets)}; nothing reported, read again next run{hint}",
            connection=self.name,
        )

    def _record(self, stream: str, execution: str, event: LogEvent) -> SourceRecord:
        return SourceRecord(
            stream=stream,
            key=f"{event.entity}.{event.attribute}={event.value}",
            fields={
                "entity": event.entity,
                "attribute": event.attribute,
                "value": event.value,
                "key": event.value,
                "execution": execution,
                "at": event.at,
                "raw": event.raw,
            },
            origin=record_name(
                self.connection.url,
                self.settings.destination,
                event.entity,
                event.attribute,
                event.value,
            ),
        )

    def _error_report(self, text: Any) -> Counter[str] | None:
        """Failures per entity (case-folded, after the filter) from the base64 JSON
        ErrorReport; empty without one, None when it cannot be read."""
        counts: Counter[str] = Counter()
        try:
            if isinstance(text, Spooled):
                text = text.text()
        except ValueError:
            return None
        if text is None or (isinstance(text, str) and not text.strip()):
            return counts
        try:
            entries = loads(_b64(text)) if isinstance(text, str) else None
        except ValueError:  # not base64, not JSON, or nested too deep
            return None
        if not isinstance(entries, list):
            return None
        for entry in entries:
            if not isinstance(entry, dict):
                return None
            entity = str(entry.get("FinalReportEntity") or "").casefold()
            if self._entities and entity not in self._entities:
                continue
            counts[entity] += _count(entry.get("Count"), default=1)
        return counts

    # -- the end of a stream -----------------------------------------------------------

    def _ending(
        self,
        execution: str,
        raw: str,
        error: str,
        *,
        deleted: int,
        failed: int,
        logged: int,
        counted: int | None,
        notes: list[str],
    ) -> tuple[JSON, str]:
        """The finished stream's cursor, and what the operator should know."""
        parts: list[str] = []
        if raw.upper() != "COMPLETE" or failed:
            said = f": {excerpt(error, self.api.secrets, ERROR_EXCERPT)}" if error else ""
            parts.append(
                f"execution {execution} ended {raw}{said}; {deleted} records deleted and "
                f"reported, {failed} could not be deleted"
            )
        if counted is not None and logged < counted:
            if logged == 0:
                gap = (
                    f"its logs name no deleted record although its report counts {counted}; "
                    "none is reported (re-reading would not help)"
                )
            else:
                gap = (
                    f"its logs name {logged} deleted records although its report counts "
                    f"{counted}; only those named are reported"
                )
            notes = [gap, *notes]
        if notes and not parts:
            parts.append(f"execution {execution} ended {raw} but {notes.pop(0)}")
        parts.extend(notes)
        cursor: JSON = {"finished": True, "status": raw, "deleted": deleted, "failed": failed}
        return cursor, "; ".join(parts)


# --- helpers ---------------------------------------------------------------------------


def _tracker(execution: str) -> int | str:
    """The tracker as DMM numbers it: an OutSystems auto-number is an integer."""
    return int(execution) if _INTEGER.fullmatch(execution) else execution


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _count_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _count(value: Any, default: int = 0) -> int:
    counted = _count_or_none(value)
    return default if counted is None else counted


__all__ = ["NOT_FOUND", "STREAM_PREFIX", "DmmOutputsSource"]
