"""A stateful emulator of the Infor Mongoose IDO REST API, v1 (MGRESTService.svc) and v2.

Emulated in v1, under `{base}` = /IDORequestService/MGRESTService.svc:
GetSecurityToken (`GET {base}/{json|xml|js}/token/{config}` with
`userid`/`password` headers), LoadCollection advanced
(`GET {base}/json/{ido}/adv?props=&filter=&recordcap=`) and DeleteItems
(`DELETE` or `POST {base}/json/{ido}/deleteitems`; the doc lists DELETE, its
sample code posts).

Emulated in v2, under `{v2}` = /IDORequestService: GetSecurityToken by
headers (`GET {v2}/ido/token/{config}` with `username`/`password`, 2025.x)
and by path (`GET {v2}/ido/token/{config}/{username}[/{password}]`, every
version), LoadCollection (`GET {v2}/ido/load/{ido}?properties=&filter=
&recordcap=`; `properties=*` is every property; no paging: `Bookmark` is
null, `MoreRowsExist` says whether recordcap cut rows off) and
UpdateCollection deletes (`POST {v2}/ido/update/{ido}`,
`{"Changes": [{"Action": 4, "ItemId": ...}]}`). v2 answers carry `Success`
and `Message` instead of `MessageCode`: a business error is HTTP 200 with
`Success: false`, and each situation of the table below keeps its HTTP
status and Message. Both versions take ION API bearer tokens
(`Authorization: Bearer` plus `X-Infor-MongooseConfig`).

Knobs (`PUT /_admin/settings`): `row_shape` is `documented` (Items as
positional arrays in v1, objects keyed by property, with `_ItemId`, in v2, as
each version's doc shows), `arrays` or `objects` (either shape from both);
`header_token: false` answers the v2 header form of GetSecurityToken 404, as
servers before 2025.x do.

Each row carries `RowPointer` (a uuid4) and `RecordDate`, from which its
ItemId is built as in the vendor doc:
`PBT=[<ido>] <ido>.DT=[<RecordDate>] <ido>.ID=[<RowPointer>]`. Modifying a
row (`/_admin/touch`) moves RecordDate, so an ItemId read before is stale.
Text compares as SQL Server's default collation does: case-insensitive,
trailing spaces ignored.

No public list of Mongoose error MessageCodes exists (apis.md 3.3), so the
emulator uses these, always with HTTP 200 unless said otherwise:

| situation                                        | HTTP | MessageCode |
|--------------------------------------------------|------|-------------|
| LoadCollection success (`Message` null)          | 200  | 0           |
| DeleteItems success ("Delete successful.")       | 200  | 202         |
| bad credentials or unknown config on token call  | 401  | 401         |
| missing, invalid or expired token                | 401  | 401         |
| v2 token form 404 (knob header_token false)      | 404  | -           |
| body is not a JSON array                         | 400  | 400         |
| an item has no ItemId or an Action other than 4  | 200  | 400         |
| unknown IDO                                      | 200  | 404 (delete), 500 (load) |
| "Delete failed: item <ItemId> not found"         | 200  | 404         |
| "Delete failed: the row has been modified by     | 200  | 409         |
|  another user (<ItemId>)"                        |      |             |
| IllegalFilterException, unknown property, bad    | 200  | 500         |
|  recordcap (LoadCollection; `Items` null)        |      |             |

DeleteItems is all-or-nothing: one unknown or stale ItemId fails the request
and deletes nothing. Ground truth and the admin routes are never faulted:

    POST /_admin/seed     {"<ido>": [{...row...}, ...]}  adds rows, answers them with ItemIds
    GET  /_admin/rows/<ido>                              the rows, with `_ItemId`
    GET  /_admin/deleted                                 [{ido, item_id, properties, at}, ...]
    GET  /_admin/attempts                                {ItemId: deleteitems attempts}
    POST /_admin/touch    {"ido": .., "match": {..}}     modify rows: new RecordDate, new ItemId
    POST /_admin/expire_tokens                           every security token stops working
    POST /_admin/reset                                   rows, tokens and ground truth cleared
    GET|PUT /_admin/settings                             the knobs above
    GET|PUT /_admin/faults, GET|DELETE /_admin/requests  (connectors.emulation.kit)
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from connectors.emulation.admin import Emulator, Unknown, admin_get, admin_post, dicts
from connectors.emulation.kit import DEMO_PEOPLE, Faults, apply_settings, run_alone

DEFAULT_BASE_PATH = "/IDORequestService/MGRESTService.svc"
DEFAULT_V2_BASE_PATH = "/IDORequestService"
DEFAULT_RECORDCAP = 200
ITEM_ID = re.compile(
    r"^PBT=\[(?P<table>[^\]]*)\] \S+\.DT=\[(?P<dt>[^\]]*)\] \S+\.ID=\[(?P<row>[^\]]*)\]$"
)
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<sym>[=(),]))"
)

DEMO_USERS = DEMO_PEOPLE
"""The demo UserNames. Goose's demo CON_TRO table reports the first twelve as
deleted (SYKEY = Username); the last three must survive a demo run."""


def demo_rows() -> dict[str, list[dict[str, Any]]]:
    """A realistic `UserNames` seed, for `seed()` or `POST /_admin/seed`."""
    return {
        "UserNames": [
            {"UserId": str(101 + i), "Username": username, "UserDesc": desc}
            for i, (username, desc) in enumerate(DEMO_USERS)
        ]
    }


class IllegalFilter(ValueError):
    """A filter outside what the emulator understands: `P = 'v'`, `P IN (...)`, OR."""


def parse_filter(text: str) -> list[tuple[str, list[str]]]:
    """`Username IN ('a','b') OR UserId = '7'` -> [(property, values), ...] (ORed)."""
    tokens = _tokenize(text)
    clauses: list[tuple[str, list[str]]] = []
    pos = 0

    def take(kind: str, word: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise IllegalFilter(f"unexpected end of filter {text!r}")
        got_kind, value = tokens[pos]
        if got_kind != kind or (word is not None and value.upper() != word):
            raise IllegalFilter(f"unexpected {value!r} in filter {text!r}")
        pos += 1
        return value

    while True:
        prop = take("name")
        if prop.upper() in ("IN", "OR"):
            raise IllegalFilter(f"unexpected {prop!r} in filter {text!r}")
        if pos < len(tokens) and tokens[pos] == ("sym", "="):
            pos += 1
            values = [_unquote(take("str"))]
        else:
            take("name", "IN")
            take("sym", "(")
            values = [_unquote(take("str"))]
            while pos < len(tokens) and tokens[pos] == ("sym", ","):
                pos += 1
                values.append(_unquote(take("str")))
            take("sym", ")")
        clauses.append((prop, values))
        if pos == len(tokens):
            return clauses
        take("name", "OR")


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise IllegalFilter(f"cannot parse filter {text!r} at {text[pos:].strip()[:20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _unquote(literal: str) -> str:
    return literal[1:-1].replace("''", "'")


def collate(value: Any) -> str:
    """SQL Server's default collation: case-insensitive, trailing spaces ignored."""
    return str(value).rstrip(" ").casefold()


