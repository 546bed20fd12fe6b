"""Settings of a Reltio connection, of a bulk-delete target block and of a task source block."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.kit.keys import KeyTemplate
from connectors.kit.paths import segment_problem
from connectors.kit.settings import (
    ConnectionBase,
    HttpUrl,
    KeyTemplateText,
    Seconds,
    StrictModel,
    id_list,
)

DEFAULT_AUTH_URL = "https://auth.reltio.com/oauth/token"
TENANT_URL_EXAMPLE = "https://eu-360.reltio.com/reltio/api/<tenantId>"
SOURCES_PREFIX = "configuration/sources/"
TASK_ID_EXAMPLE = "f3d47316-c249-4e60-9a8a-8e97cc9ca0e3"


def entity_name(tenant_url: str, uri: str) -> str:
    """An entity's name across the engine: `reltio:<tenant_url>:<entities/id>`.

    The target gives it as `Outcome.effect` and the task source as
    `SourceRecord.origin`, so both must build it here, from the tenant URL as
    the connection validated it: the journal recognises a deletion this engine
    caused only when the two strings are equal.
    """
    return f"reltio:{tenant_url.rstrip('/')}:{uri}"


def task_id_problem(task_id: str) -> str | None:
    """Why `task_id` cannot name a Reltio task, or None when it can."""
    if not task_id.strip():
        return f"a task id is blank; write the id Reltio gave the task, e.g. {TASK_ID_EXAMPLE}"
    if "/" in task_id:
        return (
            f"task id {task_id!r} contains '/'; write the id alone, not tasks/<id> or a URL "
            f"(e.g. {TASK_ID_EXAMPLE})"
        )
    if task_id != task_id.strip():
        return f"task id {task_id!r} has spaces around it"
    problem = segment_problem(task_id)
    if problem is not None:
        return f"task id {problem}; write the id Reltio gave the task (e.g. {TASK_ID_EXAMPLE})"
    return None


class ReltioConnection(ConnectionBase):
    """A Reltio tenant and the OAuth2 client that gets tokens for it.

    `grant: client_credentials` (the default) authenticates as the client
    alone; `grant: password` also needs a Reltio `username` and `password`.
    """

    # A validation error must never echo the secret or password it was given.

    type: Literal["reltio"]
    tenant_url: Annotated[str, HttpUrl(TENANT_URL_EXAMPLE)] = Field(
        description="e.g. https://eu-360.reltio.com/reltio/api/<tenantId>"
    )
    auth_url: Annotated[str, HttpUrl(DEFAULT_AUTH_URL)] = Field(
        DEFAULT_AUTH_URL, description="the OAuth2 token endpoint"
    )
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    grant: Literal["client_credentials", "password"] = "client_credentials"
    username: str | None = Field(None, min_length=1)
    password: SecretStr | None = None

    @model_validator(mode="after")
    def _grant_fields(self) -> ReltioConnection:
        if not self.client_secret.get_secret_value():
            raise ValueError("'client_secret' is empty")
        given = self.username is not None or self.password is not None
        if self.grant == "password":
            if self.username is None or self.password is None:
                raise ValueError(
                    "grant 'password' needs 'username' and 'password' (a Reltio user) "
                    "besides client_id and client_secret"
                )
            if not self.password.get_secret_value():
                raise ValueError("'password' is empty")
        elif given:
            raise ValueError(
                "'username' and 'password' are only used with grant: password; set "
                "grant: password or remove them"
            )
        return self


class CrosswalkSettings(StrictModel):
    """Find the entity by a crosswalk (the source system's own id for it)."""

    type: str = Field(
        min_length=1,
        description="crosswalk source type, e.g. configuration/sources/GOOSE (or GOOSE)",
    )
    value: KeyTemplateText = Field(
        description="key template giving the crosswalk value, e.g. '{RECORD_ID}'"
    )

    @field_validator("type")
    @classmethod
    def _source_type(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(SOURCES_PREFIX):
            value = SOURCES_PREFIX + value
        name = value.removeprefix(SOURCES_PREFIX)
        if not name or any(ch in name for ch in "/?#& "):
            raise ValueError(
                f"{value!r} is not a crosswalk source type; write e.g. configuration/sources/GOOSE"
            )
        return value

    def value_template(self) -> KeyTemplate:
        return KeyTemplate(self.value)


class ReltioTargetSettings(StrictModel):
    """Which entities a delivery names, and how the bulk delete task runs.

    Exactly one of `entity` (a template giving the entity URI or id) or
    `crosswalk` (looked up before deleting).
    """

    mode: Literal["soft", "hard"] = Field(
        "soft", description="soft flags entities as deleted; hard removes their data"
    )
    send_mail: bool = Field(False, description="Reltio mails the user when the task ends")
    entity: KeyTemplateText | None = Field(
        None, description="key template of the entity URI or id, e.g. 'entities/{RELTIO_ID}'"
    )
    crosswalk: CrosswalkSettings | None = None
    batch_size: int = Field(100, ge=1, le=1000, description="entities per delete task")
    poll_interval: Seconds = Field(5.0, gt=0, description="wait between two task reads")

    @model_validator(mode="after")
    def _one_key(self) -> ReltioTargetSettings:
        if (self.entity is None) == (self.crosswalk is None):
            raise ValueError(
                "set exactly one of 'entity' (e.g. 'entities/{RELTIO_ID}') or 'crosswalk' "
                "(type and value, e.g. {type: configuration/sources/GOOSE, value: '{RECORD_ID}'})"
            )
        return self

    def entity_template(self) -> KeyTemplate | None:
        return KeyTemplate(self.entity) if self.entity is not None else None


class ReltioSourceSettings(StrictModel):
    """The `source:` block of a pipeline reading the entities Reltio delete tasks removed.

    One stream per DeleteEntitiesTask listed here; the engine may add tasks an
    operator registers and tasks this engine's own targets started.
    """

    tasks: list[str] = Field(
        default_factory=list, description="ids of DeleteEntitiesTasks to read, one stream each"
    )

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: list[str]) -> list[str]:
        return id_list(value, "tasks", task_id_problem)
