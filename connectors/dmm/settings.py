"""Settings of a DMM connection, of a DMM delete target block and of a DMM source block.

The DMM API's base URL and path shape are not public (apis.md section 4), so
both are configurable; the defaults follow the OutSystems REST convention
`https://{env}/{Module}/rest/{API}/{Operation}`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from connectors.kit.keys import KeyTemplate
from connectors.kit.settings import (
    ConnectionBase,
    HttpUrl,
    KeyTemplateText,
    Seconds,
    StrictModel,
    check_connection,
    id_list,
)
from connectors.kit.sql import Dialect

URL_EXAMPLE = "https://myenv.outsystemsenterprise.com/DMM_API/rest/DMMAPI"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RUNTIME_CONNECTION = "Runtime Connection"
EXECUTION_EXAMPLE = "1024"
_INTEGER_ID = re.compile(r"-?[0-9]+")


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


def execution_id_problem(execution: str) -> str | None:
    """Why `execution` cannot name a DMM execution (a MainExecutionTrackerId), or None."""
    if not execution.strip():
        return (
            "an execution id is blank; write the MainExecutionTrackerId DMM gave the "
            f"execution, e.g. {EXECUTION_EXAMPLE}"
        )
    if execution != execution.strip():
        return f"execution id {execution!r} has spaces around it"
    if not execution.isprintable():
        return f"execution id {execution!r} holds a control character"
    return None


def normal_execution_id(execution: str) -> str:
    """A tracker id in one spelling: DMM's auto-numbers as plain integer text (`007` is 7,
    as the target sends it), anything else as given. One execution must make one stream,
    or the journal would hold its records twice."""
    return str(int(execution)) if _INTEGER_ID.fullmatch(execution) else execution


def _visible(value: str, what: str) -> str:
    """Names sent to DMM: no control characters, which no OutSystems name holds."""
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise ValueError(f"{what} {value!r} holds a control character")
    return value


def _name(value: str | None, what: str, blank: str = "is blank") -> str | None:
    """An optional OutSystems name: stripped, never blank, no control character."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise ValueError(blank)
    return _visible(value, what)


def _connection_name(value: str | None) -> str | None:
    """A DestinationDBConnection name; None is the Runtime Connection."""
    return _name(value, "connection name", "is blank; leave it out to use the Runtime Connection")


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

    type: Literal["dmm"]
    url: Annotated[str, HttpUrl(URL_EXAMPLE, query=False)] = Field(
        description=f"the DMM REST API base, e.g. {URL_EXAMPLE}"
    )
    dialect: Dialect = Field(
        Dialect.SQLSERVER,
        description="the SQL dialect of the database a delete runs on, which reads the "
        "WhereClause's literals: sqlserver, oracle, postgresql, mysql or mariadb",
    )
    token: SecretStr = Field(description="REST API key, sent as X-DMM-Token")
    otp: SecretStr | None = Field(
        None, description="sent as X-DMM-Token-OTP on StartExecution; needed by targets only"
    )
    paths: DmmPaths = DmmPaths()
    collation: Literal["case_insensitive", "case_sensitive"] = Field(
        "case_insensitive",
        description="how the destination database compares text keys: SQL Server's default "
        "collations ignore case (and always trailing spaces); case_sensitive for a _CS_ one",
    )

    @model_validator(mode="after")
    def _secrets_given(self) -> DmmConnection:
        if not self.token.get_secret_value().strip():
            raise ValueError(
                "'token' is empty; set the DMM REST API key (Management > Settings > "
                "REST API KEY), sent as X-DMM-Token"
            )
        if self.otp is not None and not self.otp.get_secret_value().strip():
            raise ValueError(
                "'otp' is empty; set the value from the Authentication Token page of the "
                "environment that runs the delete, sent as X-DMM-Token-OTP"
            )
        return self