@dataclass(frozen=True)
class DeletedRow:
    ido: str
    item_id: str
    properties: dict[str, Any]
    at: str


@dataclass
class Knobs:
    """Behaviour switches, changed in place by tests or `PUT /_admin/settings`."""

    row_shape: Literal["documented", "arrays", "objects"] = "documented"
    """LoadCollection Items: as each version's doc shows them, or one shape for both."""
    header_token: bool = True
    """False: the v2 header form of GetSecurityToken is unknown (404), as before 2025.x."""
    refuse_tokens: bool = False
    """True: every security token is refused, fresh ones too (the user lost its rights),
    so a client that renews once must then stop."""

    def update(self, values: Mapping[str, Any]) -> None:
        checks: dict[str, Callable[[Any], bool]] = {
            "row_shape": lambda v: v in ("documented", "arrays", "objects"),
            "header_token": lambda v: isinstance(v, bool),
            "refuse_tokens": lambda v: isinstance(v, bool),
        }
        apply_settings(self, values, checks)


class MongooseError(Exception):
    def __init__(self, message: str, code: int, status: int = 200) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class MongooseEmulator(Emulator):
    """In-memory IDO collections behind the v1 and v2 REST routes, safe across threads."""

    knobs: Knobs
    issues_tokens = True
    seed_usage = 'send {"<ido>": [{...row...}, ...]}'

    def __init__(
        self,
        config: str = "DEMO",
        users: Mapping[str, str] | None = None,
        bearer_tokens: Sequence[str] = (),
        base_path: str = DEFAULT_BASE_PATH,
        faults: Faults | None = None,
        v2_base_path: str = DEFAULT_V2_BASE_PATH,
    ) -> None:
        self.config = config
        self.users = dict(users if users is not None else {"sync": "password"})
        self.bearer_tokens = set(bearer_tokens)
        self.base_path = base_path.rstrip("/")
        self.v2_base_path = v2_base_path.rstrip("/")
        super().__init__(faults)
        self.knobs = Knobs()
        self._rows: dict[str, dict[str, dict[str, Any]]] = {}
        """Per IDO, its rows in the order they were added, by RowPointer (casefolded)."""
        self._added: dict[tuple[str, str], int] = {}
        """Per (IDO, RowPointer casefolded), when its row was added: table order."""
        self._adds = itertools.count()
        self._index: dict[tuple[str, str], dict[str, set[str]]] = {}
        """Per (IDO, property), the RowPointers of each collated value: a lookup or a
        delete costs the same with a million rows as with ten, so a benchmark measures
        the client, not this table. Built at the first filter on the property, dropped
        when rows are added or modified, kept up to date by deletes."""
        self._props: dict[str, set[str]] = {}
        self._deleted: list[DeletedRow] = []
        self._attempts: Counter[str] = Counter()
        self._last_dt = datetime.min

    def is_mutating(self, method: str, path: str) -> bool:
        return path.endswith("/deleteitems") or f"{self.v2_base_path}/ido/update/" in path

    # -- ground truth and admin helpers (also served under /_admin) ----------

    def seed(self, collections: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, Any]:
        """Add rows (creating each IDO named); each gets a RowPointer and a RecordDate."""
        added: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for ido, rows in collections.items():
                table = self._rows.setdefault(ido, {})
                self._drop_index(ido)
                props = self._props.setdefault(ido, {"_ItemId", "RowPointer", "RecordDate"})
                added[ido] = []
                for given in rows:
                    row = {k: v for k, v in given.items() if k != "_ItemId"}
                    row.setdefault("RowPointer", str(uuid.uuid4()))
                    row.setdefault("RecordDate", self._next_dt())
                    pointer = str(row["RowPointer"]).casefold()
                    if pointer in table:
                        raise ValueError(f"{ido}: RowPointer {row['RowPointer']} is already held")
                    props.update(row)
                    table[pointer] = row
                    self._added[(ido, pointer)] = next(self._adds)
                    added[ido].append(self._public(ido, row))
        return added

    def rows(self, ido: str) -> list[dict[str, Any]]:
        with self._lock:
            return [self._public(ido, row) for row in self._rows.get(ido, {}).values()]

    def deleted(self) -> list[DeletedRow]:
        with self._lock:
            return list(self._deleted)

    def attempts(self) -> dict[str, int]:
        """deleteitems attempts per ItemId, failed requests included."""
        with self._lock:
            return dict(self._attempts)

    def touch(self, ido: str, match: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Modify the matching rows as another user would: their ItemIds go stale."""
        touched = []
        with self._lock:
            self._drop_index(ido)
            for row in self._rows.get(ido, {}).values():
                if all(collate(row.get(k)) == collate(v) for k, v in match.items()):
                    row["RecordDate"] = self._next_dt()
                    touched.append(self._public(ido, row))
        return touched

    def clear(self) -> None:
        self._rows.clear()
        self._index.clear()
        self._added.clear()
        self._props.clear()
        self._deleted.clear()
        self._attempts.clear()

    def item_id(self, ido: str, row: Mapping[str, Any]) -> str:
        return f"PBT=[{ido}] {ido}.DT=[{row['RecordDate']}] {ido}.ID=[{row['RowPointer']}]"

    def _public(self, ido: str, row: Mapping[str, Any]) -> dict[str, Any]:
        return {**row, "_ItemId": self.item_id(ido, row)}

    def _next_dt(self) -> str:
        """Now, at millisecond precision, strictly after the last one handed out."""
        now = datetime.now(UTC).replace(tzinfo=None)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if now <= self._last_dt:
            now = self._last_dt + timedelta(milliseconds=1)
        self._last_dt = now
        return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond // 1000:03d}"

    # -- vendor routes ---------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        base, v2 = self.base_path, f"{self.v2_base_path}/ido"
        return [
            *self._admin_routes(),
            Route(f"{base}/{{rt}}/token/{{config}}", self._token, methods=["GET"]),
            Route(f"{base}/json/{{ido}}/adv", self._load, methods=["GET"]),
            Route(f"{base}/json/{{ido}}/deleteitems", self._delete, methods=["DELETE", "POST"]),
            Route(f"{v2}/token/{{rest:path}}", self._token_v2, methods=["GET"]),
            Route(f"{v2}/load/{{ido}}", self._load_v2, methods=["GET"]),
            Route(f"{v2}/update/{{ido}}", self._update_v2, methods=["POST"]),
        ]

    async def _token(self, request: Request) -> Response:
        rt, config = request.path_params["rt"], request.path_params["config"]
        if rt not in ("json", "xml", "js"):
            return PlainTextResponse("Not Found", status_code=404)
        user = request.headers.get("userid", "")
        password = request.headers.get("password")
        if config != self.config:
            return _error(f"Configuration {config} not found", 401, 401)
        if user not in self.users or self.users[user] != password:
            return _error("Invalid user name or password", 401, 401)
        token = self._new_token()
        if rt == "js":
            return PlainTextResponse(token)
        if rt == "xml":
            return Response(
                '<MGRestTokenResponse xmlns="http://schemas.datacontract.org/2004/07/" '
                'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">'
                f"<Message>Success</Message><Token>{token}</Token></MGRestTokenResponse>",
                media_type="application/xml",
            )
        return JSONResponse({"Message": "Success", "Token": token})

    async def _token_v2(self, request: Request) -> Response:
        """`{config}` (credentials in headers) or `{config}/{username}[/{password}]`.

        Read from the raw path, so each segment is decoded once: a '/' encoded in
        a password stays in the password."""
        raw = request.scope.get("raw_path") or request.url.path.encode()
        prefix = f"{self.v2_base_path}/ido/token/"
        tail = raw.decode("ascii", "replace").split("?", 1)[0].partition(prefix)[2]
        parts = [unquote(part) for part in tail.split("/")]
        if len(parts) == 1:
            if not self.knobs.header_token:
                return PlainTextResponse("Not Found", status_code=404)
            user = request.headers.get("username", "")
            password: str | None = request.headers.get("password")
        elif len(parts) in (2, 3):
            user, password = parts[1], parts[2] if len(parts) == 3 else ""
        else:
            return PlainTextResponse("Not Found", status_code=404)
        if parts[0] != self.config:
            return _refused_v2(f"Configuration {parts[0]} not found", 401, Token=None)
        if not user or user not in self.users or self.users[user] != password:
            return _refused_v2("Invalid user name or password", 401, Token=None)
        return JSONResponse({"Message": None, "Success": True, "Token": self._new_token()})

    def _new_token(self) -> str:
        token = base64.b64encode(secrets.token_bytes(48)).decode("ascii")
        with self._lock:
            self._tokens[token] = None
        return token

    def _authorized(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return (
                auth.removeprefix("Bearer ") in self.bearer_tokens
                and request.headers.get("x-infor-mongooseconfig") == self.config
            )
        with self._lock:
            return bool(auth) and auth in self._tokens and not self.knobs.refuse_tokens

    def _loaded(self, request: Request, props: str, documented: str) -> tuple[list[Any], bool]:
        """LoadCollection in either version: the items in the row shape asked, and whether
        more rows exist. `props` names the query parameter listing the properties."""
        query = request.query_params
        names, rows, more = self._select(
            request.path_params["ido"], query.get(props, ""), query.get("filter", ""), query
        )
        return self._items(names, rows, documented), more

    async def _load(self, request: Request) -> Response:
        if not self._authorized(request):
            return _unauthorized()
        try:
            items, _ = self._loaded(request, "props", "arrays")
        except MongooseError as exc:
            return JSONResponse({"Items": None, "Message": exc.message, "MessageCode": exc.code})
        return JSONResponse({"Items": items, "Message": None, "MessageCode": 0})

    async def _load_v2(self, request: Request) -> Response:
        if not self._authorized(request):
            return _unauthorized_v2()
        try:
            items, more = self._loaded(request, "properties", "objects")
        except MongooseError as exc:
            return _refused_v2(exc.message, Items=None, Bookmark=None, MoreRowsExist=False)
        answer = {"Items": items, "Bookmark": None, "MoreRowsExist": more}
        return JSONResponse({**answer, "Success": True, "Message": None})

    def _items(
        self, props: Sequence[str], rows: Sequence[Mapping[str, Any]], documented: str
    ) -> list[Any]:
        """Positional arrays in `props` order, or objects keyed by property that always
        hold `_ItemId` (the v2 doc: "each row has _ItemId")."""
        shape = documented if self.knobs.row_shape == "documented" else self.knobs.row_shape
        if shape == "arrays":
            return [[row.get(p) for p in props] for row in rows]
        return [{"_ItemId": row["_ItemId"], **{p: row.get(p) for p in props}} for row in rows]

    def _select(
        self, ido: str, props_text: str, filter_text: str, query: Mapping[str, str]
    ) -> tuple[list[str], list[dict[str, Any]], bool]:
        """(properties, matching rows with `_ItemId`, whether recordcap cut rows off)."""
        cap = _recordcap(query.get("recordcap", "-1"))
        try:
            clauses = parse_filter(filter_text) if filter_text.strip() else []
        except IllegalFilter as exc:
            raise MongooseError(f"IllegalFilterException: {exc}", 500) from None
        with self._lock:
            if ido not in self._rows:
                raise MongooseError(f"IDO {ido} not found", 500)
            known = self._props[ido]
            props = [p.strip() for p in props_text.split(",") if p.strip()]
            if props == ["*"]:
                props = sorted(known)
            if not props:
                raise MongooseError("props is required", 500)
            for name in [*props, *(prop for prop, _ in clauses)]:
                if name not in known:
                    raise MongooseError(f"Property {name} not found in IDO {ido}", 500)
            wanted = [(prop, {collate(v) for v in values}) for prop, values in clauses]
            items: list[dict[str, Any]] = []
            for row in self._candidates(ido, wanted):
                public = self._public(ido, row)
                if wanted and not any(
                    public.get(prop) is not None and collate(public[prop]) in values
                    for prop, values in wanted
                ):
                    continue
                if cap and len(items) >= cap:
                    return props, items, True
                items.append(public)
            return props, items, False

    async def _delete(self, request: Request) -> Response:
        if not self._authorized(request):
            return _unauthorized()
        ido = request.path_params["ido"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, list):
            return _error("Request body is not a JSON array of IDOUpdateItem", 400, 400)
        try:
            self._delete_all(ido, body)
        except MongooseError as exc:
            return _error(exc.message, exc.code, exc.status)
        return JSONResponse({"Message": "Delete successful.", "MessageCode": 202})

    async def _update_v2(self, request: Request) -> Response:
        """UpdateCollection; only deletes (Action 4) are emulated."""
        if not self._authorized(request):
            return _unauthorized_v2()
        try:
            body = await request.json()
        except ValueError:
            body = None
        changes = body.get("Changes") if isinstance(body, dict) else None
        if not isinstance(changes, list):
            return _refused_v2(
                'Request body is not an IDOUpdateRequest ({"Changes": [...]})',
                400,
                RefreshItems=None,
            )
        try:
            self._delete_all(request.path_params["ido"], changes)
        except MongooseError as exc:
            return _refused_v2(exc.message, exc.status, RefreshItems=None)
        return JSONResponse({"Message": None, "Success": True, "RefreshItems": None})

    def _delete_all(self, ido: str, items: list[Any]) -> None:
        """All or nothing, as one database transaction would be."""
        item_ids: list[str] = []
        for item in items:
            if not isinstance(item, dict) or item.get("Action") not in (4, "Delete"):
                raise MongooseError("Delete failed: every item needs Action 4 (Delete)", 400)
            item_id = item.get("ItemId")
            if not isinstance(item_id, str) or not item_id:
                raise MongooseError("Delete failed: an item has no ItemId", 400)
            item_ids.append(item_id)
        with self._lock:
            self._attempts.update(item_ids)
            if ido not in self._rows:
                raise MongooseError(f"Delete failed: IDO {ido} not found", 404)
            table = self._rows[ido]
            doomed: dict[str, dict[str, Any]] = {}
            for item_id in item_ids:
                pointer = self._find(ido, table, item_id)
                if pointer in doomed:
                    raise MongooseError(f"Delete failed: item {item_id} not found", 404)
                doomed[pointer] = table[pointer]
            at = datetime.now(UTC).isoformat()
            for pointer, row in doomed.items():
                self._deleted.append(DeletedRow(ido, self.item_id(ido, row), dict(row), at))
                del table[pointer], self._added[(ido, pointer)]
                for (indexed, prop), index in self._index.items():
                    if indexed == ido and row.get(prop) is not None:
                        index.get(collate(row[prop]), set()).discard(pointer)

    def _find(self, ido: str, table: dict[str, dict[str, Any]], item_id: str) -> str:
        """The RowPointer (casefolded) of the row `item_id` names."""
        parsed = ITEM_ID.match(item_id)
        if parsed is not None and parsed["table"] == ido:
            pointer = parsed["row"].casefold()
            row = table.get(pointer)
            if row is not None:
                if row["RecordDate"] != parsed["dt"]:
                    raise MongooseError(
                        f"Delete failed: the row has been modified by another user ({item_id})",
                        409,
                    )
                return pointer
        raise MongooseError(f"Delete failed: item {item_id} not found", 404)

    def _candidates(self, ido: str, wanted: list[tuple[str, set[str]]]) -> Iterable[dict[str, Any]]:
        """The rows that may match `wanted` (any clause), in table order: every row
        without a filter or when one names `_ItemId` (built, never stored), else those
        the index finds for each clause's values."""
        table = self._rows[ido]
        if not wanted or any(prop == "_ItemId" for prop, _ in wanted):
            return list(table.values())
        found: set[str] = set()
        for prop, values in wanted:
            index = self._index.get((ido, prop))
            if index is None:
                index = self._index[(ido, prop)] = {}
                for pointer, row in table.items():
                    if row.get(prop) is not None:
                        index.setdefault(collate(row[prop]), set()).add(pointer)
            for value in values:
                found.update(index.get(value, ()))
        return [table[p] for p in sorted(found, key=lambda p: self._added[(ido, p)])]

    def _drop_index(self, ido: str) -> None:
        for key in [key for key in self._index if key[0] == ido]:
            del self._index[key]

    # -- admin routes -----------------------------------------------------------------

    def _admin_routes(self) -> list[BaseRoute]:
        return [
            admin_get("rows/{ido}", lambda params: self._known_rows(params["ido"])),
            admin_get("deleted", lambda _: dicts(self.deleted())),
            admin_get("attempts", lambda _: self.attempts()),
            admin_post("touch", self._touch_json, 'send {"ido": "...", "match": {...}}'),
        ]

    def seed_json(self, body: dict[str, Any]) -> Any:
        if not all(isinstance(rows, list) for rows in body.values()):
            raise ValueError(self.seed_usage)
        return self.seed(body)

    def _known_rows(self, ido: str) -> list[dict[str, Any]]:
        with self._lock:
            if ido not in self._rows:
                raise Unknown(f"unknown IDO {ido}")
            return self.rows(ido)

    def _touch_json(self, body: dict[str, Any]) -> Any:
        if not isinstance(body.get("match"), dict):
            raise ValueError('send {"ido": "...", "match": {...}}')
        return {"touched": self.touch(str(body.get("ido")), body["match"])}


def _recordcap(text: str) -> int:
    """0 = every row, -1 = the default 200, n = at most n."""
    try:
        cap = int(text)
    except ValueError:
        raise MongooseError(f"recordcap {text!r} is not a number", 500) from None
    if cap < -1:
        raise MongooseError(f"recordcap {cap} is out of range", 500)
    return DEFAULT_RECORDCAP if cap == -1 else cap


def _error(message: str, code: int, status: int = 200) -> Response:
    return JSONResponse({"Message": message, "MessageCode": code}, status_code=status)


def _unauthorized() -> Response:
    return _error("Unauthorized: missing, invalid or expired token", 401, 401)


def _refused_v2(message: str, status: int = 200, **answer: Any) -> Response:
    """A v2 failure: `Success` false and a `Message`, beside the call's own fields."""
    return JSONResponse({**answer, "Success": False, "Message": message}, status_code=status)


def _unauthorized_v2() -> Response:
    return _refused_v2("Unauthorized: missing, invalid or expired token", 401)


if __name__ == "__main__":
    run_alone("mongoose")
