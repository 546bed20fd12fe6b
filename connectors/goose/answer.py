"""Goose's DELETED answer parsed as its bytes arrive, so no answer is ever held whole.

A million-row answer is one JSON object, `{"status": "OK", "result": {"total": N,
"data": [row, ...]}}`. Rows are built one at a time and handed out as soon as
they are complete; everything else (status, total, an error) is kept in a
small envelope where `data` stays an empty list, checked once the body ends.
"""

from __future__ import annotations

from typing import Any

import ijson
from ijson.common import ObjectBuilder

try:
    _BACKEND = ijson.get_backend("yajl2_c")
except ImportError:  # no compiled yajl on this platform: the pure-Python parser, slower
    _BACKEND = ijson.get_backend("python")

JSONError = ijson.JSONError
"""What a body that is not (complete) JSON raises, from `feed` or `close`."""

_OPENS = {"start_map", "start_array"}
_CLOSES = {"end_map", "end_array"}
_DATA = "result.data"
_ROW = "result.data.item"


class AnswerParser:
    """Push bytes in, get rows out; `envelope` is the answer without its rows.

    Rows are released only once the answer's `status` is known to be OK (Goose
    writes it first): an error answer's rows must never become deletions. Rows
    of an answer that puts its status after them are held until it comes (the
    one case where memory grows with the answer); after another status, dropped.
    """

    def __init__(self) -> None:
        self._events: list[tuple[str, str, Any]] = ijson.sendable_list()
        self._parser = _BACKEND.parse_coro(self._events, use_float=True)
        self._envelope = ObjectBuilder()
        self._row: ObjectBuilder | None = None
        self._depth = 0
        self._in_data = False
        self._held: list[Any] = []
        self.status: str | None = None
        self.rows = 0
        """Rows seen so far, held, handed out or dropped: what `total` must equal."""

    def feed(self, data: bytes) -> list[Any]:
        """The rows completed by `data`."""
        if not data:  # yajl takes an empty chunk for the end of the body
            return []
        self._parser.send(data)
        return self._drain()

    def close(self) -> list[Any]:
        """The last rows; raises `JSONError` when the body ended before the JSON did."""
        self._parser.close()
        return self._drain()

    @property
    def envelope(self) -> Any:
        return self._envelope.value

    def _drain(self) -> list[Any]:
        done: list[Any] = []
        for prefix, event, value in self._events:
            if self._row is not None:
                self._row.event(event, value)
                self._depth += 1 if event in _OPENS else -1 if event in _CLOSES else 0
                if self._depth == 0:
                    done.append(self._row.value)
                    self._row = None
                continue
            if self._in_data and prefix == _ROW:
                if event in _OPENS:
                    self._row = ObjectBuilder()
                    self._row.event(event, value)
                    self._depth = 1
                else:
                    done.append(value)
                continue
            if prefix == _DATA and event in ("start_array", "end_array"):
                self._in_data = event == "start_array"
            if prefix == "status" and self.status is None and event not in _CLOSES:
                self.status = str(value).upper() if event not in _OPENS else "?"
            self._envelope.event(event, value)
        del self._events[:]
        self.rows += len(done)
        if self.status is None:
            self._held.extend(done)
            return []
        if self.status != "OK":
            self._held.clear()
            return []
        released, self._held = self._held + done, []
        return released