def otp_problem(connection: DmmConnection, name: str | None = None) -> str | None:
    """Why a target on this connection cannot start executions, or None."""
    if connection.otp is not None:
        return None
    where = f"connections.{name}" if name else "the connection"
    return (
        f"a DMM target starts delete executions, which need X-DMM-Token-OTP: set {where}.otp "
        "to the value on the Authentication Token page of the environment that runs the delete"
    )


class EntityRef(StrictModel):
    """The OutSystems entity whose records are deleted (`EntitiesToDelete[0]`)."""

    name: str = Field(min_length=1, description="OSEntityName, e.g. Contact")
    ss_key: str | None = Field(None, min_length=1, description="OSEntitySSKey")
    espace_ss_key: str | None = Field(None, min_length=1, description="ESpaceSsKey")

    @field_validator("name", "ss_key", "espace_ss_key")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _name(value, "name")


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
    key: KeyTemplateText = Field(
        description="key template over the deletion's fields, e.g. '{RECORD_ID}'"
    )
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
        return _connection_name(value)

    @model_validator(mode="after")
    def _otp_given(self, info: ValidationInfo) -> DmmTargetSettings:
        check_connection(info, DmmConnection, otp_problem)
        return self

    @field_validator("key_attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        if not IDENTIFIER.fullmatch(value):
            raise ValueError(
                f"{value!r} is not an attribute name; write letters, digits and underscores, "
                "e.g. Id or Email"
            )
        return value

    def key_template(self) -> KeyTemplate:
        return KeyTemplate(self.key)


class DmmSourceSettings(StrictModel):
    """The `source:` block of a pipeline reading what DMM delete executions deleted.

    One stream per execution (`execution-<MainExecutionTrackerId>`); the engine
    adds executions an operator registers and those this engine's own DMM target
    started. `logs_from: outputs` reads the final log zip of GetExecutionOutputs
    in one call; `status` reads GetExecutionStatus log pages, one page per call,
    so a very long log is journaled page by page. `destination` only names the
    records (see `record_name`): set it to the DestinationDBConnection the
    executions deleted in, as the DMM target's own `destination`, so this
    engine recognises the deletions it caused.
    """

    executions: list[str] = Field(
        default_factory=list, description="MainExecutionTrackerIds to read, one stream each"
    )
    logs_from: Literal["outputs", "status"] = Field(
        "outputs",
        description="outputs: the final log zip in one call; status: the paged logs, a page "
        "per call",
    )
    log_records: int = Field(
        500, ge=1, le=100000, description="log lines per GetExecutionStatus page (status mode)"
    )
    destination: str | None = Field(
        None,
        min_length=1,
        description="the DestinationDBConnection the executions deleted in; unset means the "
        "Runtime Connection",
    )
    entities: list[str] = Field(
        default_factory=list,
        description="report only deletions of these OSEntityNames; empty means all",
    )

    @field_validator("executions")
    @classmethod
    def _executions(cls, value: list[str]) -> list[str]:
        return id_list(value, "executions", execution_id_problem, normal_execution_id)

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        return _connection_name(value)

    @field_validator("entities")
    @classmethod
    def _entities(cls, value: list[str]) -> list[str]:
        value = [entity.strip() for entity in value]
        for entity in value:
            if not entity:
                raise ValueError("an entity name is blank; write an OSEntityName, e.g. Customer")
            _visible(entity, "entity name")
        # OutSystems names are case-insensitive: Customer and customer are one entity.
        folded = [entity.casefold() for entity in value]
        twice = sorted({e for e, f in zip(value, folded, strict=True) if folded.count(f) > 1})
        if twice:
            raise ValueError(f"entities listed more than once: {', '.join(twice)}")
        return value


__all__ = [
    "RUNTIME_CONNECTION",
    "DmmConnection",
    "DmmPaths",
    "DmmSourceSettings",
    "DmmTargetSettings",
    "EntityRef",
    "execution_id_problem",
    "normal_execution_id",
    "record_name",
]
