"""DMM log zips and Reltio tasks handed over in bounded pages, read as they are needed."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import connectors.dmm.source as dmm_source
import connectors.reltio.source as reltio_source
from connectors.contract import (
    FatalError,
    RemoteError,
    RetriableError,
    SourcePage,
    StreamingSource,
)
from connectors.dmm.logs import format_deleted, format_failed, log_zip_lines
from connectors.kit.http import HttpClient, RetryPolicy
from connectors.kit.spooled_json import LIMIT, SpoolingParser, base64_to_file, text_chunks
from connectors.reltio import ReltioSourceSettings, ReltioTaskSource
from connectors.reltio.emulator import DELETE_TASK_TYPE
from tests.connectors.test_dmm_source import Handler, api, b64, log_zip, scripted
from tests.connectors.test_dmm_target import TOKEN
from tests.connectors.test_reltio_target import connection as reltio_connection

PAGE = 2
AT = datetime(2026, 11, 29, 10, 0, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dmm_source, "CHUNK_RECORDS", PAGE)
    monkeypatch.setattr(reltio_source, "CHUNK_RECORDS", PAGE)


def deleted(key: str, entity: str = "Customer") -> str:
    return format_deleted(AT, entity, "ExternalId", key)


def keys(page: SourcePage) -> list[str]:
    return [r.key.rsplit("=", 1)[-1] for r in page.records]


async def pages_of(source: StreamingSource, stream: str) -> list[SourcePage]:
    call = source.plan(stream, None, None, NOW)  # type: ignore[attr-defined]
    async with aclosing(source.fetch_pages(call)) as pages:
        return [page async for page in pages]


# --- DMM: the log zip -----------------------------------------------------------------


async def test_a_long_outputs_log_comes_in_pages_with_the_cursor_last(small_pages: None) -> None:
    first = [deleted("a"), deleted("b"), format_failed(AT, "Customer", "ExternalId", "x", "no")]
    second = [deleted("c"), deleted("d"), deleted("e")]
    outputs = {"Logs": log_zip(first, second), "Report": {"NRecords": 5}}
    source = scripted(api(outputs=outputs))
    try:
        assert isinstance(source, StreamingSource)
        pages = await pages_of(source, "execution-5")
    finally:
        await source.aclose()
    assert [keys(p) for p in pages] == [["a", "b"], ["c", "d"], ["e"]]
    assert [p.partial for p in pages] == [True, True, False]
    assert all(p.cursor == {} for p in pages[:-1])
    assert pages[-1].cursor == {"finished": True, "status": "Complete", "deleted": 5, "failed": 1}


async def test_a_record_named_again_in_a_later_page_is_reported_again(small_pages: None) -> None:
    """Within a page a repeated record is reported once; past a page boundary the
    source no longer remembers it, and the journal keeps it once (tests/unit)."""
    outputs = {"Logs": log_zip([deleted("a"), deleted("a"), deleted("b"), deleted("a")])}
    source = scripted(api(outputs=outputs))
    try:
        pages = await pages_of(source, "execution-5")
    finally:
        await source.aclose()
    assert [keys(p) for p in pages] == [["a", "b"], ["a"]]


async def test_a_zip_that_breaks_late_yields_no_page_at_all(small_pages: None) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("1.log", "".join(deleted(k) + "\n" for k in "abcde"))
        archive.writestr("2.log", deleted("f") + "\n")
    data = bytearray(buffer.getvalue())
    damaged = data.rindex(b"Deleted record")  # in the last member: its CRC no longer holds
    data[damaged] ^= 0x01
    source = scripted(api(outputs={"Logs": b64(bytes(data))}))
    got: list[SourcePage] = []
    try:
        with pytest.raises(RemoteError, match="cannot read its log: the outputs' Logs: log file"):
            call = source.plan("execution-5", None, None, NOW)
            async with aclosing(source.fetch_pages(call)) as pages:
                async for page in pages:
                    got.append(page)
    finally:
        await source.aclose()
    assert got == [], "a page of a log that cannot be read whole would journal unproven records"


async def test_the_outputs_answer_keeps_its_logs_out_of_memory() -> None:
    """The Logs string goes to a temporary file as the answer arrives, byte by byte."""
    logs = log_zip([deleted(str(n)) for n in range(3000)])
    body = json.dumps({"Success": True, "Logs": logs, "ErrorMessage": ""}).encode()
    parser = SpoolingParser(limit=1024)
    for i in range(0, len(body), 7):
        parser.feed(body[i : i + 7])
    answer = parser.close()
    try:
        assert answer["Success"] is True and answer["ErrorMessage"] == ""
        assert not isinstance(answer["Logs"], str)
        out = io.BytesIO()
        base64_to_file(text_chunks(answer["Logs"]), out)
        assert b64(out.getvalue()) == logs
    finally:
        parser.discard()


async def test_an_error_report_too_long_to_keep_is_still_counted() -> None:
    entries = [{"FinalReportEntity": "Customer", "Count": 1, "Pad": "x" * 60}] * 2000
    report = b64(json.dumps(entries).encode())
    assert len(report) > LIMIT, "spooled, not kept"
    outputs = {"Logs": log_zip([deleted("a")]), "ErrorReport": report}
    source = scripted(api(outputs=outputs))
    try:
        page = await source.fetch(source.plan("execution-5", None, None, NOW))
    finally:
        await source.aclose()
    assert page.cursor == {"finished": True, "status": "Complete", "deleted": 1, "failed": 2000}


def refusing(response: httpx.Response) -> Handler:
    """DMM whose execution 5 is Complete but whose GetExecutionOutputs answers `response`."""
    status = api()

    def handle(operation: str, body: dict[str, Any]) -> httpx.Response:
        return status(operation, body) if operation == "GetExecutionStatus" else response

    return handle


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (httpx.Response(401, text="no"), FatalError, "HTTP 401 from POST /GetExecutionOutputs"),
        (httpx.Response(404, text="<html>"), FatalError, "connections.dmm.paths.outputs"),
        (
            httpx.Response(400, json={"Success": False, "ErrorMessage": "purged"}),
            RemoteError,
            "dmm: POST /GetExecutionOutputs: purged",
        ),
        (httpx.Response(400, text="bad gateway"), RemoteError, "HTTP 400: bad gateway"),
        (httpx.Response(200, text="<html>"), RemoteError, "an answer that is not a JSON object"),
        (httpx.Response(200, json=[1]), RemoteError, "an answer that is not a JSON object"),
        (httpx.Response(503, text="down"), RetriableError, "HTTP 503"),
    ],
)
async def test_a_refused_outputs_answer_is_judged_as_any_dmm_answer(
    response: httpx.Response, error: type[Exception], message: str
) -> None:
    source = scripted(refusing(response))
    try:
        with pytest.raises(error) as info:
            await source.fetch(source.plan("execution-5", None, None, NOW))
    finally:
        await source.aclose()
    assert message in str(info.value)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    "pieces",
    [["QU", "JD="], ["QQ==", "QUJD"], ["QU*", "D"], ["QUJ\u00e9"]],
    ids=["length", "after-padding", "alphabet", "non-ascii"],
)
def test_base64_in_pieces_refuses_what_is_not_base64(pieces: list[str]) -> None:
    with pytest.raises(ValueError, match="not base64"):
        base64_to_file(pieces, io.BytesIO())


class Reads(io.RawIOBase):
    """A seekable file that remembers how far into it anything was read."""

    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)
        self.furthest = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: Any) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        self.furthest = max(self.furthest, self._file.tell())
        return len(data)


def test_log_lines_are_unpacked_as_they_are_asked_for() -> None:
    lines = [deleted(f"k{n:06d}") for n in range(20000)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("1.log", "".join(line + "\n" for line in lines))
    data = buffer.getvalue()
    file = Reads(data)
    archive = zipfile.ZipFile(file)  # reads the directory, at the end of the file
    entries = archive.infolist()
    file.furthest = 0
    read = log_zip_lines(archive, entries)
    assert next(read) == ("1.log", lines[0])
    assert 0 < file.furthest < len(data) // 4, "the first line came before the rest was read"
    assert [line for _, line in read] == lines[1:]
    assert file.furthest >= entries[0].header_offset + entries[0].compress_size


# --- Reltio: a task naming many entities ----------------------------------------------


class Tenant:
    """A tenant whose task t1 asked for `uris`; each entity read back is counted."""

    def __init__(self, uris: list[str], status: str = "COMPLETED", unreadable: str = "") -> None:
        self.uris = uris
        self.status = status
        self.unreadable = unreadable
        self.read_back: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "tok-5e1f", "expires_in": 3600})
        path = request.url.path.removeprefix("/reltio/api/T")
        if path == "/tasks/t1":
            state = {"objectsFailedToDeleteCount": 5, "objectsFailedToDelete": []}
            return httpx.Response(200, json=self.task(state))
        entity = path.removeprefix("/")
        self.read_back.append(entity)
        if entity == self.unreadable:
            return httpx.Response(400, json={"errorMessage": "Boom", "errorCode": 119})
        return httpx.Response(404, json={"errorMessage": "gone", "errorCode": 101})

    def task(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "t1",
            "type": DELETE_TASK_TYPE,
            "status": self.status,
            "parameters": {"entityUriList": self.uris},
            "currentState": state,
        }


def tenant_source(tenant: Tenant) -> ReltioTaskSource:
    conn = reltio_connection("http://reltio.test", tenant_url="http://reltio.test/reltio/api/T")
    http = HttpClient(
        connection="mdm",
        base_url=conn.tenant_url,
        retry=RetryPolicy(max_attempts=1),
        transport=httpx.MockTransport(tenant),
    )
    return ReltioTaskSource("mdm", conn, ReltioSourceSettings(tasks=["t1"]), http=http)


async def test_a_task_is_read_back_a_page_at_a_time(small_pages: None) -> None:
    """Its first page is handed over before the later entities are even read back."""
    uris = [f"entities/e{n}" for n in range(5)]
    tenant = Tenant(uris)
    source = tenant_source(tenant)
    seen_when: list[int] = []
    pages: list[SourcePage] = []
    try:
        call = source.plan("task-t1", None, None, NOW)
        stream: AsyncGenerator[SourcePage, None] = source.fetch_pages(call)
        async with aclosing(stream) as each:
            async for page in each:
                seen_when.append(len(tenant.read_back))
                pages.append(page)
    finally:
        await source.aclose()
    assert [[r.key for r in p.records] for p in pages] == [uris[0:2], uris[2:4], uris[4:]]
    assert seen_when == [2, 4, 5], "each page was handed over as soon as it was read back"
    assert pages[-1].cursor == {"finished": True, "status": "COMPLETED", "deleted": 5, "failed": 0}


async def test_an_unreadable_entity_stops_the_read_after_the_pages_before_it(
    small_pages: None,
) -> None:
    uris = [f"entities/e{n}" for n in range(5)]
    source = tenant_source(Tenant(uris, unreadable="entities/e3"))
    pages: list[SourcePage] = []
    try:
        call = source.plan("task-t1", None, None, NOW)
        with pytest.raises(RetriableError, match="nothing more reported"):
            async with aclosing(source.fetch_pages(call)) as each:
                async for page in each:
                    pages.append(page)
    finally:
        await source.aclose()
    assert [[r.key for r in p.records] for p in pages] == [uris[0:2]]
    assert all(p.partial for p in pages), "the cursor never moved"
