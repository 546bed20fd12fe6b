"""Reading which records DMM delete executions deleted, once an execution has ended.

One stream per execution (`execution-<MainExecutionTrackerId>`). While the
execution is Queued or InProgress a read returns nothing and the stream stays
open; once it is Complete or InError its log is read and the records it names
as deleted are reported (log format: connectors/dmm/logs.py). Every call is a
read, so a call whose answer was never journaled is simply made again and
gives the same records (the journal de-duplicates them).

Two ways to read the log (`logs_from`):

- `outputs`: GetExecutionOutputs' base64 zip, which may hold several log
  files, read whole in one call, with the Report and the ErrorReport.
- `status`: GetExecutionStatus' base64 log pages, one page per call (the
  cursor names the next page), so a very long log is journaled page by page.
  The page size is pinned in the cursor once paging started: a changed
  `log_records` would move the page boundaries and skip lines.

What is reported is only what the log names: a line that does not parse is
never guessed at, a log or a page that cannot be read raises RemoteError
(nothing is journaled, the read is retried next run), and an execution whose
log names fewer deleted records than its report counts finishes with a
problem for the operator rather than silently: re-reading would not help, and
inventing records would propagate deletions nobody can name.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connectors.contract import (
    JSON,
    AmbiguousError,
    InFlightCall,
    RemoteError,
    RetriableError,
    SourceCall,
    SourcePage,
    SourceRecord,
)
from connectors.dmm.client import DmmClient, Operation, succeeded
from connectors.dmm.logs import MAX_LOG_BYTES, LogEvent, parse_lines, read_log_zip, split_lines
from connectors.dmm.settings import (
    DmmConnection,
    DmmSourceSettings,
    execution_id_problem,
    normal_execution_id,
    record_name,
)
from connectors.dmm.target import STATUS
from connectors.http import HttpClient, excerpt
from connectors.jobs import map_status
from connectors.task_streams import TaskStreams

STREAM_PREFIX = "execution-"
NOT_FOUND = "NotFound"
ERROR_EXCERPT = 200
_INTEGER = re.compile(r"-?[0-9]+")
_COUNTERS = ("deleted", "failed", "logged")
"""Running totals a `status` read carries from page to page, in its params and cursor:
records reported, records that could not be deleted, deleted lines in the log (every
entity, before the `entities` filter)."""


@dataclass
class _Tally:
    """What one stretch of log (a whole zip or one page) says."""

    records: list[SourceRecord] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    """Failed lines per entity (case-folded), after the `entities` filter."""
    logged: int = 0


class DmmOutputsSource:
    """The records DMM delete executions deleted, one stream per execution.

    Cursor of a stream: `{"finished": false, "status": <raw>}` while the execution
    runs; in `status` mode, between pages, `{"finished": false, "status", "page": n,
    "log_records", "deleted", "failed", "logged"}`; at the end `{"finished": true,
    "status", "deleted": n, "failed": k}` (plus `page` and `logged` in `status`
    mode), where n records were reported and k could not be deleted.
    """

    kind = "dmm_outputs"

    def __init__(
        self,
        name: str,
        connection: DmmConnection,
        settings: DmmSourceSettings,
        *,
        http: HttpClient | None = None,
    ) -> None:
        self.name = name
        self.url = connection.url
        self.settings = settings
        self._entities = {entity.casefold() for entity in settings.entities}
        self._http = http or connection.http_client(name, base_url=connection.url)
        self.api = DmmClient(name, connection, self._http)
        self._streams = TaskStreams(
            name, STREAM_PREFIX, "DMM execution", execution_id_problem, normal_execution_id
        )

    # -- Source and TaskSource --------------------------------------------------------

    def streams(self) -> Sequence[str]:
        return [self.task_stream(execution) for execution in self.settings.executions]

    def task_stream(self, task_id: str) -> str:
        """`execution-<id>`, integers in plain form; ValueError (for the operator) when
        `task_id` cannot name an execution."""
        return self._streams.stream(task_id)

    def execution_id(self, stream: str) -> str:
        return self._streams.task_id(stream)

    def finished(self, cursor: JSON | None) -> bool:
        return self._streams.finished(cursor)

    def plan(
        self,
        stream: str,
        cursor: JSON | None,
        interrupted: InFlightCall | None,
        now: datetime,
    ) -> SourceCall:
        """The read the cursor points at. An interrupted call needs no recovery window:
        nothing is consumed, the same params read the same page again."""
        params: dict[str, Any] = {"execution": self.execution_id(stream)}
        if self.settings.logs_from == "status":
            cursor = cursor or {}
            page = _positive(cursor.get("page"))
            if page is None:
                params.update(page=1, log_records=self.settings.log_records)
                params.update(dict.fromkeys(_COUNTERS, 0))
            else:
                records = _positive(cursor.get("log_records")) or self.settings.log_records
                params.update(page=page, log_records=records)
                params.update({c: _count(cursor.get(c)) for c in _COUNTERS})
        return SourceCall(stream=stream, params=params, started_at=now.astimezone(UTC))

    async def fetch(self, call: SourceCall) -> SourcePage:
        execution = str(call.params.get("execution") or self.execution_id(call.stream))
        try:
            if self.settings.logs_from == "status":
                return await self._read_page(call.stream, execution, call.params)
            return await self._read_outputs(call.stream, execution)
        except AmbiguousError as exc:
            # Only reads were sent: whatever happened to the answer, nothing changed.
            raise RetriableError(
                str(exc), connection=self.name, retry_after=exc.retry_after
            ) from None

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- reading one execution -----------------------------------------------------------

    async def _status(self, execution: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        return await self.api.call(
            "status",
            {"MainExecutionTrackerId": _tracker(execution), "IncludeReports": True, **extra},
            idempotent=True,
        )

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

    async def _read_outputs(self, stream: str, execution: str) -> SourcePage:
        status = await self._status(execution, {"IncludeLogs": False})
        raw = self._raw_status(status)
        if raw.upper() == NOT_FOUND.upper():
            return self._not_found(execution)
        if not succeeded(status):
            raise self._refused("status", status)
        if not map_status(raw, STATUS).terminal:
            return SourcePage(records=[], cursor={"finished": False, "status": raw})
        answer = await self.api.call(
            "outputs",
            {
                "MainExecutionTrackerId": _tracker(execution),
                "IncludeLogs": True,
                "IncludeReports": True,
                "IncludeErrorReport": True,
                "IncludeFiles": False,
            },
            idempotent=True,
        )
        if not succeeded(answer):
            raise self._refused("outputs", answer)
        lines = self._zip_lines(execution, answer.get("Logs"))
        tally = self._tally(stream, execution, parse_lines(lines))
        failed = tally.failed
        notes: list[str] = []
        reported = self._error_report(answer.get("ErrorReport"))
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
        return self._finish(
            execution,
            raw,
            error,
            tally.records,
            deleted=len(tally.records),
            failed=sum(failed.values()),
            logged=tally.logged,
            counted=counted,
            notes=notes,
        )

    async def _read_page(
        self, stream: str, execution: str, params: Mapping[str, Any]
    ) -> SourcePage:
        page = _positive(params.get("page")) or 1
        records = _positive(params.get("log_records")) or self.settings.log_records
        so_far = {c: _count(params.get(c)) for c in _COUNTERS}
        answer = await self._status(
            execution, {"IncludeLogs": True, "LogRecords": records, "LogPage": page}
        )
        raw = self._raw_status(answer)
        if raw.upper() == NOT_FOUND.upper():
            return self._not_found(execution, {"page": page})
        if not succeeded(answer):
            raise self._refused("status", answer)
        if not map_status(raw, STATUS).terminal:
            return SourcePage(records=[], cursor={"finished": False, "status": raw})
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
        tally = self._tally(stream, execution, parse_lines(lines))
        deleted = so_far["deleted"] + len(tally.records)
        failed = so_far["failed"] + sum(tally.failed.values())
        logged = so_far["logged"] + tally.logged
        if page < pages:
            return SourcePage(
                records=tally.records,
                cursor={
                    "finished": False,
                    "status": raw,
                    "page": page + 1,
                    "log_records": records,
                    "deleted": deleted,
                    "failed": failed,
                    "logged": logged,
                },
                more=True,
            )
        report = answer.get("Report")
        counted = (
            _count_or_none(report.get("CompletedRecords")) if isinstance(report, dict) else None
        )
        finished = self._finish(
            execution,
            raw,
            self.api.error_message(answer),
            tally.records,
            deleted=deleted,
            failed=failed,
            logged=logged,
            counted=counted,
            notes=[],
        )
        cursor = {**finished.cursor, "page": page, "logged": logged}
        return SourcePage(records=finished.records, cursor=cursor, problem=finished.problem)

    # -- the log -----------------------------------------------------------------------

    def _zip_lines(self, execution: str, logs: Any) -> list[str]:
        if not isinstance(logs, str) or not logs.strip():
            raise self._unreadable(execution, "GetExecutionOutputs returned no Logs")
        try:
            data = _b64(logs)
            files = read_log_zip(data)
        except ValueError as exc:
            raise self._unreadable(execution, f"the outputs' Logs: {exc}") from None
        return [line for _, file_lines in files for line in file_lines]

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

    def _tally(self, stream: str, execution: str, events: Sequence[LogEvent]) -> _Tally:
        tally = _Tally()
        seen: set[str] = set()
        for event in events:
            if event.kind == "deleted":
                tally.logged += 1
            if self._entities and event.entity.casefold() not in self._entities:
                continue
            if event.kind == "failed":
                tally.failed[event.entity.casefold()] += 1
                continue
            record = self._record(stream, execution, event)
            if record.key not in seen:
                seen.add(record.key)
                tally.records.append(record)
        return tally

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
                self.url, self.settings.destination, event.entity, event.attribute, event.value
            ),
        )

    def _error_report(self, text: Any) -> Counter[str] | None:
        """Failures per entity (case-folded, after the filter) from the base64 JSON
        ErrorReport; empty without one, None when it cannot be read."""
        counts: Counter[str] = Counter()
        if text is None or (isinstance(text, str) and not text.strip()):
            return counts
        try:
            entries = json.loads(_b64(text)) if isinstance(text, str) else None
        except (ValueError, UnicodeDecodeError):
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

    def _finish(
        self,
        execution: str,
        raw: str,
        error: str,
        records: Sequence[SourceRecord],
        *,
        deleted: int,
        failed: int,
        logged: int,
        counted: int | None,
        notes: list[str],
    ) -> SourcePage:
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
        return SourcePage(
            records=list(records),
            cursor={"finished": True, "status": raw, "deleted": deleted, "failed": failed},
            problem="; ".join(parts),
        )


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
