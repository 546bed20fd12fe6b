"""Settings of a Mongoose connection and of a Mongoose target block."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.kit.keys import KeyTemplate
from connectors.kit.paths import segment_problem
from connectors.kit.settings import ConnectionBase, HttpUrl, KeyTemplateText, StrictModel
from connectors.mongoose.api import ApiVersion

# IDO and property names go into URL paths and filter expressions unquoted,
# so they must be plain identifiers.
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


class MongooseConnection(ConnectionBase):
    """A Mongoose IDO REST endpoint (API v1 or v2) and how to authenticate to it.

    Either `user` + `password` (a Mongoose security token is fetched and
    renewed as needed) or `token` (an ION API OAuth2 bearer token, sent with
    `X-Infor-MongooseConfig`).
    """

    type: Literal["mongoose"]
    url: Annotated[str, HttpUrl("https://host/IDORequestService/MGRESTService.svc")] = Field(
        description="base URL: https://host/IDORequestService/MGRESTService.svc (api v1), "
        "https://host/IDORequestService (api v2)",
    )
    config: str = Field(min_length=1, description="Mongoose configuration name")
    user: str | None = Field(None, min_length=1)
    password: SecretStr | None = None
    token: SecretStr | None = Field(None, description="ION API bearer token")
    collation: Literal["case_insensitive", "case_sensitive"] = Field(
        "case_insensitive",
        description="how the Mongoose database compares text: SQL Server's default "
        "collations ignore case (and always trailing spaces); case_sensitive for a _CS_ one",
    )
    api: ApiVersion = Field(
        "v1", description="v1 (MGRESTService.svc) or v2 (/ido/..., what ION API gateways expose)"
    )
    max_query_string: int = Field(
        2048,
        ge=512,
        le=1_048_576,
        description="longest query string the server accepts, in bytes once URL-encoded "
        "(IIS's maxQueryString, 2048 by default); LoadCollection filters are cut to fit it",
    )

    @field_validator("config")
    @classmethod
    def _config_segment(cls, value: str) -> str:
        """The configuration name is a path segment of GetSecurityToken."""
        problem = segment_problem(value)
        if problem is not None:
            raise ValueError(f"{problem}; write the Mongoose configuration name")
        return value

    @model_validator(mode="after")
    def _one_auth_mode(self) -> MongooseConnection:
        direct = self.user is not None or self.password is not None
        if direct and self.token is not None:
            raise ValueError(
                "set either 'user' and 'password' (Mongoose security token) or 'token' "
                "(ION API bearer token), not both"
            )
        if self.token is None and (self.user is None or self.password is None):
            raise ValueError(
                "set 'user' and 'password' (Mongoose security token) or 'token' "
                "(ION API bearer token)"
            )
        if self.token is not None and not self.token.get_secret_value():
            raise ValueError("'token' is empty")
        return self

    @model_validator(mode="after")
    def _url_fits_api(self) -> MongooseConnection:
        """A base URL of the other version would send every call to a path that does
        not exist; say so now rather than as a 404 at the first run."""
        tail = self.url.lower()
        if self.api == "v2" and tail.endswith("/mgrestservice.svc"):
            raise ValueError(
                "api v2 calls /IDORequestService/ido/...: end the url with /IDORequestService "
                "(drop /MGRESTService.svc), or set api: v1"
            )
        if tail.endswith("/ido"):
            fix = "drop the final /ido (the connector adds it)"
            if self.api == "v1":
                fix = "set api: v2 and " + fix
            raise ValueError(f"the url ends with /ido: {fix}")
        return self


class LookupSettings(StrictModel):
    """Find the ItemId by a natural-key property (an ItemId carries a row
    timestamp no source knows)."""

    property: str = Field(pattern=IDENTIFIER, description="e.g. Username")


class MongooseTargetSettings(StrictModel):
    ido: str = Field(pattern=IDENTIFIER, description="IDO collection, e.g. UserNames")
    key: KeyTemplateText = Field(
        description="key template over the deletion's fields, e.g. '{SYKEY}'"
    )
    lookup: LookupSettings | None = Field(
        None,
        description="without it, the rendered key must be the ItemId itself "
        "(and the IDO must expose RowPointer, used to re-check failures)",
    )
    batch_size: int = Field(100, ge=1, le=1000)
    delete_method: Literal["DELETE", "POST"] = Field(
        "DELETE", description="the doc lists DELETE; its sample code posts"
    )

    def key_template(self) -> KeyTemplate:
        return KeyTemplate(self.key)
