"""Records a source could not use, in the journal's terms: redacted, keyed by content.

A malformed record has no key of its own, so it is keyed by a digest of its
redacted fields: the same row read again in an overlapping window is a
duplicate like any record, and two different rows are two dead letters.
Fields are redacted by the rule the logs follow (`scrub_mapping`): a field
whose name marks a secret (key, password, token, secret and the like) becomes
"***", and the value of every configured secret is cut out wherever it appears.

A record the store cannot hold is malformed too, by one rule for SQLite and
PostgreSQL alike: a NUL or a lone surrogate in any text (PostgreSQL refuses the
one, the driver cannot encode the other; a lone surrogate stored anyway would
come back as another key), or a number JSON cannot write (inf, nan). Its dead
letter keeps its key and fields escaped (`\\x00`, `\\udc00`), so it names exactly
what the source sent and never fails the transaction of the rest of its page.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from connectors.contract import RejectedRecord, SourceRecord
from state import NewRecord
from syncengine.logs import SECRETS, scrub_mapping

KEY_PREFIX = "malformed:"
"""Longer than any Goose RECORD_ID (25 characters) with the digest: never a real key."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def escape(text: str) -> str:
    """`text` with what no store can hold written out (`\\x00`, `\\udc00`); other text as it is."""
    if _UNSTORABLE.search(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {escape(str(k)): _escaped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escaped(v) for v in value]
    return value


def _flaw_of(text: str) -> str | None:
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    return "a NUL character" if char == "\x00" else f"a lone surrogate (U+{ord(char):04X})"


_PLAIN = frozenset({int, bool, type(None)})


def _plainly_storable(record: SourceRecord) -> bool:
    """The common case in one regular-expression search: flat fields of text, whole
    numbers and finite floats, nothing the store cannot hold (every record of every
    answer passes here, so it is kept cheap)."""
    texts = [record.key, record.origin]
    for name, value in record.fields.items():
        if type(name) is not str:
            return False
        texts.append(name)
        kind = type(value)
        if kind is str:
            texts.append(value)
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind not in _PLAIN:
            return False
    return _UNSTORABLE.search("".join(texts)) is None


def unstorable(record: SourceRecord) -> str | None:
    """Why the store cannot hold `record` as it is, or None. Walks the fields without
    recursion: a source's nesting depth is not this check's to bound."""
    if _plainly_storable(record):
        return None
    for text, where in ((record.key, "its key"), (record.origin, "its origin")):
        if (flaw := _flaw_of(text)) is not None:
            return f"{flaw} in {where}, which no store can hold"
    stack: list[tuple[str, Any]] = [(escape(str(k)), v) for k, v in record.fields.items()]
    stack += [(escape(str(k)), k) for k in record.fields if isinstance(k, str)]
    while stack:
        name, value = stack.pop()
        flaw = None
        if isinstance(value, str):
            flaw = _flaw_of(value)
        elif isinstance(value, float) and not math.isfinite(value):
            flaw = f"a number JSON cannot hold ({value!r})"
        elif isinstance(value, Mapping):
            stack += [(name, k) for k in value if isinstance(k, str)]
            stack += [(name, v) for v in value.values()]
        elif isinstance(value, list | tuple):
            stack += [(name, v) for v in value]
        if flaw is not None:
            return f"{flaw} in field {name!r}, which no store can hold"
    return None


def screened(records: Iterable[SourceRecord]) -> tuple[list[SourceRecord], list[RejectedRecord]]:
    """The records the store can hold, and the others as rejected records (escaped)."""
    good: list[SourceRecord] = []
    bad: list[RejectedRecord] = []
    for record in records:
        reason = unstorable(record)
        if reason is None:
            good.append(record)
            continue
        fields: dict[str, Any] = {"record_key": record.key, "fields": dict(record.fields)}
        if record.origin:
            fields["origin"] = record.origin
        bad.append(RejectedRecord(record.stream, fields, reason))
    return good, bad


def rejected_records(rejected: Sequence[RejectedRecord]) -> list[NewRecord]:
    records = []
    for reject in rejected:
        fields = _escaped(scrub_mapping(dict(reject.fields)))
        text = json.dumps(fields, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        reason = escape(SECRETS.scrub(reject.reason))
        records.append(NewRecord(f"{KEY_PREFIX}{digest}", fields, rejected=reason))
    return records


__all__ = ["KEY_PREFIX", "escape", "rejected_records", "screened", "unstorable"]
