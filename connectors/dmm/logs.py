"""The DMM execution log: one line per event, as the delete target and a DMM source read it.

ASSUMED format. DMM publishes no sample of its logs (apis.md section 4 only
says that GetExecutionStatus returns the lines base64-encoded and that
GetExecutionOutputs returns a base64 zip holding one or more log files), so
this module fixes one, which the emulator writes and the connectors read:

    <yyyy-MM-dd HH:mm:ss> | <LEVEL> | <entity or -> | <message>

The messages that name a record are

    Deleted record <Attribute>=<literal>
    Could not delete record <Attribute>=<literal>: <reason>

with the literal written as in SQL: an integer (`17`, `-3`), or a string in
single quotes with inner quotes doubled (`'o''brien@x.it'`), optionally
prefixed with N (`N'Zoë'`). For example:

    2026-11-29 10:00:01 | INFO | Contact | Deleted record Id=17
    2026-11-29 10:00:01 | INFO | Contact | Deleted record Email='o''brien@x.it'
    2026-11-29 10:00:02 | ERROR | Contact | Could not delete record Id=18: The DELETE
        statement conflicted with the REFERENCE constraint "OSFRK_..."   (one line)

Every other line (`Execution started`, `Deleting chunk 1 of 3 (100 records)`)
is free text. A line that does not match exactly is returned as None and
never guessed at: a misread record could confirm a deletion that did not
happen. Lines are split on line feeds only, so a value holding another
Unicode line separator survives.
"""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Literal

SEPARATOR = " | "
DELETED = "Deleted record "
FAILED = "Could not delete record "
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_LOG_BYTES = 64 * 1024 * 1024
"""Cap on the uncompressed size of a log zip: past it the zip is refused, not read."""
MAX_LOG_FILES = 10000
_READ_CHUNK = 64 * 1024

_AT = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_LEVEL = re.compile(r"^[A-Za-z]+$")
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INTEGER = re.compile(r"-?[0-9]+")

EventKind = Literal["deleted", "failed"]


@dataclass(frozen=True)
class LogEvent:
    """A record the log names: deleted, or failed with the database's reason.

    `value` is the literal unquoted; integers are given as their plain
    integer text (`-007` reads as `-7`).
    """

    kind: EventKind
    at: str
    entity: str
    attribute: str
    value: str
    reason: str
    raw: str


# --- literals --------------------------------------------------------------------------


def format_literal(value: str | int) -> str:
    """An integer as digits, text in single quotes with inner quotes doubled."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a record key")
    if isinstance(value, int):
        return str(value)
    _check_text(value, "value")
    return "'" + value.replace("'", "''") + "'"


def scan_literal(text: str, start: int = 0) -> tuple[str, int]:
    """Read one literal at `start`: (its value unquoted, the index just after it).

    Raises ValueError when there is no well-formed literal there.
    """
    pos = start
    if text.startswith(("N'", "n'"), pos):
        pos += 1
    if text.startswith("'", pos):
        out: list[str] = []
        pos += 1
        while True:
            end = text.find("'", pos)
            if end < 0:
                raise ValueError(f"unterminated string literal at {start}")
            out.append(text[pos:end])
            if text.startswith("''", end):
                out.append("'")
                pos = end + 2
                continue
            return "".join(out), end + 1
    if pos != start:
        raise ValueError(f"N must be followed by a quoted string at {start}")
    match = _INTEGER.match(text, pos)
    if match is None:
        raise ValueError(f"no literal at {start}")
    end = match.end()
    if end < len(text) and (text[end].isalnum() or text[end] in "_.'"):
        raise ValueError(f"not an integer literal at {start}")
    return str(int(match.group())), end


def parse_literal(text: str) -> str:
    """A whole literal (`17`, `'o''brien'`, `N'x'`) unquoted; ValueError otherwise."""
    value, end = scan_literal(text)
    if end != len(text):
        raise ValueError(f"unexpected text after the literal at {end}")
    return value


# --- writing (the emulator) ------------------------------------------------------------


def format_line(at: datetime, level: str, entity: str, message: str) -> str:
    """A free line; `entity` is "-" for lines about the whole execution."""
    if not _LEVEL.match(level):
        raise ValueError(f"log level {level!r} is not a word")
    _check_text(entity, "entity")
    if not entity or SEPARATOR.strip() in entity or entity != entity.strip():
        raise ValueError(f"entity {entity!r} cannot be written in a log line")
    _check_text(message, "message")
    return SEPARATOR.join((at.strftime(TIME_FORMAT), level.upper(), entity, message))


def format_deleted(at: datetime, entity: str, attribute: str, value: str | int) -> str:
    return format_line(at, "INFO", entity, f"{DELETED}{_pair(attribute, value)}")


def format_failed(at: datetime, entity: str, attribute: str, value: str | int, reason: str) -> str:
    return format_line(at, "ERROR", entity, f"{FAILED}{_pair(attribute, value)}: {reason}")


def _pair(attribute: str, value: str | int) -> str:
    if not _ATTRIBUTE.fullmatch(attribute):
        raise ValueError(f"{attribute!r} is not an attribute name")
    return f"{attribute}={format_literal(value)}"


def _check_text(text: str, what: str) -> None:
    """A log line holds no control character (a line feed would split the line)."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        raise ValueError(f"{what} {text!r} holds a control character")


# --- reading ---------------------------------------------------------------------------


