"""Goose's DELETED answer parsed as its bytes arrive, so no answer is ever held whole.

A million-row answer is one JSON object, `{"status": "OK", "result": {"total": N,
"data": [row, ...]}}`. Rows are built one at a time and handed out as soon as
they are complete; everything else (status, total, an error) is kept in a
small envelope where `data` stays an empty list, checked once the body ends.

One reading of the answer: the status the rows are released by is the envelope's
own, and a key the envelope gives twice (a second `status` after the rows) makes
the whole answer `Malformed`. A row that cannot be read right (nested too deep,
too large, a lone surrogate, a number no float holds, a key given twice) is a
`BadRow` with the reason, and the rest of the answer goes on. Memory stays bounded
whatever the answer holds: the body is screened before yajl sees it
(connectors.kit.json_screen), and rows and envelope are built within limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import ijson

from connectors.contract import CHUNK_RECORDS
from connectors.kit.json_screen import MAX_DEPTH, MAX_FIELD_BYTES, Flaw, Screen

try:
    _BACKEND = ijson.get_backend("yajl2_c")
except ImportError:  # no compiled yajl on this platform: the pure-Python parser, slower
    _BACKEND = ijson.get_backend("python")

JSONError = ijson.JSONError
"""What a body that is not (complete) JSON raises, from `feed` or `close`."""

MAX_ROW_BYTES = 2 * 1024 * 1024
"""About how many bytes of the answer one row may take; a larger row is not kept."""
MAX_ENVELOPE_BYTES = 1024 * 1024
"""Bytes of strings and values in the answer without its rows (status, total, an error)."""
MAX_ROWS_BEFORE_STATUS = CHUNK_RECORDS
"""Rows held while the status is still unknown (Goose writes it first)."""
_PIECE = 64 * 1024
"""Bytes given to yajl at once: how finely a row's size is measured."""

_OPENS = ("start_map", "start_array")
_CLOSES = ("end_map", "end_array")
_STAND_IN = "\ufffd"
_KEPT_OF_A_DROPPED_ROW = ("RECORD_ID", "TABLE")


class Malformed(ValueError):
    """The answer as a whole breaks its form: nothing more of it may be used."""


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read right; `fields` is what could be kept of it."""

    fields: Any
    reason: str


class _Builder:
    """A JSON value built from parser events, nested at most `limit` levels deep.

    What cannot be built right is recorded in `flaw` (the first reason): a key given
    twice, a number no float holds, a value nested too deep (left out).
    """

    __slots__ = ("_deep", "_limit", "_stack", "flaw", "key", "path", "value")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._stack: list[Any] = []
        self._deep = 0
        """Open containers of a value that is skipped rather than built."""
        self.path: list[Any] = []
        """The key (or None in a list) each open container sits under."""
        self.key: Any = None
        self.value: Any = None
        self.flaw: str | None = None

    def flag(self, reason: str) -> None:
        if self.flaw is None:
            self.flaw = reason

    def depth(self) -> int:
        return len(self._stack)

    def top(self) -> Any:
        return self._stack[-1] if self._stack else None

    def event(self, event: str, value: Any) -> bool:
        """Take one event; True once the value is complete. Called for every event of
        every row: the usual ones (a key, a scalar) are taken first, in line."""
        if self._deep:
            if event in _OPENS:
                self._deep += 1
            elif event in _CLOSES:
                self._deep -= 1
            return not self._deep and not self._stack
        stack = self._stack
        if event == "map_key":
            if value in stack[-1]:
                self.flag(f"the key {value!r} given twice")
            self.key = value
            return False
        if event not in _OPENS and event not in _CLOSES:
            if value.__class__ is Decimal:
                value = self.number(value)
            if not stack:
                self.value = value
                return True
            top = stack[-1]
            if top.__class__ is dict:
                top[self.key] = value
            else:
                top.append(value)
            return False
        if event in _CLOSES:
            stack.pop()
            self.path.pop()
            return not stack
        if len(stack) >= self._limit:
            self.flag(f"values nested more than {self._limit} levels deep")
            self._add(_STAND_IN)
            self._deep = 1
            return False
        container: Any = {} if event == "start_map" else []
        self.path.append(self.key if isinstance(self.top(), dict) else None)
        self._add(container)
        stack.append(container)
        return False

    def number(self, value: Decimal) -> Any:
        """A non-integer as `json.loads` reads it (a float); one beyond a float's range
        (`1e999`) is flagged, not turned into infinity."""
        number = float(value)
        if math.isfinite(number):
            return number
        self.flag(f"a number beyond a float's range ({value})")
        return _STAND_IN

    def drop(self, reason: str) -> None:
        """Stop building: keep only the row's key fields, skip the rest of it."""
        if not self._stack:  # dropped already
            return
        self.flag(reason)
        root = self.value
        self.value = {
            name: root[name]
            for name in _KEPT_OF_A_DROPPED_ROW
            if isinstance(root, dict) and isinstance(root.get(name), str | int)
        }
        self._deep, self._stack, self.path = self._deep + len(self._stack), [], []

    def _add(self, value: Any) -> None:
        if not self._stack:
            self.value = value
            return
        top = self._stack[-1]
        if isinstance(top, list):
            top.append(value)
        else:
            top[self.key] = value


