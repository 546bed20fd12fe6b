"""Delete OutSystems records with DMM: one delete execution per batch.

A batch becomes one StartExecution of Type Delete naming one entity, whose
WhereClause lists exactly the batch's keys: `[<key_attribute>] IN (<literals>)`.
DMM deletes every record of the entity when the WhereClause is null or
empty, so a batch left without any usable key starts nothing at all: its
outcomes are decided before any call and kept in the job handle.

Keys are written as SQL literals: integers (checked to be integers in the
64-bit range) as digits, text as a literal of the connection's `dialect`
(connectors/kit/sql.py: inner quotes doubled, backslashes escaped too where the
database reads them as escapes), prefixed with N when it holds a non-ASCII
character (a varchar literal would turn it into `?` on SQL Server, and then
match another record). A key with a control character is refused: the log
could not name it. A key no literal can carry safely is dead as unsafe.
The database's collation decides how text compares; with a case-insensitive
one, a key also deletes records differing only by case, and the log then
names a record outside the batch, which the job's message reports.

ASSUMED request and answer fields (apis.md section 4 gives the Delete
configuration's field names but not the request envelope):

    StartExecution      {"Type": "Delete", "Configuration": {DestinationDBConnection,
                         EntitiesToDelete: [{OSEntityName, OSEntitySSKey, ESpaceSsKey,
                         WhereClause}], ApplicationDeletionMode, ApplicationsToDelete,
                         FilterTenants, TenantsList, IncludeProtectedApplications}}
                        -> {"Success": true, "MainExecutionTrackerId": <int or text>}
    GetExecutionStatus  {MainExecutionTrackerId, IncludeReports, IncludeLogs,
                         LogRecords, LogPage} -> {Status, Result, Success, ErrorMessage,
                         Logs, LogNumPages, Report}
    GetExecutionOutputs {MainExecutionTrackerId, IncludeLogs, IncludeReports,
                         IncludeErrorReport, IncludeFiles} -> {Status, Result, Success,
                         ErrorMessage, Logs (base64 zip), Report, ErrorReport (base64 JSON)}
    StopExecution       {MainExecutionTrackerId} -> {Success, ErrorMessage}

`null` DestinationDBConnection is assumed to mean the Runtime Connection.
What each key became is read from the execution's logs (format in
connectors/dmm/logs.py): see `poll`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.contract import (
    AmbiguousError,
    Delivery,
    Outcome,
    RemoteError,
    RetriableError,
    sql_server_keys,
)
from connectors.dmm.client import DmmClient, succeeded
from connectors.dmm.logs import MAX_LOG_BYTES, LogEvent, parse_lines, read_log_zip, split_lines
from connectors.dmm.settings import DmmConnection, DmmTargetSettings, otp_problem, record_name
from connectors.kit.handles import HandleKeys
from connectors.kit.http import HttpClient, excerpt
from connectors.kit.jobs import (
    JobHandle,
    JobProgress,
    JobSpec,
    JobState,
    map_status,
)
from connectors.kit.json_screen import loads
from connectors.kit.keys import KeyTemplate, UnmappedKey, UnsafeKey
from connectors.kit.sql import Dialect, literal
from connectors.kit.target import HttpTarget

STATUS: dict[str, JobState] = {
    "QUEUED": JobState.QUEUED,
    "INPROGRESS": JobState.RUNNING,
    "COMPLETE": JobState.SUCCEEDED,
    "INERROR": JobState.FAILED,
    "NOTFOUND": JobState.FAILED,
}
"""DMM `Status` (Queued | InProgress | Complete | InError | NotFound) -> JobState,
upper-cased as map_status reads it; anything else is still running."""

ALREADY_RUNNING = re.compile(r"\balready\b.*\b(running|in progress|executing)\b", re.IGNORECASE)
"""ASSUMED wording of DMM's refusal while another execution runs; such a refusal
started nothing, so the batch is simply started later."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGER = re.compile(r"-?[0-9]+")
"""Used with fullmatch only: `$` would also match before a final newline ("12\\n")."""
MAX_LOG_PAGES = 200
"""Status log pages read when the outputs' zip is unusable, at most."""
SHOWN_WHERE = 200
ABSENT = "absent"
COUNTED = ("deleted", "failed", "absent", "unconfirmed")
RECORDS_ONLY: Mapping[str, Any] = {
    "ApplicationDeletionMode": False,
    "ApplicationsToDelete": [],
    "FilterTenants": False,
    "TenantsList": [],
    "IncludeProtectedApplications": False,
}
"""The rest of a delete Configuration: records of the entities listed, never a whole
application, in every tenant (FilterTenants off), never a protected application."""
_KEYS = HandleKeys("keys", "the job handle has no key for this delivery")
"""Per-key counts in a finished job's detail; unconfirmed: done or retried without
the log naming the key."""


