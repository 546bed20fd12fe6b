"""A stateful emulator of an OutSystems environment running the DMM API (delete executions).

Emulated (apis.md section 4 and seeds/000_c84072574b739cf7.txt); every
operation is a JSON POST under `/DMM_API/rest/DMMAPI` (ASSUMED, as the
vendor publishes neither the paths nor the methods):

    StartExecution      X-DMM-Token and X-DMM-Token-OTP; {"Type": "Delete",
                        "Configuration": {DestinationDBConnection, EntitiesToDelete:
                        [{OSEntityName, OSEntitySSKey, ESpaceSsKey, WhereClause}],
                        ApplicationDeletionMode, ApplicationsToDelete, FilterTenants,
                        TenantsList, IncludeProtectedApplications}}
                        -> {"Success": true, "MainExecutionTrackerId": <auto-number>}
    StopExecution       {MainExecutionTrackerId}: no more chunks are deleted; what was
                        deleted stays deleted; the execution ends InError
    GetExecutionStatus  {MainExecutionTrackerId, IncludeReports, IncludeLogs,
                        LogRecords (default 10), LogPage (1-based)} -> Status (Queued |
                        InProgress | Complete | InError | NotFound), Result, Success,
                        ErrorMessage, Logs (base64 of the page's lines), LogNumPages, Report
    GetExecutionOutputs {MainExecutionTrackerId, IncludeLogs, IncludeReports,
                        IncludeErrorReport, IncludeFiles}; only once Complete or InError:
                        Logs (base64 zip of .log files, `log_file_lines` lines each),
                        Report, ErrorReport (base64 JSON array), ZipFile (null: exports only)

An execution is Queued, InProgress after `step_seconds` (its WhereClauses are
evaluated then), deletes `chunk_size` rows per further `step_seconds`, and
ends Complete, or InError when a row could not be deleted (protected rows
fail as a foreign key REFERENCE would), a WhereClause is not valid SQL for
the emulator, or it was stopped. The state is computed lazily from the clock
whenever it is read, executions interleaving in time order.

A null or blank WhereClause deletes every row of the entity: that is DMM's
semantics, kept so tests can prove a client never sends one. The evaluator
understands `[Attr] IN (lit, ...)`, `Attr = lit`, `"Attr"`, OR and
parentheses, with literals 'text' ('' escapes a quote), N'text' and integers;
anything else ends the execution InError with an SQL Server-like message.
Text compares exactly (a case-sensitive collation). Knob `backslash_escapes`
makes the destination read the WhereClause as MySQL and MariaDB do by
default: a backslash escapes the next character inside a literal, and `-- `
(followed by a space) and `#` start comments, so a client that escapes only
quotes can be shown to widen a delete.

Answers (ASSUMED: apis.md says errors are HTTP 200 with Success false):

| situation                                          | HTTP | body                      |
|----------------------------------------------------|------|---------------------------|
| missing or unknown X-DMM-Token                     | 401  | Success false             |
| StartExecution: missing or unknown OTP, or an OTP  | 403  | Success false             |
|  already used (knob otp_single_use)                |      |                           |
| body is not a JSON object                          | 400  | OutSystems {Errors, StatusCode} |
| unknown entity or connection, unsupported Type or  | 200  | Success false             |
|  mode, another execution running (one_at_a_time)   |      |                           |
| unknown tracker id                                 | 200  | Status NotFound, Success false |

The log lines follow connectors/dmm/logs.py: one per deleted and per failed
row (knob `log_record_lines` off leaves only the chunk lines, as a DMM that
logs less would), so a long log comes from seeding many rows; knob
`corrupt_logs` makes the logs unreadable (outputs: a truncated zip; status
pages: text that is not base64). Ground truth and the admin routes are never
faulted:

    POST /_admin/seed      {"<Entity>": {"key": "<attribute>", "rows": [{...}]}}
    POST /_admin/protect   {"entity": "...", "keys": [...]}  these rows refuse deletion
    POST /_admin/start_execution {"entity": "...", "where": "..." | null, "destination"?}
                           a delete started by an operator in DMM's front-end (no OTP
                           spent): -> {"MainExecutionTrackerId": <id>}
    GET  /_admin/rows/{entity}                 the rows still present
    GET  /_admin/deleted                       [{entity, key, row, execution, at}], once each
    GET  /_admin/executions                    each with its configuration as received
    POST /_admin/step      {"seconds": x}      move the emulator's clock forward
    GET|PUT /_admin/settings                   the `Knobs`
    POST /_admin/reset                         rows, executions and ground truth cleared
    GET|PUT /_admin/faults, GET|DELETE /_admin/requests  (connectors.emulation.kit)
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import re
import time
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from connectors.dmm.logs import format_deleted, format_failed, format_line
from connectors.dmm.where import Key, SqlError, compile_where
from connectors.emulation.admin import (
    SteppedEmulator,
    Unknown,
    admin_get,
    admin_post,
    dicts,
    json_object,
    settled,
)
from connectors.emulation.kit import DEMO_PEOPLE, Faults, apply_settings, run_alone
from connectors.kit.http import as_int

BASE_PATH = "/DMM_API/rest/DMMAPI"
RUNTIME_CONNECTION = "Runtime Connection"
DEMO_TOKEN = "dmm-sandbox-token"  # noqa: S105 - the sandbox's well-known demo key
DEMO_OTP = "dmm-sandbox-otp"
STOPPED = "Execution stopped by the user"
ALREADY_RUNNING = "There is already an execution running"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
OTHER_TYPES = {"Migration", "Export", "Import", "Scramble"}
REFERENCE_TIP = (
    "Delete the records that reference these first, or change the Delete Rule of the "
    "referencing attribute"
)
WHERE_TIP = "Check the WhereClause of the entity in the configuration"


# --- demo data ---------------------------------------------------------------------------


def demo_entities() -> dict[str, dict[str, Any]]:
    """`Customer` keyed by `ExternalId` "0-1".."0-15" (Goose's demo RECORD_IDs, so a
    pipeline maps `{RECORD_ID}` onto it) and `Employee` keyed by `EmployeeNumber`
    "E0101".."E0108"."""
    customers = [
        {"Id": n, "ExternalId": f"0-{n}", "UserName": user, "Name": name}
        for n, (user, name) in enumerate(DEMO_PEOPLE, 1)
    ]
    employees = [
        {"Id": n, "EmployeeNumber": f"E{100 + n:04d}", "Name": name}
        for n, (_, name) in enumerate(DEMO_PEOPLE[:8], 1)
    ]
    return {
        "Customer": {"key": "ExternalId", "rows": customers},
        "Employee": {"key": "EmployeeNumber", "rows": employees},
    }


# --- state -------------------------------------------------------------------------------


@dataclass
class Knobs:
    """Behaviour switches, changed in place by tests or `PUT /_admin/settings`; timing and
    chunking apply to executions started afterwards."""

    step_seconds: float = 0.5
    chunk_size: int = 50
    log_file_lines: int = 50
    """Lines per .log file in the outputs zip; more lines make more files."""
    one_at_a_time: bool = False
    """Refuse StartExecution while another execution is Queued or InProgress."""
    otp_single_use: bool = False
    """Refuse an OTP that already started an execution (apis.md: ASSUME one-time)."""
    log_record_lines: bool = True
    """Log a line per deleted or failed row; off, the log only counts chunks (the
    Report still counts the records). Applies to rows deleted afterwards."""
    corrupt_logs: bool = False
    """Serve unreadable logs: a truncated zip from GetExecutionOutputs, text that is not
    base64 in GetExecutionStatus pages."""
    backslash_escapes: bool = False
    """The destination reads WhereClauses as MySQL/MariaDB: backslash escapes in
    literals, `-- ` and `#` comments."""

    def update(self, values: Mapping[str, Any]) -> None:
        checks: dict[str, Callable[[Any], bool]] = {
            "step_seconds": lambda v: _number(v) and v >= 0,
            "chunk_size": lambda v: _integer(v) and v >= 1,
            "log_file_lines": lambda v: _integer(v) and v >= 1,
            "one_at_a_time": lambda v: isinstance(v, bool),
            "otp_single_use": lambda v: isinstance(v, bool),
            "log_record_lines": lambda v: isinstance(v, bool),
            "corrupt_logs": lambda v: isinstance(v, bool),
            "backslash_escapes": lambda v: isinstance(v, bool),
        }
        apply_settings(self, values, checks)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Table:
    key: str
    rows: dict[Key, dict[str, Any]] = field(default_factory=dict)
    ss_key: str | None = None
    espace_ss_key: str | None = None

    def columns(self) -> list[str]:
        names = dict.fromkeys([self.key])
        for row in self.rows.values():
            names.update(dict.fromkeys(row))
        return list(names)


@dataclass
class Failure:
    entity: str
    key: Key | None
    error: str
    tip: str
    at: float


@dataclass
class Execution:
    id: int
    created: float
    step: float
    chunk_size: int
    configuration: dict[str, Any]
    entities: list[tuple[str, str | None]]
    started: float | None = None
    ended: float | None = None
    chunks: list[tuple[str, list[Key]]] = field(default_factory=list)
    done_chunks: int = 0
    total_records: int = 0
    deleted: list[tuple[str, Key]] = field(default_factory=list)
    volume: int = 0
    failures: list[Failure] = field(default_factory=list)
    error: str = ""
    stopped: bool = False
    log: list[str] = field(default_factory=list)
    started_by: str = "api"
    """"api" (StartExecution) or "operator" (DMM's front-end, /_admin/start_execution)."""

    @property
    def status(self) -> str:
        if self.ended is not None:
            return "InError" if self.error else "Complete"
        return "InProgress" if self.started is not None else "Queued"

    def next_due(self) -> float | None:
        if self.ended is not None:
            return None
        if self.started is None:
            return self.created + self.step
        return self.started + (self.done_chunks + 1) * self.step


@dataclass(frozen=True)
class DeletedRow:
    entity: str
    key: Key
    row: dict[str, Any]
    execution: int
    at: str


class DmmEmulator(SteppedEmulator):
    """An environment's entities and DMM delete executions behind DMM's routes.

    `clock` gives seconds since the epoch; `step()` moves it forward, so tests
    walk an execution through its states without sleeping.
    """

    knobs: Knobs
    seed_usage = 'send {"<Entity>": {"key": .., "rows": []}}'

    def __init__(
        self,
        tokens: Iterable[str] = (DEMO_TOKEN,),
        otps: Iterable[str] = (DEMO_OTP,),
        step_seconds: float = 0.5,
        chunk_size: int = 50,
        *,
        connections: Iterable[str] = (),
        base_path: str = BASE_PATH,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tokens = set(tokens)
        self.otps = set(otps)
        self.connections = {RUNTIME_CONNECTION, *connections}
        self.base_path = base_path.rstrip("/")
        super().__init__(faults)
        self.knobs = Knobs(step_seconds=step_seconds, chunk_size=chunk_size)
        self.clock = clock
        self._tables: dict[str, Table] = {}
        self._protected: set[tuple[str, Key]] = set()
        self._deleted: list[DeletedRow] = []
        self._executions: dict[int, Execution] = {}
        self._used_otps: set[str] = set()
        self._next_id = 1

    def is_mutating(self, method: str, path: str) -> bool:
        mutating = (f"{self.base_path}/StartExecution", f"{self.base_path}/StopExecution")
        return method == "POST" and path.rstrip("/") in mutating

    def now(self) -> float:
        return self.clock() + self._offset

    def now_json(self) -> float:
        return self.now()

    # -- ground truth and admin helpers (also served under /_admin) ----------------------

    def seed(self, entities: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """Add entities and rows: {name: {"key": attribute, "rows": [...], "ss_key",
        "espace_ss_key"}}. A row whose key exists replaces it. ValueError on bad input."""
        with self._lock:
            staged = {name: copy.deepcopy(t) for name, t in self._tables.items()}
            for name, spec in entities.items():
                if not isinstance(name, str) or not name or not isinstance(spec, Mapping):
                    raise ValueError(f"entity {name!r}: send {{'key': ..., 'rows': [...]}}")
                key = spec.get("key")
                rows = spec.get("rows", [])
                if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    raise ValueError(f"entity {name!r}: 'key' must be an attribute name")
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    raise ValueError(f"entity {name!r}: 'rows' must be a list of objects")
                table = staged.get(name)
                if table is None:
                    table = staged[name] = Table(key)
                elif table.key != key:
                    raise ValueError(f"entity {name!r} is keyed by {table.key!r}, not {key!r}")
                for extra in ("ss_key", "espace_ss_key"):
                    if spec.get(extra) is not None:
                        setattr(table, extra, str(spec[extra]))
                for row in rows:
                    value = row.get(key)
                    if isinstance(value, bool) or not isinstance(value, int | str):
                        raise ValueError(f"entity {name!r}: a row has no text or integer {key!r}")
                    if isinstance(value, str) and any(
                        unicodedata.category(ch) in ("Cc", "Cs") for ch in value
                    ):
                        raise ValueError(
                            f"entity {name!r}: key {value!r} holds a control character, "
                            "which a log line cannot carry"
                        )
                    for column, cell in row.items():
                        if cell is not None and (
                            isinstance(cell, bool) or not isinstance(cell, int | str)
                        ):
                            raise ValueError(
                                f"entity {name!r}: column {column!r} must be text, an "
                                "integer or null"
                            )
                    table.rows[value] = dict(row)
            self._tables = staged
            return {name: len(t.rows) for name, t in self._tables.items()}

    def protect(self, entity: str, keys: Iterable[Key]) -> int:
        """These rows refuse deletion, as a foreign key REFERENCE to them would."""
        with self._lock:
            if entity not in self._tables:
                raise KeyError(entity)
            self._protected.update((entity, k) for k in keys)
            return len(self._protected)

    def start_execution(
        self, entity: str, where: str | None, *, destination: str | None = None
    ) -> int:
        """A delete an operator starts in DMM's front-end, not through the API: it spends
        no OTP, is tracked like any other, and its tracker id is what an operator hands
        the engine. ValueError with DMM's message when DMM would refuse it."""
        configuration: dict[str, Any] = {
            "DestinationDBConnection": destination,
            "EntitiesToDelete": [
                {
                    "OSEntityName": entity,
                    "OSEntitySSKey": None,
                    "ESpaceSsKey": None,
                    "WhereClause": where,
                }
            ],
            "ApplicationDeletionMode": False,
            "ApplicationsToDelete": [],
            "FilterTenants": False,
            "TenantsList": [],
            "IncludeProtectedApplications": False,
        }
        body = {"Type": "Delete", "Configuration": configuration}
        problem, entities = self._check_configuration(configuration)
        if problem:
            raise ValueError(problem)
        with self._lock:
            self._advance()
            if self.knobs.one_at_a_time and self._busy():
                raise ValueError(ALREADY_RUNNING)
            return self._create(body, entities, started_by="operator").id

    @settled
    def rows(self, entity: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._tables[entity].rows.values()]

    @settled
    def deleted(self) -> list[DeletedRow]:
        return list(self._deleted)

    @settled
    def executions(self) -> list[dict[str, Any]]:
        return [self._execution_json(e) for e in self._executions.values()]

    def clear(self) -> None:
        self._tables.clear()
        self._protected.clear()
        self._deleted.clear()
        self._executions.clear()
        self._used_otps.clear()
        self._next_id = 1
        self._offset = 0.0

    # -- execution lifecycle (callers hold the lock) ------------------------------------------

    def _busy(self) -> bool:
        return any(e.status in ("Queued", "InProgress") for e in self._executions.values())

    def _create(
        self, body: Mapping[str, Any], entities: list[tuple[str, str | None]], started_by: str
    ) -> Execution:
        execution = Execution(
            id=self._next_id,
            created=self.now(),
            step=self.knobs.step_seconds,
            chunk_size=self.knobs.chunk_size,
            configuration=copy.deepcopy(dict(body)),
            entities=entities,
            started_by=started_by,
        )
        self._next_id += 1
        self._executions[execution.id] = execution
        self._note(execution, execution.created, "INFO", "-", f"Execution {execution.id} queued")
        return execution

    def _advance(self) -> None:
        now = self.now()
        while True:
            due = [
                (when, e.id)
                for e in self._executions.values()
                if (when := e.next_due()) is not None and when <= now
            ]
            if not due:
                return
            when, ident = min(due)
            self._fire(self._executions[ident], when)

    def _fire(self, execution: Execution, at: float) -> None:
        if execution.started is None:
            self._start(execution, at)
            return
        if execution.done_chunks < len(execution.chunks):
            self._chunk(execution, at)
            execution.done_chunks += 1
        if execution.done_chunks >= len(execution.chunks):
            self._end(execution, at)

    def _start(self, execution: Execution, at: float) -> None:
        execution.started = at
        self._note(execution, at, "INFO", "-", f"Execution {execution.id} started (Delete)")
        chunks: list[tuple[str, list[Key]]] = []
        for entity, where in execution.entities:
            table = self._tables[entity]
            try:
                predicate = compile_where(
                    where, table.columns(), backslash_escapes=self.knobs.backslash_escapes
                )
                keys = [k for k, row in table.rows.items() if predicate(row)]
            except SqlError as exc:
                failure = Failure(entity, None, str(exc), WHERE_TIP, at)
                execution.failures.append(failure)
                self._note(execution, at, "ERROR", entity, f"Could not run the WhereClause: {exc}")
                execution.error = f"Error deleting {entity}: {exc}"
                self._end(execution, at)
                return
            execution.total_records += len(keys)
            size = execution.chunk_size
            chunks.extend((entity, keys[i : i + size]) for i in range(0, len(keys), size))
        execution.chunks = chunks

    def _chunk(self, execution: Execution, at: float) -> None:
        entity, keys = execution.chunks[execution.done_chunks]
        table = self._tables[entity]
        number, total = execution.done_chunks + 1, len(execution.chunks)
        self._note(
            execution,
            at,
            "INFO",
            entity,
            f"Deleting chunk {number} of {total} ({len(keys)} records)",
        )
        when = _moment(at)
        for key in keys:
            row = table.rows.get(key)
            if row is None:
                continue
            if (entity, key) in self._protected:
                reason = (
                    "The DELETE statement conflicted with the REFERENCE constraint "
                    f'"OSFRK_OSUSR_DMM_REF_{entity.upper()}_{table.key.upper()}". The conflict '
                    f'occurred in database "outsystems", table "dbo.OSUSR_DMM_{entity.upper()}".'
                )
                execution.failures.append(Failure(entity, key, reason, REFERENCE_TIP, at))
                if self.knobs.log_record_lines:
                    execution.log.append(
                        format_failed(_datetime(at), entity, table.key, key, reason)
                    )
                continue
            del table.rows[key]
            execution.deleted.append((entity, key))
            execution.volume += len(json.dumps(row))
            self._deleted.append(DeletedRow(entity, key, row, execution.id, when))
            if self.knobs.log_record_lines:
                execution.log.append(format_deleted(_datetime(at), entity, table.key, key))

    def _end(self, execution: Execution, at: float) -> None:
        execution.ended = at
        failed = [f for f in execution.failures if f.key is not None]
        if failed and not execution.error:
            execution.error = f"{len(failed)} records could not be deleted"
        self._note(
            execution,
            at,
            "ERROR" if execution.error else "INFO",
            "-",
            f"Execution {execution.id} finished: {execution.status} ({len(execution.deleted)} "
            f"records deleted, {len(failed)} failed)",
        )

    def _stop(self, execution: Execution) -> None:
        at = self.now()
        execution.stopped = True
        execution.error = STOPPED
        self._note(execution, at, "WARN", "-", STOPPED)
        self._end(execution, at)

    def _note(self, execution: Execution, at: float, level: str, entity: str, text: str) -> None:
        execution.log.append(format_line(_datetime(at), level, entity, text))

    # -- answers (callers hold the lock) --------------------------------------------------------

    def _execution_json(self, execution: Execution) -> dict[str, Any]:
        return {
            "id": execution.id,
            "status": execution.status,
            "configuration": copy.deepcopy(execution.configuration),
            "created": _moment(execution.created),
            "started": _moment(execution.started) if execution.started is not None else None,
            "ended": _moment(execution.ended) if execution.ended is not None else None,
            "error": execution.error,
            "stopped": execution.stopped,
            "started_by": execution.started_by,
            "deleted": [{"entity": e, "key": k} for e, k in execution.deleted],
            "failed": [
                {"entity": f.entity, "key": f.key, "error": f.error} for f in execution.failures
            ],
        }

    def _status_report(self, execution: Execution) -> dict[str, Any]:
        now = self.now()
        started = execution.started
        elapsed = ((execution.ended or now) - started) if started is not None else 0.0
        status = execution.status
        message_type = {"Complete": "Success", "InError": "Error"}.get(status, "Info")
        text = {
            "Queued": "The execution is queued",
            "InProgress": f"Deleting: {len(execution.deleted)} of {execution.total_records} "
            "records",
            "Complete": "The execution finished successfully",
        }.get(status, execution.error)
        return {
            "ElapsedTime": _duration(elapsed),
            "StartedAt": _moment(started) if started is not None else "",
            "EndedAt": _moment(execution.ended) if execution.ended is not None else "",
            "TotalDuration": round(elapsed),
            "CompletedBPTRecords": 0,
            "CompletedBPTVolume": 0,
            "CompletedInstructions": execution.done_chunks,
            "CompletedRecords": len(execution.deleted),
            "TotalBPTRecords": 0,
            "TotalBPTVolume": 0,
            "TotalInstructions": len(execution.chunks),
            "TotalRecords": execution.total_records,
            "TotalVolumeKBs": round(execution.volume / 1024, 2),
            "Message": {"MessageText": text, "MessageType": message_type},
        }

    def _outputs_report(self, execution: Execution) -> dict[str, Any]:
        started = execution.started if execution.started is not None else execution.created
        return {
            "ConfigurationType": "Delete",
            "ExecutionDate": _moment(started),
            "ExecutionDuration": _duration((execution.ended or started) - started),
            "BPTDataVolume": 0,
            "DataVolume": round(execution.volume / 1024, 2),
            "NBPTRecords": 0,
            "NInstructions": execution.done_chunks,
            "NRecords": len(execution.deleted),
            "NErrors": len(execution.failures),
        }

    def _error_report(self, execution: Execution) -> list[dict[str, Any]]:
        grouped: dict[tuple[str, str], dict[str, Any]] = {}
        for failure in execution.failures:
            entry = grouped.setdefault(
                (failure.entity, failure.error),
                {
                    "FinalReportEntity": failure.entity,
                    "FinalReportError": failure.error,
                    "FinalReportStacktrace": f"at DMM.Delete.{failure.entity}",
                    "FinalReportTip": failure.tip,
                    "FinalReportMoment": _moment(failure.at),
                    "Count": 0,
                },
            )
            entry["Count"] += 1
        return list(grouped.values())

    def _log_zip(self, execution: Execution) -> bytes:
        per_file = self.knobs.log_file_lines
        lines = execution.log
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for number, start in enumerate(range(0, max(len(lines), 1), per_file), 1):
                info = zipfile.ZipInfo(
                    f"DMM_Execution_{execution.id}_{number}.log", date_time=(2000, 1, 1, 0, 0, 0)
                )
                info.compress_type = zipfile.ZIP_DEFLATED
                body = "".join(line + "\n" for line in lines[start : start + per_file])
                archive.writestr(info, body.encode())
        return buffer.getvalue()

    # -- vendor routes ------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        base = self.base_path
        return [
            *self._admin_routes(),
            Route(f"{base}/StartExecution", self._start_execution, methods=["POST"]),
            Route(f"{base}/StopExecution", self._stop_execution, methods=["POST"]),
            Route(f"{base}/GetExecutionStatus", self._get_status, methods=["POST"]),
            Route(f"{base}/GetExecutionOutputs", self._get_outputs, methods=["POST"]),
        ]

    def _authorize(self, request: Request, start: bool) -> tuple[str, Response | None]:
        """("", None) or (the OTP to spend, None) when allowed; else ("", the refusal)."""
        if request.headers.get("X-DMM-Token", "") not in self.tokens:
            return "", _failure("Invalid X-DMM-Token", 401)
        if not start:
            return "", None
        otp = request.headers.get("X-DMM-Token-OTP", "")
        if otp not in self.otps:
            return "", _failure("Invalid X-DMM-Token-OTP", 403)
        with self._lock:
            if self.knobs.otp_single_use and otp in self._used_otps:
                return "", _failure("The X-DMM-Token-OTP was already used", 403)
        return otp, None

    async def _start_execution(self, request: Request) -> Response:
        otp, refused = self._authorize(request, start=True)
        if refused is not None:
            return refused
        body = await json_object(request)
        if body is None:
            return _unparsable()
        kind = body.get("Type")
        if kind != "Delete":
            if kind in OTHER_TYPES:
                return _failure(f"The emulator runs executions of Type Delete only, not {kind}")
            return _failure(
                f"Invalid Type {kind!r}: use Migration, Export, Import, Delete or Scramble"
            )
        config = body.get("Configuration")
        if not isinstance(config, dict):
            return _failure("Configuration must be a JSON object")
        problem, entities = self._check_configuration(config)
        if problem:
            return _failure(problem)
        with self._lock:
            self._advance()
            if self.knobs.one_at_a_time and self._busy():
                return _failure(ALREADY_RUNNING)
            if self.knobs.otp_single_use and otp in self._used_otps:
                return _failure("The X-DMM-Token-OTP was already used", 403)
            self._used_otps.add(otp)
            execution = self._create(body, entities, started_by="api")
        return JSONResponse(
            {"Success": True, "ErrorMessage": "", "MainExecutionTrackerId": execution.id}
        )

    def _check_configuration(
        self, config: Mapping[str, Any]
    ) -> tuple[str, list[tuple[str, str | None]]]:
        """("", the entities and their WhereClauses) or (why the start is refused, [])."""
        if config.get("ApplicationDeletionMode") is True:
            return "ApplicationDeletionMode is not supported by the emulator", []
        if config.get("FilterTenants") is True:
            return "FilterTenants is not supported by the emulator", []
        destination = config.get("DestinationDBConnection")
        if destination not in (None, "") and destination not in self.connections:
            return f"Connection not found: {destination}", []
        listed = config.get("EntitiesToDelete")
        if not isinstance(listed, list) or not listed:
            return "EntitiesToDelete must list at least one entity", []
        entities: list[tuple[str, str | None]] = []
        with self._lock:
            for entry in listed:
                if not isinstance(entry, dict):
                    return "each EntitiesToDelete entry must be a JSON object", []
                name = entry.get("OSEntityName")
                table = self._tables.get(name) if isinstance(name, str) else None
                if (
                    table is None
                    or not _same_key(entry.get("OSEntitySSKey"), table.ss_key)
                    or (not _same_key(entry.get("ESpaceSsKey"), table.espace_ss_key))
                ):
                    return f"Entity not found: {name}", []
                where = entry.get("WhereClause")
                if where is not None and not isinstance(where, str):
                    return f"WhereClause of {name} must be text or null", []
                entities.append((str(name), where))
        return "", entities

    def _tracker(self, body: Mapping[str, Any]) -> int | None:
        return as_int(body.get("MainExecutionTrackerId"))

    async def _about_execution(
        self,
        request: Request,
        answer: Callable[[dict[str, Any], Execution | None], Response],
    ) -> Response:
        """An authorized call naming an execution by tracker id: `answer` gets its body and
        the execution (None when unknown) under the lock, the clock's due work done."""
        _, refused = self._authorize(request, start=False)
        if refused is not None:
            return refused
        body = await json_object(request)
        if body is None:
            return _unparsable()
        tracker = self._tracker(body)
        with self._lock:
            self._advance()
            return answer(body, self._executions.get(tracker) if tracker is not None else None)

    async def _stop_execution(self, request: Request) -> Response:
        return await self._about_execution(request, self._stop_answer)

    def _stop_answer(self, body: dict[str, Any], execution: Execution | None) -> Response:
        if execution is None:
            return _failure(f"Execution not found: {body.get('MainExecutionTrackerId')!r}")
        if execution.ended is not None:
            return _failure(f"The execution is not running (status {execution.status})")
        self._stop(execution)
        return JSONResponse({"Success": True, "ErrorMessage": ""})

    async def _get_status(self, request: Request) -> Response:
        return await self._about_execution(request, self._status_answer)

    def _status_answer(self, body: dict[str, Any], execution: Execution | None) -> Response:
        records, page = body.get("LogRecords", 10), body.get("LogPage", 1)
        if not _integer(records) or records < 1 or not _integer(page) or page < 1:
            return _failure("LogRecords and LogPage must be integers of at least 1")
        if execution is None:
            return _not_found()
        answer: dict[str, Any] = {
            "Status": execution.status,
            "Result": "ERROR" if execution.status == "InError" else "OK",
            "Success": True,
            "ErrorMessage": execution.error,
            "Logs": "",
            "LogNumPages": math.ceil(len(execution.log) / records),
        }
        if body.get("IncludeLogs") is True:
            lines = execution.log[(page - 1) * records : page * records]
            answer["Logs"] = _b64("".join(line + "\n" for line in lines).encode())
            if self.knobs.corrupt_logs and lines:
                answer["Logs"] = "%" + answer["Logs"][1:]
        if body.get("IncludeReports") is True:
            answer["Report"] = self._status_report(execution)
        return JSONResponse(answer)

    async def _get_outputs(self, request: Request) -> Response:
        return await self._about_execution(request, self._outputs_answer)

    def _outputs_answer(self, body: dict[str, Any], execution: Execution | None) -> Response:
        if execution is None:
            return _not_found()
        status = execution.status
        result = "ERROR" if status == "InError" else "OK"
        if execution.ended is None:
            return JSONResponse(
                {
                    "Status": status,
                    "Result": result,
                    "Success": False,
                    "ErrorMessage": f"The execution has not finished yet (status {status}); "
                    "outputs exist once it is Complete or InError",
                }
            )
        answer: dict[str, Any] = {
            "Status": status,
            "Result": result,
            "Success": True,
            "ErrorMessage": execution.error,
            "Logs": None,
            "ZipFile": None,
            "Report": None,
            "ErrorReport": None,
        }
        if body.get("IncludeLogs") is True:
            data = self._log_zip(execution)
            answer["Logs"] = _b64(data[: len(data) // 2] if self.knobs.corrupt_logs else data)
        if body.get("IncludeReports") is True:
            answer["Report"] = self._outputs_report(execution)
        errors = self._error_report(execution)
        if body.get("IncludeErrorReport") is True and errors:
            answer["ErrorReport"] = _b64(json.dumps(errors).encode())
        return JSONResponse(answer)

    # -- admin routes -------------------------------------------------------------------------

    def _admin_routes(self) -> list[BaseRoute]:
        return [
            admin_post("protect", self._protect_json, 'send {"entity": "..", "keys": [..]}'),
            admin_post("start_execution", self._start_json, _START_USAGE),
            admin_get("rows/{entity}", lambda params: self._known_rows(params["entity"])),
            admin_get("deleted", lambda _: dicts(self.deleted())),
            admin_get("executions", lambda _: self.executions()),
        ]

    def seed_json(self, body: dict[str, Any]) -> Any:
        return self.seed(body)

    def _known_rows(self, entity: str) -> list[dict[str, Any]]:
        try:
            return self.rows(entity)
        except KeyError:
            raise Unknown("unknown entity") from None

    def _protect_json(self, body: dict[str, Any]) -> Any:
        entity, keys = body.get("entity"), body.get("keys")
        if not isinstance(entity, str) or not isinstance(keys, list):
            raise ValueError('send {"entity": "..", "keys": [..]}')
        if not all(isinstance(k, int | str) and not isinstance(k, bool) for k in keys):
            raise ValueError("keys are text or integers")
        try:
            return {"protected": self.protect(entity, keys)}
        except KeyError:
            raise Unknown(f"unknown entity {entity}") from None

    def _start_json(self, body: dict[str, Any]) -> Any:
        entity, where, destination = body.get("entity"), body.get("where"), body.get("destination")
        if (
            not isinstance(entity, str)
            or "where" not in body
            or not isinstance(where, str | None)
            or not isinstance(destination, str | None)
        ):
            raise ValueError(_START_USAGE)
        tracker = self.start_execution(entity, where, destination=destination)
        return {"MainExecutionTrackerId": tracker}


_START_USAGE = (
    'send {"entity": "..", "where": ".." or null (null deletes every row), "destination": ".." '
    "(optional)}"
)


# --- helpers -------------------------------------------------------------------------------


def _same_key(given: Any, known: str | None) -> bool:
    """An SS key narrows the entity only when both sides have one."""
    return given in (None, "") or known is None or given == known


def _failure(message: str, status: int = 200) -> Response:
    return JSONResponse({"Success": False, "ErrorMessage": message}, status_code=status)


def _not_found() -> Response:
    return JSONResponse(
        {
            "Status": "NotFound",
            "Result": "ERROR",
            "Success": False,
            "ErrorMessage": "Execution not found",
        }
    )


def _unparsable() -> Response:
    """OutSystems' own answer to a REST body it cannot read; DMM never sees the call."""
    return JSONResponse(
        {"Errors": ["Failed to parse JSON request content."], "StatusCode": 400}, status_code=400
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _datetime(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _moment(at: float) -> str:
    return _datetime(at).strftime(TIME_FORMAT)


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


if __name__ == "__main__":
    run_alone("dmm")
