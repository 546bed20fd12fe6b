"""Settings of a DMM connection and of a DMM delete target block.

The DMM API's base URL and path shape are not public (apis.md section 4), so
both are configurable; the defaults follow the OutSystems REST convention
`https://{env}/{Module}/rest/{API}/{Operation}`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.keys import KeyTemplate
from connectors.settings import ConnectionBase, Seconds, StrictModel

URL_EXAMPLE = "https://myenv.outsystemsenterprise.com/DMM_API/rest/DMMAPI"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RUNTIME_CONNECTION = "Runtime Connection"


def record_name(url: str, destination: str | None, entity: str, attribute: str, key: str) -> str:
    """A record's name across the engine: `dmm:<url>:<connection>:<entity>:<attribute>=<key>`.

    The delete target gives it as `Outcome.effect` and a DMM outputs source
    is to give it as `SourceRecord.origin`, so both build it here: the
    journal recognises a deletion this engine caused only when the two
    strings are equal. OutSystems names are case-insensitive, so entity and
    attribute are case-folded; `key` is the normalised key (integers as plain
    integer text), and `destination` None is the Runtime Connection.
    """
    where = destination or RUNTIME_CONNECTION
    return f"dmm:{url.rstrip('/')}:{where}:{entity.casefold()}:{attribute.casefold()}={key}"


def _http_url(value: str) -> str:
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL; write e.g. {URL_EXAMPLE}")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: the base URL takes no query string or fragment")
    return value


def _visible(value: str, what: str) -> str:
    """Names sent to DMM: no control characters, which no OutSystems name holds."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValueError(f"{what} {value!r} holds a control character")
    return value


class DmmPaths(StrictModel):
    """Each operation's path below the connection's `url`."""

    start: str = "/StartExecution"
    stop: str = "/StopExecution"
    status: str = "/GetExecutionStatus"
    outputs: str = "/GetExecutionOutputs"

    @field_validator("start", "stop", "status", "outputs")
    @classmethod
    def _path(cls, value: str) -> str:
        value = value.strip()
        if (
            not value.startswith("/")
            or len(value) < 2
            or any(ch in value for ch in "?#")
            or any(ch.isspace() for ch in value)
            or ".." in value.split("/")
        ):
            raise ValueError(
                f"{value!r} is not a path below the base URL; write e.g. /StopExecution"
            )
        return value


class DmmConnection(ConnectionBase):
    """An OutSystems environment running the DMM API.

    `token` is the REST API key (DMM "Management > Settings > REST API KEY"),
    sent as X-DMM-Token on every request. `otp` is sent as X-DMM-Token-OTP on
    StartExecution only; it comes from the Authentication Token page of the
    environment that runs the delete. apis.md assumes that OTP is single-use:
    if the environment enforces that, a configured OTP starts one execution
    and the next start is refused (FatalError naming this setting).
    """

    # A validation error must never echo the token or OTP it was given.
    model_config = ConnectionBase.model_config | {"hide_input_in_errors": True}

    type: Literal["dmm"]
    url: str = Field(description=f"the DMM REST API base, e.g. {URL_EXAMPLE}")
    token: SecretStr = Field(description="REST API key, sent as X-DMM-Token")
    otp: SecretStr = Field(description="sent as X-DMM-Token-OTP on StartExecution")
    paths: DmmPaths = DmmPaths()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @model_validator(mode="after")
    def _secrets_given(self) -> DmmConnection:
        if not self.token.get_secret_value().strip():
            raise ValueError(
                "'token' is empty; set the DMM REST API key (Management > Settings > "
                "REST API KEY), sent as X-DMM-Token"
            )
        if not self.otp.get_secret_value().strip():
            raise ValueError(
                "'otp' is empty; set the value from the Authentication Token page of the "
                "environment that runs the delete, sent as X-DMM-Token-OTP"
            )
        return self

    def secret_values(self) -> list[str]:
        return [s.get_secret_value() for s in (self.token, self.otp) if s.get_secret_value()]


class EntityRef(StrictModel):
    """The OutSystems entity whose records are deleted (`EntitiesToDelete[0]`)."""

    name: str = Field(min_length=1, description="OSEntityName, e.g. Contact")
    ss_key: str | None = Field(None, min_length=1, description="OSEntitySSKey")
    espace_ss_key: str | None = Field(None, min_length=1, description="ESpaceSsKey")

    @field_validator("name", "ss_key", "espace_ss_key")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("is blank")
        return _visible(value, "name")


class DmmTargetSettings(StrictModel):
    """Which entity a batch deletes from, and which attribute the keys are matched on.

    One batch becomes one DMM delete execution whose WhereClause is
    `[<key_attribute>] IN (<the batch's keys>)`.
    """

    destination: str | None = Field(
        None,
        min_length=1,
        description="DestinationDBConnection; unset means the environment's Runtime Connection",
    )
    entity: EntityRef
    key_attribute: str = Field(description="the entity attribute keys are matched on, e.g. Id")
    key: str = Field(description="key template over the deletion's fields, e.g. '{RECORD_ID}'")
    key_type: Literal["integer", "text"] = Field(
        "text", description="integer keys are sent as numbers, text keys as quoted strings"
    )
    batch_size: int = Field(200, ge=1, le=5000, description="keys per delete execution")
    poll_interval: Seconds = Field(5.0, gt=0, description="wait between two status reads")
    log_records: int = Field(
        500, ge=1, le=100000, description="log lines per GetExecutionStatus page"
    )

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("is blank; leave it out to use the Runtime Connection")
        return _visible(value, "connection name")

    @field_validator("key_attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError(
                f"{value!r} is not an attribute name; write letters, digits and underscores, "
                "e.g. Id or Email"
            )
        return value

    @field_validator("key")
    @classmethod
    def _key_parses(cls, value: str) -> str:
        KeyTemplate(value)
        return value

    def key_template(self) -> KeyTemplate:
        return KeyTemplate(self.key)


__all__ = [
    "RUNTIME_CONNECTION",
    "DmmConnection",
    "DmmPaths",
    "DmmTargetSettings",
    "EntityRef",
    "record_name",
]