# --- keys and the WhereClause --------------------------------------------------------------


def normalise_key(text: str, key_type: str) -> str | None:
    """The key as compared with the log: integers as plain integer text, text as is.
    None for an integer key that is not one."""
    if key_type != "integer":
        return text
    if not _INTEGER.fullmatch(text):
        return None
    return str(int(text))


def check_key(text: str, key_type: str) -> tuple[str | None, str]:
    """(normalised key, "") or (None, why it cannot be sent)."""
    if key_type == "integer":
        key = normalise_key(text, key_type)
        if key is None:
            return None, f"{text!r} is not an integer (digits, optionally a leading minus)"
        if not INT64_MIN <= int(key) <= INT64_MAX:
            return None, f"{text!r} is outside the 64-bit integer range"
        return key, ""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        return None, f"{text!r} holds a control character"
    return text, ""


def sql_literal(key: str, key_type: str, dialect: Dialect = Dialect.SQLSERVER) -> str:
    """N'...' only for non-ASCII text: SQL Server reads a plain literal in the database's
    code page, where an unknown character becomes `?` and could match another record.
    UnsafeKey when `dialect` cannot carry the text safely."""
    if key_type == "integer":
        return key
    return literal(key, dialect, national=not key.isascii())


def where_clause(
    attribute: str, keys: Sequence[str], key_type: str, dialect: Dialect = Dialect.SQLSERVER
) -> str | None:
    """`[attribute] IN (...)` over the keys, sorted and de-duplicated; None without keys."""
    unique = set(keys)
    if not unique:
        return None
    ordered = sorted(unique, key=int) if key_type == "integer" else sorted(unique)
    literals = ", ".join(sql_literal(k, key_type, dialect) for k in ordered)
    return f"[{attribute}] IN ({literals})"


@dataclass(frozen=True)
class Plan:
    """Per delivery: the normalised key it deletes, or an outcome known before any call."""

    keys: dict[int, str]
    outcomes: dict[int, Outcome]

    def detail(self) -> dict[str, Any]:
        return _KEYS.detail(self.keys, self.outcomes)


@dataclass
class Verdicts:
    """What the log says of the batch's keys, plus what it names outside the batch."""

    deleted: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    other_attribute: int = 0
    other_entities: Counter[str] = field(default_factory=Counter)


# --- the target ------------------------------------------------------------------------------


