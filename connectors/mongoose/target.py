"""Delete rows of a Mongoose IDO collection through the IDO REST API (v1 or v2).

An ItemId carries the row's last-modified timestamp, which no source knows,
so by default the target first finds ItemIds by a natural key
(LoadCollection), then deletes them in one call (`deleteitems` in v1,
UpdateCollection with Action 4 in v2; connectors/mongoose/api.py holds what
differs between the versions). That call is
all-or-nothing and its error codes are undocumented, so the target never
interprets them: on any failure it deletes the items one at a time and, for
each that still fails, looks again at what the collection now holds. A row
that is gone counts as deleted, which also makes re-sending after a lost
answer safe.

Without `lookup` the rendered key is the ItemId itself. The re-check then
finds the row by the RowPointer inside that ItemId (`...ID=[<RowPointer>]`;
CSI IDOs expose it as the `RowPointer` property): gone is done, a row
modified since the source saw it is dead, since no retry can make the
template produce its new ItemId.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain

from connectors.contract import (
    ConnectorError,
    Delivery,
    Outcome,
    RemoteError,
    RetriableError,
    sql_server_keys,
)
from connectors.kit.http import HttpClient
from connectors.kit.keys import UnmappedKey
from connectors.kit.target import HttpTarget
from connectors.mongoose.client import DeleteAnswer, MongooseApi
from connectors.mongoose.filters import (
    FilterBudget,
    in_filter,
    match_rows,
    quote_literal,
    row_pointer,
)
from connectors.mongoose.settings import MongooseConnection, MongooseTargetSettings

ROW_POINTER = "RowPointer"


# --- the target -------------------------------------------------------------------


Positions = list[int]
"""Deliveries by their position in the batch: every delivery of every batch is
planned, so the plan holds ints rather than an object per delivery."""

Plan = dict[str, dict[str, Positions]]
"""ItemId -> each key that found it -> the deliveries with that key."""


class _Verdicts:
    """One outcome per delivery position, filled in as the batch is worked through."""

    def __init__(self, batch: Sequence[Delivery]) -> None:
        self._batch = batch
        self._outcomes: list[Outcome | None] = [None] * len(batch)

    def done(self, positions: Iterable[int], detail: str) -> None:
        batch, outcomes = self._batch, self._outcomes
        for i in positions:
            outcomes[i] = Outcome.done(batch[i].delivery_id, detail)

    def retry(self, positions: Iterable[int], reason: str, after: float | None = None) -> None:
        for i in positions:
            self._outcomes[i] = Outcome.retry(self._batch[i].delivery_id, reason, after)

    def dead(self, positions: Iterable[int], reason: str) -> None:
        for i in positions:
            self._outcomes[i] = Outcome.dead(self._batch[i].delivery_id, reason)

    def failed(self, positions: Iterable[int], error: ConnectorError) -> None:
        after = error.retry_after if isinstance(error, RetriableError) else None
        self.retry(positions, str(error), after)

    def result(self) -> list[Outcome]:
        missing = [
            d.delivery_id for d, o in zip(self._batch, self._outcomes, strict=True) if o is None
        ]
        if missing:
            raise AssertionError(f"no outcome for deliveries {missing}")
        return [o for o in self._outcomes if o is not None]


def _every(by_key: Mapping[str, Positions]) -> Iterable[int]:
    return chain.from_iterable(by_key.values())


class MongooseTarget(HttpTarget[MongooseConnection, MongooseTargetSettings]):
    """Deletes the rows of one IDO that deliveries name, by natural key or ItemId."""

    api: MongooseApi

    def client(self, name: str, connection: MongooseConnection) -> HttpClient:
        return connection.http_client(name, base_url=connection.url)

    def setup(self, connection: MongooseConnection) -> None:
        self.key_match = sql_server_keys(connection.collation == "case_sensitive")
        self._template = self.settings.key_template()
        self.api = MongooseApi(self.name, connection, self._http)
        self._budget = self._filter_budget(connection.max_query_string)

    def _filter_budget(self, limit: int) -> FilterBudget:
        """The query-string budget of the one filter shape this target sends in bulk:
        the lookup's IN list, or the RowPointer re-check of an ItemId."""
        ido, lookup, dialect = self.settings.ido, self.settings.lookup, self.api.dialect
        if lookup is None:
            return FilterBudget.of(
                lambda where: dialect.load(ido, ["_ItemId"], where).params or {},
                f"{ROW_POINTER} = ",
                limit,
            )
        prop = lookup.property
        return FilterBudget.of(
            lambda where: dialect.load(ido, ["_ItemId", prop], where).params or {},
            in_filter(prop, []),
            limit,
        )

    async def population(self) -> int | None:
        """How many rows the IDO holds, for the mass-delete guard's max_fraction.

        LoadCollection has no count, so this loads the ItemIds alone (`recordcap`
        0: every row): one read per guarded run, worth it to stop a mass
        deletion before it starts.
        """
        return len(await self.api.load(self.settings.ido, ["_ItemId"], ""))

    async def send(self, batch: Sequence[Delivery]) -> list[Outcome]:
        verdicts = _Verdicts(batch)
        await self._delete(await self._plan(batch, verdicts), verdicts)
        return verdicts.result()

    async def preview(self, batch: Sequence[Delivery]) -> list[Outcome]:
        """What `send` would do, read-only: "would delete <ItemId>", absent, or dead."""
        verdicts = _Verdicts(batch)
        for item_id, by_key in (await self._plan(batch, verdicts)).items():
            verdicts.done(_every(by_key), f"would delete {item_id}")
        return verdicts.result()

    async def _plan(self, batch: Sequence[Delivery], verdicts: _Verdicts) -> Plan:
        groups: dict[str, Positions] = {}
        # key -> the literal its filter carries (the key, or the RowPointer of an
        # ItemId), made once per key before any call, so no filter is ever sent
        # half-planned. An ItemId key without a RowPointer has none.
        literals: dict[str, str] = {}
        render, lookup = self._template.render, self.settings.lookup is not None
        for index, delivery in enumerate(batch):
            try:
                key = render(delivery.fields)
                group = groups.get(key)
                if group is None:
                    value = key if lookup else row_pointer(key)
                    if value is not None:
                        literals[key] = quote_literal(value)
            except UnmappedKey as exc:
                verdicts.dead([index], exc.verdict)
                continue
            if group is None:
                groups[key] = [index]
            else:
                group.append(index)
        if self.settings.lookup is None:
            return self._plan_item_ids(groups, literals, verdicts)
        return await self._plan_lookup(self.settings.lookup.property, groups, literals, verdicts)

    def _too_long(self, key: str, needed: int) -> str:
        shown = key if len(key) <= 60 else key[:60] + "..."
        return (
            f"key too long: a LoadCollection for {shown!r} needs a query string of {needed} "
            f"bytes, over connections.{self.name}.max_query_string ({self._budget.limit}, "
            "the server's IIS maxQueryString); shorten the key or raise both limits"
        )

    # -- planning: which ItemId each delivery deletes

    def _plan_item_ids(
        self,
        groups: Mapping[str, Positions],
        literals: Mapping[str, str],
        verdicts: _Verdicts,
    ) -> Plan:
        plan: Plan = {}
        for key, items in groups.items():
            pointer = literals.get(key)
            if pointer is None:
                verdicts.dead(
                    items,
                    f"no key: {key!r} is not a Mongoose ItemId (PBT=[..] ..DT=[..] ..ID=[..]); "
                    "to delete by a natural key set the target's lookup.property",
                )
            elif (needed := self._budget.alone(pointer)) > self._budget.limit:
                # Its failure could never be re-checked, so it is not deleted blind.
                verdicts.dead(items, self._too_long(key, needed))
            else:
                plan[key] = {key: items}
        return plan

    async def _plan_lookup(
        self,
        prop: str,
        groups: Mapping[str, Positions],
        literals: Mapping[str, str],
        verdicts: _Verdicts,
    ) -> Plan:
        plan: Plan = defaultdict(dict)
        chunks, too_long = self._budget.split(literals)
        for key, needed in too_long.items():
            verdicts.dead(groups[key], self._too_long(key, needed))
        for chunk in chunks:
            try:
                found = await self._find(prop, chunk, [literals[key] for key in chunk])
            except (RetriableError, RemoteError) as exc:
                verdicts.failed(chain.from_iterable(groups[key] for key in chunk), exc)
                continue
            for key in chunk:
                item_ids = found[key]
                if not item_ids:
                    verdicts.done(groups[key], "absent")
                elif len(item_ids) > 1:
                    verdicts.dead(groups[key], self._ambiguous(prop, key, len(item_ids)))
                else:
                    plan[item_ids[0]][key] = groups[key]
        return plan

    async def _find(
        self, prop: str, keys: Sequence[str], literals: Sequence[str]
    ) -> dict[str, list[str]]:
        """ItemIds per key; `literals` are the keys' quoted forms, in the same order."""
        rows = await self.api.load(self.settings.ido, ["_ItemId", prop], in_filter(prop, literals))
        return match_rows(keys, rows, self.key_match)

    def _ambiguous(self, prop: str, key: str, count: int) -> str:
        return (
            f"ambiguous: {count} rows of {self.settings.ido} have {prop}={quote_literal(key)}; "
            "nothing deleted"
        )

    # -- deleting

    async def _delete(self, plan: Plan, verdicts: _Verdicts) -> None:
        if not plan:
            return
        everyone = [i for by_key in plan.values() for group in by_key.values() for i in group]
        try:
            answer = await self._delete_items(list(plan))
        except (RetriableError, RemoteError) as exc:
            verdicts.failed(everyone, exc)
            return
        if answer.ok:
            verdicts.done(everyone, "deleted")
            return
        for item_id, by_key in plan.items():
            await self._delete_alone(item_id, by_key, answer if len(plan) == 1 else None, verdicts)

    async def _delete_items(self, item_ids: Sequence[str]) -> DeleteAnswer:
        return await self.api.delete_items(self.settings.ido, item_ids, self.settings.delete_method)

    async def _delete_alone(
        self,
        item_id: str,
        by_key: Mapping[str, Positions],
        failure: DeleteAnswer | None,
        verdicts: _Verdicts,
    ) -> None:
        items = list(_every(by_key))
        if failure is None:
            try:
                failure = await self._delete_items([item_id])
            except (RetriableError, RemoteError) as exc:
                verdicts.failed(items, exc)
                return
            if failure.ok:
                verdicts.done(items, "deleted")
                return
        if self.settings.lookup is None:
            await self._recheck_item_id(item_id, items, failure.message, verdicts)
        else:
            prop = self.settings.lookup.property
            for key, group in by_key.items():
                await self._recheck_key(prop, key, item_id, group, failure.message, verdicts)

    async def _recheck_key(
        self,
        prop: str,
        key: str,
        item_id: str,
        items: Positions,
        message: str,
        verdicts: _Verdicts,
    ) -> None:
        """Look the key up again: gone is done, a fresh ItemId is tried once."""
        try:
            now = (await self._find(prop, [key], [quote_literal(key)]))[key]
        except (RetriableError, RemoteError) as exc:
            verdicts.retry(items, f"{message}; re-check failed: {exc}")
            return
        if not now:
            verdicts.done(items, "absent")
        elif len(now) > 1:
            verdicts.dead(items, self._ambiguous(prop, key, len(now)))
        elif now[0] == item_id:
            verdicts.retry(items, message)
        else:
            try:
                again = await self._delete_items(now)
            except (RetriableError, RemoteError) as exc:
                verdicts.failed(items, exc)
                return
            if again.ok:
                verdicts.done(items, "deleted (ItemId refreshed)")
            else:
                verdicts.retry(items, again.message)

    async def _recheck_item_id(
        self, item_id: str, items: Positions, message: str, verdicts: _Verdicts
    ) -> None:
        """Find the row by the RowPointer inside the ItemId: gone is done; a row
        modified since the source saw it cannot be fixed by retrying."""
        pointer = row_pointer(item_id)
        assert pointer is not None
        try:
            rows = await self.api.load(
                self.settings.ido, ["_ItemId"], f"{ROW_POINTER} = {quote_literal(pointer)}"
            )
        except (RetriableError, RemoteError) as exc:
            verdicts.retry(items, f"{message}; re-check failed: {exc}")
            return
        current = [row[0] for row in rows]
        if not current:
            verdicts.done(items, "absent")
        elif current == [item_id]:
            verdicts.retry(items, message)
        elif len(current) == 1:
            verdicts.dead(
                items,
                f"stale ItemId: the {self.settings.ido} row was modified after the source "
                f"recorded {item_id!r} (now {current[0]!r}), so the key template cannot "
                f"name it; {message}",
            )
        else:
            verdicts.retry(items, f"{message}; re-check found {len(current)} rows")
