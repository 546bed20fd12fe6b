"""A stateful Goose emulator: the DELETED and OPERATION services, faithful to the docs.

What it models (seed 003 and apis.md section 5): authentication by `code`
and `key` in the JSON body; deletions attributed to the key that made them
(`imc: false` leaves out the caller's own); `from` as a timestamp compared
in the emulator's time zone, or `latest`, remembered per (code, key, table)
and advanced only when a call succeeds; error answers as HTTP 200 with
`{"status": "error", "error": {"code", "description"}}`.

Assumed where the docs are silent (apis.md ASSUME lines): the success
envelope `{"status":"OK","result":{"total","data"}}` with TABLE, RECORD_ID
and SYKEY per row; the first `latest` call returns everything; error codes
are numbers unless `codes_as_strings` is set.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from connectors.emulator_kit import Faults, RequestLog, build_app
from connectors.goose.settings import TIMESTAMP_FORMAT, parse_goose_time


@dataclass
class DeletedRecord:
    seq: int
    table: str
    record_id: str
    fields: dict[str, Any]
    deleted_at: datetime
    by_key: str | None


class GooseError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class GooseEmulator:
    def __init__(
        self,
        timezone: str = "Europe/Rome",
        rate_limit_per_second: int | None = None,
        daily_limit: int | None = None,
        allowed_ips: list[str] | None = None,
        codes_as_strings: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.zone = ZoneInfo(timezone)
        self.rate_limit_per_second = rate_limit_per_second
        self.daily_limit = daily_limit
        self.allowed_ips = allowed_ips
        self.codes_as_strings = codes_as_strings
        self.clock_offset = timedelta()
        self._clock = clock or (lambda: datetime.now(UTC))
        self.faults = Faults()
        self.log = RequestLog()
        self._lock = threading.RLock()
        self._keys: dict[str, str] = {}
        self._tables: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._deleted: list[DeletedRecord] = []
        self._latest: dict[tuple[str, str, str], int] = {}
        self._calls: dict[str, deque[float]] = defaultdict(deque)
        self._daily: dict[str, int] = defaultdict(int)
        self._drop_next = 0
        self._app: ASGIApp | None = None

    def now(self) -> datetime:
        return self._clock() + self.clock_offset

    # --- state, also used in-process by tests ----------------------------

    def seed(
        self, companies: dict[str, list[str]], tables: dict[str, list[dict[str, Any]]]
    ) -> None:
        with self._lock:
            for code, keys in companies.items():
                for key in keys:
                    self._keys[key] = code
                for table, records in tables.items():
                    rows = self._tables.setdefault((code, table), {})
                    for record in records:
                        rows[str(record["RECORD_ID"])] = dict(record)

    def _code_of_table(self, table: str) -> str:
        codes = [code for (code, name) in self._tables if name == table]
        if not codes:
            raise KeyError(table)
        return codes[0]

    def delete(
        self, table: str, ids: list[str], by_key: str | None = None, code: str | None = None
    ) -> int:
        """Delete records as a user (`by_key=None`) or through the API with a key."""
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
                        table=table,
                        record_id=str(record_id),
                        fields=record,
                        deleted_at=self.now(),
                        by_key=by_key,
                    )
                )
                deleted += 1
            return deleted

    def deletions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "seq": d.seq,
                    "table": d.table,
                    "RECORD_ID": d.record_id,
                    "deleted_at": d.deleted_at.astimezone(self.zone).isoformat(),
                    "by_key": d.by_key,
                }
                for d in self._deleted
            ]

    def records(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            rows: list[dict[str, Any]] = []
            for (_, name), records in self._tables.items():
                if name == table:
                    rows.extend(records.values())
            return rows

    def drop_next(self, count: int) -> None:
        """The next `count` DELETED calls are applied, then answered 500 (0 clears)."""
        with self._lock:
            self._drop_next = count

    # --- the services ------------------------------------------------------

    def _error(self, code: int, description: str) -> JSONResponse:
        value: int | str = str(code) if self.codes_as_strings else code
        return JSONResponse(
            {"status": "error", "error": {"code": value, "description": description}}
        )

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
        now = self.now().timestamp()
        if self.rate_limit_per_second is not None:
            window = self._calls[key]
            while window and window[0] <= now - 1:
                window.popleft()
            if len(window) >= self.rate_limit_per_second:
                raise GooseError(
                    50, f"Limit API calls exceeded: max {self.rate_limit_per_second} per second"
                )
            window.append(now)
        if self.daily_limit is not None:
            if self._daily[key] >= self.daily_limit:
                raise GooseError(51, f"Limit API calls exceeded: max {self.daily_limit} per day")
            self._daily[key] += 1

    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise GooseError(99, "JSON format not valid") from None
        if not isinstance(body, dict):
            raise GooseError(99, "JSON format not valid")
        return body

    async def deleted_service(self, request: Request) -> Response:
        client_ip = request.client.host if request.client else ""
        try:
            with self._lock:
                body = await self._body(request)
                code, key = self._authenticate(body, client_ip)
                rows = self._select_deleted(code, key, body)
                dropped = self._drop_next > 0
                if dropped:
                    self._drop_next -= 1
        except GooseError as exc:
            return self._error(exc.code, exc.description)
        if dropped:
            return JSONResponse({"error": "injected: answer lost after the cursor moved"}, 500)
        return JSONResponse({"status": "OK", "result": {"total": len(rows), "data": rows}})

    def _select_deleted(self, code: str, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        table = body.get("table")
        if not isinstance(table, str) or not 0 < len(table) <= 7:
            raise GooseError(103, "Format field 'table' not valid")
        if (code, table) not in self._tables:
            raise GooseError(120, f"Table 'client_goose_{code}.{table}' doesn't exist'")
        since = body.get("from")
        imc = body.get("imc", False)
        if not isinstance(imc, bool):
            raise GooseError(108, "Format field 'imc' not valid")
        mine = [d for d in self._deleted if d.table == table]
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
                threshold = parse_goose_time(since).replace(tzinfo=self.zone)
            except ValueError:
                raise GooseError(107, "Format field 'from' not valid") from None
            chosen = [
                d
                for d in mine
                if d.deleted_at.astimezone(self.zone).replace(microsecond=0) >= threshold
            ]
        if since is not None and not imc:
            chosen = [d for d in chosen if d.by_key != key]
        return [
            {"TABLE": d.table, "RECORD_ID": d.record_id, "SYKEY": d.fields.get("SYKEY", "")}
            for d in chosen
        ]

    async def operation_service(self, request: Request) -> Response:
        client_ip = request.client.host if request.client else ""
        try:
            with self._lock:
                body = await self._body(request)
                code, key = self._authenticate(body, client_ip)
                if body.get("operation") != "DELETE":
                    raise GooseError(100, "Format field 'operation' not valid")
                table, record_id = body.get("table"), body.get("id")
                if not isinstance(table, str) or (code, table) not in self._tables:
                    raise GooseError(120, f"Table 'client_goose_{code}.{table}' doesn't exist'")
                if not isinstance(record_id, str) or not 0 < len(record_id) <= 25:
                    raise GooseError(104, "Format field 'id' not valid")
                if record_id not in self._tables[(code, table)]:
                    return JSONResponse(
                        {
                            "status": "error",
                            "error": {
                                "code": "120",
                                "description": f"Record '{record_id}' not found",
                                "query": f"DELETE FROM client_goose_{code}.{table} "
                                f"WHERE RECORD_ID='{record_id}'",
                            },
                        }
                    )
                self.delete(table, [record_id], by_key=key, code=code)
        except GooseError as exc:
            return self._error(exc.code, exc.description)
        return JSONResponse(
            {"status": "OK", "result": {"operation": "DELETE", "table": table, "id": record_id}}
        )

    # --- admin -------------------------------------------------------------

    async def admin_seed(self, request: Request) -> Response:
        body = await request.json()
        self.seed(body.get("companies", {}), body.get("tables", {}))
        return JSONResponse({"ok": True})

    async def admin_delete(self, request: Request) -> Response:
        body = await request.json()
        try:
            count = self.delete(body["table"], list(body["ids"]), body.get("by_key"))
        except KeyError as exc:
            return JSONResponse({"error": f"unknown table {exc}"}, status_code=404)
        return JSONResponse({"deleted": count})

    async def admin_deletions(self, request: Request) -> Response:
        return JSONResponse(self.deletions())

    async def admin_records(self, request: Request) -> Response:
        return JSONResponse(self.records(request.path_params["table"]))

    async def admin_drop_next(self, request: Request) -> Response:
        body = await request.json()
        self.drop_next(int(body.get("count", 1)))
        return JSONResponse({"drop_next": self._drop_next})

    async def admin_clock(self, request: Request) -> Response:
        body = await request.json()
        self.clock_offset = timedelta(seconds=float(body.get("offset_seconds", 0)))
        return JSONResponse({"now": self.now().astimezone(self.zone).strftime(TIMESTAMP_FORMAT)})

    @property
    def app(self) -> ASGIApp:
        if self._app is None:
            routes = [
                Route("/deleted/", self.deleted_service, methods=["POST"]),
                Route("/deleted", self.deleted_service, methods=["POST"]),
                Route("/operation/", self.operation_service, methods=["POST"]),
                Route("/operation", self.operation_service, methods=["POST"]),
                Route("/_admin/seed", self.admin_seed, methods=["POST"]),
                Route("/_admin/delete", self.admin_delete, methods=["POST"]),
                Route("/_admin/deletions", self.admin_deletions, methods=["GET"]),
                Route("/_admin/tables/{table}", self.admin_records, methods=["GET"]),
                Route("/_admin/drop_next", self.admin_drop_next, methods=["POST"]),
                Route("/_admin/clock", self.admin_clock, methods=["POST"]),
            ]
            self._app = build_app(
                routes,
                self.faults,
                self.log,
                is_mutating=lambda method, path: path.startswith("/operation"),
            )
        return self._app
