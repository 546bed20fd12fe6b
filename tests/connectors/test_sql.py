from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.dmm.where import compile_where
from connectors.kit.keys import UnsafeKey
from connectors.kit.sql import BACKSLASH_ESCAPING, LOOKALIKES, Dialect, literal, literal_problem

INJECTION = "a\\' OR 1=1 -- "
"""Issue 10's example: closes a literal early wherever a backslash escapes a quote."""


@pytest.mark.parametrize(
    ("value", "dialect", "expected"),
    [
        ("o'brien", Dialect.SQLSERVER, "'o''brien'"),
        ("o'brien", Dialect.ORACLE, "'o''brien'"),
        ("o'brien", Dialect.POSTGRESQL, "'o''brien'"),
        ("o'brien", Dialect.MYSQL, "'o''brien'"),
        ("a\\b", Dialect.SQLSERVER, "'a\\b'"),
        ("a\\b", Dialect.ORACLE, "'a\\b'"),
        ("a\\b", Dialect.MYSQL, "'a\\\\b'"),
        ("a\\b", Dialect.MARIADB, "'a\\\\b'"),
        ("a\\b", Dialect.POSTGRESQL, "E'a\\\\b'"),
        (INJECTION, Dialect.SQLSERVER, "'a\\'' OR 1=1 -- '"),
        (INJECTION, Dialect.MYSQL, "'a\\\\'' OR 1=1 -- '"),
        ("", Dialect.MYSQL, "''"),
        ("O\u2019Brien", Dialect.SQLSERVER, "'O\u2019Brien'"),
    ],
)
def test_literals_per_dialect(value: str, dialect: Dialect, expected: str) -> None:
    assert literal(value, dialect) == expected


def test_national_prefix_where_the_dialect_has_one() -> None:
    assert literal("Zoë", Dialect.SQLSERVER, national=True) == "N'Zoë'"
    assert literal("Zoë\\", Dialect.MYSQL, national=True) == "N'Zoë\\\\'"
    assert literal("Zoë", Dialect.POSTGRESQL, national=True) == "'Zoë'"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a\x00b", "holds a control character (U+0000), which could cut the query short"),
        ("a\nb", "holds a control character (U+000A)"),
        ("a\x1ab", "holds a control character (U+001A)"),
        ("\ud800", "holds a control character (U+D800)"),
        ("O\u02bcBrien", 'holds U+02BC, which a code-page conversion can turn into "\'"'),
        ("O\uff07Brien", "holds U+FF07"),
        ("a\uff3cb", "holds U+FF3C, which a code-page conversion can turn into '\\\\'"),
    ],
)
@pytest.mark.parametrize("dialect", list(Dialect))
def test_values_no_literal_carries_safely_are_refused(
    value: str, reason: str, dialect: Dialect
) -> None:
    with pytest.raises(UnsafeKey) as refused:
        literal(value, dialect)
    assert refused.value.verdict.startswith(f"unsafe key: {value!r} {reason}")


def test_the_injection_widens_only_with_quote_doubling_on_a_backslash_database() -> None:
    """The emulator's evaluator reads the WhereClause as MySQL would: quote doubling
    alone selects rows 1 and 2, the MySQL literal only the row holding the text."""
    key = "a\\') OR [Id] IN (1, 2) -- "
    rows = [{"Id": 1, "Email": "x"}, {"Id": 2, "Email": "y"}, {"Id": 3, "Email": key}]

    def selected(where: str) -> list[int]:
        predicate = compile_where(where, ["Id", "Email"], backslash_escapes=True)
        return [r["Id"] for r in rows if predicate(r)]

    doubled_only = literal(key, Dialect.SQLSERVER)
    assert selected(f"[Email] IN ({doubled_only})") == [1, 2]
    assert selected(f"[Email] IN ({literal(key, Dialect.MYSQL)})") == [3]


_TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs"), blacklist_characters="".join(LOOKALIKES)
    )
)


@given(_TEXT)
@pytest.mark.parametrize("dialect", [Dialect.SQLSERVER, Dialect.MYSQL])
def test_a_literal_reads_back_as_exactly_its_value(dialect: Dialect, value: str) -> None:
    where = f"[Email] = {literal(value, dialect, national=True)}"
    predicate = compile_where(where, ["Email"], backslash_escapes=dialect in BACKSLASH_ESCAPING)
    assert predicate({"Email": value}) is True
    assert predicate({"Email": value + "x"}) is False


def test_the_fast_scan_refuses_exactly_what_the_rules_name() -> None:
    """`literal_problem` finds refused characters with one regex; over every code point it
    must refuse exactly the control characters, surrogates and look-alikes."""
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        refused = unicodedata.category(ch) in ("Cc", "Cs") or ch in LOOKALIKES
        assert (literal_problem(f"a{ch}b") is not None) is refused, f"U+{code:04X}"
