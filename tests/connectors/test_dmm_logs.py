from __future__ import annotations

import io
import zipfile
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.dmm.logs import (
    LogEvent,
    format_deleted,
    format_failed,
    format_line,
    format_literal,
    parse_line,
    parse_lines,
    parse_literal,
    read_log_zip,
    scan_literal,
    split_lines,
)

AT = datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC)
REFERENCE = (
    "The DELETE statement conflicted with the REFERENCE constraint "
    '"OSFRK_OSUSR_ABC_ORDER_CONTACTID"'
)


def zipped(*files: tuple[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, content in files:
            archive.writestr(name, content)
    return buffer.getvalue()


# --- the documented examples ----------------------------------------------------------


def test_examples_parse() -> None:
    lines = [
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Id=17",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Email='o''brien@x.it'",
        f"2026-11-29 10:00:02 | ERROR | Contact | Could not delete record Id=18: {REFERENCE}",
        "2026-11-29 10:00:00 | INFO | Contact | Deleting chunk 1 of 3 (100 records)",
        "2026-11-29 10:00:00 | INFO | - | Execution started",
        "Execution finished",
    ]
    assert parse_lines(lines) == [
        LogEvent("deleted", "2026-11-29 10:00:01", "Contact", "Id", "17", "", lines[0]),
        LogEvent(
            "deleted", "2026-11-29 10:00:01", "Contact", "Email", "o'brien@x.it", "", lines[1]
        ),
        LogEvent("failed", "2026-11-29 10:00:02", "Contact", "Id", "18", REFERENCE, lines[2]),
    ]


def test_format_matches_the_examples() -> None:
    assert format_deleted(AT, "Contact", "Id", 17) == (
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Id=17"
    )
    assert format_deleted(AT, "Contact", "Email", "o'brien@x.it") == (
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Email='o''brien@x.it'"
    )
    assert format_failed(AT, "Contact", "Id", 18, REFERENCE) == (
        f"2026-11-29 10:00:01 | ERROR | Contact | Could not delete record Id=18: {REFERENCE}"
    )
    assert format_line(AT, "info", "-", "Execution started") == (
        "2026-11-29 10:00:01 | INFO | - | Execution started"
    )


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("2026-11-29 10:00:01 | INFO | C | Deleted record Id=-007", "-7"),
        ("2026-11-29 10:00:01 | INFO | C | Deleted record Name=N'Zoë'", "Zoë"),
        ("2026-11-29 10:00:01 | INFO | C | Deleted record Name=''", ""),
        ("2026-11-29 10:00:01 | INFO | C | Deleted record Name='a | b'", "a | b"),
        ("2026-11-29 10:00:01 | INFO | C | Deleted record Name='x: y'", "x: y"),
        ("2026-11-29 10:00:01 | INFO | C | Deleted record Id=17\r", "17"),
        ("\ufeff2026-11-29 10:00:01 | INFO | C | Deleted record Id=17", "17"),
    ],
)
def test_values(line: str, value: str) -> None:
    event = parse_line(line)
    assert event is not None and event.value == value


def test_failed_reason_may_hold_anything() -> None:
    line = "2026-11-29 10:00:01 | ERROR | C | Could not delete record K='a'': b': x: 'y' | z"
    event = parse_line(line)
    assert event is not None
    assert (event.kind, event.value, event.reason) == ("failed", "a': b", "x: 'y' | z")


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Deleted record Id=17",
        "2026-11-29 10:00:01 | INFO | Contact",
        "2026-11-29 | INFO | Contact | Deleted record Id=17",
        "2026-11-29 10:00:01 | IN FO | Contact | Deleted record Id=17",
        "2026-11-29 10:00:01 | INFO |  | Deleted record Id=17",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Id=17 and more",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Id=17abc",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Id=1.5",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Id=",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record =17",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record 9Id=17",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Email='open",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Email='a''",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Email=N17",
        "2026-11-29 10:00:01 | INFO | Contact | Deleted record Email=abc",
        "2026-11-29 10:00:01 | INFO | Contact | deleted record Id=17",
        "2026-11-29 10:00:01 | ERROR | Contact | Could not delete record Id=18",
        "2026-11-29 10:00:01 | ERROR | Contact | Could not delete record Id=18 because",
        "2026-11-29 10:00:01 | INFO | Contact | Deleting chunk 1 of 3 (100 records)",
    ],
)
def test_anything_else_is_none(line: str) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("17", "17"), ("-3", "-3"), ("007", "7"), ("'a''b'", "a'b"), ("N'x'", "x"), ("n''", "")],
)
def test_parse_literal(text: str, value: str) -> None:
    assert parse_literal(text) == value


@pytest.mark.parametrize("text", ["", "'a", "N17", "1e3", "'a' x", "--1", "abc", "1_0"])
def test_parse_literal_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_literal(text)


