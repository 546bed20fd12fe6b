"""Delete the digital twins deliveries name, one twin at a time.

ADT refuses to delete a twin while any relationship references it
(`400 RelationshipsNotDeleted`), so every outgoing and incoming relationship
is deleted first. Both lists are read to the end before anything is
deleted: a continuation is a position in a list that the deletions would
shift. A relationship or twin already gone (404) counts as deleted, which
makes re-sending after a lost answer safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import httpx

from connectors.adt.auth import AdtClient, error_code, http_client
from connectors.adt.settings import AdtConnection, AdtTwinsSettings
from connectors.contract import EXACT_KEYS, Delivery, Outcome, RemoteError, RetriableError
from connectors.kit.http import HttpClient, json_object
from connectors.kit.keys import UnmappedKey
from connectors.kit.paths import path_segment, segment_problem
from connectors.kit.target import HttpTarget

TWIN_NOT_FOUND = "DigitalTwinNotFound"
RELATIONSHIPS_NOT_DELETED = "RelationshipsNotDeleted"
MAX_PAGES = 10_000


def twin_path(twin_id: str) -> str:
    """UnsafeKey for an id that cannot be one path segment (`.` would make
    `/digitaltwins/relationships`)."""
    return f"/digitaltwins/{path_segment(twin_id)}"


@dataclass(frozen=True)
class Relationship:
    source: str
    relationship_id: str

    @property
    def path(self) -> str:
        return f"{twin_path(self.source)}/relationships/{path_segment(self.relationship_id)}"


class _Absent(Exception):
    """The twin does not exist (any more)."""


class AdtTwinsTarget(HttpTarget[AdtConnection, AdtTwinsSettings]):
    """Deletes twins by id, removing the relationships that reference them first."""

    key_match = EXACT_KEYS
    """Twin ids are case-sensitive."""
    api: AdtClient

    def client(self, name: str, connection: AdtConnection) -> HttpClient:
        return http_client(name, connection)

    def setup(self, connection: AdtConnection) -> None:
        self._template = self.settings.key_template()
        self.api = AdtClient(self.name, connection, self._http)

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """Read-only: the twin each delivery would delete (after its relationships)."""
        outcomes = []
        for delivery in batch:
            try:
                twin_id = self._twin_id(delivery)
            except UnmappedKey as exc:
                outcomes.append(Outcome.dead(delivery.delivery_id, exc.verdict))
            else:
                outcomes.append(Outcome.done(delivery.delivery_id, f"would delete twin {twin_id}"))
        return outcomes

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """One outcome per delivery; deliveries naming the same twin share one attempt.

        Once the service refuses with a retriable error (throttled past the
        retries, unreachable), the rest of the batch is not attempted: each is
        retried after the wait the service asked for.
        """
        outcomes: list[Outcome] = []
        settled: dict[str, Outcome] = {}
        stopped: RetriableError | None = None
        for delivery in batch:
            try:
                twin_id = self._twin_id(delivery)
            except UnmappedKey as exc:
                outcomes.append(Outcome.dead(delivery.delivery_id, exc.verdict))
                continue
            if twin_id in settled:
                outcomes.append(replace(settled[twin_id], delivery_id=delivery.delivery_id))
            elif stopped is not None:
                outcomes.append(
                    Outcome.retry(
                        delivery.delivery_id, f"not attempted: {stopped}", stopped.retry_after
                    )
                )
            else:
                try:
                    settled[twin_id] = await self._delete(delivery.delivery_id, twin_id)
                except RetriableError as exc:
                    stopped = exc
                    settled[twin_id] = Outcome.retry(
                        delivery.delivery_id, str(exc), exc.retry_after
                    )
                outcomes.append(settled[twin_id])
        return outcomes

    def _twin_id(self, delivery: Delivery) -> str:
        """The twin a delivery names; UnmappedKey, or UnsafeKey for an id that would
        address another path, before any call."""
        twin_id = self._template.render(delivery.fields)
        twin_path(twin_id)
        return twin_id

    async def _delete(self, delivery_id: int, twin_id: str) -> Outcome:
        try:
            removed = await self._delete_relationships(twin_id)
            deleted = await self._delete_twin(twin_id)
        except _Absent:
            return Outcome.done(delivery_id, "absent")
        except RemoteError as exc:
            return Outcome.retry(delivery_id, str(exc))
        if not deleted:
            return Outcome.done(delivery_id, "absent")
        if not removed:
            return Outcome.done(delivery_id, "deleted")
        plural = "s" if removed != 1 else ""
        return Outcome.done(delivery_id, f"deleted ({removed} relationship{plural} removed)")

    async def _delete_relationships(self, twin_id: str) -> int:
        path = twin_path(twin_id)
        outgoing = await self._list(f"{path}/relationships", source=twin_id)
        incoming = await self._list(f"{path}/incomingrelationships", source=None)
        removed = 0
        for relationship in dict.fromkeys([*outgoing, *incoming]):
            what = f"DELETE {relationship.path}"
            response = await self.api.call("DELETE", relationship.path, idempotent=True)
            if response.status_code == 404 or response.is_success:
                removed += response.is_success
                continue
            raise self.api.remote(what, response)
        return removed

    async def _list(self, path: str, *, source: str | None) -> list[Relationship]:
        """Every page of a relationship list; a missing twin raises _Absent.

        Outgoing relationships all start at `source`; incoming ones name theirs.
        """
        found: list[Relationship] = []
        url: str | None = path
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise RemoteError(
                    f"{self.name}: GET {path}: more than {MAX_PAGES} pages; nextLink loops?",
                    connection=self.name,
                )
            what = f"GET {path}"
            response = await self.api.call("GET", url, idempotent=True)
            if response.status_code == 404 and error_code(response) == TWIN_NOT_FOUND:
                raise _Absent
            body = json_object(response)
            items = body.get("value") if body else None
            if not response.is_success or not isinstance(items, list):
                raise self.api.remote(what, response)
            for item in items:
                found.append(self._relationship(what, item, source))
            url = _next(body.get("nextLink") if body else None)
        return found

    def _relationship(self, what: str, item: object, source: str | None) -> Relationship:
        if isinstance(item, dict):
            rel_id, src = item.get("$relationshipId"), source or item.get("$sourceId")
            if isinstance(rel_id, str) and isinstance(src, str):
                problem = segment_problem(rel_id) or segment_problem(src)
                if problem is None:
                    return Relationship(src, rel_id)
                raise RemoteError(
                    f"{self.name}: {what}: a relationship that cannot be addressed: "
                    f"{problem}; nothing deleted",
                    connection=self.name,
                )
        raise RemoteError(
            f"{self.name}: {what}: a relationship without $relationshipId or $sourceId",
            connection=self.name,
        )

    async def _delete_twin(self, twin_id: str) -> bool:
        path = twin_path(twin_id)
        what = f"DELETE {path}"
        response = await self.api.call("DELETE", path, idempotent=True)
        if response.is_success:
            return True
        code = error_code(response)
        if response.status_code == 404 and code == TWIN_NOT_FOUND:
            return False
        if response.status_code == 400 and code == RELATIONSHIPS_NOT_DELETED:
            raise RemoteError(
                f"{self.name}: {what}: a relationship was added while deleting "
                f"({RELATIONSHIPS_NOT_DELETED}); the next attempt lists them again",
                connection=self.name,
                code=code,
            )
        raise self.api.remote(what, response)


def _next(link: object) -> str | None:
    """Follow a nextLink on the configured instance only: its path and query, never its
    host, so the bearer token cannot be sent anywhere else."""
    if not isinstance(link, str) or not link:
        return None
    return httpx.URL(link).raw_path.decode("ascii")


__all__ = ["AdtTwinsTarget", "Relationship", "twin_path"]
