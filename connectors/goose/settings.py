"""Settings of a Goose connection, of a pipeline reading its DELETED service and of a
target deleting through its OPERATION service."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors.contract import ServerCursor
from connectors.kit.keys import KeyTemplate
from connectors.kit.settings import (
    ConnectionBase,
    HttpUrl,
    KeyTemplateText,
    Seconds,
    StrictModel,
    check_connection,
)

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
DOCUMENTED_CALLS_PER_SECOND = 5.0
"""Goose's error 50 reads "Limit API calls exceeded: max 5 per second"."""

_TABLE = re.compile(r"^[A-Za-z0-9_]{1,7}$")
_LAST_SEGMENT_DELETED = re.compile(r"(^|/)deleted(/?)$")


def record_name(code: str, table: str, record_id: str) -> str:
    """A Goose record's name across the engine: what the source gives as a record's
    `origin` and the target as a deletion's `effect`. One function writes both, so
    the engine can recognise a deletion it caused itself when the source reads it."""
    return f"goose:{code}:{table}:{record_id}"


def _check_table(table: str) -> str:
    if not _TABLE.match(table):
        raise ValueError(
            f"table {table!r}: Goose table names are 1 to 7 letters, digits or underscores"
        )
    return table


def parse_goose_time(text: str) -> datetime:
    """A naive "yyyy-mm-dd hh:mm:ss", as Goose writes and reads timestamps."""
    return datetime.strptime(text, TIMESTAMP_FORMAT)


def operation_url_for(deleted_url: str) -> str | None:
    """The OPERATION service next to a DELETED url, or None when the url does not
    end in a `deleted` segment and so gives no safe guess."""
    return service_url_for(deleted_url, "operation")


def service_url_for(deleted_url: str, service: str) -> str | None:
    """Another Goose service (operation, structure) next to a DELETED url, or None when
    the url does not end in a `deleted` segment and so gives no safe guess."""
    parts = urlsplit(deleted_url)
    if not _LAST_SEGMENT_DELETED.search(parts.path):
        return None
    path = _LAST_SEGMENT_DELETED.sub(rf"\1{service}\2", parts.path)
    return urlunsplit(parts._replace(path=path))


GooseUrl = Annotated[str, HttpUrl("https://api.gooseapp.com/deleted/", slash=True)]
"""Goose services are called at exactly the URL written, trailing slash included."""


class GooseConnection(ConnectionBase):
    """Goose authenticates by company code and API key, both sent in the JSON body.

    Without `calls_per_second` the client keeps to Goose's documented
    5 calls per second (the source passes it as the default).
    """

    type: Literal["goose"]
    url: GooseUrl = Field(description="the DELETED service, e.g. https://api.gooseapp.com/deleted/")
    code: str = Field(min_length=1, max_length=6, description="company code")
    key: SecretStr = Field(min_length=1, max_length=200, description="API key, sent in the body")
    timezone: str = Field("UTC", description="the zone Goose reads `from` timestamps in")
    operation_url: GooseUrl | None = Field(
        None,
        description="the OPERATION service (kept for a Goose target); "
        "by default the url with its last segment `deleted` replaced by `operation`",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_operation_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("operation_url"):
            url = data.get("url")
            if isinstance(url, str):
                return {**data, "operation_url": operation_url_for(url)}
        return data

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Europe/Rome or UTC"
            ) from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class GooseSourceSettings(StrictModel):
    """The `source:` block of a pipeline reading Goose deletions.

    `from` is a Python keyword, so the mode is the field `mode` with the alias
    `from`, the name the Goose documentation and the YAML use.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tables: list[str] = Field(min_length=1, description="one stream per table")
    mode: Literal["latest", "watermark"] = Field(
        "latest",
        alias="from",
        description="latest: Goose's own cursor; watermark: a timestamp cursor kept by the engine",
    )
    imc: bool = Field(False, description="include deletions made with this connection's key")
    start: str | None = Field(
        None, description='first timestamp read, "yyyy-mm-dd hh:mm:ss" in the connection zone'
    )
    overlap: Seconds = Field(120.0, ge=0, description="re-read margin for timestamp reads")
    max_calls_per_run: int = Field(
        10, ge=1, le=1000, description="bound on calls per stream in one run"
    )

    @field_validator("tables")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        for table in value:
            _check_table(table)
        if len(set(value)) != len(value):
            twice = sorted({t for t in value if value.count(t) > 1})
            raise ValueError(f"tables listed more than once: {', '.join(twice)}")
        return value

    @field_validator("start")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_goose_time(value)
            except ValueError:
                raise ValueError(f'start {value!r}: write "yyyy-mm-dd hh:mm:ss"') from None
        return value

    def server_cursors(self, connection: GooseConnection) -> list[ServerCursor]:
        """With `from: latest`, Goose's own cursor per service, company, key and table
        (apis.md section 5; the emulator keeps it per code, key and table)."""
        if self.mode != "latest":
            return []
        parts = urlsplit(connection.url)
        service = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
        key = hashlib.sha256(connection.key.get_secret_value().encode()).hexdigest()
        return [
            ServerCursor(
                identity=("goose", service, connection.code, key, table),
                description=f"Goose's `latest` cursor of table {table} for company "
                f"{connection.code} and its key at {connection.url}",
                instead="read by timestamp with `from: watermark`",
            )
            for table in self.tables
        ]


def operation_url_problem(connection: GooseConnection, name: str | None = None) -> str | None:
    """Why a Goose target cannot run on `connection`, or None when it can.

    Without an OPERATION url there is nowhere safe to send deletions: a guess
    from a DELETED url that does not end in `deleted` could post them anywhere.
    """
    if connection.operation_url is not None:
        return None
    where = f"connections.{name}" if name else "the connection"
    return (
        f"{where}.operation_url is not set and cannot be derived from {where}.url "
        f"({connection.url!r} does not end in a `deleted` segment); set {where}.operation_url "
        "to the OPERATION service, e.g. https://api.gooseapp.com/operation/"
    )


class GooseTargetSettings(StrictModel):
    """The target block of a pipeline deleting Goose records through OPERATION.

    `id` renders each deletion's fields into the RECORD_ID to delete. The
    connection's `operation_url` is checked here when the config loader passes
    the connection as context, so a missing one fails `syncengine check`, not a run.
    """

    table: str = Field(description="the Goose table records are deleted from, e.g. CON_TRO")
    id: KeyTemplateText = Field(description="key template giving the RECORD_ID, e.g. '{RECORD_ID}'")
    batch_size: int = Field(20, ge=1, le=500, description="deliveries per send (one call each)")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return _check_table(value)

    @model_validator(mode="after")
    def _operation_url_known(self, info: ValidationInfo) -> GooseTargetSettings:
        check_connection(info, GooseConnection, operation_url_problem)
        return self

    def key_template(self) -> KeyTemplate:
        return KeyTemplate(self.id)
