"""The Goose answer parser against `json.loads` of the whole body, however the body is cut:
a value cut by the end of a feed (a number above all: "12" may go on as "123"), the
answer's frame, and when rows are released."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.goose.answer import AnswerParser, BadRow, JSONError, Malformed

# --- an oracle ------------------------------------------------------------------------------


def read(body: bytes, size: int) -> tuple[list[Any], AnswerParser]:
    """Every row the parser releases when fed `body` in pieces of `size` bytes; a row
    it rejects as "BAD"."""
    parser = AnswerParser()
    rows: list[Any] = []
    for start in range(0, len(body), size):
        rows += parser.feed(body[start : start + size])
    rows += parser.close()
    return ["BAD" if isinstance(row, BadRow) else row for row in rows], parser


def status_of(answer: Any) -> str | None:
    if not isinstance(answer, dict) or "status" not in answer:
        return None
    status = answer["status"]
    return "?" if isinstance(status, dict | list) else str(status).upper()


def expected(body: bytes) -> tuple[list[Any], Any, str | None, int]:
    """Released rows, envelope, status and row count, from the whole body at once (a
    hostile row, which `json.loads` would take in or choke on, as "BAD")."""
    for raw in HOSTILE:
        body = body.replace(raw, b'"BAD"')
    answer = json.loads(body)
    result = answer.get("result") if isinstance(answer, dict) else None
    data = result.get("data") if isinstance(result, dict) else None
    if not isinstance(data, list):
        return [], answer, status_of(answer), 0
    envelope = {**answer, "result": {**result, "data": []}}
    status = status_of(answer)
    return (data if status == "OK" else []), envelope, status, len(data)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # beyond 64 bits too, which yajl alone cannot read
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["RECORD_ID", "TABLE", "data", "status", "é"]), inner),
    ),
    max_leaves=12,
)
HOSTILE = [
    b'{"RECORD_ID":"1","\\udc00x":1}',
    b'{"RECORD_ID":"1","\\ud800":1}',
    b'{"RECORD_ID":"1","v":["a\\udfffb"]}',
    b'"\\ud800"',
    b'{"RECORD_ID":"1","v":1e999}',
    b"-1E+400",
    b'{"RECORD_ID":"1","v":' + b"9" * 4301 + b"}",
    b'{"RECORD_ID":"1","v":' + b"[" * 70 + b"]" * 70 + b"}",
    b'{"RECORD_ID":"1","RECORD_ID":"2"}',
    b'{"RECORD_ID":"1","v":"\xed\xa0\x80"}',
]
"""Rows that cannot be read right: each must come out as a BadRow, the rest as usual."""


class Hostile(str):
    """A place in a generated answer that the raw bytes of a hostile row take."""

    raw: bytes

    def __new__(cls, raw: bytes) -> Hostile:
        made = super().__new__(cls, f"\x00hostile:{HOSTILE.index(raw)}\x00")
        made.raw = raw
        return made


def with_hostile_rows(text: str) -> bytes:
    body = text.encode()
    for number, raw in enumerate(HOSTILE):
        body = body.replace(b'"\\u0000hostile:%d\\u0000"' % number, raw)
    return body


ROWS = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"TABLE": st.just("CON_TRO"), "RECORD_ID": st.text(max_size=8), "SYKEY": VALUES}
        ),
        VALUES,
        st.sampled_from(HOSTILE).map(Hostile),
    ),
    max_size=12,
)


@st.composite
def answers(draw: st.DrawFn) -> bytes:
    """A DELETED answer with its members in any order, as compact or as spaced out as
    JSON allows, with any status (OK or not, before or after the rows)."""
    rows = draw(ROWS)
    result = {"total": len(rows), "data": rows}
    if draw(st.booleans()):
        result["extra"] = draw(VALUES)
    status = draw(st.one_of(st.sampled_from(["OK", "ok", "error", "OK "]), VALUES))
    members: dict[str, Any] = {"status": status, "result": result}
    if draw(st.booleans()):
        members["error"] = {"code": draw(st.sampled_from([50, "120"])), "description": "x"}
    order = draw(st.permutations(list(members)))
    answer = {key: members[key] for key in order}
    answer["result"] = {key: result[key] for key in draw(st.permutations(list(result)))}
    text = json.dumps(
        answer,
        ensure_ascii=draw(st.booleans()),  # True writes astral characters as surrogate pairs
        indent=draw(st.sampled_from([None, 0, 2])),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
    )
    space = draw(st.sampled_from(["", " ", "\n", "\r\n\t "]))
    return with_hostile_rows(space + text + space)


@settings(max_examples=300, deadline=None)
@given(body=answers(), size=st.integers(min_value=1, max_value=64))
def test_any_answer_cut_anywhere_reads_as_json_loads_reads_it_whole(body: bytes, size: int) -> None:
    rows, parser = read(body, size)
    assert (rows, parser.envelope, parser.status, parser.rows) == expected(body)


@settings(max_examples=50, deadline=None)
@given(body=answers())
def test_one_byte_at_a_time_gives_what_one_feed_gives(body: bytes) -> None:
    rows, parser = read(body, 1)
    whole, once = read(body, len(body))
    assert rows == whole
    assert (parser.envelope, parser.status, parser.rows) == (once.envelope, once.status, once.rows)


# --- values cut by the end of a feed --------------------------------------------------------

HEAD = b'{"status":"OK","result":{"total":1,"data":['
TAIL = b"]}}"


@pytest.mark.parametrize(
    "row", [b"12345", b"-1.5e-3", b"1E+30", b"0", b'"a\\u00e9\\ud83d\\ude00b"', b"true", b"null"]
)
def test_a_row_cut_at_any_byte_is_read_whole(row: bytes) -> None:
    """A number above all: "12" is a whole number until the "3" that follows it comes."""
    for cut in range(1, len(row)):
        parser = AnswerParser()
        rows = parser.feed(HEAD + row[:cut]) + parser.feed(row[cut:] + TAIL) + parser.close()
        assert rows == [json.loads(row)], cut


def test_a_multibyte_character_cut_between_feeds_is_read_whole() -> None:
    body = HEAD + '{"RECORD_ID":"é☃😀"}'.encode() + TAIL
    assert read(body, 1)[0] == [{"RECORD_ID": "é☃😀"}]


def test_a_row_larger_than_many_feeds_comes_out_whole() -> None:
    row = {"RECORD_ID": "1", "blob": "x" * 1_000_000, "n": [1.5] * 1000}
    rows, parser = read(HEAD + json.dumps(row).encode() + TAIL, 64 * 1024)
    assert rows == [row]
    assert parser.rows == 1


def test_rows_come_out_as_soon_as_they_are_complete_not_at_the_end() -> None:
    parser = AnswerParser()
    assert parser.feed(b'{"status":"OK","result":{"total":3,"data":[{"RECORD_ID":"1"},') == [
        {"RECORD_ID": "1"}
    ]
    assert parser.feed(b'{"RECORD_ID":"2"} ,\n{"RECORD') == [{"RECORD_ID": "2"}]
    assert parser.feed(b'_ID":"3"}]}}') == [{"RECORD_ID": "3"}]
    assert parser.close() == []


def test_memory_is_the_same_for_ten_and_forty_thousand_rows() -> None:
    def peak(count: int) -> int:
        rows = (json.dumps({"RECORD_ID": f"0-{n}", "TABLE": "CON_TRO"}) for n in range(count))
        body = b'{"status":"OK","result":{"total":%d,"data":[' % count
        body += ",".join(rows).encode() + TAIL
        parser = AnswerParser()
        tracemalloc.start()
        try:
            for start in range(0, len(body), 64 * 1024):
                parser.feed(body[start : start + 64 * 1024])
            parser.close()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(10_000), peak(40_000)
    assert large < small * 1.5, (small, large)


# --- status ---------------------------------------------------------------------------------


def test_rows_before_the_status_are_held_then_released_together() -> None:
    parser = AnswerParser()
    assert parser.feed(b'{"result":{"total":2,"data":[{"RECORD_ID":"1"},') == []
    assert parser.feed(b'{"RECORD_ID":"2"}]},') == []
    assert parser.rows == 2
    assert parser.feed(b'"status":"ok"}') == [{"RECORD_ID": "1"}, {"RECORD_ID": "2"}]
    assert parser.close() == []


@pytest.mark.parametrize("status", [b'"error"', b"null", b'{"ok":"OK"}', b'["OK"]', b'"OK "'])
def test_rows_of_an_answer_whose_status_is_not_ok_are_never_released(status: bytes) -> None:
    rows = b'"result":{"total":2,"data":[{"RECORD_ID":"1"},{"RECORD_ID":"2"}]}'
    for body in (
        b'{"status":' + status + b"," + rows + b"}",
        b"{" + rows + b',"status":' + status + b"}",
    ):
        released, parser = read(body, 7)
        assert released == []
        assert parser.rows == 2
        assert parser.status != "OK"


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"OK","result":{"total":1,"data":[{"RECORD_ID":"1"}]},"status":"error"}',
        b'{"status":"error","result":{"total":1,"data":[{"RECORD_ID":"1"}]},"status":"OK"}',
        b'{"status":"OK","result":{"total":1,"data":[{"RECORD_ID":"1"}],"total":2}}',
        b'{"status":"OK","result":{"total":1,"data":[]},"result":{"total":0,"data":[]}}',
        b'{"status":"OK","error":{"code":1,"code":2},"result":{"total":0,"data":[]}}',
    ],
)
def test_a_key_the_envelope_gives_twice_makes_the_answer_malformed(body: bytes) -> None:
    """One reading: the status the rows are released by is the one the envelope keeps,
    so an answer that says OK, then error, is neither: it is malformed."""
    for size in (1, 5, len(body)):
        with pytest.raises(Malformed, match="given twice"):
            read(body, size)


def test_an_error_answer_keeps_its_error_in_the_envelope() -> None:
    body = b'{"status":"error","error":{"code":50,"description":"Max calls per second"}}'
    released, parser = read(body, 3)
    assert released == []
    assert parser.envelope == json.loads(body)


def test_data_that_is_not_a_list_is_no_rows_and_stays_in_the_envelope() -> None:
    body = b'{"status":"OK","result":{"total":1,"data":{"RECORD_ID":"1"}}}'
    released, parser = read(body, 4)
    assert (released, parser.rows) == ([], 0)
    assert parser.envelope == json.loads(body)


def test_rows_are_only_the_data_of_the_result() -> None:
    body = b'{"status":"OK","data":[1],"result":{"total":1,"rows":[2],"data":[3],"x":{"data":[4]}}}'
    released, parser = read(body, 1)
    assert released == [3]
    assert parser.envelope == {
        "status": "OK",
        "data": [1],
        "result": {"total": 1, "rows": [2], "data": [], "x": {"data": [4]}},
    }


# --- bodies that are not (complete) JSON ----------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"  ",
        b'{"status":"OK","result":{"total":2,"data":[{"RECORD_ID":"1"},{"RECORD_ID":"2',
        b'{"status":"OK","result":{"total":1,"data":[{"RECORD_ID":"1"}',
        b'{"status":"OK","result":{"total":1,"data":[12',
        b'{"status":"OK","result":{"total":1,"data":[]}',
        b'{"status":"OK","result":{"total":1,"data":[]},"sta',
        b'{"status":"OK","result":{"total":1,"data":["\xc3',
    ],
)
def test_a_body_cut_short_raises_at_close(body: bytes) -> None:
    parser = AnswerParser()
    for start in range(0, len(body), 5):
        parser.feed(body[start : start + 5])
    with pytest.raises(JSONError):
        parser.close()


def test_the_rows_before_the_cut_are_released_before_close_raises() -> None:
    parser = AnswerParser()
    released = parser.feed(b'{"status":"OK","result":{"total":3,"data":[{"RECORD_ID":"1"},{"RE')
    assert released == [{"RECORD_ID": "1"}]
    with pytest.raises(JSONError):
        parser.close()


@pytest.mark.parametrize(
    "bad",
    [
        b'{"RECORD_ID":x}',  # not a value
        b"NaN",  # Python's json reads it; JSON has no NaN
        b"-Infinity",
        b"[1,]",  # a trailing comma
        b'"tab\tinside"',  # a raw control character in a string
        b'"\\q"',  # no such escape
        b"01",
        b"1.x",
        b'{"a" 1}',
        b"\xff",  # not UTF-8
    ],
)
def test_a_malformed_row_fails_at_the_feed_that_brings_it_not_at_close(bad: bytes) -> None:
    """So a broken answer is not held in memory until its end."""
    parser = AnswerParser()
    with pytest.raises(JSONError):
        parser.feed(HEAD + b'{"RECORD_ID":"1"},' + bad + b',{"RECORD_ID":"2"}' + b" " * 100)


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"OK","result":{"total":0,"data":[]}} {}',
        b'{"status":"OK","result":{"total":0,"data":[]}}}',
        b'{"status":"OK","result":{"total":0,"data":[]},}',
        b'{"status":"OK" "result":{"total":0,"data":[]}}',
        b'{"status":"OK","result":{"total":0,"data":[] "x":1}}',
        b'{status:"OK"}',
        b'{"status":"OK","result":{"total":0,"data":[1 2]}}',
    ],
)
def test_a_malformed_frame_is_not_json(body: bytes) -> None:
    with pytest.raises(JSONError):
        read(body, 3)


def test_an_integer_beyond_64_bits_is_read_exactly_as_json_loads_reads_it() -> None:
    """yajl cannot read it as an integer (it refused the whole answer, and every re-read
    of the table with it); read as written, it is an integer like any other."""
    row = b'{"RECORD_ID":123456789012345678901234567890,"n":-98765432109876543210987654321}'
    assert read(HEAD + row + TAIL, 8)[0] == [json.loads(row)]


def test_an_empty_chunk_is_no_end_of_the_body() -> None:
    parser = AnswerParser()
    assert parser.feed(b'{"status":"OK","result":{"total":2,"data":[{"a":1}') == [{"a": 1}]
    assert parser.feed(b"") == []
    assert parser.feed(b',{"a":2}]}}') + parser.close() == [{"a": 2}]


# --- rows that cannot be read right: each is a BadRow with its reason, the rest goes on -----

GOOD = b'{"RECORD_ID":"a"}'


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (b'{"RECORD_ID":"h","\\udc00x":1}', "a lone surrogate (\\udc00)"),
        (b'{"RECORD_ID":"h","\\ud800":1}', "a lone surrogate (\\ud800)"),
        (b'{"RECORD_ID":"h","v":1e999}', "a number beyond a float's range (1E+999)"),
        (b'{"RECORD_ID":"h","v":' + b"1" * 5000 + b"}", "more than 4300 characters"),
        (b'{"RECORD_ID":"h","v":"' + b"x" * 1_100_000 + b'"}', "a string longer than"),
        (b'{"RECORD_ID":"h","v":"' + b"\\\\" * 600_000 + b'"}', "a string longer than"),
        (b'{"RECORD_ID":"h","v":' + b"[" * 20_000 + b"]" * 20_000 + b"}", "nested more than"),
        (b'{"RECORD_ID":"h","v":[' + b'"abc",' * 400_000 + b"0]}", "a row larger than"),
        (b'{"RECORD_ID":"h","RECORD_ID":"h"}', "the key 'RECORD_ID' given twice"),
        (b'{"RECORD_ID":"h","v":"\xed\xb0\x80"}', "a lone surrogate (\\udc00)"),
        (b'{"RECORD_ID":"h","v":"\xff"}', "a string that is not UTF-8"),
    ],
)
def test_a_row_that_cannot_be_read_right_is_a_bad_row_and_the_rest_goes_on(
    row: bytes, reason: str
) -> None:
    body = HEAD.replace(b'"total":1', b'"total":3') + GOOD + b"," + row + b"," + GOOD + TAIL
    for size in (7, 4096, 65536, len(body)):
        parser = AnswerParser()
        rows: list[Any] = []
        for start in range(0, len(body), size):
            rows += parser.feed(body[start : start + size])
        rows += parser.close()
        assert rows[0] == rows[2] == {"RECORD_ID": "a"}, size
        assert isinstance(rows[1], BadRow) and reason in rows[1].reason, (size, rows[1])
        assert rows[1].fields["RECORD_ID"] == "h"  # what the dead letter shows
        assert parser.rows == 3


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"\\ud800OK","result":{"total":0,"data":[]}}',
        b'{"status":"OK","result":{"total":1e999,"data":[]}}',
        b'{"status":"OK","x":' + b"[" * 100 + b"]" * 100 + b',"result":{"total":0,"data":[]}}',
        b'{"status":"OK","x":"' + b"x" * 1_100_000 + b'","result":{"total":0,"data":[]}}',
    ],
)
def test_an_envelope_that_cannot_be_read_right_makes_the_answer_malformed(body: bytes) -> None:
    with pytest.raises(Malformed):
        read(body, 4096)


def test_more_rows_than_a_page_before_the_status_make_the_answer_malformed() -> None:
    """Held rows are bounded: Goose writes its status first."""
    rows = b",".join([GOOD] * 6000)
    with pytest.raises(Malformed, match="before its status"):
        read(b'{"result":{"total":6000,"data":[' + rows + b']},"status":"OK"}', 4096)
