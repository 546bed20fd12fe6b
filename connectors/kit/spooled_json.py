"""A JSON answer read as it arrives, its long strings kept in temporary files.

Some APIs hand a whole file back as one base64 string inside a JSON object (DMM's
log zip). A JSON parser, ijson included, hands a string value over whole, so such
a string is cut out of the bytes before they are parsed: once a string passes
`limit` bytes it goes on, still escaped, into a temporary file, and the parser is
given a placeholder that becomes a `Spooled` in the parsed value. The rest of the
answer (a few small fields) is parsed as usual, so memory stays constant in the
size of the long strings.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any

from connectors.kit.json_screen import loads

LIMIT = 64 * 1024
"""Bytes past which a string is spooled to a file rather than kept."""
MAX_KEPT = 16 * 1024 * 1024
"""Bytes of the answer kept besides its long strings (a few small fields in a sound
answer): past them the answer is refused rather than held."""
_CHUNK = 64 * 1024
_SPECIAL = re.compile(rb'["\\]')
_WHOLE_ESCAPES = re.compile(r'(?:[^\\]+|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
"""The longest start of a piece of string content that ends on no escape cut in two."""
_LONGEST_ESCAPE = 6
_HIGH_SURROGATE = re.compile(r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}$")
"""A piece ending on the first half of an escaped surrogate pair."""


class Spooled:
    """A long string of the answer, kept as written (escaped) in a temporary file."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def chunks(self) -> Iterator[str]:
        """The string, decoded, piece by piece; ValueError when it is not valid JSON
        string content."""
        self._file.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        carry = ""
        try:
            while data := self._file.read(_CHUNK):
                text = carry + decoder.decode(data)
                whole = _WHOLE_ESCAPES.match(text)
                cut = whole.end() if whole else 0
                if _HIGH_SURROGATE.search(text, 0, cut):
                    cut -= _LONGEST_ESCAPE  # keep a pair's halves together
                carry = text[cut:]
                if len(carry) > 2 * _LONGEST_ESCAPE:
                    raise ValueError("an invalid escape in a string")
                if cut:
                    yield json.loads(f'"{text[:cut]}"')
            carry += decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ValueError("a string that is not UTF-8") from None
        if carry:
            yield json.loads(f'"{carry}"')

    def text(self) -> str:
        """The whole string, for a field only large by accident (an ErrorReport)."""
        return "".join(self.chunks())

    def close(self) -> None:
        self._file.close()


def text_chunks(value: str | Spooled) -> Iterator[str]:
    """A string of the answer, long or short, piece by piece."""
    if isinstance(value, Spooled):
        yield from value.chunks()
    else:
        yield value


def base64_to_file(chunks: Iterable[str], out: IO[bytes]) -> int:
    """Decode base64 text given in pieces (white space ignored) into `out`; the bytes
    written. ValueError when the text is not base64."""
    pending = ""
    written = 0
    ended = False
    for chunk in chunks:
        pending += "".join(chunk.split())
        whole = len(pending) - len(pending) % 4
        if not whole:
            continue
        if ended:
            raise ValueError("not base64: text after the padding")
        block, pending = pending[:whole], pending[whole:]
        try:
            data = base64.b64decode(block, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        ended = "=" in block
        written += out.write(data)
    if pending:
        raise ValueError("not base64: its length is not a multiple of 4")
    return written


class SpoolingParser:
    """Push the body's bytes in, then `close` for its value; `discard` drops the files.

    Raises ValueError from `close` when the body is not one complete JSON value.
    """

    def __init__(self, limit: int = LIMIT, max_kept: int = MAX_KEPT) -> None:
        self.limit = limit
        self.max_kept = max_kept
        self._too_large = False
        self._kept = bytearray()
        """The body with every long string replaced by its placeholder."""
        self._string: bytearray | None = None
        """The string being read, escaped, while it is short; None outside a string."""
        self._file: IO[bytes] | None = None
        """Where the string being read goes once it is long."""
        self._escaped = False
        self._spooled: list[Spooled] = []
        self._mark = f"\x00spooled:{secrets.token_hex(8)}:"

    def feed(self, data: bytes) -> None:
        if self._too_large:
            return
        self._feed(data)
        if len(self._kept) > self.max_kept:
            self._too_large, self._kept = True, bytearray()

    def _feed(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            if self._string is None and self._file is None:
                start = data.find(b'"', pos)
                if start < 0:
                    self._kept += data[pos:]
                    return
                self._kept += data[pos:start]
                self._string, pos = bytearray(), start + 1
                continue
            if self._escaped:
                self._add(data[pos : pos + 1])
                self._escaped, pos = False, pos + 1
                continue
            special = _SPECIAL.search(data, pos)
            if special is None:
                self._add(data[pos:])
                return
            end = special.start()
            if data[end : end + 1] == b"\\":
                self._add(data[pos : end + 1])
                self._escaped, pos = True, end + 1
                continue
            self._add(data[pos:end])
            self._end_string()
            pos = end + 1

    def close(self) -> Any:
        """Raises `DuplicateKey` (a ValueError) when an object gives a key twice: the
        answer contradicts itself, which no re-read of it makes right."""
        if self._too_large:
            raise ValueError(f"the answer holds more than {self.max_kept} bytes of small fields")
        if self._string is not None or self._file is not None:
            raise ValueError("the answer ends inside a string")
        try:
            value = loads(bytes(self._kept), unique_keys=True)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the answer is not JSON ({exc.__class__.__name__})") from None
        return self._restore(value)

    def discard(self) -> None:
        for spooled in self._spooled:
            spooled.close()
        if self._file is not None:
            self._file.close()

    def _add(self, piece: bytes) -> None:
        if self._file is not None:
            self._file.write(piece)
            return
        assert self._string is not None
        self._string += piece
        if len(self._string) > self.limit:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by discard
            self._file.write(self._string)
            self._string = None

    def _end_string(self) -> None:
        if self._file is not None:
            placeholder = json.dumps(f"{self._mark}{len(self._spooled)}").encode()
            self._spooled.append(Spooled(self._file))
            self._kept += placeholder
            self._file = None
            return
        assert self._string is not None
        self._kept += b'"' + self._string + b'"'
        self._string = None

    def _restore(self, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(self._mark):
            return self._spooled[int(value.removeprefix(self._mark))]
        if isinstance(value, dict):
            return {key: self._restore(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._restore(item) for item in value]
        return value


__all__ = ["LIMIT", "MAX_KEPT", "Spooled", "SpoolingParser", "base64_to_file", "text_chunks"]
