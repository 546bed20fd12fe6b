"""Values written into URL paths: each one exactly one segment, never a step elsewhere.

A key that becomes a path segment must address that record and nothing else.
Percent-encoding everything outside the unreserved characters keeps `/`, `?`
and `#` inside the segment, but not dot segments: `.` and `..` are
unreserved, and the HTTP client removes them (RFC 3986 section 5.2.4), so a
Reltio crosswalk value `..` would ask for `{tenant}/entities` (a listing a
lookup could read as a match) and an ADT twin id `.` for
`/digitaltwins/relationships`. Encoding them does not help either: many
servers and proxies decode `%2E%2E` (or `%252E%252E`, or `..%2F`) back into
a step before routing. So a value is refused when any reading of it a
server might make (decoded once or more, split at `/` or `\\`, path
parameters after `;` dropped) holds a dot segment, and when it is empty,
which would address the collection instead of a record.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from connectors.kit.keys import UnsafeKey

_SEPARATORS = re.compile(r"[/\\]")
_DOT_SEGMENTS = frozenset({".", ".."})


def segment_problem(value: str) -> str | None:
    """Why `value` cannot be written as one URL path segment, or None when it can."""
    if not value:
        return "an empty value would address the collection instead of one record"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{value!r} holds a lone surrogate, which no URL can carry"
    reading = value
    while True:
        for part in _SEPARATORS.split(reading):
            if part.split(";", 1)[0] in _DOT_SEGMENTS:
                return (
                    f"{value!r} holds a dot segment ('.' or '..'), which would change the "
                    "request's path to another resource"
                )
        decoded = unquote(reading)
        # Each decoding that changes the text shortens it, so this ends.
        if decoded == reading:
            return None
        reading = decoded


def path_segment(value: str) -> str:
    """`value` percent-encoded as one path segment; UnsafeKey when no encoding is safe."""
    problem = segment_problem(value)
    if problem is not None:
        raise UnsafeKey(problem)
    return quote(value, safe="")


__all__ = ["path_segment", "segment_problem"]
