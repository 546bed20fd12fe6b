"""SQL string literals for the filters targets send (Mongoose filters, DMM WhereClauses).

A key becomes a quoted literal, and the quoting must be the one the
database that runs the text reads: SQL Server, Oracle and PostgreSQL (with
its default standard_conforming_strings) end a literal only at a quote, so
doubling quotes is complete; MySQL and MariaDB (default sql_mode) also read
a backslash as an escape, so `a\\' OR 1=1 -- ` written with doubled quotes
alone closes the literal early and widens the query. Backslashes are
escaped there too.

Some values cannot be written safely in any dialect, and are refused
(`UnsafeKey`, so the delivery is dead) instead of guessed at:

- control characters: a NUL ends the text in the C-string layers between
  an API and its database, cutting the literal (and the query) short, and
  no key legitimately holds one;
- characters that a conversion to a legacy code page "best fits" to a
  quote or a backslash (e.g. U+02BC, U+FF07): a statement built as Unicode
  and run as varchar would see a quote where the escaping saw a letter.
"""

from __future__ import annotations

import enum
import re
import unicodedata

from connectors.kit.keys import UnsafeKey


class Dialect(enum.StrEnum):
    """The database that reads the literal."""

    SQLSERVER = "sqlserver"
    ORACLE = "oracle"
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    MARIADB = "mariadb"


BACKSLASH_ESCAPING = frozenset({Dialect.MYSQL, Dialect.MARIADB})
"""Dialects that read `\\` inside a literal as an escape (MySQL's and MariaDB's default
sql_mode, without NO_BACKSLASH_ESCAPES)."""

LOOKALIKES = {
    "\u02b9": "'",
    "\u02bc": "'",
    "\u02c8": "'",
    "\u2032": "'",
    "\uff07": "'",
    "\u2216": "\\",
    "\ufe68": "\\",
    "\uff3c": "\\",
}
"""Characters Windows code-page conversions (best-fit tables) turn into a quote or a
backslash."""


_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff" + "".join(LOOKALIKES) + "]")
"""Every character `literal_problem` refuses: the control characters (Unicode category Cc
is exactly U+0000-U+001F and U+007F-U+009F, a range the standard keeps stable),
the surrogates (Cs) and the look-alikes. One C-level scan, so the common key costs
no per-character Python; tests/connectors/test_sql.py checks it against
`unicodedata` over every code point."""


def literal_problem(value: str) -> str | None:
    """Why `value` cannot be written as a literal in any dialect, or None when it can."""
    found = _REFUSED.search(value)
    if found is None:
        return None
    ch = found.group()
    if unicodedata.category(ch) in ("Cc", "Cs"):
        return (
            f"{value!r} holds a control character (U+{ord(ch):04X}), which could cut "
            "the query short"
        )
    return (
        f"{value!r} holds U+{ord(ch):04X}, which a code-page conversion can turn into "
        f"{LOOKALIKES[ch]!r} and so end the literal"
    )


def literal(value: str, dialect: Dialect, *, national: bool = False) -> str:
    """`value` as one string literal that `dialect` reads back as exactly `value`.

    `national` asks for N'...' (SQL Server reads a plain literal in the
    database's code page, where an unknown character becomes `?`); PostgreSQL
    has no such prefix and needs none. Raises UnsafeKey (see `literal_problem`).
    """
    problem = literal_problem(value)
    if problem is not None:
        raise UnsafeKey(problem)
    body = value.replace("'", "''") if "'" in value else value
    prefix = "N" if national else ""
    if dialect in BACKSLASH_ESCAPING:
        body = body.replace("\\", "\\\\")
    elif dialect is Dialect.POSTGRESQL:
        prefix = ""
        if "\\" in value:
            # E'' reads backslashes as escapes whatever standard_conforming_strings is,
            # so the literal means the same on a server that still has it off.
            prefix, body = "E", body.replace("\\", "\\\\")
    return f"{prefix}'{body}'"


__all__ = ["BACKSLASH_ESCAPING", "Dialect", "literal", "literal_problem"]
