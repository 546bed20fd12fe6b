"""A secret a server echoes back in another form (JSON-escaped, URL-encoded, base64) is
scrubbed everywhere text leaves the process: the run summary, the JSON log, `status`
and the database."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from connectors.kit.serving import RunningServer, free_port, serve

KEY = "chiave-segretà-2024"
"""A Goose key with a non-ASCII letter: JSON with ensure_ascii writes it `segret\\u00e0`."""
CODE = "DEV001"


def json_escaped(key: str) -> str:
    return json.dumps({"description": f"Key not authorized: {key}"})


def url_encoded(key: str) -> str:
    return f"rejected request: code={CODE}&key={quote(key)}&table=CON_TRO"


def basic_auth(key: str) -> str:
    token = base64.b64encode(f"{CODE}:{key}".encode()).decode()
    return f"upstream said: Authorization: Basic {token} is not allowed"


ECHOES: dict[str, tuple[int, Callable[[str], str]]] = {
    "json-escaped": (500, json_escaped),
    "url-encoded": (400, url_encoded),
    "base64-inside-basic-auth": (400, basic_auth),
}


def echo_app(status: int, render: Callable[[str], str]) -> Starlette:
    """A Goose DELETED service that answers every call with an error quoting the key."""

    async def deleted(request: Request) -> Response:
        body = await request.json()
        return Response(render(str(body["key"])), status_code=status, media_type="text/plain")

    return Starlette(routes=[Route("/deleted/", deleted, methods=["POST"])])


@pytest.fixture(params=list(ECHOES))
def echo(request: pytest.FixtureRequest) -> Iterator[tuple[RunningServer, str]]:
    status, render = ECHOES[request.param]
    with serve(echo_app(status, render), port=free_port()) as server:
        yield server, render(KEY)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncengine", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TEST_GOOSE_KEY": KEY},
        timeout=120,
        check=False,
    )


def test_an_echoed_secret_is_scrubbed_in_every_form(
    tmp_path: Path, echo: tuple[RunningServer, str]
) -> None:
    server, echoed = echo
    config = tmp_path / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            state: {{url: "sqlite:///{tmp_path / "state.db"}"}}
            logging: {{level: debug, format: json}}
            connections:
              goose:
                type: goose
                url: "{server.url}/deleted/"
                code: {CODE}
                key: "${{TEST_GOOSE_KEY}}"
                retry: {{max_attempts: 1}}
            pipelines:
              contacts:
                schedule: {{every: 1h}}
                source: {{connection: goose, tables: [CON_TRO], from: latest}}
                targets:
                  back: {{connection: goose, table: CON_TRO, id: "{{RECORD_ID}}"}}
            """
        )
    )
    run = cli("run", "--once", "-c", str(config))
    status = cli("status", "-c", str(config), "-o", "json")
    assert run.returncode == 1, run.stderr
    assert "contacts" in run.stdout and "CON_TRO" in run.stdout, "the run summary names the error"
    assert status.returncode == 0, status.stderr
    with sqlite3.connect(tmp_path / "state.db") as db:
        stored = [row[0] for row in db.execute("SELECT last_error FROM cursor")]
        stored += [row[0] for row in db.execute("SELECT error FROM run")]
    assert any("***" in text for text in stored), stored
    files = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))

    forms = {
        KEY,
        json.dumps(KEY)[1:-1],
        quote(KEY),
        base64.b64encode(f"{CODE}:{KEY}".encode()).decode(),
    }
    texts = {
        "run summary": run.stdout,
        "JSON log": run.stderr,
        "status": status.stdout + status.stderr,
        "cursor.last_error and run.error": "\n".join(stored),
    }
    for form in forms:
        for where, text in texts.items():
            assert form not in text, f"{form!r} in the {where}: {text}"
        assert form.encode() not in files, f"{form!r} in the state files"
    assert echoed not in run.stdout + run.stderr