class AnswerParser:
    """Push bytes in, get rows (and `BadRow`s) out; `envelope` is the answer without its rows.

    Rows are released only once the answer's `status` is known to be OK (Goose
    writes it first): an error answer's rows must never become deletions. Rows
    of an answer that puts its status after them are held until it comes (at most
    MAX_ROWS_BEFORE_STATUS of them); after another status, dropped.
    """

    def __init__(
        self,
        *,
        max_depth: int = MAX_DEPTH,
        max_row_bytes: int = MAX_ROW_BYTES,
        max_field: int = MAX_FIELD_BYTES,
    ) -> None:
        self._events: list[tuple[str, Any]] = ijson.sendable_list()
        self._parser = _BACKEND.basic_parse_coro(self._events)
        self._screen = Screen(max_field=max_field)
        self._max_depth = max_depth
        self._max_row_bytes = max_row_bytes
        self._envelope = _Builder(max_depth)
        self._envelope_bytes = 0
        self._row: _Builder | None = None
        self._next_flaw: str | None = None
        """The reason a row that is one flawed value (no object) is bad."""
        self._row_started = 0
        self._fed = 0
        self._in_data = False
        self._held: list[Any] = []
        self._done: list[Any] = []
        self.status: str | None = None
        self.rows = 0
        """Rows seen so far, held, handed out or dropped: what `total` must equal."""

    def feed(self, data: bytes) -> list[Any]:
        """The rows completed by `data`. Raises `JSONError` when the body is not JSON,
        `Malformed` when the answer contradicts itself."""
        for start in range(0, len(data), _PIECE):
            for part in self._screen.feed(data[start : start + _PIECE]):
                self._send(part)
        return self._release()

    def close(self) -> list[Any]:
        """The last rows; raises `JSONError` when the body ended before the JSON did."""
        for part in self._screen.close():
            self._send(part)
        self._parser.close()
        self._drain()
        return self._release()

    @property
    def envelope(self) -> Any:
        return self._envelope.value

    def _send(self, part: bytes | Flaw) -> None:
        if isinstance(part, Flaw):
            self._flaw(part.reason)
            return
        if not part:  # yajl takes an empty chunk for the end of the body
            return
        self._parser.send(part)
        self._drain()
        self._fed += len(part)
        row = self._row
        if row is not None and self._fed - self._row_started > self._max_row_bytes:
            row.drop(f"a row larger than {self._max_row_bytes} bytes")

    def _flaw(self, reason: str) -> None:
        """The value that comes next cannot be read right: its row is bad, or, outside
        the rows, the answer is."""
        if self._row is not None:
            self._row.flag(reason)
        elif self._in_data:
            self._next_flaw = reason
        else:
            raise Malformed(f"its envelope holds {reason}")

    def _drain(self) -> None:
        done = self._done
        for event, value in self._events:
            row = self._row
            if row is not None:
                if row.event(event, value):
                    done.append(row.value if row.flaw is None else BadRow(row.value, row.flaw))
                    self._row = None
                continue
            if self._in_data:
                if event in _OPENS:
                    row = self._row = _Builder(self._max_depth)
                    self._row_started = self._fed
                    if self._next_flaw is not None:
                        row.flag(self._next_flaw)
                        self._next_flaw = None
                    row.event(event, value)
                elif event == "end_array":
                    self._in_data = False
                else:
                    self._scalar_row(value)
                continue
            self._envelope_event(event, value)
        del self._events[:]

    def _scalar_row(self, value: Any) -> None:
        """A row that is no object (rejected by its reader, unless it cannot even be read)."""
        flaw, self._next_flaw = self._next_flaw, None
        if isinstance(value, Decimal):
            if not math.isfinite(float(value)):
                flaw = flaw or f"a number beyond a float's range ({value})"
            value = float(value) if flaw is None else str(value)
        self._done.append(value if flaw is None else BadRow(value, flaw))

    def _envelope_event(self, event: str, value: Any) -> None:
        envelope = self._envelope
        self._envelope_bytes += 1 + (len(value) if isinstance(value, str) else 0)
        if self._envelope_bytes > MAX_ENVELOPE_BYTES:
            raise Malformed(f"its envelope (all but the rows) passes {MAX_ENVELOPE_BYTES} bytes")
        top = envelope.top()
        in_top = envelope.depth() == 1 and isinstance(top, dict)
        if in_top and envelope.key == "status" and event not in ("map_key", *_CLOSES):
            self.status = "?" if event in _OPENS else self._status_text(value)
        if (
            event == "start_array"
            and envelope.depth() == 2
            and envelope.key == "data"
            and isinstance(top, dict)
            and envelope.path == [None, "result"]
        ):
            envelope.event("start_array", None)  # `data` stays an empty list in the envelope
            envelope.event("end_array", None)
            self._in_data = True
        else:
            envelope.event(event, value)
        if envelope.flaw is not None:
            raise Malformed(f"its envelope holds {envelope.flaw}")

    def _status_text(self, value: Any) -> str:
        if isinstance(value, Decimal):
            return str(float(value)).upper()
        return str(value).upper()

    def _release(self) -> list[Any]:
        done, self._done = self._done, []
        self.rows += len(done)
        if self.status is None:
            self._held.extend(done)
            if len(self._held) > MAX_ROWS_BEFORE_STATUS:
                raise Malformed(
                    f"more than {MAX_ROWS_BEFORE_STATUS} rows come before its status "
                    "(Goose writes its status first)"
                )
            return []
        if self.status != "OK":
            self._held.clear()
            return []
        released, self._held = self._held + done, []
        return released


__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_ROWS_BEFORE_STATUS",
    "MAX_ROW_BYTES",
    "AnswerParser",
    "BadRow",
    "JSONError",
    "Malformed",
]
