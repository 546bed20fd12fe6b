"""The shared client's one authentication loop and its error tables."""

from __future__ import annotations

import importlib
import math
from typing import Annotated

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from connectors.contract import FatalError, RemoteError
from connectors.kit.http import (
    Action,
    ErrorRule,
    StaticAuth,
    json_object,
    resolve,
)
from connectors.kit.settings import ConnectionBase, HttpUrl, KeyTemplateText, StrictModel, http_url
from connectors.kit.token_cache import CachedToken, TokenAuth, fetch_token
from tests.unit.test_http import Script, client


def fatal(what: str) -> FatalError:
    return FatalError(f"conn: credentials rejected ({what}); check connections.conn.password")


class Tokens:
    """A token endpoint that hands out tok1, tok2, ..."""

    def __init__(self) -> None:
        self.fetched = 0

    async def fetch(self) -> tuple[str, float]:
        self.fetched += 1
        return f"tok{self.fetched}", math.inf


async def test_a_401_renews_the_token_once_and_resends() -> None:
    script = Script(httpx.Response(401), httpx.Response(200, json={"ok": True}))
    tokens = Tokens()
    auth = TokenAuth(CachedToken(tokens.fetch, 60), fatal)
    response = await client(script).call("GET", "/data", idempotent=True, auth=auth)
    assert response.status_code == 200
    sent = [r.headers["Authorization"] for r in script.requests]
    assert sent == ["Bearer tok1", "Bearer tok2"]


async def test_a_second_401_is_fatal_and_names_the_setting() -> None:
    script = Script(httpx.Response(401), httpx.Response(401))
    tokens = Tokens()
    auth = TokenAuth(CachedToken(tokens.fetch, 60), fatal, scheme="")
    with pytest.raises(FatalError) as info:
        await client(script).call("GET", "/data?k=1", idempotent=True, auth=auth)
    assert str(info.value) == (
        "conn: credentials rejected (HTTP 401 from GET /data even with a fresh token); "
        "check connections.conn.password"
    )
    assert [r.headers["Authorization"] for r in script.requests] == ["tok1", "tok2"]
    assert tokens.fetched == 2


async def test_a_static_credential_is_fatal_at_the_first_401() -> None:
    script = Script(httpx.Response(401))
    auth = StaticAuth({"X-Key": "k"}, fatal)
    with pytest.raises(FatalError, match=r"\(HTTP 401 from GET /data\)"):
        await client(script).call("GET", "/data", idempotent=True, auth=auth)
    assert len(script.requests) == 1


async def test_only_a_body_the_table_names_renews() -> None:
    """A connector may renew only on its own "token expired" body; another 401 is fatal."""
    expired = ErrorRule(401, Action.RENEW, when=lambda r: "invalid_token" in r.text)
    other = ErrorRule(401, Action.FATAL, "{name}: HTTP 401 from {what}: {detail}; check x")
    script = Script(
        httpx.Response(401, json={"error": "invalid_token"}),
        httpx.Response(401, text="no access"),
    )
    auth = TokenAuth(CachedToken(Tokens().fetch, 60), fatal)
    with pytest.raises(FatalError) as info:
        await client(script).call(
            "POST", "/d", idempotent=False, auth=auth, errors=(expired, other)
        )
    assert str(info.value) == "conn: HTTP 401 from POST /d: no access; check x"


async def test_remote_rows_carry_the_status_and_the_vendor_detail() -> None:
    table = (ErrorRule(404, Action.REMOTE, "{name}: {what}: {detail}"),)
    script = Script(httpx.Response(404, json={"message": "gone"}))
    with pytest.raises(RemoteError) as info:
        await client(script).call(
            "GET",
            "/o",
            idempotent=True,
            auth=StaticAuth({}, fatal),
            errors=table,
            detail=lambda r: str((json_object(r) or {}).get("message")),
        )
    assert str(info.value) == "conn: GET /o: gone" and info.value.code == "404"


async def test_an_answer_no_row_names_is_returned() -> None:
    script = Script(httpx.Response(409, json={}))
    response = await client(script).call(
        "GET", "/o", idempotent=True, auth=StaticAuth({}, fatal), errors=()
    )
    assert response.status_code == 409


def test_the_first_matching_row_wins() -> None:
    narrow = ErrorRule(404, Action.REMOTE, when=lambda r: r.text == "known")
    broad = ErrorRule(404, Action.FATAL)
    table = (narrow, broad)
    assert resolve(table, httpx.Response(404, text="known")) is narrow
    assert resolve(table, httpx.Response(404, text="")) is broad
    assert resolve(table, httpx.Response(200)) is None


