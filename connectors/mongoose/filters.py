"""LoadCollection filters: SQL Server literals, and IN lists cut to fit the query string.

IIS refuses a request whose query string is longer than its `maxQueryString`
(2048 bytes by default) before Mongoose sees it, so the limit holds for the
whole query string as sent: the filter, the property list, recordcap and any
other parameter, URL-encoded. A batch's keys are cut into IN lists that each
fit, counting each key's encoded length once (linear in the batch); a key
that does not fit even alone is reported, never sent.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from connectors.contract import KeyMatch
from connectors.kit.sql import Dialect, literal

SEPARATOR = ","
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~ ")
"""Bytes urllib's quote_plus (what httpx encodes parameters with) sends as one
character: the unreserved ones, and space as `+`; every other byte becomes %XX."""
_KEPT_BYTES = bytes(sorted(_KEPT))
_ITEM_ID = re.compile(r"PBT=\[[^\]]*\]\s+\S+\.DT=\[[^\]]*\]\s+\S+\.ID=\[(?P<row>[^\]]+)\]")


def quote_literal(value: str) -> str:
    """A SQL string literal for a Mongoose filter: IDOs run their filters on SQL Server,
    whose only escape is a doubled quote. UnsafeKey for a value no literal carries
    safely (see connectors/kit/sql.py)."""
    return literal(value, Dialect.SQLSERVER)


def in_filter(prop: str, literals: Iterable[str]) -> str:
    """`prop IN (...)` over literals already quoted by `quote_literal`."""
    return f"{prop} IN ({SEPARATOR.join(literals)})"


def encoded_length(text: str) -> int:
    """Bytes `text` takes as a query parameter value, encoded as httpx sends it."""
    raw = text.encode()
    kept = len(raw) - len(raw.translate(None, _KEPT_BYTES))
    return 3 * len(raw) - 2 * kept


def query_length(params: Mapping[str, Any]) -> int:
    """The length of the query string httpx sends for `params`."""
    return len(str(httpx.QueryParams(params)))


@dataclass(frozen=True)
class FilterBudget:
    """How many query-string bytes a filter of one shape may add to a call.

    `fixed` is the length of the whole query string with the list (or value) left
    empty; each literal adds its encoded length, and each literal after the first
    an encoded separator.
    """

    fixed: int
    limit: int

    @classmethod
    def of(
        cls, params_for: Callable[[str], Mapping[str, Any]], empty: str, limit: int
    ) -> FilterBudget:
        """The budget of calls whose parameters `params_for(filter)` builds, measured with
        the filter `empty` (the shape without any literal)."""
        return cls(query_length(params_for(empty)), limit)

    def alone(self, literal_text: str) -> int:
        """The query-string length of a call carrying this one literal."""
        return self.fixed + encoded_length(literal_text)

    def split(self, literals: Mapping[str, str]) -> tuple[list[list[str]], dict[str, int]]:
        """Keys (in order) cut into lists whose IN filter fits, and the keys too long to
        fit alone, each with the query-string length it would need."""
        # Encoded lengths add up over concatenation, so one measure of the whole list
        # says whether it fits as one: the usual batch, then costing no per-key work.
        if self.fixed + encoded_length(SEPARATOR.join(literals.values())) <= self.limit:
            return ([list(literals)] if literals else []), {}
        separator = encoded_length(SEPARATOR)
        chunks: list[list[str]] = []
        too_long: dict[str, int] = {}
        chunk: list[str] = []
        used = self.fixed
        for key, text in literals.items():
            cost = encoded_length(text)
            if self.fixed + cost > self.limit:
                too_long[key] = self.fixed + cost
                continue
            if chunk and used + separator + cost > self.limit:
                chunks.append(chunk)
                chunk, used = [], self.fixed
            if chunk:
                used += separator
            chunk.append(key)
            used += cost
        if chunk:
            chunks.append(chunk)
        return chunks, too_long


def row_pointer(item_id: str) -> str | None:
    match = _ITEM_ID.search(item_id)
    return match.group("row") if match else None


def match_rows(
    keys: Sequence[str], rows: Sequence[Sequence[Any]], collation: KeyMatch
) -> dict[str, list[str]]:
    """key -> ItemIds of the returned rows that have it.

    The server matched the filter with its own collation, so a row may come
    back for 'JRossi' holding 'jrossi'. Exact matches win; otherwise a key
    takes the rows equal to it under the connection's collation (folded only
    when some key has no exact match). Every row used was selected by the
    server for some key of the batch.
    """
    exact: dict[str, list[str]] = defaultdict(list)
    for item_id, value in rows:
        if value is not None:
            exact[value if type(value) is str else str(value)].append(item_id)
    found: dict[str, list[str]] = {}
    loose: dict[str, list[str]] | None = None
    for key in keys:
        ids = exact.get(key)
        if not ids:
            if loose is None:
                loose = defaultdict(list)
                for value, item_ids in exact.items():
                    loose[collation.fold(value)].extend(item_ids)
            ids = loose.get(collation.fold(key), [])
        found[key] = ids if len(ids) < 2 else list(dict.fromkeys(ids))
    return found
