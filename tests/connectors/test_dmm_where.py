"""The DMM emulator's WhereClause evaluator, alone: what rows a clause selects, and
what SQL Server (or MySQL with `backslash_escapes`) would refuse."""

from __future__ import annotations

import pytest

from connectors.dmm.where import SqlError, compile_where

ROWS = [
    {"Id": 1, "Email": "a@x", "Code": "10"},
    {"Id": 2, "Email": "o'b", "Code": "x"},
    {"Id": 3, "Email": "x') OR ('1'='1", "Code": None},
]


@pytest.mark.parametrize(
    ("where", "selected"),
    [
        ("[Id] IN (1, 3)", [1, 3]),
        ("Id = 2", [2]),
        ("\"Email\" = 'a@x'", [1]),
        ("[Email] IN ('o''b')", [2]),
        ("[Email] IN (N'o''b', 'zzz')", [2]),
        ("Id = 1 OR Email = 'o''b'", [1, 2]),
        ("(Id = 1) OR ([Id] IN (3))", [1, 3]),
        ("[Email] IN ('x'') OR (''1''=''1')", [3]),
        ("[id] = -1", []),
        ("email = 'A@X'", []),
        (None, [1, 2, 3]),
        ("", [1, 2, 3]),
        ("   ", [1, 2, 3]),
        ("[Id] IN ('1')", [1]),
    ],
)
def test_where(where: str | None, selected: list[int]) -> None:
    predicate = compile_where(where, ["Id", "Email", "Code"])
    assert [r["Id"] for r in ROWS if predicate(r)] == selected


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("Id = 1; DELETE FROM x", "Incorrect syntax near '; DELETE"),
        ("Id = 1 --", "Incorrect syntax near '--'"),
        ("Id IN ('x') OR ('1'='1')", "Incorrect syntax near ''1''"),
        ("Id = 1 AND Email = 'a'", "Incorrect syntax near 'AND'"),
        ("Id IS NULL", "Incorrect syntax near 'IS'"),
        ("Nope = 1", "Invalid column name 'Nope'"),
        ("[Id] IN ()", "Incorrect syntax near ')'"),
        ("[Id] IN (1", "near the end"),
        ("Email = 'open", "Incorrect syntax near"),
        ("Id = Email", "Incorrect syntax near 'Email'"),
        ("1 = 1", "Incorrect syntax near '1'"),
        ("Id", "near the end"),
    ],
)
def test_where_refused(where: str, message: str) -> None:
    with pytest.raises(SqlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predicate = compile_where(where, ["Id", "Email", "Code"])
        [predicate(r) for r in ROWS]


@pytest.mark.parametrize(
    ("where", "selected"),
    [
        ("[Email] IN ('o\\'b')", [2]),
        ("[Email] IN ('o''b')", [2]),
        ("[Email] = 'a\\@x'", [1]),
        ("[Email] IN ('a@x\\'') OR [Id] IN (3) -- ')", [3]),
        ("[Email] IN ('a@x\\'') OR [Id] IN (3) # ')", [3]),
        ("[Email] = 'a@x' -- a comment", [1]),
    ],
)
def test_where_with_backslash_escapes_reads_as_mysql(where: str, selected: list[int]) -> None:
    predicate = compile_where(where, ["Id", "Email", "Code"], backslash_escapes=True)
    assert [r["Id"] for r in ROWS if predicate(r)] == selected


@pytest.mark.parametrize("where", ["[Email] = 'a\\'", "[Email] = 'a@x' --x", "[Email] = 'a@x' # x"])
def test_where_with_backslash_escapes_refused(where: str) -> None:
    with pytest.raises(SqlError, match="Incorrect syntax near"):
        compile_where(where, ["Email"], backslash_escapes="#" not in where)


def test_where_conversion_errors_like_sql_server() -> None:
    text_vs_int = compile_where("[Id] IN ('abc')", ["Id"])
    with pytest.raises(
        SqlError, match="Conversion failed when converting the nvarchar value 'abc'"
    ):
        text_vs_int({"Id": 1})
    int_vs_text = compile_where("Code = 10", ["Code"])
    assert int_vs_text({"Code": "10"}) is True
    assert int_vs_text({"Code": None}) is False
    with pytest.raises(SqlError, match="value 'x' to data type int"):
        int_vs_text({"Code": "x"})
