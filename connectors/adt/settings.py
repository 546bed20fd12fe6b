"""Settings of an Azure Digital Twins connection and of its two kinds of target block.

One connection type serves two very different targets: `twins` deletes the
twins deliveries name, `purge` starts a delete job that wipes the whole
instance. The block's `kind` picks one, and a purge must name the instance
host it is allowed to wipe, so that re-pointing a connection (a sandbox URL
swapped for production) can never turn into an unintended purge.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ConfigDict,
    Field,
    RootModel,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from connectors.kit.keys import KeyTemplate
from connectors.kit.settings import (
    ConnectionBase,
    HttpUrl,
    KeyTemplateText,
    Seconds,
    StrictModel,
    http_url,
)

DEFAULT_API_VERSION = "2023-10-31"
ADT_SCOPE = "https://digitaltwins.azure.net/.default"
KINDS = ("twins", "purge")
TOKEN_URL_EXAMPLE = "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token"  # noqa: S105 - a URL


def instance_host(url: str) -> str:
    """The `host[:port]` a purge confirmation must repeat, lower-cased, without credentials."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    return netloc.lower()


class AdtConnection(ConnectionBase):
    """An Azure Digital Twins instance and how to get a bearer token for it.

    Either `token_url` + `client_id` + `client_secret` (the OAuth2
    client-credentials grant of a Microsoft Entra app registration holding a
    data-plane role on the instance) or a static `token` (sandbox, tests).
    """

    type: Literal["adt"]
    url: str = Field(
        description="instance URL, e.g. https://myinstance.api.weu.digitaltwins.azure.net",
    )
    api_version: str = Field(DEFAULT_API_VERSION, min_length=1)
    token_url: Annotated[str, HttpUrl(TOKEN_URL_EXAMPLE)] | None = Field(
        None,
        description="e.g. https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
    )
    client_id: str | None = Field(None, min_length=1)
    client_secret: SecretStr | None = None
    scope: str = Field(ADT_SCOPE, min_length=1, description="scope asked for with client_id")
    token: SecretStr | None = Field(None, description="a static bearer token")

    @field_validator("url")
    @classmethod
    def _instance_url(cls, value: str) -> str:
        value = http_url(value, "https://myinstance.api.weu.digitaltwins.azure.net")
        parts = urlsplit(value)
        if parts.path or parts.query or parts.fragment:
            raise ValueError(
                f"{value!r}: the instance URL has no path or query; write only "
                f"{parts.scheme}://{parts.netloc}"
            )
        return value

    @model_validator(mode="after")
    def _one_auth_mode(self) -> AdtConnection:
        grant = {
            "token_url": self.token_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        given = [name for name, value in grant.items() if value is not None]
        if given and self.token is not None:
            raise ValueError(
                "set either 'token_url', 'client_id' and 'client_secret' (client credentials) "
                "or 'token' (a static bearer token), not both"
            )
        if self.token is None and len(given) < len(grant):
            missing = ", ".join(repr(n) for n in grant if grant[n] is None)
            raise ValueError(
                f"set 'token_url', 'client_id' and 'client_secret' (client credentials) or "
                f"'token' (a static bearer token); missing: {missing}"
            )
        for secret in (self.token, self.client_secret):
            if secret is not None and not secret.get_secret_value():
                name = "token" if secret is self.token else "client_secret"
                raise ValueError(f"{name!r} is empty")
        return self

    @property
    def host(self) -> str:
        return instance_host(self.url)


class AdtTwinsSettings(StrictModel):
    """Delete, one by one, the twins the deliveries name (and their relationships)."""

    kind: Literal["twins"]
    twin_id: KeyTemplateText = Field(
        description="key template over the deletion's fields, e.g. '{RECORD_ID}'"
    )
    batch_size: int = Field(50, ge=1, le=1000)

    def key_template(self) -> KeyTemplate:
        return KeyTemplate(self.twin_id)


class AdtPurgeSettings(StrictModel):
    """Start a delete job (every model, twin and relationship of the instance) when a
    delivery whose key matches `trigger_keys` arrives."""

    kind: Literal["purge"]
    confirm_purge: str = Field(
        description="the host of the connection URL, repeated to allow the purge",
    )
    trigger_keys: list[str] = Field(
        min_length=1, description="glob patterns over delivery keys, e.g. 'PURGE-*'"
    )
    timeout_in_minutes: int = Field(60, ge=15, le=1440)
    poll_interval: Seconds = Field(10.0, gt=0)
    batch_size: int = Field(100, ge=1, le=1000, description="deliveries carried by one job")

    @field_validator("trigger_keys")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("a trigger key pattern is empty")
        return value

    @field_validator("confirm_purge")
    @classmethod
    def _confirmed(cls, value: str, info: ValidationInfo) -> str:
        """The config loader passes the connection as context; without it the factory checks."""
        context = info.context or {}
        connection = context.get("connection")
        if isinstance(connection, AdtConnection):
            problem = _confirmation_problem(connection, value, context.get("connection_name"))
            if problem:
                raise ValueError(problem)
        return value

    def is_trigger(self, key: str) -> bool:
        return any(fnmatchcase(key, pattern) for pattern in self.trigger_keys)


AdtSettings = Annotated[AdtTwinsSettings | AdtPurgeSettings, Field(discriminator="kind")]


class AdtTargetSettings(RootModel[AdtSettings]):
    """The target block of an `adt` connection: `kind: twins` or `kind: purge`.

    Errors are reported at the key that is wrong (`confirm_purge`, not
    `purge.confirm_purge`), as for any other block.
    """

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _report_at_the_key(
        cls, value: Any, handler: Callable[[Any], AdtTargetSettings], info: ValidationInfo
    ) -> AdtTargetSettings:
        try:
            return handler(value)
        except ValidationError as exc:
            context = info.context or {}
            connection = context.get("connection")
            named = (
                (connection, context.get("connection_name"))
                if isinstance(connection, AdtConnection)
                else None
            )
            raise ValidationError.from_exception_data(
                cls.__name__, [_at_the_key(error, value, named) for error in exc.errors()]
            ) from None


def _at_the_key(
    error: Any, value: Any, connection: tuple[AdtConnection, str | None] | None
) -> InitErrorDetails:
    loc = tuple(error["loc"])
    kind = value.get("kind") if isinstance(value, dict) else None
    if error["type"] in ("union_tag_not_found", "union_tag_invalid"):
        message = (
            "required key is missing"
            if error["type"] == "union_tag_not_found"
            else f"unknown kind {kind!r}"
        )
        return InitErrorDetails(
            type=PydanticCustomError(
                "adt_kind",
                message + "; write kind: twins (delete the twins deliveries name) or "
                "kind: purge (a delete job that wipes the whole instance)",
            ),
            loc=("kind",),
            input=kind,
        )
    if loc and loc[0] in KINDS:
        loc = loc[1:]
    if error["type"] == "extra_forbidden" and len(loc) == 1:
        model = AdtTwinsSettings if kind == "twins" else AdtPurgeSettings
        return InitErrorDetails(
            type=PydanticCustomError(
                "unknown_key",
                f"unknown key {loc[0]!r}; valid keys for kind {kind}: "
                f"{', '.join(sorted(model.model_fields))}",
            ),
            loc=loc,
            input=error["input"],
        )
    error_type, message = error["type"], str(error["msg"]).removeprefix("Value error, ")
    if error_type == "missing" and loc == ("confirm_purge",) and connection is not None:
        error_type, message = (
            "purge_not_confirmed",
            _confirmation_problem(connection[0], "", connection[1]),
        )
    return InitErrorDetails(
        type=PydanticCustomError(error_type, message), loc=loc, input=error["input"]
    )


def _confirmation_problem(connection: AdtConnection, confirm: str, name: str | None = None) -> str:
    host = connection.host
    if confirm.strip().lower() == host:
        return ""
    where = f"connections.{name}" if name else "the connection"
    return (
        f"{where} points at {host}; to allow a delete job that wipes every model, twin and "
        f"relationship of that instance, set confirm_purge: {host} on this target"
        + (f" (it says {confirm!r})" if confirm.strip() else "")
    )


def check_purge_confirmation(
    connection: AdtConnection,
    settings: AdtTargetSettings | AdtTwinsSettings | AdtPurgeSettings,
    name: str | None = None,
) -> str | None:
    """None when the target may run; otherwise why not, for the operator.

    `name` is the connection's name under `connections:`, used in the message.
    A `twins` target needs no confirmation.
    """
    block = settings.root if isinstance(settings, AdtTargetSettings) else settings
    if not isinstance(block, AdtPurgeSettings):
        return None
    return _confirmation_problem(connection, block.confirm_purge, name) or None