def test_scan_literal_gives_the_end() -> None:
    assert scan_literal("x='a''b': r", 2) == ("a'b", 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: format_deleted(AT, "Contact", "Email", "a\nb"), "control character"),
        (lambda: format_deleted(AT, "Con|tact", "Id", 1), "cannot be written"),
        (lambda: format_deleted(AT, "", "Id", 1), "cannot be written"),
        (lambda: format_deleted(AT, "Contact", "E-mail", 1), "not an attribute name"),
        (lambda: format_line(AT, "IN FO", "-", "x"), "not a word"),
        (lambda: format_failed(AT, "C", "Id", 1, "bad\r\nreason"), "control character"),
    ],
)
def test_format_refuses_what_cannot_be_read_back(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_format_literal_refuses_booleans() -> None:
    with pytest.raises(TypeError):
        format_literal(True)


def test_split_lines_only_on_line_feeds() -> None:
    assert split_lines("a\r\nb\u2028c\nd\n") == ["a", "b\u2028c", "d"]
    assert split_lines("") == []


# --- round trips (Hypothesis) ---------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
ENTITY = st.from_regex(r"[A-Za-z][A-Za-z0-9_ ]{0,20}[A-Za-z0-9]", fullmatch=True)
ATTRIBUTE = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
VALUE = st.one_of(TEXT, st.integers(min_value=-(2**63), max_value=2**63 - 1))


@given(entity=ENTITY, attribute=ATTRIBUTE, value=VALUE)
def test_deleted_round_trip(entity: str, attribute: str, value: str | int) -> None:
    line = format_deleted(AT, entity, attribute, value)
    event = parse_line(line)
    assert event is not None
    assert (event.kind, event.entity, event.attribute, event.value) == (
        "deleted",
        entity,
        attribute,
        str(value),
    )
    assert event.raw == line and event.at == "2026-11-29 10:00:01"


@given(entity=ENTITY, attribute=ATTRIBUTE, value=VALUE, reason=TEXT)
def test_failed_round_trip(entity: str, attribute: str, value: str | int, reason: str) -> None:
    event = parse_line(format_failed(AT, entity, attribute, value, reason))
    assert event is not None
    assert (event.kind, event.entity, event.attribute, event.value, event.reason) == (
        "failed",
        entity,
        attribute,
        str(value),
        reason,
    )


@given(value=TEXT)
def test_literal_round_trip(value: str) -> None:
    assert parse_literal(format_literal(value)) == value
    assert parse_literal("N" + format_literal(value)) == value


# --- log zips -------------------------------------------------------------------------


def test_read_log_zip_keeps_files_in_order() -> None:
    data = zipped(
        ("exec_2.log", b"c\n"),
        ("exec_1.log", "\ufeffa\r\nb \u00e8\n".encode()),
        ("empty.log", b""),
    )
    assert read_log_zip(data) == [
        ("exec_2.log", ["c"]),
        ("exec_1.log", ["a", "b \u00e8"]),
        ("empty.log", []),
    ]


def test_read_log_zip_replaces_undecodable_bytes() -> None:
    assert read_log_zip(zipped(("x.log", b"a\xffb\n"))) == [("x.log", ["a\ufffdb"])]


def test_read_log_zip_skips_directories() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.mkdir("logs")
        archive.writestr("logs/a.log", b"x\n")
    assert read_log_zip(buffer.getvalue()) == [("logs/a.log", ["x"])]


@pytest.mark.parametrize("data", [b"", b"not a zip", b"PK\x03\x04garbage"])
def test_read_log_zip_refuses_what_is_not_a_zip(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a zip archive"):
        read_log_zip(data)


def test_read_log_zip_refuses_a_bomb() -> None:
    bomb = zipped(("a.log", b"0" * 50_000), ("b.log", b"0" * 50_000))
    assert len(bomb) < 2_000
    with pytest.raises(ValueError, match="more than the cap of 60000"):
        read_log_zip(bomb, max_bytes=60_000)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_read_log_zip_refuses_a_lying_size(method: int) -> None:
    data = bytearray(zipped(("a.log", b"x" * 5000), method=method))
    # A central directory that understates the size passes the declared-size check;
    # what is unpacked is bounded by it and the CRC check refuses the member.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")
    with pytest.raises(ValueError, match="cannot be read"):
        read_log_zip(bytes(data), max_bytes=1000)


def test_read_log_zip_caps_files() -> None:
    data = zipped(*((f"{n}.log", b"x\n") for n in range(5)))
    with pytest.raises(ValueError, match="5 files, more than 3"):
        read_log_zip(data, max_files=3)


def test_read_log_zip_reports_a_corrupt_member() -> None:
    data = bytearray(zipped(("a.log", b"hello world " * 100)))
    start = data.find(b"a.log") + len(b"a.log")
    data[start + 5 : start + 15] = b"\x00" * 10
    with pytest.raises(ValueError, match="cannot be read"):
        read_log_zip(bytes(data))