class DmmDeleteTarget(HttpTarget[DmmConnection, DmmTargetSettings]):
    """Deletes the records deliveries name, one DMM delete execution per batch."""

    kind = "dmm_delete"

    api: DmmClient

    def problem(
        self, name: str, connection: DmmConnection, settings: DmmTargetSettings
    ) -> str | None:
        return otp_problem(connection, name)

    def client(self, name: str, connection: DmmConnection) -> HttpClient:
        return connection.http_client(name, base_url=connection.url)

    def setup(self, connection: DmmConnection) -> None:
        self.url = connection.url
        self.dialect = connection.dialect
        self.key_match = sql_server_keys(connection.collation == "case_sensitive")
        self._template: KeyTemplate = self.settings.key_template()
        self.api = DmmClient(self.name, connection, self._http)

    @property
    def entity(self) -> str:
        return self.settings.entity.name

    def effect(self, key: str, known: Mapping[str, Any]) -> str:
        """The name a DONE outcome gives the record it leaves gone (see `record_name`),
        from the entity and attribute the execution was started with."""
        destination = known.get("destination", self.settings.destination)
        return record_name(
            self.url,
            destination if isinstance(destination, str) else None,
            str(known.get("entity") or self.entity),
            str(known.get("attribute") or self.settings.key_attribute),
            key,
        )

    # -- planning ----------------------------------------------------------------------------

    def plan(self, items: Sequence[Delivery]) -> Plan:
        keys: dict[int, str] = {}
        outcomes: dict[int, Outcome] = {}
        for d in items:
            try:
                text = self._template.render(d.fields)
            except UnmappedKey as exc:
                outcomes[d.delivery_id] = Outcome.dead(d.delivery_id, exc.verdict)
                continue
            key, problem = check_key(text, self.settings.key_type)
            if key is None:
                outcomes[d.delivery_id] = Outcome.dead(d.delivery_id, f"no key: {problem}")
                continue
            try:
                sql_literal(key, self.settings.key_type, self.dialect)
            except UnsafeKey as exc:
                outcomes[d.delivery_id] = Outcome.dead(d.delivery_id, exc.verdict)
            else:
                keys[d.delivery_id] = key
        return Plan(keys, outcomes)

    def where(self, plan: Plan) -> str | None:
        return where_clause(
            self.settings.key_attribute,
            list(plan.keys.values()),
            self.settings.key_type,
            self.dialect,
        )

    def start_body(self, where: str) -> dict[str, Any]:
        if not where.strip():
            raise ValueError("refusing an empty WhereClause: DMM would delete the whole entity")
        entity = self.settings.entity
        to_delete = {
            "OSEntityName": entity.name,
            "OSEntitySSKey": entity.ss_key,
            "ESpaceSsKey": entity.espace_ss_key,
            "WhereClause": where,
        }
        configuration = {
            "DestinationDBConnection": self.settings.destination,
            "EntitiesToDelete": [to_delete],
            **RECORDS_ONLY,
        }
        return {"Type": "Delete", "Configuration": configuration}

    # -- the AsyncTarget contract ------------------------------------------------------------

    async def submit(self, job: JobSpec) -> JobHandle:
        plan = self.plan(job.items)
        where = self.where(plan)
        if where is None:
            return JobHandle(
                "", JobState.SUCCEEDED, {**plan.detail(), "execution": None, "entity": self.entity}
            )
        what = f"POST {self.api.path('start')}"
        answer = await self.api.call("start", self.start_body(where), idempotent=False)
        if not succeeded(answer):
            message = self.api.error_message(answer) or "Success is not true, no ErrorMessage"
            if ALREADY_RUNNING.search(message):
                raise RetriableError(
                    f"{self.name}: {what}: {message}; this batch is started later",
                    connection=self.name,
                )
            raise RemoteError(f"{self.name}: {what}: {message}", connection=self.name)
        tracker = answer.get("MainExecutionTrackerId")
        remote = _tracker_text(tracker)
        if remote is None:
            raise AmbiguousError(
                f"{self.name}: {what}: Success without a usable MainExecutionTrackerId "
                f"({excerpt(repr(tracker), self.api.secrets)}); the execution may run untracked",
                connection=self.name,
            )
        return JobHandle(
            remote,
            JobState.QUEUED,
            {
                **plan.detail(),
                "execution": remote,
                "tracker": tracker,
                "entity": self.entity,
                "destination": self.settings.destination,
                "attribute": self.settings.key_attribute,
                "key_type": self.settings.key_type,
                "where": where,
            },
        )

    async def find(self, job: JobSpec) -> JobHandle | None:
        """Always None: the execution a lost StartExecution answer started cannot be found.

        DMM takes no client-chosen id and documents no way to list executions,
        and a tracker id is only known from the answer that was lost. The
        engine then starts the same batch again, which is safe: the WhereClause
        names only this batch's keys, so a second execution can delete nothing
        the first would not have, and keys the first already deleted are
        simply absent for the second. (Where OTPs are single-use, that second
        start is refused as a FatalError naming the OTP setting.)
        """
        return None

    async def poll(self, job: JobSpec, handle: JobHandle) -> JobProgress:
        """Status until terminal; then outputs, read per key from the execution's logs.

        Complete: every key is done (DMM finished deleting `key IN (...)`),
        `deleted by execution <id>` when the log names it, `absent` when the
        log names nothing for it. A key the log says could not be deleted is
        retried even then: declaring it done would lose a deletion.
        InError and NotFound: a key the log names as deleted is done, one it
        names as failed is retried with the database's reason, and every other
        key is retried (deleting what is already gone is done next time).
        Unreadable logs leave Complete keys done and InError keys retried.
        """
        known = handle.detail
        if not handle.remote_id:
            return JobProgress(
                JobState.SUCCEEDED,
                outcomes=_KEYS.outcomes(job, known, {}),
                detail={"execution": None, "reason": "no key to delete: nothing was started"},
            )
        tracker = _tracker_value(known, handle.remote_id)
        answer = await self.api.call(
            "status",
            {"MainExecutionTrackerId": tracker, "IncludeReports": True, "IncludeLogs": False},
            idempotent=True,
        )
        raw = self.api.status_of(answer)
        state = map_status(raw, STATUS)
        if not state.terminal:
            return JobProgress(
                state,
                detail={
                    **_report_detail(answer.get("Report")),
                    "execution": handle.remote_id,
                    "status": raw,
                },
                poll_after=self.settings.poll_interval,
                message=raw,
            )
        return await self._settle(job, known, handle.remote_id, tracker, raw, state, answer)

    async def cancel(self, handle: JobHandle) -> None:
        """StopExecution: "no more chunks will be deleted. The entities that already were
        deleted will not be reverted!" The next poll reports which keys were deleted."""
        if not handle.remote_id:
            return
        tracker = _tracker_value(handle.detail, handle.remote_id)
        answer = await self.api.call("stop", {"MainExecutionTrackerId": tracker}, idempotent=True)
        if not succeeded(answer):
            raise RemoteError(
                f"{self.name}: POST {self.api.path('stop')}: execution {handle.remote_id}: "
                f"{self.api.error_message(answer) or 'Success is not true'}",
                connection=self.name,
            )

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """What `submit` would start, without any call: DMM has no read API to ask."""
        plan = self.plan(batch)
        where = self.where(plan) or ""
        shown = (
            where
            if len(where) <= SHOWN_WHERE
            else f"[{self.settings.key_attribute}] IN ({len(set(plan.keys.values()))} keys)"
        )
        return [
            plan.outcomes[d.delivery_id]
            if d.delivery_id in plan.outcomes
            else Outcome.done(
                d.delivery_id,
                f"would delete {self.entity} where {shown} matches {plan.keys[d.delivery_id]}",
            )
            for d in batch
        ]

    # -- settling a finished execution -------------------------------------------------------

    async def _settle(
        self,
        job: JobSpec,
        known: Mapping[str, Any],
        remote: str,
        tracker: int | str,
        raw: str,
        state: JobState,
        status: Mapping[str, Any],
    ) -> JobProgress:
        error = self.api.error_message(status)
        detail: dict[str, Any] = {
            **_report_detail(status.get("Report")),
            "execution": remote,
            "status": raw,
        }
        if isinstance(status.get("Result"), str):
            detail["result"] = status["Result"]
        if error:
            detail["error"] = error
        artifacts: dict[str, bytes] = {}
        stem = f"dmm-execution-{_file_part(remote)}"
        lines: list[str] | None = None
        if raw.strip().upper() == "NOTFOUND":
            detail["logs"] = "unavailable: DMM does not know this execution"
        else:
            lines, note = await self._output_lines(tracker, stem, artifacts, detail)
            detail["logs"] = "from GetExecutionOutputs"
            if not lines:
                # An empty log cannot tell deleted from absent: it counts as no log.
                paged, fallback = await self._status_lines(tracker)
                if paged:
                    detail["logs"] = f"from GetExecutionStatus pages ({note})"
                    artifacts[f"{stem}-status-logs.txt"] = "\n".join(paged).encode()
                    lines = paged
                else:
                    lines = None
                    detail["logs"] = f"unavailable: {note}; {fallback}"
        verdicts = self._verdicts(known, parse_lines(lines or []))
        by_key, counts = self._judge(known, remote, raw, state, error, lines is not None, verdicts)
        detail.update({label: counts[label] for label in COUNTED})
        if verdicts.unexpected:
            detail["unexpected_deleted"] = len(verdicts.unexpected)
        if verdicts.other_entities:
            detail["other_entities_deleted"] = dict(verdicts.other_entities)
        problems: list[str] = []
        if verdicts.unexpected:
            shown = ", ".join(excerpt(v, self.api.secrets, 60) for v in verdicts.unexpected[:5])
            problems.append(
                f"execution {remote} deleted {len(verdicts.unexpected)} {self.entity} records "
                f"not in this batch ({shown})"
            )
        if state is not JobState.SUCCEEDED:
            problems.append(f"execution {remote} {raw}" + (f": {error}" if error else ""))
        return JobProgress(
            state,
            outcomes=_KEYS.outcomes(job, known, by_key),
            detail=detail,
            message="; ".join(problems),
            artifacts=artifacts,
        )

    async def _output_lines(
        self,
        tracker: int | str,
        stem: str,
        artifacts: dict[str, bytes],
        detail: dict[str, Any],
    ) -> tuple[list[str] | None, str]:
        """The log lines from GetExecutionOutputs, or (None, why not). Keeps the zip, the
        report and the error report as artifacts whatever happens to the lines."""
        try:
            answer = await self.api.call(
                "outputs",
                {
                    "MainExecutionTrackerId": tracker,
                    "IncludeLogs": True,
                    "IncludeReports": True,
                    "IncludeErrorReport": True,
                    "IncludeFiles": False,
                },
                idempotent=True,
            )
        except RemoteError as exc:
            return None, f"GetExecutionOutputs failed: {exc}"
        if not succeeded(answer):
            return None, (
                "GetExecutionOutputs: " + (self.api.error_message(answer) or "Success is not true")
            )
        report = answer.get("Report")
        if isinstance(report, dict):
            artifacts[f"{stem}-report.json"] = _json_bytes(report)
            detail["report"] = _scalars(report, self.api.secrets)
        errors = answer.get("ErrorReport")
        if isinstance(errors, str) and errors.strip():
            try:
                decoded = loads(_b64(errors))
            except ValueError:  # not base64, not JSON, or nested too deep
                detail["error_report"] = "unreadable (not base64 of JSON)"
            else:
                artifacts[f"{stem}-error-report.json"] = _json_bytes(decoded)
                detail["error_report"] = _error_report_summary(decoded, self.api.secrets)
        logs = answer.get("Logs")
        if not isinstance(logs, str) or not logs.strip():
            return None, "GetExecutionOutputs returned no Logs"
        try:
            data = _b64(logs)
        except ValueError:
            return None, "the outputs' Logs are not base64"
        artifacts[f"{stem}-logs.zip"] = data
        try:
            files = read_log_zip(data)
        except ValueError as exc:
            return None, str(exc)
        detail["log_files"] = [name for name, _ in files]
        lines = [line for _, file_lines in files for line in file_lines]
        return lines, "" if lines else "the log zip holds no line"

    async def _status_lines(self, tracker: int | str) -> tuple[list[str] | None, str]:
        """The log read page by page from GetExecutionStatus, when the zip is unusable."""
        lines: list[str] = []
        page, pages, size = 1, 1, 0
        try:
            while page <= pages:
                answer = await self.api.call(
                    "status",
                    {
                        "MainExecutionTrackerId": tracker,
                        "IncludeReports": False,
                        "IncludeLogs": True,
                        "LogRecords": self.settings.log_records,
                        "LogPage": page,
                    },
                    idempotent=True,
                )
                if not succeeded(answer):
                    raise ValueError(self.api.error_message(answer) or "Success is not true")
                count = answer.get("LogNumPages")
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise ValueError(f"LogNumPages is {count!r}")
                if count > MAX_LOG_PAGES:
                    raise ValueError(f"{count} log pages, more than {MAX_LOG_PAGES}")
                pages = count
                text = answer.get("Logs")
                if page <= pages:
                    if not isinstance(text, str):
                        raise ValueError(f"page {page} has no Logs")
                    data = _b64(text)
                    size += len(data)
                    if size > MAX_LOG_BYTES:
                        raise ValueError(f"the log pages exceed {MAX_LOG_BYTES} bytes")
                    lines.extend(split_lines(data.decode("utf-8", errors="replace")))
                page += 1
        except (RemoteError, ValueError) as exc:
            return None, f"status log pages unreadable: {excerpt(str(exc), self.api.secrets)}"
        return lines, "" if lines else "the status log pages hold no line"

    def _verdicts(self, known: Mapping[str, Any], events: Sequence[LogEvent]) -> Verdicts:
        key_type = str(known.get("key_type") or self.settings.key_type)
        entity = str(known.get("entity") or self.entity).casefold()
        attribute = str(known.get("attribute") or self.settings.key_attribute).casefold()
        batch = set(_KEYS.read(known).values())
        verdicts = Verdicts()
        for event in events:
            if event.entity.casefold() != entity:
                if event.kind == "deleted":
                    verdicts.other_entities[event.entity] += 1
                continue
            if event.attribute.casefold() != attribute:
                verdicts.other_attribute += 1
                continue
            value = normalise_key(event.value, key_type)
            if value is None or value not in batch:
                if event.kind == "deleted":
                    verdicts.unexpected.append(event.value)
                continue
            if event.kind == "deleted":
                verdicts.deleted.add(value)
            else:
                verdicts.failed[value] = event.reason
        return verdicts

    def _judge(
        self,
        known: Mapping[str, Any],
        remote: str,
        raw: str,
        state: JobState,
        error: str,
        readable: bool,
        verdicts: Verdicts,
    ) -> tuple[dict[str, Outcome], Counter[str]]:
        """Each key's outcome, and how many keys are deleted, failed, absent, unconfirmed."""
        attribute = str(known.get("attribute") or self.settings.key_attribute)
        if not readable:
            unnamed = f"done: execution {remote} completed (its logs are unavailable)"
        elif verdicts.other_attribute:
            unnamed = (
                f"done: execution {remote} completed (its log names {self.entity} records by "
                f"another attribute than {attribute})"
            )
        else:
            unnamed = ABSENT
        by_key: dict[str, Outcome] = {}
        counts: Counter[str] = Counter()
        for key in set(_KEYS.read(known).values()):
            if key in verdicts.deleted:
                by_key[key] = Outcome.done(
                    0, f"deleted by execution {remote}", self.effect(key, known)
                )
                counts["deleted"] += 1
            elif key in verdicts.failed:
                reason = excerpt(verdicts.failed[key], self.api.secrets)
                by_key[key] = Outcome.retry(
                    0,
                    f"DMM execution {remote} could not delete {self.entity} "
                    f"{attribute}={key}: {reason}",
                )
                counts["failed"] += 1
            elif state is JobState.SUCCEEDED:
                by_key[key] = Outcome.done(0, unnamed, self.effect(key, known))
                counts["absent" if unnamed == ABSENT else "unconfirmed"] += 1
            else:
                by_key[key] = Outcome.retry(
                    0,
                    f"execution {remote} ended {raw} before confirming this key: "
                    f"{error or 'no ErrorMessage'}",
                )
                counts["unconfirmed"] += 1
        return by_key, counts


