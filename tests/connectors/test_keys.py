from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.kit.keys import KeyTemplate, UnmappedKey


@pytest.mark.parametrize(
    ("template", "fields", "expected"),
    [
        ("{SYKEY}", {"SYKEY": "jrossi"}, "jrossi"),
        ("USR-{RECORD_ID}", {"RECORD_ID": "0-7"}, "USR-0-7"),
        ("{A}/{B}", {"A": "x", "B": 3}, "x/3"),
        ("{{{A}}}", {"A": "x"}, "{x}"),
        ("{A}-{A}", {"A": "x"}, "x-x"),
        ("{SYKEY}", {"SYKEY": " padded "}, " padded "),
        ("{O'Brien}", {"O'Brien": "y"}, "y"),
    ],
)
def test_renders(template: str, fields: dict[str, Any], expected: str) -> None:
    assert KeyTemplate(template).render(fields) == expected


def test_fields_in_order_without_repeats() -> None:
    assert KeyTemplate("{B}-{A}-{B}").fields == ("B", "A")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("CONSTANT", "uses no field"),
        ("{{SYKEY}}", "uses no field"),
        ("{}", "needs a name"),
        ("{0}", "positional"),
        ("{SYKEY!r}", "conversions"),
        ("{SYKEY:>10}", "format specs"),
        ("{SYKEY:{W}}", "format specs"),
        ("{row.id}", "attribute or index"),
        ("{row[0]}", "attribute or index"),
        ("{SYKEY", "write fields as {NAME}"),
        ("SYKEY}", "write fields as {NAME}"),
    ],
)
def test_rejected_at_config_time(template: str, message: str) -> None:
    with pytest.raises(ValueError, match="key template") as info:
        KeyTemplate(template)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "field 'SYKEY' is missing (fields: none)"),
        ({"OTHER": "x"}, "field 'SYKEY' is missing (fields: OTHER)"),
        ({"SYKEY": None}, "field 'SYKEY' is null"),
        ({"SYKEY": ""}, "field 'SYKEY' is blank"),
        ({"SYKEY": " \t"}, "field 'SYKEY' is blank"),
        ({"SYKEY": 1.5}, "holds a float"),
        ({"SYKEY": True}, "holds a bool"),
        ({"SYKEY": {"a": 1}}, "holds a dict"),
    ],
)
def test_unmapped(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(UnmappedKey) as info:
        KeyTemplate("{SYKEY}").render(fields)
    assert reason in info.value.reason


def test_blank_field_is_unmapped_even_inside_literal_text() -> None:
    with pytest.raises(UnmappedKey, match="RECORD_ID"):
        KeyTemplate("USR-{RECORD_ID}").render({"RECORD_ID": ""})


@given(st.text(min_size=1).filter(lambda s: bool(s.strip())))
def test_any_non_blank_text_renders_verbatim(value: str) -> None:
    assert KeyTemplate("k:{F}").render({"F": value}) == f"k:{value}"


def test_str_is_the_template() -> None:
    assert str(KeyTemplate("{SYKEY}")) == "{SYKEY}"
    assert repr(KeyTemplate("{SYKEY}")) == "KeyTemplate('{SYKEY}')"
