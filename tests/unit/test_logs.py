"""Redaction: by key name and by value, in events, nested data and tracebacks."""

from __future__ import annotations

import base64
import io
import json
import logging

import structlog

from syncengine.logs import SECRETS, configure, get_logger


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_redacts_by_key_name_and_by_value() -> None:
    SECRETS.add("value-only-secret-42")
    stream = io.StringIO()
    configure("debug", "json", stream)
    log = get_logger()
    log.info(
        "request",
        password="pw-by-name",
        body={"code": "DEV001", "key": "nested-key-by-name", "table": "CON_TRO"},
        note="the token is value-only-secret-42",
    )
    out = stream.getvalue()
    assert "pw-by-name" not in out
    assert "nested-key-by-name" not in out
    assert "value-only-secret-42" not in out
    event = lines(stream)[0]
    assert event["body"] == {"code": "DEV001", "key": "***", "table": "CON_TRO"}


def test_tracebacks_are_scrubbed_and_have_no_locals() -> None:
    SECRETS.add("traceback-secret-77")
    stream = io.StringIO()
    configure("debug", "json", stream)
    log = get_logger()
    try:
        local_password = "traceback-secret-77"
        raise RuntimeError(f"failed with {local_password}")
    except RuntimeError:
        log.exception("boom")
    out = stream.getvalue()
    assert "traceback-secret-77" not in out
    assert "local_password" not in out


def test_stdlib_logging_goes_through_redaction_and_httpx_is_quiet() -> None:
    SECRETS.add("stdlib-secret-99")
    stream = io.StringIO()
    configure("debug", "json", stream)
    logging.getLogger("somelib").warning("leaking stdlib-secret-99")
    logging.getLogger("httpx").info("HTTP Request: POST http://x/?key=stdlib-secret-99")
    out = stream.getvalue()
    assert "stdlib-secret-99" not in out
    assert "HTTP Request" not in out
    structlog.reset_defaults()


def test_a_secret_echoed_json_escaped_url_encoded_or_in_base64_is_redacted() -> None:
    """A server echoing a key in its error body rarely echoes it as it was sent."""
    SECRETS.add("clé-du-service-31")
    stream = io.StringIO()
    configure("debug", "json", stream)
    get_logger().warning(
        "source_error",
        error='HTTP 500: {"error": "bad key cl\\u00e9-du-service-31"}',
        url="POST /deleted/?key=cl%C3%A9-du-service-31",
        header="Basic " + base64.b64encode("DEV001:clé-du-service-31".encode()).decode(),
    )
    out = stream.getvalue()
    event = lines(stream)[0]
    assert event["error"] == 'HTTP 500: {"error": "bad key ***"}'
    assert event["url"] == "POST /deleted/?key=***"
    assert "clé" not in out and "cl\\\\u00e9" not in out
    assert str(event["header"]).startswith("Basic REVWMDAxOm")  # "DEV001:" then the secret
    assert "***" in str(event["header"])
    structlog.reset_defaults()