def test_json_object_is_none_for_anything_but_an_object() -> None:
    assert json_object(httpx.Response(200, json={"a": 1})) == {"a": 1}
    assert json_object(httpx.Response(200, json=[1])) is None
    assert json_object(httpx.Response(200, text="<html>")) is None
    assert json_object(httpx.Response(200, content=b"\xff\xfe{")) is None


# --- settings types ------------------------------------------------------------------


class _Conn(ConnectionBase):
    url: str
    password: SecretStr
    token: SecretStr | None = None
    note: str = "not secret"
    empty: SecretStr = SecretStr("")


def test_secret_values_are_found_by_type_in_declaration_order() -> None:
    conn = _Conn(type="x", url="http://h", password=SecretStr("pw-123456"), token=SecretStr("t"))
    assert conn.secret_values() == ["pw-123456", "t"]


def test_no_connection_echoes_its_input_in_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        _Conn.model_validate({"type": "x", "url": "h", "password": 5, "pasword": "hunter22"})
    assert "hunter22" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "query", "problem"),
    [
        ("ftp://h/x", True, "is not an http(s) URL; write e.g. https://e"),
        ("h/x", True, "is not an http(s) URL"),
        ("http://h x/", True, "is not an http(s) URL"),
        ("https://h/x?a=1", False, "takes no query string"),
    ],
)
def test_http_url_refuses(value: str, query: bool, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        http_url(value, "https://e", query=query)


def test_http_url_drops_the_trailing_slash() -> None:
    assert http_url(" https://H:8/a/ ", "e") == "https://H:8/a"


def test_a_key_template_that_does_not_parse_is_refused_at_load() -> None:
    class _Settings(StrictModel):
        key: KeyTemplateText

    assert _Settings(key="{id}").key == "{id}"
    with pytest.raises(ValidationError):
        _Settings(key="{id")


@pytest.mark.parametrize(
    "connection",
    [
        "connectors.adt.settings:AdtConnection",
        "connectors.dmm.settings:DmmConnection",
        "connectors.goose.settings:GooseConnection",
        "connectors.mongoose.settings:MongooseConnection",
        "connectors.reltio.settings:ReltioConnection",
    ],
)
def test_every_connection_hides_its_input_in_errors(connection: str) -> None:
    module, _, name = connection.partition(":")
    model = getattr(importlib.import_module(module), name)
    with pytest.raises(ValidationError) as info:
        model.model_validate({"pasword": "hunter2-secret", "password": ["hunter3-secret"]})
    assert "hunter2-secret" not in str(info.value)
    assert "hunter3-secret" not in str(info.value)


async def test_a_token_endpoint_refusal_is_fatal_with_its_oauth_error() -> None:
    script = Script(httpx.Response(400, json={"error": "invalid_grant"}))
    with pytest.raises(FatalError) as info:
        await fetch_token(client(script), "http://127.0.0.1:1/oauth/token?x=1", {"a": "b"}, fatal)
    assert "(HTTP 400 invalid_grant from POST /oauth/token)" in str(info.value)
    assert script.requests[0].content == b"a=b"


async def test_a_token_answer_without_a_token_is_a_remote_error() -> None:
    script = Script(httpx.Response(200, json={"token_type": "bearer"}))
    with pytest.raises(RemoteError, match="HTTP 200, no access_token"):
        await fetch_token(client(script), "/token", {}, fatal)


async def test_fetched_tokens_become_secrets_of_the_client() -> None:
    answer = {"access_token": "acc-123456", "refresh_token": "ref-123456", "expires_in": "60"}
    c = client(Script(httpx.Response(200, json=answer)))
    assert await fetch_token(c, "/token", {}, fatal) == ("acc-123456", 60.0)
    assert {"acc-123456", "ref-123456"} <= set(c.secrets)


def test_a_connection_client_knows_every_secret_of_the_connection() -> None:
    conn = _Conn(type="x", url="http://h", password=SecretStr("pw-123456"))
    http = conn.http_client("c", secrets=["runtime-tok"])
    assert http.secrets == ["pw-123456", "runtime-tok"]


def test_an_http_url_setting_shows_its_own_example() -> None:
    class _Settings(StrictModel):
        url: Annotated[str, HttpUrl("https://host/api", query=False)]
        other: Annotated[str, HttpUrl("https://other")] | None = None

    assert _Settings(url="https://h/api/").url == "https://h/api"
    with pytest.raises(ValidationError, match=r"write e\.g\. https://host/api"):
        _Settings(url="h/api")
    with pytest.raises(ValidationError, match="takes no query string"):
        _Settings(url="https://h/api?x=1")
    with pytest.raises(ValidationError, match=r"write e\.g\. https://other"):
        _Settings(url="https://h", other="ftp://o")
