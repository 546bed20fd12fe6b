"""The one authenticated call path to the DMM API.

ASSUMED shapes (apis.md section 4: the vendor publishes neither the HTTP
methods nor the error codes): every operation is a JSON POST to
`url + paths.<operation>`; the API key goes in X-DMM-Token on every request
and X-DMM-Token-OTP is added on StartExecution. Errors come back as HTTP 200
with `Success: false` and an `ErrorMessage`, which this client returns for the
caller to judge; a bad key or OTP answers 401/403.

What no retry can fix becomes FatalError pointing at the YAML setting: 401
(the key), 403 (the OTP on StartExecution, the key's rights elsewhere), and a
404 that does not carry a DMM body, which comes from a wrong `url` or path
and must never be read as "not found". 429 and 5xx are classified by the
shared HttpClient.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from connectors.contract import AmbiguousError, FatalError, RemoteError
from connectors.dmm.settings import DmmConnection
from connectors.kit.http import (
    Action,
    ErrorRule,
    ErrorTable,
    HttpClient,
    StaticAuth,
    excerpt,
    json_object,
    remote_error,
)

Operation = Literal["start", "stop", "status", "outputs"]

TOKEN_HEADER = "X-DMM-Token"  # noqa: S105 - a header name, not a secret
OTP_HEADER = "X-DMM-Token-OTP"


def is_dmm_body(body: Mapping[str, Any] | None) -> bool:
    """Every DMM answer carries `Success`; OutSystems' own errors and proxies do not."""
    return body is not None and "Success" in body


def errors(operation: Operation) -> ErrorTable:
    """What no retry can fix, for one operation: a key is never renewed, so a 401 is
    already fatal; a 403 on start is the OTP, elsewhere the key's rights."""
    if operation == "start":
        forbidden = (
            "check connections.{name}.otp (from the Authentication Token page of the "
            "environment that runs the delete; if that environment's OTPs are single-use, "
            "each start needs a new one)"
        )
    else:
        forbidden = "check connections.{name}.token and that its user has the DMMAPIOperator role"
    return (
        ErrorRule(
            401,
            Action.FATAL,
            "dmm connection {name!r}: HTTP 401 from {what}: {detail}; check "
            "connections.{name}.token (the DMM REST API key, Management > Settings > "
            "REST API KEY)",
        ),
        ErrorRule(
            403,
            Action.FATAL,
            "dmm connection {name!r}: HTTP 403 from {what}: {detail}; " + forbidden,
        ),
        ErrorRule(
            404,
            Action.FATAL,
            "dmm connection {name!r}: {what} answered 404 without a DMM answer; check "
            "connections.{name}.url (e.g. https://<env>/DMM_API/rest/DMMAPI) and "
            f"connections.{{name}}.paths.{operation}",
            when=lambda response: not is_dmm_body(json_object(response)),
        ),
    )


class DmmClient:
    """Sends one operation and returns DMM's answer object, `Success: false` included."""

    def __init__(self, name: str, connection: DmmConnection, http: HttpClient) -> None:
        self.name = name
        self.http = http
        self.paths = connection.paths
        self._auth = StaticAuth({TOKEN_HEADER: connection.token.get_secret_value()}, self._fatal)
        self._otp = connection.otp.get_secret_value() if connection.otp is not None else ""
        for secret in connection.secret_values():
            http.add_secret(secret)

    def path(self, operation: Operation) -> str:
        path: str = getattr(self.paths, operation)
        return path

    async def call(
        self, operation: Operation, body: Mapping[str, Any], *, idempotent: bool
    ) -> dict[str, Any]:
        path = self.path(operation)
        what = f"POST {path}"
        response = await self.http.call(
            "POST",
            path,
            idempotent=idempotent,
            auth=self._auth,
            errors=errors(operation),
            detail=self.message,
            json=dict(body),
            headers={OTP_HEADER: self._otp} if operation == "start" else None,
        )
        answer = json_object(response)
        if answer is None:
            text = (
                f"{self.name}: {what}: HTTP {response.status_code}, an answer that is not a "
                f"JSON object: {excerpt(response.text, self.http.secrets)}"
            )
            if response.is_success and not idempotent:
                # A 2xx whose body is unreadable may well have started the execution.
                raise AmbiguousError(text, connection=self.name)
            raise RemoteError(text, connection=self.name, code=str(response.status_code))
        if not response.is_success and not is_dmm_body(answer):
            raise remote_error(self.name, what, response, self.message(response))
        return answer

    def status_of(self, answer: Mapping[str, Any]) -> str:
        """DMM's Status of an execution; RemoteError for a status answer without one."""
        raw = answer.get("Status")
        if not isinstance(raw, str) or not raw.strip():
            said = self.error_message(answer) or excerpt(json.dumps(answer), self.secrets)
            raise RemoteError(
                f"{self.name}: POST {self.path('status')}: an answer without Status: {said}",
                connection=self.name,
            )
        return raw.strip()

    def _fatal(self, what: str) -> FatalError:
        return FatalError(
            f"dmm connection {self.name!r}: the API key was rejected ({what}); "
            f"check connections.{self.name}.token",
            connection=self.name,
        )

    def message(self, response: httpx.Response) -> str:
        """DMM's ErrorMessage, else the body; scrubbed and trimmed."""
        body = json_object(response)
        text = body.get("ErrorMessage") if body is not None else None
        return excerpt(text if isinstance(text, str) and text else response.text, self.secrets)

    def error_message(self, answer: Mapping[str, Any]) -> str:
        text = answer.get("ErrorMessage")
        return excerpt(str(text), self.secrets) if text else ""

    @property
    def secrets(self) -> list[str]:
        return self.http.secrets


def succeeded(answer: Mapping[str, Any]) -> bool:
    """Only a literal `true` counts: a missing or odd `Success` is not a success."""
    return answer.get("Success") is True


__all__ = ["OTP_HEADER", "TOKEN_HEADER", "DmmClient", "Operation", "is_dmm_body", "succeeded"]
