"""Where the Mongoose IDO REST API v1 and v2 differ, and how their answers are read.

The target speaks one vocabulary (a call to send, rows as lists in the order
asked for, a delete that worked or a message), and each version says where
its calls go and what they carry (apis.md section 3, seeds/004):

- token. v1: GET /json/token/{config} with headers `userid`, `password`.
  v2: GET /ido/token/{config} with headers `username`, `password` (2025.x);
  servers before that know only GET /ido/token/{config}/{username}/{password}.
- load. v1: GET /json/{ido}/adv?props=&filter=&recordcap=0.
  v2: GET /ido/load/{ido}?properties=&filter=&recordcap=0.
- delete. v1: DELETE (or POST) /json/{ido}/deleteitems, a list of
  {Action 4, ItemId, Properties}. v2: POST /ido/update/{ido},
  {"Changes": [{Action 4, ItemId}]}.
- success. v1: MessageCode 0 (load) or 202 (delete). v2: Success true.

A v1 base URL ends with /MGRESTService.svc, a v2 one with /IDORequestService.
The documents show LoadCollection rows as positional arrays (v1) and as
objects keyed by property (v2); answers of either version are read in both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

ApiVersion = Literal["v1", "v2"]
DELETE_ACTION = 4  # UpdateAction.Delete
DELETE_SUCCESSFUL = 202  # v1 MessageCode of "Delete successful."
ITEM_ID = "_ItemId"
ALL_ROWS = "0"  # recordcap: 0 is every row, -1 (the default) only 200


@dataclass(frozen=True)
class Call:
    """One request, and how it may be named in a message (`shown` hides secrets)."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    shown: str = ""

    @property
    def what(self) -> str:
        return f"{self.method} {self.shown or self.path}"


class BadAnswer(Exception):
    """An answer that refuses the call or cannot be read; `code` is the server's, if any."""

    def __init__(self, reason: str, code: str = "") -> None:
        super().__init__(reason)
        self.code = code


class Dialect(Protocol):
    url_hint: str
    """How the connection URL of this version ends, for messages about a wrong one."""

    def token_by_headers(self, config: str, user: str, password: str) -> Call: ...

    def token_by_path(self, config: str, user: str, password: str) -> Call | None:
        """The form servers that predate the header form know, or None if the version has none."""
        ...

    def load(self, ido: str, props: Sequence[str], where: str, cap: str = ALL_ROWS) -> Call: ...

    def delete(self, ido: str, item_ids: Sequence[str], method: str) -> Call: ...

    def deleted(self, body: Mapping[str, Any]) -> bool: ...

    def not_allowed(self, connection: str) -> str:
        """The fix when the delete call answers 405."""
        ...


class _Shared:
    """What the two versions do alike, told apart by a few names."""

    token_path: str
    user_header: str
    props_param: str
    load_path: str
    """With {ido} in it."""

    def token_by_headers(self, config: str, user: str, password: str) -> Call:
        headers = {self.user_header: user, "password": password}
        return Call("GET", f"{self.token_path}/{segment(config)}", headers=headers)

    def load(self, ido: str, props: Sequence[str], where: str, cap: str = ALL_ROWS) -> Call:
        params = {self.props_param: ",".join(props), "filter": where, "recordcap": cap}
        return Call("GET", self.load_path.format(ido=ido), params=params)


class V1(_Shared):
    url_hint = "for api v1 it ends with /MGRESTService.svc"
    token_path, user_header = "/json/token", "userid"
    props_param, load_path = "props", "/json/{ido}/adv"

    def token_by_path(self, config: str, user: str, password: str) -> Call | None:
        return None  # v1 documents the header form only

    def delete(self, ido: str, item_ids: Sequence[str], method: str) -> Call:
        item_id_property = {"IsNull": False, "Modified": False, "Name": ITEM_ID, "Value": None}
        body = [
            {"Action": DELETE_ACTION, "ItemId": item_id, "Properties": [item_id_property]}
            for item_id in item_ids
        ]
        return Call(method, f"/json/{ido}/deleteitems", json=body)

    def deleted(self, body: Mapping[str, Any]) -> bool:
        return body.get("MessageCode") == DELETE_SUCCESSFUL

    def not_allowed(self, connection: str) -> str:
        return "set the target's delete_method to the other verb (DELETE or POST)"