# --- helpers ---------------------------------------------------------------------------------


def _tracker_text(tracker: Any) -> str | None:
    if isinstance(tracker, bool):
        return None
    if isinstance(tracker, int):
        return str(tracker)
    if isinstance(tracker, str) and tracker.strip() and tracker.strip().isprintable():
        return tracker.strip()
    return None


def _tracker_value(known: Mapping[str, Any], remote: str) -> int | str:
    """The tracker as DMM gave it (an OutSystems auto-number is an integer)."""
    given = known.get("tracker")
    if isinstance(given, int) and not isinstance(given, bool):
        return given
    if isinstance(given, str) and given:
        return given
    return int(remote) if _INTEGER.fullmatch(remote) else remote


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "unknown"


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False).encode()


def _scalars(report: Mapping[str, Any], secrets: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, str):
            out[str(key)] = excerpt(value, secrets, 120)
        elif isinstance(value, int | float | bool) or value is None:
            out[str(key)] = value
    return out


def _report_detail(report: Any) -> dict[str, Any]:
    """The progress fields of a status Report worth showing while polling."""
    if not isinstance(report, dict):
        return {}
    wanted = (
        "CompletedRecords",
        "TotalRecords",
        "CompletedInstructions",
        "TotalInstructions",
        "ElapsedTime",
        "StartedAt",
        "EndedAt",
    )
    return {k: report[k] for k in wanted if isinstance(report.get(k), int | str)}


def _error_report_summary(decoded: Any, secrets: Sequence[str]) -> dict[str, Any]:
    entries = decoded if isinstance(decoded, list) else []
    errors = [
        excerpt(str(e.get("FinalReportError", "")), secrets, 160)
        for e in entries
        if isinstance(e, dict)
    ]
    return {"entries": len(entries), "errors": errors[:5]}


__all__ = [
    "STATUS",
    "DmmDeleteTarget",
    "Plan",
    "check_key",
    "normalise_key",
    "sql_literal",
    "where_clause",
]