def parse_line(line: str) -> LogEvent | None:
    """The record a line names, or None for free text and anything malformed."""
    raw = line.removesuffix("\n").removesuffix("\r").removeprefix("\ufeff")
    parts = raw.split(SEPARATOR, 3)
    if len(parts) != 4:
        return None
    at, level, entity, message = parts
    if not _AT.match(at) or not _LEVEL.match(level) or not entity or entity != entity.strip():
        return None
    kind: EventKind
    if message.startswith(DELETED):
        kind, rest = "deleted", message[len(DELETED) :]
    elif message.startswith(FAILED):
        kind, rest = "failed", message[len(FAILED) :]
    else:
        return None
    match = _ATTRIBUTE.match(rest)
    if match is None or not rest.startswith("=", match.end()):
        return None
    try:
        value, end = scan_literal(rest, match.end() + 1)
    except ValueError:
        return None
    reason = ""
    if kind == "deleted":
        if end != len(rest):
            return None
    else:
        if not rest.startswith(": ", end):
            return None
        reason = rest[end + 2 :]
    return LogEvent(kind, at, entity, match.group(), value, reason, raw)


def parse_lines(lines: Iterable[str]) -> list[LogEvent]:
    return list(iter_events(lines))


def iter_events(lines: Iterable[str]) -> Iterator[LogEvent]:
    """The records `lines` name, read as they are asked for."""
    return (event for event in map(parse_line, lines) if event is not None)


def split_lines(text: str) -> list[str]:
    """Lines split on line feeds only (CRLF tolerated); no empty last line."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def open_log_zip(file: IO[bytes]) -> zipfile.ZipFile:
    """The log zip in `file` (seekable: a zip's directory is at its end); ValueError
    when it is not one."""
    try:
        return zipfile.ZipFile(file)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(f"the logs are not a zip archive: {exc}") from None


def check_log_zip(
    archive: zipfile.ZipFile, *, max_bytes: int = MAX_LOG_BYTES, max_files: int = MAX_LOG_FILES
) -> list[zipfile.ZipInfo]:
    """The log files to read, once every one of them was unpacked without error.

    A member is only known sound once read to its end (its CRC is checked there),
    so the zip is unpacked once, keeping nothing, before any line is read: a log
    that cannot be read whole yields no record at all. The uncompressed total is
    capped (declared sizes can lie, so bytes are counted while reading): a zip
    bomb raises ValueError instead of running on.
    """
    entries = [info for info in archive.infolist() if not info.is_dir()]
    if len(entries) > max_files:
        raise ValueError(f"the log zip holds {len(entries)} files, more than {max_files}")
    declared = sum(info.file_size for info in entries)
    if declared > max_bytes:
        raise ValueError(
            f"the log zip would unpack to {declared} bytes, more than the cap of {max_bytes}"
        )
    total = 0
    for info in entries:
        for chunk in _unpacked(archive, info):
            total += len(chunk)
            if total > max_bytes:
                raise ValueError(f"the log zip unpacks to more than the cap of {max_bytes} bytes")
    return entries


def log_zip_lines(
    archive: zipfile.ZipFile, entries: Iterable[zipfile.ZipInfo]
) -> Iterator[tuple[str, str]]:
    """(file name, line) for every line of `entries` (see `check_log_zip`), in order,
    unpacked as they are asked for: a log of any size is read in constant memory.

    Text is read as UTF-8; an undecodable byte becomes U+FFFD, which can only make a
    value match nothing.
    """
    for info in entries:
        for line in _lines(_unpacked(archive, info)):
            yield info.filename, line


def read_log_zip(
    data: bytes, *, max_bytes: int = MAX_LOG_BYTES, max_files: int = MAX_LOG_FILES
) -> list[tuple[str, list[str]]]:
    """(file name, lines) for each file of a small log zip held in memory, in order."""
    with open_log_zip(io.BytesIO(data)) as archive:
        entries = check_log_zip(archive, max_bytes=max_bytes, max_files=max_files)
        return [(info.filename, list(_lines(_unpacked(archive, info)))) for info in entries]


def _unpacked(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    try:
        with archive.open(info) as handle:
            while chunk := handle.read(_READ_CHUNK):
                yield chunk
    except (
        zipfile.BadZipFile,
        zlib.error,
        NotImplementedError,
        RuntimeError,
        OSError,
        EOFError,
    ) as exc:
        raise ValueError(f"log file {info.filename!r} cannot be read: {exc}") from None


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of one file given in pieces, as `split_lines` splits a whole text."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    started = False
    for chunk in chunks:
        text = tail + decoder.decode(chunk)
        if not started and text:
            text, started = text.removeprefix("\ufeff"), True
        *lines, tail = text.split("\n")
        for line in lines:
            yield line.removesuffix("\r")
    tail += decoder.decode(b"", final=True)
    if not started:
        tail = tail.removeprefix("\ufeff")
    if tail:
        yield tail.removesuffix("\r")


__all__ = [
    "DELETED",
    "FAILED",
    "MAX_LOG_BYTES",
    "TIME_FORMAT",
    "LogEvent",
    "check_log_zip",
    "format_deleted",
    "format_failed",
    "format_line",
    "format_literal",
    "iter_events",
    "log_zip_lines",
    "open_log_zip",
    "parse_line",
    "parse_lines",
    "parse_literal",
    "read_log_zip",
    "scan_literal",
    "split_lines",
]