class V2(_Shared):
    url_hint = "for api v2 it ends with /IDORequestService, without /ido"
    token_path, user_header = "/ido/token", "username"
    props_param, load_path = "properties", "/ido/load/{ido}"

    def token_by_path(self, config: str, user: str, password: str) -> Call | None:
        base = f"{self.token_path}/{segment(config)}/{segment(user)}"
        if not password:  # the password segment is optional
            return Call("GET", base)
        return Call("GET", f"{base}/{segment(password)}", shown=f"{base}/***")

    def delete(self, ido: str, item_ids: Sequence[str], method: str) -> Call:
        """UpdateCollection; every write example of the v2 guide posts, whatever `method`."""
        changes = [{"Action": DELETE_ACTION, "ItemId": item_id} for item_id in item_ids]
        return Call("POST", f"/ido/update/{ido}", json={"Changes": changes})

    def deleted(self, body: Mapping[str, Any]) -> bool:
        return body.get("Success") is True

    def not_allowed(self, connection: str) -> str:
        return (
            f"v2 updates are POSTed to /ido/update; check connections.{connection}.url "
            f"and connections.{connection}.api"
        )


DIALECTS: dict[ApiVersion, Dialect] = {"v1": V1(), "v2": V2()}


def dialect(version: ApiVersion) -> Dialect:
    return DIALECTS[version]


def segment(value: str) -> str:
    """One path segment, exactly as sent (so a secret in it can be scrubbed as sent):
    '/' and '%' encoded, and a segment of dots too, which URL normalisation would
    otherwise read as "this" or "parent" directory."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if not quoted.strip(".") else quoted


def message(body: Mapping[str, Any]) -> str:
    """The server's own words about a call: Message, with MessageCode (v1) or Success (v2)."""
    text = str(body.get("Message"))
    if "MessageCode" in body:
        return f"{text} (MessageCode {body['MessageCode']})"
    if "Success" in body:
        return f"{text} (Success {json.dumps(body['Success'])})"
    return text


def refused(body: Mapping[str, Any]) -> bool:
    """Either version's way of saying a call failed: a MessageCode other than 0, or
    Success false."""
    return body.get("Success") is False or body.get("MessageCode") not in (0, None)


def read_token(body: Mapping[str, Any]) -> str | None:
    token = body.get("Token")
    if body.get("Success") is False or not isinstance(token, str) or not token:
        return None
    return token


def read_rows(body: Mapping[str, Any], props: Sequence[str]) -> list[list[Any]]:
    """LoadCollection rows as lists in `props` order, from positional arrays or from
    objects keyed by property, whichever the server sent.

    The first property must be the ItemId (non-empty text). An answer that says it
    holds only part of the rows is refused: a key missing from it would pass for
    deleted.
    """
    if refused(body):
        code = body.get("MessageCode")
        raise BadAnswer(message(body), "" if code is None else str(code))
    items = body.get("Items")
    if not isinstance(items, list):
        raise BadAnswer(f"no Items in the answer: {message(body)}")
    if body.get("MoreRowsExist") is True:
        raise BadAnswer("the answer holds only part of the rows (MoreRowsExist), recordcap=0")
    return [_row(item, props) for item in items]


def _row(item: Any, props: Sequence[str]) -> list[Any]:
    if isinstance(item, list) and len(item) == len(props):
        row = item
    elif isinstance(item, dict) and all(p in item for p in props):
        row = [item[p] for p in props]
    else:
        raise BadAnswer(
            f"unexpected row shape (want {len(props)} values in order {','.join(props)}, "
            "or an object with those properties)"
        )
    if not isinstance(row[0], str) or not row[0]:
        raise BadAnswer(f"a row has no {props[0]}")
    return row
