"""A stateful Goose emulator: the DELETED, OPERATION and STRUCTURE services, faithful to the docs.

What it models (seed 003 and apis.md section 5): authentication by `code`
and `key` in the JSON body; deletions attributed to the key that made them
(`imc: false` leaves out the caller's own); `from` as a timestamp, or
`latest`, remembered per (code, key, table) and advanced only when a call
succeeds on the server; error answers as HTTP 200 with
`{"status": "error", "error": {"code", "description"}}`; error 120's
description as the docs print it, stray quote included.

Assumed where the docs are silent (apis.md ASSUME lines): the success
envelope `{"status":"OK","result":{"total","data"}}` with TABLE, RECORD_ID
and SYKEY per row; the first `latest` call returns everything; error codes
are numbers unless `codes_as_strings` is set; `from` is compared with the
deletion's local wall-clock time at second resolution, as a DATETIME column
in the emulator's zone would be (so the repeated hour when clocks go back
is compared by wall time, not by instant); the daily limit resets at local
midnight; OPERATION models DELETE only, and deleting a record that is not
there answers error 120 "Record '<id>' not found" with the query, like any
other SQL error of OPERATION.

Time comes from one place, `now()`: a replaceable `clock` plus an offset.
A deletion can also be logged with a raw row (`/_admin/raw_deletion`), answered
as given, to model a damaged row such as one without RECORD_ID.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from connectors.emulation.admin import Emulator, admin_get, admin_post
from connectors.emulation.kit import DEMO_PEOPLE, Faults, run_alone
from connectors.goose.settings import TIMESTAMP_FORMAT, parse_goose_time

Clock = Callable[[], datetime]


@dataclass
class DeletedRecord:
    seq: int
    code: str
    table: str
    record_id: str
    fields: dict[str, Any]
    deleted_at: datetime
    by_key: str | None
    raw: Any = None
    """A row answered exactly as given (a damaged log row, e.g. without RECORD_ID); a
    `RawJSON` is written into the answer as its text, byte for byte."""


@dataclass(frozen=True)
class RawJSON:
    """JSON text the answer carries verbatim: what a hostile or broken server writes
    and `json.dumps` never would (a key given twice, a lone surrogate, `1e999`)."""

    text: str


class GooseError(Exception):
    """An error answer; `query` is the SQL OPERATION tried, which its errors show."""

    def __init__(self, code: int, description: str, query: str | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.query = query


def _missing_table(code: str, table: str) -> str:
    """Error 120's description as the docs print it, stray quote included."""
    return f"Table 'client_goose_{code}.{table}' doesn't exist'"


def _field(name: str, kind: str, null: str, key: str) -> dict[str, str]:
    """One row of a STRUCTURE answer, in the documented shape."""
    return {"Field": name, "Type": kind, "Null": null, "Key": key, "Default": "", "Extra": ""}


