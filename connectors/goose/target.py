"""Delete Goose records through the OPERATION service, one call per record.

Goose has no batch delete, so a batch is worked through one record at a
time, at Goose's documented 5 calls per second unless the connection says
otherwise. Deleting a record that is already gone answers error 120 "Record
... not found", which counts as done: that makes re-sending after a lost
answer harmless, so every call is sent as idempotent.

Every DONE outcome names the record with `record_name`, exactly as the Goose
source names the same record in `SourceRecord.origin`: a deletion this
target makes shows in Goose's DELETED service (with `imc: true`), and the
engine compares the two names so it never propagates its own deletion back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from connectors.contract import (
    EXACT_KEYS,
    AmbiguousError,
    Delivery,
    FatalError,
    Outcome,
    RemoteError,
    RetriableError,
)
from connectors.goose.settings import (
    DOCUMENTED_CALLS_PER_SECOND,
    GooseConnection,
    GooseTargetSettings,
    operation_url_problem,
    record_name,
)
from connectors.goose.source import (
    RATE_LIMIT_PER_DAY,
    RATE_LIMIT_PER_SECOND,
    RATE_LIMIT_WAIT,
    SQL_ERROR,
    classify,
    error_code,
)
from connectors.kit.http import HttpClient, excerpt
from connectors.kit.json_screen import loads
from connectors.kit.keys import UnmappedKey
from connectors.kit.target import HttpTarget

MAX_ID_LENGTH = 25
"""RECORD_ID is varchar(25): a longer id names no Goose record."""
KEY_NOT_AUTHORIZED = "110"
IP_NOT_AUTHORIZED = "111"
MIDNIGHT_MARGIN = 60.0
"""Seconds past local midnight before retrying after error 51, so the retry does
not land on a server clock a little behind ours."""
_NOT_FOUND = re.compile(r"\brecord\b.*\bnot found\b", re.IGNORECASE)
_CONNECTION_FORMAT_FIELDS = {"100": "operation", "101": "code", "102": "key", "103": "table"}
"""Format errors about fields every call of the target sends alike: no delivery can
succeed until the configuration changes, so they stop the pipeline instead of
declaring each delivery dead."""
_RECORD_FORMAT_CODES = {str(code) for code in range(104, 109)}


def until_midnight(now: datetime, zone: ZoneInfo) -> float:
    """Seconds from `now` to the next local midnight in `zone` (when Goose's daily
    call count resets), plus a margin; computed in UTC so a DST change is counted."""
    local = now.astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), time(), tzinfo=zone)
    return (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds() + MIDNIGHT_MARGIN


class _TooLong(Exception):
    """The rendered id cannot be a Goose RECORD_ID."""


class GooseDeleteTarget(HttpTarget[GooseConnection, GooseTargetSettings]):
    """Deletes records of one Goose table by RECORD_ID through OPERATION DELETE."""

    key_match = EXACT_KEYS

    def problem(
        self, name: str, connection: GooseConnection, settings: GooseTargetSettings
    ) -> str | None:
        problem = operation_url_problem(connection, name)
        if problem is not None or connection.operation_url is None:
            return f"goose target: {problem}"
        return None

    def client(self, name: str, connection: GooseConnection) -> HttpClient:
        return connection.http_client(
            name, classify=classify, default_calls_per_second=DOCUMENTED_CALLS_PER_SECOND
        )

    def setup(self, connection: GooseConnection) -> None:
        assert connection.operation_url is not None  # refused by `problem` otherwise
        self.connection = connection
        self.url: str = connection.operation_url
        self._template = self.settings.key_template()
        self._key = connection.key.get_secret_value()
        # A client handed in does not know the key yet.
        self._http.add_secret(self._key)

    def effect(self, record_id: str) -> str:
        """The deleted record's name, as the Goose source gives it in `origin`."""
        return record_name(self.connection.code, self.settings.table, record_id)

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """What `send` would delete, without a single call: Goose could only tell
        whether a record exists through SELECT, a service this target does not use."""
        outcomes = []
        for delivery in batch:
            try:
                record_id = self._record_id(delivery)
            except (UnmappedKey, _TooLong) as exc:
                outcomes.append(Outcome.dead(delivery.delivery_id, self._unsendable(exc)))
                continue
            outcomes.append(
                Outcome.done(
                    delivery.delivery_id, f"would delete {self.settings.table} {record_id}"
                )
            )
        return outcomes

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """One outcome per delivery; deliveries naming the same record share one call.

        Once Goose cannot be reached or refuses more calls (the daily limit,
        the per-second limit past the client's retries), the rest of the batch
        is not attempted: each is retried after the wait that applies.
        Raises FatalError when the key, IP or configuration is refused.
        """
        outcomes: list[Outcome] = []
        settled: dict[str, Outcome] = {}
        stopped: RetriableError | None = None
        for delivery in batch:
            did = delivery.delivery_id
            try:
                record_id = self._record_id(delivery)
            except (UnmappedKey, _TooLong) as exc:
                outcomes.append(Outcome.dead(did, self._unsendable(exc)))
                continue
            if record_id in settled:
                outcomes.append(replace(settled[record_id], delivery_id=did))
            elif stopped is not None:
                outcomes.append(
                    Outcome.retry(did, f"not attempted: {stopped}", stopped.retry_after)
                )
            else:
                try:
                    settled[record_id] = await self._delete(did, record_id)
                except RetriableError as exc:
                    stopped = exc
                    settled[record_id] = Outcome.retry(did, str(exc), exc.retry_after)
                outcomes.append(settled[record_id])
        return outcomes

    def _record_id(self, delivery: Delivery) -> str:
        record_id = self._template.render(delivery.fields)
        if len(record_id) > MAX_ID_LENGTH:
            raise _TooLong(
                f"id {record_id!r} is {len(record_id)} characters; a Goose RECORD_ID holds "
                f"at most {MAX_ID_LENGTH} (check the target's id template {self.settings.id!r})"
            )
        return record_id

    @staticmethod
    def _unsendable(exc: UnmappedKey | _TooLong) -> str:
        if isinstance(exc, UnmappedKey):
            return exc.verdict
        return f"not sent: {exc}"

    async def _delete(self, delivery_id: int, record_id: str) -> Outcome:
        """One OPERATION DELETE. Raises RetriableError when the batch must stop."""
        where = f"{self.name}: delete {self.settings.table} {record_id}"
        body = {
            "code": self.connection.code,
            "key": self._key,
            "operation": "DELETE",
            "table": self.settings.table,
            "id": record_id,
        }
        response = await self._http.request("POST", self.url, json=body, idempotent=True)
        try:
            answer = self._answer(where, response)
        except RemoteError as exc:
            return Outcome.retry(delivery_id, str(exc))
        if str(answer.get("status", "")).upper() == "OK":
            return Outcome.done(delivery_id, "deleted", self.effect(record_id))
        return self._error(where, delivery_id, record_id, answer)

    def _answer(self, where: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        conn = f"connections.{self.name}"
        if 300 <= status < 400 or status in (401, 403, 404, 405):
            raise FatalError(
                f"{where}: HTTP {status} from {self._http.describe('POST', self.url)}; "
                f"check {conn}.operation_url (the OPERATION service, "
                "e.g. https://api.gooseapp.com/operation/)",
                connection=self.name,
            )
        if status >= 400:
            raise RemoteError(
                f"{where}: HTTP {status}: {excerpt(response.text, self._http.secrets)}",
                connection=self.name,
                code=str(status),
            )
        try:
            answer = loads(response.text)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AmbiguousError(
                f"{where}: the answer is not a JSON object ({len(response.content)} bytes)",
                connection=self.name,
            )
        return answer

    def _error(
        self, where: str, delivery_id: int, record_id: str, answer: dict[str, Any]
    ) -> Outcome:
        code = error_code(answer)
        error = answer.get("error")
        error = error if isinstance(error, dict) else {}
        description = self._clean(str(error.get("description", "")))
        said = f"{code or '(no code)'} {description}".rstrip()
        conn = f"connections.{self.name}"
        if code == SQL_ERROR and _NOT_FOUND.search(description):
            return Outcome.done(delivery_id, "absent", self.effect(record_id))
        if code == KEY_NOT_AUTHORIZED:
            raise FatalError(
                f"{where}: Goose rejected the key ({said}); check {conn}.key and {conn}.code",
                connection=self.name,
            )
        if code == IP_NOT_AUTHORIZED:
            raise FatalError(
                f"{where}: Goose rejected this machine's IP or the key ({said}); ask Goose "
                f"to add this machine's IP address to the key's allow-list, and check "
                f"{conn}.key and {conn}.code",
                connection=self.name,
            )
        if code in _CONNECTION_FORMAT_FIELDS:
            field = _CONNECTION_FORMAT_FIELDS[code]
            setting = "the target's table" if field == "table" else f"{conn}.{field}"
            if field == "operation":
                setting = f"that {conn}.operation_url is Goose's OPERATION service"
            raise FatalError(
                f"{where}: Goose refused the request's {field} ({said}); check {setting}",
                connection=self.name,
            )
        if code in _RECORD_FORMAT_CODES:
            return Outcome.dead(delivery_id, f"{where}: Goose refused it ({said})")
        if code == RATE_LIMIT_PER_DAY:
            raise RetriableError(
                f"{where}: Goose daily call limit reached ({said}); retrying after midnight",
                connection=self.name,
                retry_after=until_midnight(datetime.now(UTC), self.connection.zone),
            )
        if code == RATE_LIMIT_PER_SECOND:
            raise RetriableError(
                f"{where}: Goose rate limit ({said})",
                connection=self.name,
                retry_after=RATE_LIMIT_WAIT,
            )
        query = self._clean(str(error.get("query", "")))
        detail = f"{said}; query: {query}" if query else said
        if code == SQL_ERROR:
            return Outcome.retry(
                delivery_id,
                f"{where}: Goose SQL error ({detail}); check that table {self.settings.table} "
                f"exists for company {self.connection.code} (the target's table)",
            )
        return Outcome.retry(delivery_id, f"{where}: Goose error {detail}")

    def _clean(self, text: str) -> str:
        return excerpt(text, [self._key, *self._http.secrets])


def build_target(name: str, connection: Any, settings: Any) -> GooseDeleteTarget:
    if not isinstance(connection, GooseConnection) or not isinstance(settings, GooseTargetSettings):
        raise TypeError(
            f"{name}: a Goose target needs GooseConnection and GooseTargetSettings, "
            f"got {type(connection).__name__} and {type(settings).__name__}"
        )
    return GooseDeleteTarget(name, connection, settings)


__all__ = ["GooseDeleteTarget", "build_target", "until_midnight"]
