"""Goose answers read as they arrive: pages of bounded size, memory constant in the answer."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from connectors.contract import CHUNK_RECORDS, AmbiguousError, MalformedAnswer, SourcePage
from connectors.goose.answer import AnswerParser, JSONError
from connectors.goose.settings import GooseConnection, GooseSourceSettings
from connectors.goose.source import PAGE_BYTES, GooseSource, classify
from connectors.kit.http import HttpClient
from connectors.kit.settings import RetrySettings
from tests.connectors.test_goose_source import KEY, TINY_RETRY, connection, now


def rows_json(count: int, start: int = 0) -> Iterator[bytes]:
    """A DELETED answer of `count` rows, written piece by piece as a server would."""
    yield b'{"status":"OK","result":{"total":%d,"data":[' % count
    for first in range(start, start + count, 100):
        rows = [
            {"RECORD_ID": f"0-{i}", "TABLE": "CON_TRO", "SYKEY": f"user{i}", "N": 1.5}
            for i in range(first, min(first + 100, start + count))
        ]
        yield (b"," if first > start else b"") + json.dumps(rows).encode()[1:-1]
    yield b"]}}"


class Body(httpx.AsyncByteStream):
    """A response body produced as it is sent, optionally breaking off after `cut` parts."""

    def __init__(self, parts: Iterator[bytes], cut: int | None = None) -> None:
        self.parts = parts
        self.cut = cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for sent, part in enumerate(self.parts):
            if self.cut is not None and sent >= self.cut:
                raise httpx.ReadError("connection reset by peer")
            yield part


def source(body: Any, attempts: int = 1) -> GooseSource:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=body() if callable(body) else body)

    http = HttpClient(
        connection="g",
        retry=RetrySettings.model_validate({**TINY_RETRY, "max_attempts": attempts}).policy(),
        secrets=[KEY],
        classify=classify,
        transport=httpx.MockTransport(answer),
    )
    conn: GooseConnection = connection()
    settings = GooseSourceSettings.model_validate({"tables": ["CON_TRO"], "from": "watermark"})
    return GooseSource("g", conn, settings, http=http)


async def pages_of(src: GooseSource) -> list[SourcePage]:
    call = src.plan("CON_TRO", None, None, now())
    async with aclosing(src.fetch_pages(call)) as pages:
        return [page async for page in pages]


# --- the parser ---------------------------------------------------------------------------


def test_rows_split_anywhere_across_byte_chunks_come_out_whole() -> None:
    body = b"".join(rows_json(30))
    parser = AnswerParser()
    rows: list[Any] = []
    for i in range(len(body)):  # one byte at a time: every row is split somewhere
        rows += parser.feed(body[i : i + 1])
    rows += parser.close()
    assert rows == json.loads(body)["result"]["data"]
    assert parser.envelope == {"status": "OK", "result": {"total": 30, "data": []}}
    assert parser.rows == 30


def test_rows_with_nested_values_and_scalars_are_rows() -> None:
    body = b'{"status":"OK","result":{"data":[{"a":{"b":[1,{"c":2}]}},3,null,[4]],"total":4}}'
    parser = AnswerParser()
    assert parser.feed(body) + parser.close() == [{"a": {"b": [1, {"c": 2}]}}, 3, None, [4]]


def test_rows_before_the_status_wait_for_it_and_an_error_drops_them() -> None:
    held = AnswerParser()
    assert held.feed(b'{"result":{"total":1,"data":[{"RECORD_ID":"1"}]},') == []
    assert held.feed(b'"status":"OK"}') == [{"RECORD_ID": "1"}]
    refused = AnswerParser()
    out = refused.feed(b'{"status":"error","result":{"data":[{"RECORD_ID":"1"}]},"error":{}}')
    assert out + refused.close() == []


def test_a_body_cut_short_is_not_json() -> None:
    parser = AnswerParser()
    parser.feed(b'{"status":"OK","result":{"total":2,"data":[{"RECORD_ID":"1"}')
    with pytest.raises(JSONError):
        parser.close()


# --- pages of the source ----------------------------------------------------------------


async def test_a_large_answer_comes_in_bounded_pages_and_only_the_last_is_whole() -> None:
    count = 2 * CHUNK_RECORDS + 7
    pages = await pages_of(source(lambda: Body(rows_json(count))))
    assert [len(p.records) for p in pages] == [CHUNK_RECORDS, CHUNK_RECORDS, 7]
    assert [p.partial for p in pages] == [True, True, False]
    assert pages[-1].cursor["last_ok_started_at"]
    keys = [r.key for p in pages for r in p.records]
    assert keys == [f"0-{i}" for i in range(count)]


async def test_large_rows_come_in_pages_of_a_bounded_size_in_bytes() -> None:
    """A page holds at most CHUNK_RECORDS rows and about PAGE_BYTES of the answer."""

    def big_rows() -> Iterator[bytes]:
        yield b'{"status":"OK","result":{"total":3000,"data":['
        for i in range(3000):
            row = {"RECORD_ID": f"0-{i}", "NOTE": "x" * 4000}
            yield (b"," if i else b"") + json.dumps(row).encode()
        yield b"]}}"

    pages = await pages_of(source(lambda: Body(big_rows())))
    sizes = [len(p.records) for p in pages]
    assert sum(sizes) == 3000 and len(pages) >= 3, sizes
    assert all(size * 4000 < 2 * PAGE_BYTES for size in sizes), sizes
    assert [r.key for p in pages for r in p.records] == [f"0-{i}" for i in range(3000)]
    assert [p.partial for p in pages] == [True] * (len(pages) - 1) + [False]


async def test_malformed_rows_are_still_rejected_in_a_streamed_answer() -> None:
    rows = [{"RECORD_ID": "1"}, {"NO_ID": 1}, "text", {"RECORD_ID": "2", "TABLE": "OTHER"}]
    body = json.dumps({"status": "OK", "result": {"total": 4, "data": rows}}).encode()
    [page] = await pages_of(source(lambda: Body(iter([body[:17], body[17:40], body[40:]]))))
    assert [r.key for r in page.records] == ["1"]
    assert [r.reason for r in page.rejected] == [
        "a record without RECORD_ID",
        "a row that is not an object (str)",
        "TABLE 'OTHER' is not the table read (CON_TRO)",
    ]


async def test_a_body_broken_mid_stream_is_a_lost_answer_after_the_pages_it_carried() -> None:
    src = source(lambda: Body(rows_json(CHUNK_RECORDS + 1000), cut=(CHUNK_RECORDS + 500) // 100))
    call = src.plan("CON_TRO", None, None, now())
    got: list[SourcePage] = []
    with pytest.raises(AmbiguousError, match="broke off") as info:
        async with aclosing(src.fetch_pages(call)) as pages:
            async for page in pages:
                got.append(page)
    assert [len(p.records) for p in got] == [CHUNK_RECORDS] and got[0].partial
    assert KEY not in str(info.value)


async def test_a_total_that_disagrees_with_the_rows_read_is_a_lost_answer() -> None:
    def short() -> Body:
        parts = list(rows_json(CHUNK_RECORDS + 3))
        parts[0] = b'{"status":"OK","result":{"total":99999,"data":['
        return Body(iter(parts))

    with pytest.raises(AmbiguousError, match="treating it as truncated"):
        await pages_of(source(short))


async def test_an_error_answer_hands_out_no_page() -> None:
    error = {"status": "error", "error": {"code": "120", "description": "Unknown table"}}
    src = source(lambda: Body(iter([json.dumps(error).encode()])))
    call = src.plan("CON_TRO", None, None, now())
    got: list[SourcePage] = []
    with pytest.raises(Exception, match="SQL error"):
        async with aclosing(src.fetch_pages(call)) as pages:
            async for page in pages:
                got.append(page)
    assert got == []


async def test_an_answer_that_says_ok_then_error_is_malformed_and_its_one_page_never_sent() -> None:
    """The row reader and the envelope check read one status: a second one after the rows
    makes the answer malformed, and a page whose answer ended with it is never handed on."""

    def twice() -> Body:
        parts = list(rows_json(CHUNK_RECORDS))
        parts[-1] = b']},"status":"error","error":{"code":"120","description":"x"}}'
        return Body(iter(parts))

    src = source(twice)
    call = src.plan("CON_TRO", None, None, now())
    got: list[SourcePage] = []
    with pytest.raises(MalformedAnswer, match="'status' given twice") as info:
        async with aclosing(src.fetch_pages(call)) as pages:
            async for page in pages:
                got.append(page)
    assert got == []
    assert KEY not in str(info.value)


async def test_the_last_full_page_waits_for_the_end_of_the_answer() -> None:
    """An answer of one page is read whole, and its envelope checked, before it is sent."""
    ended: list[bool] = []

    def parts() -> Iterator[bytes]:
        yield from rows_json(CHUNK_RECORDS)
        ended.append(True)

    src = source(lambda: Body(parts()))
    call = src.plan("CON_TRO", None, None, now())
    got: list[tuple[int, bool, bool]] = []
    async with aclosing(src.fetch_pages(call)) as pages:
        async for page in pages:
            got.append((len(page.records), page.partial, bool(ended)))
    assert got == [(CHUNK_RECORDS, True, True), (0, False, True)]


async def test_hostile_rows_are_rejected_with_their_reason_and_the_table_goes_on() -> None:
    rows = [
        b'{"RECORD_ID":"1"}',
        b'{"RECORD_ID":"2","\\udc00x":1}',
        b'{"RECORD_ID":"3","\\ud800":"k"}',
        b'{"RECORD_ID":"4","N":1e999}',
        b'{"RECORD_ID":"5","N":' + b"9" * 5000 + b"}",
        b'{"RECORD_ID":"6","N":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"RECORD_ID":"7","N":123456789012345678901234567890}',
    ]
    body = b'{"status":"OK","result":{"total":7,"data":[' + b",".join(rows) + b"]}}"
    [page] = await pages_of(source(lambda: Body(iter([body[:30], body[30:5000], body[5000:]]))))
    assert [r.key for r in page.records] == ["1", "7"]
    assert page.records[1].fields["N"] == 123456789012345678901234567890
    assert [(r.fields["RECORD_ID"], r.reason) for r in page.rejected] == [
        ("2", "a lone surrogate (\\udc00) in a string"),
        ("3", "a lone surrogate (\\ud800) in a string"),
        ("4", "a number beyond a float's range (1E+999)"),
        ("5", "a number written with more than 4300 characters"),
        ("6", "values nested more than 64 levels deep"),
    ]
    assert page.cursor["last_ok_started_at"]  # the table's cursor moves on


# --- memory -------------------------------------------------------------------------------


async def peak_reading(count: int) -> int:
    """Peak traced memory while reading an answer of `count` rows page by page; the
    server side writes its body lazily, so what is traced is the reading."""
    src = source(lambda: Body(rows_json(count)))
    call = src.plan("CON_TRO", None, None, now())
    seen = 0
    tracemalloc.start()
    try:
        async with aclosing(src.fetch_pages(call)) as pages:
            async for page in pages:
                seen += len(page.records)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == count
    return peak


async def test_memory_is_constant_in_the_size_of_the_answer() -> None:
    small = await peak_reading(10_000)
    large = await peak_reading(40_000)
    # Four times the rows: a reader that held them all would peak near 4x (hundreds of MB).
    assert large < small * 1.5, (small, large)
    assert large < 64 * 1024 * 1024, large
