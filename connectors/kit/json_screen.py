"""A streamed JSON body screened before a streaming parser (yajl, through ijson) sees it.

yajl holds a string or a number whole before handing it on, so one endless string
would hold the answer's size in memory, and some values it cannot read right: it
fails on a number of more than 4,300 digits (and ijson then raises SystemError),
turns a lone high surrogate escape (`"\\ud800"`) into "?" (a key the source never
sent) and a lone low surrogate into bytes ijson cannot decode (UnicodeDecodeError,
which no caller expects). A value of one row must never stop the whole answer, so
the screen cuts the body into pieces that hold only whole strings and numbers, and
hands a value it cannot pass on as a `Flaw` (why) followed by a stand-in string:
the consumer drains the parser before it applies the flaw, so it knows which row
(or the envelope) the value belongs to, and rejects that row alone.

The usual body (no escaped surrogate, no number or string past the limits, valid
UTF-8) costs one regular-expression pass and one UTF-8 check per piece, both in C.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

MAX_FIELD_BYTES = 1024 * 1024
"""Bytes (as written, escaped) past which a string of the answer is not read: its row
is rejected. A deletion's fields are short; a longer one is an answer gone wrong."""
MAX_NUMBER_CHARS = 4300
"""Characters past which a number is not read, Python's own limit on an integer's
digits (`sys.get_int_max_str_digits`), which `json.loads` also applies."""

MAX_DEPTH = 64
"""Levels of nesting an answer (read whole) or a row (streamed) may have, an object or
a list being one; code that walks a value recursively (json.dumps, redaction) fails on
much deeper ones."""

STAND_IN = b'"\\ufffd"'
"""What the parser is given in place of a value it cannot be trusted with."""

_WHOLE = re.compile(rb'[^"]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"]*)*', re.DOTALL)
"""The longest start of a piece that ends outside a string (or where one opens)."""
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
"""An escaped surrogate: a pair is fine, a lone half is not (sends a piece down the slow
path, token by token)."""
_NUMBERISH = bytes(ord("1") if byte in b"0123456789+-.eE" else ord(" ") for byte in range(256))
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_NUMBER_CHARS = b"0123456789+-.eE"
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[-+0-9.eE]+', re.DOTALL)


def _open_string(buf: bytes) -> int:
    """Where a string that `buf` (starting outside any string) does not close opens, or
    its length. Without a backslash every quote is a real one: counted, in C."""
    if b"\\" not in buf:
        return buf.rfind(b'"') if buf.count(b'"') % 2 else len(buf)
    return _WHOLE.match(buf).end()  # type: ignore[union-attr]  # matches the empty start


@dataclass(frozen=True)
class Flaw:
    """The next value handed to the parser stands in for one that could not be read."""

    reason: str


