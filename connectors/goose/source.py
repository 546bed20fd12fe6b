"""Reading Goose's DELETED service without losing what a lost answer carried.

`from: latest` makes Goose remember, per key and table, what it already
sent: once a call succeeds on its side, those deletions are never sent
again. So a `latest` call is never blindly re-sent. When the engine finds a
call whose answer was never journaled, `plan` turns the next call into a
timestamp read from the start of the last journaled call (minus the
overlap), and the journal drops the duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from connectors.contract import (
    JSON,
    AmbiguousError,
    FatalError,
    InFlightCall,
    RemoteError,
    RetriableError,
    SourceCall,
    SourcePage,
    SourceRecord,
)
from connectors.goose.settings import (
    DOCUMENTED_CALLS_PER_SECOND,
    TIMESTAMP_FORMAT,
    GooseConnection,
    GooseSourceSettings,
    parse_goose_time,
)
from connectors.http import Action, HttpClient, Resolution

EPOCH = "1970-01-01 00:00:00"
RATE_LIMIT_PER_SECOND = "50"
RATE_LIMIT_PER_DAY = "51"
KEY_REJECTED = {"110", "111"}


def error_code(body: Any) -> str:
    """Goose sends error codes as numbers or as strings ("120" and 120)."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("code", "")).strip()
    return ""


def classify(response: httpx.Response) -> Resolution | None:
    """Code 50 (too many calls this second) was not applied: back off and retry."""
    try:
        body = response.json()
    except ValueError:
        return None
    if error_code(body) == RATE_LIMIT_PER_SECOND:
        return Resolution(Action.RETRY, "Goose error 50 (max calls per second)", 1.0)
    return None


class GooseSource:
    """One stream per table of the Goose DELETED service."""

    def __init__(
        self,
        name: str,
        connection: GooseConnection,
        settings: GooseSourceSettings,
        http: HttpClient | None = None,
    ) -> None:
        self.name = name
        self.connection = connection
        self.settings = settings
        self._key = connection.key.get_secret_value()
        self.http = http or connection.http_client(
            name,
            secrets=[self._key],
            classify=classify,
            default_calls_per_second=DOCUMENTED_CALLS_PER_SECOND,
        )

    def streams(self) -> Sequence[str]:
        return list(self.settings.tables)

    def _goose_time(self, when: datetime) -> str:
        return when.astimezone(self.connection.zone).strftime(TIMESTAMP_FORMAT)

    def _from_cursor(self, cursor: JSON | None) -> str:
        """The timestamp to read from: the last journaled call's start minus the overlap.

        With no journaled call yet: the configured start, else the epoch. A
        timestamp is always sent because Goose ignores `imc` without `from`.
        """
        last = (cursor or {}).get("last_ok_started_at")
        if last:
            started = datetime.fromisoformat(str(last))
            return self._goose_time(started - timedelta(seconds=self.settings.overlap))
        return self.settings.start or EPOCH

    def plan(
        self,
        stream: str,
        cursor: JSON | None,
        interrupted: InFlightCall | None,
        now: datetime,
    ) -> SourceCall:
        started = now.astimezone(UTC)
        if self.settings.mode == "latest" and interrupted is None:
            params = {"table": stream, "from": "latest", "imc": self.settings.imc}
            return SourceCall(stream=stream, params=params, started_at=started)
        params = {"table": stream, "from": self._from_cursor(cursor), "imc": self.settings.imc}
        return SourceCall(
            stream=stream, params=params, started_at=started, recovery=interrupted is not None
        )

    async def fetch(self, call: SourceCall) -> SourcePage:
        body = {"code": self.connection.code, "key": self._key, **call.params}
        timestamp_read = call.params.get("from") != "latest"
        response = await self.http.request(
            "POST", self.connection.url, json=body, idempotent=timestamp_read
        )
        where = f"{self.name}: table {call.stream}"
        try:
            answer = json.loads(response.text)
        except ValueError:
            raise AmbiguousError(
                f"{where}: the answer is not complete JSON (HTTP {response.status_code})",
                connection=self.name,
            ) from None
        if response.status_code >= 400 or not isinstance(answer, dict):
            raise AmbiguousError(
                f"{where}: unexpected answer HTTP {response.status_code}", connection=self.name
            )
        status = str(answer.get("status", "")).upper()
        if status != "OK":
            raise self._error(where, answer)
        result = answer.get("result")
        data = result.get("data") if isinstance(result, dict) else None
        total = result.get("total") if isinstance(result, dict) else None
        if not isinstance(data, list) or (total is not None and int(total) != len(data)):
            raise AmbiguousError(
                f"{where}: the answer lists {len(data) if isinstance(data, list) else 'no'} "
                f"records but says total={total}; treating it as truncated",
                connection=self.name,
            )
        records = []
        for row in data:
            if not isinstance(row, dict) or row.get("RECORD_ID") in (None, ""):
                raise RemoteError(f"{where}: a record without RECORD_ID", connection=self.name)
            records.append(SourceRecord(stream=call.stream, key=str(row["RECORD_ID"]), fields=row))
        return SourcePage(
            records=records,
            cursor={"last_ok_started_at": call.started_at.astimezone(UTC).isoformat()},
            more=call.recovery and self.settings.mode == "latest",
        )

    def _error(self, where: str, answer: dict[str, Any]) -> Exception:
        code = error_code(answer)
        error = answer.get("error")
        description = str(error.get("description", "")) if isinstance(error, dict) else ""
        description = description.replace(self._key, "***")
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
                f"machine's IP, and check {conn}.key",
                connection=self.name,
            )
        if code == RATE_LIMIT_PER_SECOND:
            return RetriableError(
                f"{where}: Goose rate limit (50 {description})",
                connection=self.name,
                retry_after=1.0,
            )
        if code == RATE_LIMIT_PER_DAY:
            return RetriableError(
                f"{where}: Goose daily call limit reached (51 {description}); retrying next run",
                connection=self.name,
            )
        if code == "120":
            return RemoteError(
                f"{where}: Goose SQL error or unknown table (120 {description})",
                connection=self.name,
                code=code,
            )
        return RemoteError(
            f"{where}: Goose error {code or '?'} {description}".rstrip(),
            connection=self.name,
            code=code,
        )

    async def aclose(self) -> None:
        await self.http.aclose()


def build_source(name: str, connection: Any, settings: Any) -> GooseSource:
    assert isinstance(connection, GooseConnection) and isinstance(settings, GooseSourceSettings)
    return GooseSource(name, connection, settings)


__all__ = ["GooseSource", "build_source", "classify", "error_code", "parse_goose_time"]
