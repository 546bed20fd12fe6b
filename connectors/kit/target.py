"""The part every HTTP target builds the same way: refuse a connection it cannot use,
keep its name and settings, own one HTTP client, close it.

Each `build_target` calls `Target(name, connection, settings)`; tests and the
sandbox hand in a client of their own (`http=`), which the target then uses
as is. A target says only what differs: why a connection is refused
(`problem`), how its client is made (`client`) and what it reads from the
connection once the client exists (`setup`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Generic, Protocol, TypeVar

from connectors.contract import FatalError
from connectors.kit.http import HttpClient


class Batched(Protocol):
    @property
    def batch_size(self) -> int: ...


ConnectionT = TypeVar("ConnectionT")
SettingsT = TypeVar("SettingsT", bound=Batched)


class HttpTarget(ABC, Generic[ConnectionT, SettingsT]):
    def __init__(
        self,
        name: str,
        connection: ConnectionT,
        settings: SettingsT,
        *,
        http: HttpClient | None = None,
    ) -> None:
        # Refused before a client exists, so a refused target leaves nothing open.
        problem = self.problem(name, connection, settings)
        if problem:
            raise FatalError(problem, connection=name)
        self.name = name
        self.settings = settings
        self.batch_size = settings.batch_size
        self._http = http or self.client(name, connection)
        self.setup(connection)

    def problem(self, name: str, connection: ConnectionT, settings: SettingsT) -> str | None:
        """Why this target cannot run on `connection` (one line naming the fix), or None."""
        return None

    @abstractmethod
    def client(self, name: str, connection: ConnectionT) -> HttpClient:
        """The target's own client, when none is handed in."""

    def setup(self, connection: ConnectionT) -> None:
        """Read what the target needs from the connection; `self._http` is ready."""

    async def aclose(self) -> None:
        await self._http.aclose()