class Screen:
    """Push the body's bytes in, get back pieces for the parser and `Flaw`s between them."""

    def __init__(
        self, *, max_field: int = MAX_FIELD_BYTES, max_number: int = MAX_NUMBER_CHARS
    ) -> None:
        self.max_field = max_field
        self.max_number = max_number
        self._pending = b""
        """A trailing number (or the end of `true`...), held until it ends."""
        self._open: bytearray | None = None
        """An open string, from its quote, held until it ends."""
        self._skipping: str | None = None
        """"string" or "number" while the rest of a value past its limit is dropped."""
        self._escaped = False
        """The open or skipped string's last byte so far is a backslash that escapes."""
        self._long_number = b"1" * (max_number + 1)
        """A run of number characters past the limit, in a piece `_NUMBERISH` translated."""

    def feed(self, data: bytes) -> Iterator[bytes | Flaw]:
        # A string that starts and ends within one piece is no longer than the piece.
        for start in range(0, len(data), self.max_field):
            yield from self._piece(data[start : start + self.max_field])

    def _piece(self, data: bytes) -> Iterator[bytes | Flaw]:
        pos = 0
        if self._skipping:
            pos = self._skip(data)
        elif self._open is not None:
            end = self._string_end(data, 0)
            if end < 0:
                self._open += data
                if len(self._open) > self.max_field:
                    self._open = None
                    yield from self._too_long_string()
                return
            if len(self._open) + end > self.max_field:
                self._open = None
                yield from self._too_long_string()
                self._skipping, pos = None, end  # it has ended: nothing more to drop
            else:
                data, self._open = bytes(self._open) + data, None
        if pos >= len(data):
            return
        buf = self._pending + data[pos:] if self._pending else data[pos:]
        self._pending = b""
        cut = _open_string(buf)
        body, rest = buf[:cut], buf[cut:]
        if rest:  # an open string
            yield from self._checked(body)
            self._escaped = False
            self._string_end(rest, 1)  # it does not end there: whether it ends on an escape
            self._open = bytearray(rest)
            if len(rest) > self.max_field:
                self._open = None
                yield from self._too_long_string()
            return
        number = len(body) - len(body.rstrip(_NUMBER_CHARS))
        if number:
            body, held = body[: len(body) - number], body[len(body) - number :]
            if len(held) > self.max_number:
                yield from self._checked(body)
                yield Flaw(f"a number written with more than {self.max_number} characters")
                yield STAND_IN
                self._skipping = "number"
                return
            self._pending = held
        yield from self._checked(body)

    def close(self) -> Iterator[bytes]:
        """What is held at the end of the body, for the parser to judge (a cut string)."""
        if self._open is not None:
            yield bytes(self._open)
        elif self._pending and not self._skipping:
            yield self._pending
        self._pending, self._open = b"", None

    def _too_long_string(self) -> Iterator[bytes | Flaw]:
        """The open string is past its limit: a stand-in, and the rest of it dropped
        (when it has not ended yet)."""
        yield Flaw(f"a string longer than {self.max_field} bytes")
        yield STAND_IN
        self._skipping = "string"

    def _string_end(self, data: bytes, pos: int) -> int:
        """The index just after the quote that ends the open string, or -1 when `data`
        ends first (then `_escaped` says whether its last backslash escapes)."""
        if self._escaped:
            if pos >= len(data):
                return -1
            pos, self._escaped = pos + 1, False
        end = _STRING_REST.match(data, pos).end()  # type: ignore[union-attr]  # matches ""
        if end < len(data) and data[end : end + 1] == b'"':
            return end + 1
        self._escaped = end < len(data)  # stopped on a backslash the data ends with
        return -1

    def _skip(self, data: bytes) -> int:
        """Drop the rest of a value past its limit; the index in `data` just after it."""
        if self._skipping == "number":
            end = len(data) - len(data.lstrip(_NUMBER_CHARS))
            if end < len(data):
                self._skipping = None
            return end
        end = self._string_end(data, 0)
        if end < 0:
            return len(data)
        self._skipping = None
        return end

    def _checked(self, body: bytes) -> Iterator[bytes | Flaw]:
        """`body` (whole strings and numbers only), with a flawed value replaced."""
        if not body:
            return
        try:
            body.decode("utf-8")
            clean = (b"\\u" not in body or _SURROGATE.search(body) is None) and (
                self._long_number not in body.translate(_NUMBERISH)
            )
        except UnicodeDecodeError:
            clean = False
        if clean:
            yield body
            return
        last = 0
        for token in _TOKEN.finditer(body):
            reason = self._flaw(token.group())
            if reason is None:
                continue
            if token.start() > last:
                yield body[last : token.start()]
            yield Flaw(reason)
            yield STAND_IN
            last = token.end()
        if last < len(body):
            yield body[last:]

    def _flaw(self, token: bytes) -> str | None:
        """Why a whole string or number cannot be handed to the parser, or None."""
        if token[:1] != b'"':
            if len(token) > self.max_number:
                return f"a number written with more than {self.max_number} characters"
            return None
        try:
            json.loads(token).encode("utf-8")
        except UnicodeDecodeError:
            return "a string that is not UTF-8"
        except UnicodeEncodeError as exc:
            return f"a lone surrogate (\\u{ord(exc.object[exc.start]):04x}) in a string"
        except ValueError:
            return None  # not a JSON string at all: the parser refuses the answer
        return None


class DuplicateKey(ValueError):
    """An object of the answer gives one key twice: which value counts is anyone's guess."""


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH, unique_keys: bool = False) -> Any:
    """`json.loads` for an answer read whole, whose only error is ValueError: a body that
    is not JSON, nests more than `max_depth` levels (never RecursionError, which no
    caller expects) or, with `unique_keys`, gives a key twice (`DuplicateKey`)."""
    hook: Callable[[list[tuple[str, Any]]], dict[str, Any]] | None = None
    if unique_keys:
        hook = _unique
    try:
        value = json.loads(data, object_pairs_hook=hook)
    except RecursionError:
        raise ValueError(f"JSON nested more than {max_depth} levels deep") from None
    if _deeper_than(value, max_depth):
        raise ValueError(f"JSON nested more than {max_depth} levels deep")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the key {key!r} given twice")
            seen.add(key)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Walked without recursion, so a deep value cannot fail the walk itself."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return False


__all__ = [
    "MAX_DEPTH",
    "MAX_FIELD_BYTES",
    "MAX_NUMBER_CHARS",
    "STAND_IN",
    "DuplicateKey",
    "Flaw",
    "Screen",
    "loads",
]
