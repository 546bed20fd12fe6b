"""Settings of a Goose connection and of a pipeline reading its DELETED service."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, SecretStr, field_validator

from connectors.settings import ConnectionBase, Seconds, StrictModel

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
DOCUMENTED_CALLS_PER_SECOND = 5.0
_TABLE = re.compile(r"^[A-Za-z0-9_]{1,7}$")


def parse_goose_time(text: str) -> datetime:
    """A naive "yyyy-mm-dd hh:mm:ss", as Goose writes and reads timestamps."""
    return datetime.strptime(text, TIMESTAMP_FORMAT)


class GooseConnection(ConnectionBase):
    type: Literal["goose"]
    url: str = Field(description="the DELETED service, e.g. https://api.gooseapp.com/deleted/")
    code: str = Field(min_length=1, max_length=6, description="company code")
    key: SecretStr = Field(description="API key; travels in the JSON body")
    timezone: str = Field("UTC", description="the zone Goose compares `from` timestamps in")
    operation_url: str | None = Field(
        None, description="the OPERATION service; defaults to the DELETED url's sibling"
    )

    @field_validator("url", "operation_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

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

    def resolved_operation_url(self) -> str:
        if self.operation_url:
            return self.operation_url
        return re.sub(r"deleted/?$", "operation/", self.url)


class GooseSourceSettings(StrictModel):
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

    @field_validator("tables")
    @classmethod
    def _tables(cls, value: list[str]) -> list[str]:
        for table in value:
            if not _TABLE.match(table):
                raise ValueError(f"table {table!r}: Goose table names are 1 to 7 letters or digits")
        if len(set(value)) != len(value):
            raise ValueError("a table is listed twice")
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