def _limit(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


_KNOBS: dict[str, Callable[[Any], bool]] = {
    "codes_as_strings": lambda value: isinstance(value, bool),
    "rate_limit_per_second": _limit,
    "daily_limit": _limit,
    "allowed_ips": lambda value: (
        value is None or (isinstance(value, list) and all(isinstance(ip, str) for ip in value))
    ),
}
"""What `/_admin/config` may change, each with its check."""


def _system_clock() -> datetime:
    return datetime.now(UTC)


def demo_data(
    engine_key: str = "demo-engine-key-4f1c9a", user_key: str = "demo-user-key-93b7d0"
) -> dict[str, Any]:
    """A small realistic seed (the `/_admin/seed` body): company DEV001, a key for the
    engine and one for a user, and contacts whose SYKEY is an ERP user name."""
    people = DEMO_PEOPLE[:12]
    contacts = [
        {"RECORD_ID": f"0-{n}", "SYKEY": user, "CORAS": name}
        for n, (user, name) in enumerate(people, start=1)
    ]
    return {"companies": {"DEV001": [engine_key, user_key]}, "tables": {"CON_TRO": contacts}}


class GooseEmulator(Emulator):
    """Goose's DELETED and OPERATION services over an in-memory, thread-safe state.

    The Python helpers (`seed`, `delete`, `deletions`, `records`, `drop_next`)
    mirror the `/_admin/...` endpoints, so in-process tests and the sandbox
    drive the same state.
    """

    seed_usage = 'send {"companies": {"<code>": ["<key>", ...]}, "tables": {"<table>": [...]}}'

    def __init__(
        self,
        timezone: str = "Europe/Rome",
        rate_limit_per_second: int | None = None,
        daily_limit: int | None = None,
        allowed_ips: list[str] | None = None,
        codes_as_strings: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.zone = ZoneInfo(timezone)
        self._initial: dict[str, Any] = {
            "rate_limit_per_second": rate_limit_per_second,
            "daily_limit": daily_limit,
            "allowed_ips": allowed_ips,
            "codes_as_strings": codes_as_strings,
        }
        self._initial_clock: Clock = clock or _system_clock
        super().__init__()
        self.reset()

    def clear(self) -> None:
        """Back to the state just after construction: no data, the constructor's
        knobs and clock, no faults (and, by `reset`, an empty request log)."""
        self.rate_limit_per_second: int | None = self._initial["rate_limit_per_second"]
        self.daily_limit: int | None = self._initial["daily_limit"]
        allowed = self._initial["allowed_ips"]
        self.allowed_ips: list[str] | None = None if allowed is None else list(allowed)
        self.codes_as_strings: bool = self._initial["codes_as_strings"]
        self.clock: Clock = self._initial_clock
        self.clock_offset = timedelta()
        self._keys: dict[str, str] = {}
        self._tables: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._deleted: list[DeletedRecord] = []
        self._latest: dict[tuple[str, str, str], int] = {}
        self._calls: dict[str, deque[float]] = defaultdict(deque)
        self._daily: dict[tuple[str, date], int] = defaultdict(int)
        self._drop_next = 0
        self.answer_tail = ""
        """JSON members written after `result` in every DELETED answer (e.g. a second
        `,"status":"error"`): a server that contradicts itself after the rows."""
        self.faults.update(asdict(Faults()))

    def now(self) -> datetime:
        """The emulator's one source of time, always aware."""
        current = self.clock()
        if current.tzinfo is None:
            current = current.replace(tzinfo=UTC)
        return current + self.clock_offset

    def wall_time(self, instant: datetime) -> datetime:
        """The naive local time Goose stores, at second resolution."""
        return instant.astimezone(self.zone).replace(tzinfo=None, microsecond=0)

    # --- state, shared by the Python helpers and the admin endpoints ---------

    def seed(
        self, companies: dict[str, list[str]], tables: dict[str, list[dict[str, Any]]]
    ) -> None:
        """Add companies with their keys; every company listed gets the tables.

        Records are merged by RECORD_ID, so seeding twice adds rather than resets.
        """
        with self._lock:
            for code, keys in companies.items():
                for key in keys:
                    self._keys[key] = code
                for table, records in tables.items():
                    rows = self._tables.setdefault((code, table), {})
                    for record in records:
                        rows[str(record["RECORD_ID"])] = dict(record)

    def _code_of_table(self, table: str) -> str:
        codes = sorted(code for (code, name) in self._tables if name == table)
        if not codes:
            raise KeyError(table)
        return codes[0]

    def delete(
        self, table: str, ids: list[str], by_key: str | None = None, code: str | None = None
    ) -> int:
        """Delete records as a user (`by_key=None`) or as the API with a key.

        Unknown ids are skipped; the count of deleted records is returned.
        Raises KeyError for an unknown table.
        """
        with self._lock:
            code = code or self._code_of_table(table)
            rows = self._tables[(code, table)]
            deleted = 0
            for record_id in ids:
                record = rows.pop(str(record_id), None)
                if record is None:
                    continue
                self._deleted.append(
                    DeletedRecord(
                        seq=len(self._deleted) + 1,
                        code=code,
                        table=table,
                        record_id=str(record_id),
                        fields=record,
                        deleted_at=self.now(),
                        by_key=by_key,
                    )
                )
                deleted += 1
            return deleted

    def add_raw_deletion(self, table: str, row: Any, code: str | None = None) -> None:
        """Log a deletion whose DELETED row is `row` exactly as given, however malformed
        (a row without RECORD_ID, a row that is not an object): what a damaged Goose
        table would answer. Raises KeyError for an unknown table."""
        with self._lock:
            code = code or self._code_of_table(table)
            record_id = row.get("RECORD_ID") if isinstance(row, dict) else None
            self._deleted.append(
                DeletedRecord(
                    seq=len(self._deleted) + 1,
                    code=code,
                    table=table,
                    record_id="" if record_id is None else str(record_id),
                    fields={},
                    deleted_at=self.now(),
                    by_key=None,
                    raw=row,
                )
            )

    def deletions(self) -> list[dict[str, Any]]:
        """Ground truth: every deletion, with its aware local time and who made it."""
        with self._lock:
            return [
                {
                    "seq": d.seq,
                    "code": d.code,
                    "table": d.table,
                    "RECORD_ID": d.record_id,
                    "SYKEY": d.fields.get("SYKEY", ""),
                    "deleted_at": d.deleted_at.astimezone(self.zone).isoformat(),
                    "by_key": d.by_key,
                }
                for d in self._deleted
            ]

    def records(self, table: str) -> list[dict[str, Any]]:
        """The records of `table` not deleted yet, across companies."""
        with self._lock:
            rows: list[dict[str, Any]] = []
            for (_, name), records in sorted(self._tables.items()):
                if name == table:
                    rows.extend(dict(r) for r in records.values())
            return rows

    def drop_next(self, count: int) -> None:
        """The next `count` DELETED calls are applied (cursor advanced), then answered
        HTTP 500: the answer lost after the server moved on. 0 clears."""
        with self._lock:
            self._drop_next = max(0, count)

    def pending_drops(self) -> int:
        with self._lock:
            return self._drop_next

    def configure(self, values: dict[str, Any]) -> None:
        """Change the behaviour knobs at run time (the `/_admin/config` body)."""
        unknown = set(values) - set(_KNOBS)
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}; known: {sorted(_KNOBS)}")
        for name, value in values.items():
            if not _KNOBS[name](value):
                raise ValueError(f"{name}: {value!r} is not valid here")
        with self._lock:
            for name, value in values.items():
                setattr(self, name, value)

    def settings(self) -> dict[str, Any]:
        with self._lock:
            return {
                "timezone": str(self.zone),
                "codes_as_strings": self.codes_as_strings,
                "rate_limit_per_second": self.rate_limit_per_second,
                "daily_limit": self.daily_limit,
                "allowed_ips": self.allowed_ips,
                "now": self.wall_time(self.now()).strftime(TIMESTAMP_FORMAT),
            }

    # --- the vendor services -----------------------------------------------

    def _error(self, exc: GooseError) -> JSONResponse:
        value: int | str = str(exc.code) if self.codes_as_strings else exc.code
        error: dict[str, Any] = {"code": value, "description": exc.description}
        if exc.query is not None:
            error["query"] = exc.query
        return JSONResponse({"status": "error", "error": error})

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        """The docs show JS-object notation; the service wants real JSON (error 99)."""
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise GooseError(99, "JSON format not valid") from None
        if not isinstance(body, dict):
            raise GooseError(99, "JSON format not valid")
        return body

    def _authenticate(self, body: dict[str, Any], client_ip: str) -> tuple[str, str]:
        code, key = body.get("code"), body.get("key")
        if not isinstance(code, str) or not 0 < len(code) <= 6:
            raise GooseError(101, "Format field 'code' not valid")
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            raise GooseError(102, "Format field 'key' not valid")
        if self._keys.get(key) != code:
            raise GooseError(110, "Key not authorized")
        if self.allowed_ips is not None and client_ip not in self.allowed_ips:
            raise GooseError(111, "IP or Key not authorized")
        self._count_call(key)
        return code, key

    def _count_call(self, key: str) -> None:
        """Every authenticated call counts, whether or not a limit is set right now;
        a refused call does not."""
        now = self.now()
        moment = now.timestamp()
        window = self._calls[key]
        while window and window[0] <= moment - 1:
            window.popleft()
        limit = self.rate_limit_per_second
        if limit is not None and len(window) >= limit:
            raise GooseError(50, f"Limit API calls exceeded: max {limit} per second")
        today = (key, now.astimezone(self.zone).date())
        if self.daily_limit is not None and self._daily[today] >= self.daily_limit:
            raise GooseError(51, f"Limit API calls exceeded: max {self.daily_limit} per day")
        window.append(moment)
        self._daily[today] += 1

    @staticmethod
    def _client_ip(request: Request) -> str:
        return request.client.host if request.client else ""

    async def deleted_service(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            with self._lock:
                code, key = self._authenticate(body, self._client_ip(request))
                rows = self._select_deleted(code, key, body)
                dropped = self._drop_next > 0
                if dropped:
                    self._drop_next -= 1
        except GooseError as exc:
            return self._error(exc)
        if dropped:
            return JSONResponse(
                {"error": "injected: answer lost after the cursor moved"}, status_code=500
            )
        if not self.answer_tail and not any(isinstance(row, RawJSON) for row in rows):
            return JSONResponse({"status": "OK", "result": {"total": len(rows), "data": rows}})
        data = ",".join(row.text if isinstance(row, RawJSON) else json.dumps(row) for row in rows)
        text = (
            f'{{"status":"OK","result":{{"total":{len(rows)},"data":[{data}]}}{self.answer_tail}}}'
        )
        return Response(text.encode("utf-8", "surrogatepass"), media_type="application/json")

    @staticmethod
    def _table_name(body: dict[str, Any]) -> str:
        table = body.get("table")
        if not isinstance(table, str) or not 0 < len(table) <= 7:
            raise GooseError(103, "Format field 'table' not valid")
        return table

    def _table(self, code: str, body: dict[str, Any]) -> str:
        table = self._table_name(body)
        if (code, table) not in self._tables:
            raise GooseError(120, _missing_table(code, table))
        return table

    def _select_deleted(self, code: str, key: str, body: dict[str, Any]) -> list[Any]:
        table = self._table(code, body)
        since = body.get("from")
        imc = body.get("imc", False)
        if not isinstance(imc, bool):
            raise GooseError(108, "Format field 'imc' not valid")
        mine = [d for d in self._deleted if d.code == code and d.table == table]
        if since is None:
            chosen = mine
        elif since == "latest":
            cursor = self._latest.get((code, key, table), 0)
            chosen = [d for d in mine if d.seq > cursor]
            self._latest[(code, key, table)] = len(self._deleted)
        else:
            if not isinstance(since, str):
                raise GooseError(107, "Format field 'from' not valid")
            try:
                threshold = parse_goose_time(since)
            except ValueError:
                raise GooseError(107, "Format field 'from' not valid") from None
            chosen = [d for d in mine if self.wall_time(d.deleted_at) >= threshold]
        if since is not None and not imc:
            chosen = [d for d in chosen if d.by_key != key]
        return [
            d.raw
            if d.raw is not None
            else {"TABLE": d.table, "RECORD_ID": d.record_id, "SYKEY": d.fields.get("SYKEY", "")}
            for d in chosen
        ]

    async def structure_service(self, request: Request) -> Response:
        """STRUCTURE: the fields of a table (read-only; `syncengine check` proves with it
        that a key is accepted and a table exists). Goose keeps no schema of its own
        here, so the fields are those its rows carry, RECORD_ID first as the key."""
        try:
            body = await self._body(request)
            with self._lock:
                code, _ = self._authenticate(body, self._client_ip(request))
                table = self._table(code, body)
                names = {name for row in self._tables[(code, table)].values() for name in row}
        except GooseError as exc:
            return self._error(exc)
        fields = [_field("RECORD_ID", "varchar(25)", "NO", "PRI")]
        fields += [
            _field(name, "varchar(255)", "YES", "") for name in sorted(names - {"RECORD_ID"})
        ]
        return JSONResponse({"status": "OK", "result": {"total": len(fields), "data": fields}})

    async def operation_service(self, request: Request) -> Response:
        """Only DELETE is modelled; the deletion is attributed to the calling key.

        Every field's format is checked before any SQL runs; a SQL failure
        (an unknown table, no such record) carries the query in `error.query`,
        which only OPERATION returns.
        """
        try:
            body = await self._body(request)
            with self._lock:
                code, key = self._authenticate(body, self._client_ip(request))
                if body.get("operation") != "DELETE":
                    raise GooseError(100, "Format field 'operation' not valid")
                table = self._table_name(body)
                record_id = body.get("id")
                if not isinstance(record_id, str) or not 0 < len(record_id) <= 25:
                    raise GooseError(104, "Format field 'id' not valid")
                quoted = record_id.replace("'", "''")
                query = f"DELETE FROM client_goose_{code}.{table} WHERE RECORD_ID='{quoted}'"
                if (code, table) not in self._tables:
                    raise GooseError(120, _missing_table(code, table), query)
                if not self.delete(table, [record_id], by_key=key, code=code):
                    raise GooseError(120, f"Record '{record_id}' not found", query)
        except GooseError as exc:
            return self._error(exc)
        return JSONResponse(
            {"status": "OK", "result": {"operation": "DELETE", "table": table, "id": record_id}}
        )

    # --- admin (never faulted) ---------------------------------------------

    def seed_json(self, body: dict[str, Any]) -> Any:
        self.seed(body.get("companies", {}), body.get("tables", {}))
        return {"ok": True}

    def _delete_json(self, body: dict[str, Any]) -> Any:
        return {"deleted": self.delete(body["table"], list(body["ids"]), body.get("by_key"))}

    def _raw_deletion_json(self, body: dict[str, Any]) -> Any:
        row = RawJSON(body["text"]) if "text" in body else body["row"]
        self.add_raw_deletion(body["table"], row)
        return {"ok": True}

    def _answer_tail_json(self, body: dict[str, Any]) -> Any:
        with self._lock:
            self.answer_tail = str(body.get("text", ""))
        return {"answer_tail": self.answer_tail}

    def _drop_next_json(self, body: dict[str, Any]) -> Any:
        self.drop_next(int(body.get("count", 1)))
        return {"drop_next": self.pending_drops()}

    def _clock_json(self, body: dict[str, Any]) -> Any:
        with self._lock:
            self.clock_offset = timedelta(seconds=float(body.get("offset_seconds", 0)))
        return {"now": self.wall_time(self.now()).strftime(TIMESTAMP_FORMAT)}

    def _config_json(self, body: dict[str, Any]) -> Any:
        self.configure(body)
        return self.settings()

    def is_mutating(self, method: str, path: str) -> bool:
        return path.startswith("/operation")

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/deleted/", self.deleted_service, methods=["POST"]),
            Route("/deleted", self.deleted_service, methods=["POST"]),
            Route("/structure/", self.structure_service, methods=["POST"]),
            Route("/structure", self.structure_service, methods=["POST"]),
            Route("/operation/", self.operation_service, methods=["POST"]),
            Route("/operation", self.operation_service, methods=["POST"]),
            admin_post("delete", self._delete_json, 'send {"table": "..", "ids": [..]}'),
            admin_get("deletions", lambda _: self.deletions()),
            admin_post(
                "raw_deletion",
                self._raw_deletion_json,
                'send {"table", "row" or "text"}',
            ),
            admin_post("answer_tail", self._answer_tail_json, 'send {"text": ",\\"status\\":..."}'),
            admin_get("tables/{table}", lambda params: self.records(params["table"])),
            admin_post("drop_next", self._drop_next_json, 'send {"count": n}'),
            admin_post("clock", self._clock_json, 'send {"offset_seconds": x}'),
            admin_get("config", lambda _: self.settings()),
            admin_post("config", self._config_json, _OBJECT, method="PUT"),
        ]


_OBJECT = "the body must be a JSON object"


if __name__ == "__main__":
    run_alone("goose")
