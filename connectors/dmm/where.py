"""The WhereClause evaluator of the DMM emulator: which rows a delete execution selects.

A null or blank WhereClause selects every row of the entity (DMM's semantics). The
evaluator understands `[Attr] IN (lit, ...)`, `Attr = lit`, `"Attr"`, OR and
parentheses, with literals 'text' ('' escapes a quote), N'text' and integers;
anything else raises `SqlError` with an SQL Server-like message. Text compares
exactly (a case-sensitive collation). With `backslash_escapes` it reads the clause
as MySQL and MariaDB do by default: a backslash escapes the next character inside a
literal, and `-- ` (followed by a space) and `#` start comments, so a client that
escapes only quotes can be shown to widen a delete.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class SqlError(Exception):
    """What SQL Server would answer to a WhereClause the emulator cannot run."""


Key = int | str
Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]

_LEXEMES = r"""\s*(?:
        (?P<bracket>\[(?:[^\]]|\]\])+\])
      | (?P<quoted>"(?:[^"]|"")+")
      | (?P<string>{string})
      | (?P<int>-?[0-9]+(?![A-Za-z0-9_.]))
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>[(),=])
      {comment}
    )"""
_TOKEN = re.compile(_LEXEMES.format(string=r"[Nn]?'(?:[^']|'')*'", comment=""), re.VERBOSE)
_TOKEN_BACKSLASH = re.compile(
    _LEXEMES.format(
        string=r"[Nn]?'(?:[^'\\]|''|\\.)*'", comment=r"| (?P<comment>(?:--(?=\s|\Z)|\#)[^\n]*)"
    ),
    re.VERBOSE | re.DOTALL,
)
_MYSQL_ESCAPES = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a"}
r"""MySQL's escape sequences in a literal; `\%` and `\_` keep their backslash, any other
escaped character stands for itself."""


def _unescape(body: str, backslash: bool) -> str:
    if not backslash:
        return body.replace("''", "'")
    out: list[str] = []
    chars = iter(body)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars)
            out.append(_MYSQL_ESCAPES.get(nxt, "\\" + nxt if nxt in "%_" else nxt))
        elif ch == "'":
            out.append(next(chars))
        else:
            out.append(ch)
    return "".join(out)


def _tokens(text: str, backslash: bool = False) -> list[tuple[str, Any, str]]:
    """(kind, value, source text) for each token; SqlError at the first unknown one."""
    out: list[tuple[str, Any, str]] = []
    pos = 0
    pattern = _TOKEN_BACKSLASH if backslash else _TOKEN
    while pos < len(text):
        if not text[pos:].strip():
            break
        match = pattern.match(text, pos)
        if match is None:
            near = text[pos:].strip()[:20]
            raise SqlError(f"Incorrect syntax near '{near}'.")
        kind = match.lastgroup or ""
        source = match.group(kind)
        value: Any = source
        pos = match.end()
        if kind == "comment":
            continue
        if kind == "bracket":
            kind, value = "ident", source[1:-1].replace("]]", "]")
        elif kind == "quoted":
            kind, value = "ident", source[1:-1].replace('""', '"')
        elif kind == "string":
            value = _unescape(source[source.index("'") + 1 : -1], backslash)
        elif kind == "int":
            value = int(source)
        elif kind == "word":
            upper = source.upper()
            kind, value = ("keyword", upper) if upper in ("IN", "OR") else ("ident", source)
            if upper in ("AND", "NOT", "LIKE", "IS", "NULL", "SELECT", "BETWEEN", "EXISTS"):
                raise SqlError(f"Incorrect syntax near '{source}' (not supported by the emulator).")
        out.append((kind, value, source))
    return out


class _Parser:
    """clause := term (OR term)* ; term := '(' clause ')' | ident IN '(' lits ')' | ident = lit"""

    def __init__(self, text: str, columns: Sequence[str], backslash: bool = False) -> None:
        self.tokens = _tokens(text, backslash)
        self.pos = 0
        self.columns = {c.casefold(): c for c in columns}

    def parse(self) -> Predicate:
        if not self.tokens:
            raise SqlError("Incorrect syntax near the end of the WhereClause.")
        predicate = self._clause()
        if self.pos != len(self.tokens):
            raise SqlError(f"Incorrect syntax near '{self.tokens[self.pos][2]}'.")
        return predicate

    def _peek(self) -> tuple[str, Any, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, kind: str, value: Any = None) -> tuple[str, Any, str]:
        token = self._peek()
        if token is None:
            raise SqlError("Incorrect syntax near the end of the WhereClause.")
        if token[0] != kind or (value is not None and token[1] != value):
            raise SqlError(f"Incorrect syntax near '{token[2]}'.")
        self.pos += 1
        return token

    def _clause(self) -> Predicate:
        terms = [self._term()]
        while (token := self._peek()) is not None and token[:2] == ("keyword", "OR"):
            self.pos += 1
            terms.append(self._term())
        if len(terms) == 1:
            return terms[0]
        return lambda row: any(term(row) for term in terms)

    def _term(self) -> Predicate:
        token = self._peek()
        if token is not None and token[:2] == ("op", "("):
            self.pos += 1
            inner = self._clause()
            self._take("op", ")")
            return inner
        name = self._take("ident")[1]
        column = self.columns.get(str(name).casefold())
        if column is None:
            raise SqlError(f"Invalid column name '{name}'.")
        token = self._peek()
        if token is not None and token[:2] == ("keyword", "IN"):
            self.pos += 1
            self._take("op", "(")
            values = [self._literal()]
            while (nxt := self._peek()) is not None and nxt[:2] == ("op", ","):
                self.pos += 1
                values.append(self._literal())
            self._take("op", ")")
            return lambda row: any(_equal(row.get(column), v) for v in values)
        self._take("op", "=")
        value = self._literal()
        return lambda row: _equal(row.get(column), value)

    def _literal(self) -> Key:
        token = self._peek()
        if token is None or token[0] not in ("string", "int"):
            raise SqlError(
                f"Incorrect syntax near '{token[2] if token else 'the end of the WhereClause'}'."
            )
        self.pos += 1
        value: Key = token[1]
        return value


def _equal(cell: Any, literal: Key) -> bool:
    """SQL Server's comparison: text to a number converts the text, or fails."""
    if cell is None:
        return False
    if isinstance(cell, int) and isinstance(literal, str):
        return cell == _to_int(literal)
    if isinstance(cell, str) and isinstance(literal, int):
        return _to_int(cell) == literal
    return bool(cell == literal)


def _to_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise SqlError(
            f"Conversion failed when converting the nvarchar value '{text}' to data type int."
        ) from None


def compile_where(
    where: str | None, columns: Sequence[str], *, backslash_escapes: bool = False
) -> Predicate:
    """The rows a WhereClause selects; null or blank selects every row, as in DMM.
    `backslash_escapes` reads it as MySQL would (see this module's docstring)."""
    if where is None or not where.strip():
        return lambda row: True
    return _Parser(where, columns, backslash_escapes).parse()
