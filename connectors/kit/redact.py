"""Every form a secret can come back in, and one scrub for all of them.

A server that echoes a key in an error body rarely echoes it as it was
sent: a JSON body escapes a non-ASCII letter (`\\u00e9`), a query string
percent-encodes it, an Authorization header carries it in base64 next to a
user name. Scrubbing the raw value alone lets those through to logs, error
messages and the store, so each secret is expanded into all of them.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, quote_plus

REDACTED = "***"
SHORTEST_SAFE = 8
"""A secret shorter than this is scrubbed but also flagged by `validate`: its
base64 forms are too short to look for without scrubbing ordinary words."""

_PERCENT = re.compile(r"%[0-9A-F]{2}")
_JSON_ESCAPE = re.compile(r"\\u[0-9a-f]{4}")
_URLSAFE = str.maketrans("+/", "-_")


def _json_forms(secret: str) -> set[str]:
    forms = {json.dumps(secret, ensure_ascii=a)[1:-1] for a in (True, False)}
    forms |= {_JSON_ESCAPE.sub(lambda m: m.group().upper().replace("\\U", "\\u"), f) for f in forms}
    # PHP's json_encode (and others) also escape the slash.
    forms |= {f.replace("/", "\\/") for f in forms}
    return forms


def _url_forms(secret: str) -> set[str]:
    forms = {quote(secret), quote(secret, safe=""), quote_plus(secret)}
    return forms | {_PERCENT.sub(lambda m: m.group().lower(), f) for f in forms}


def _base64_forms(data: bytes) -> set[str]:
    """The whole value encoded, and the characters that stay the same wherever the value
    sits inside a longer encoded string (one run per byte alignment): those catch it
    inside `Basic base64(user:password)` too."""
    encoded = base64.b64encode(data).decode()
    forms = {encoded, encoded.rstrip("=")}
    for offset in range(3):
        # Character c covers bits [6c, 6c + 6); the secret's bits are [8 * offset, 8 * end).
        text = base64.b64encode(bytes(offset) + data + bytes(2)).decode()
        first = -(-8 * offset // 6)
        last = 8 * (offset + len(data)) // 6
        core = text[first:last]
        if len(core) >= SHORTEST_SAFE:
            forms.add(core)
    return forms | {form.translate(_URLSAFE) for form in forms}


def secret_forms(secret: str) -> set[str]:
    """The raw value and the JSON-escaped, URL-encoded and base64 forms it may come back in."""
    if not secret:
        return set()
    forms = {secret} | _json_forms(secret) | _url_forms(secret)
    return forms | _base64_forms(secret.encode("utf-8"))


@lru_cache(maxsize=256)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    forms = {form for secret in secrets for form in secret_forms(secret) if form}
    if not forms:
        return None
    # Longest first: where two forms start at one place, the whole longer one goes.
    return re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of every secret replaced by `***`."""
    pattern = _pattern(secrets if isinstance(secrets, frozenset) else frozenset(secrets))
    return text if pattern is None else pattern.sub(REDACTED, text)
