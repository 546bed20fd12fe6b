"""The screen in front of the streaming JSON parser, and the whole-body reader: what
they let through unchanged, and what they refuse or stand in for."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.kit.json_screen import STAND_IN, DuplicateKey, Flaw, Screen, loads

TEXT = st.text(st.sampled_from(['"', "\\", "a", "é", "😀", "\n", "\u2028", "1", "e", " "]))
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner)),
    max_leaves=10,
)


def screened(body: bytes, cuts: list[int]) -> list[bytes | Flaw]:
    screen = Screen(max_field=64, max_number=64)
    out: list[bytes | Flaw] = []
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        out += screen.feed(body[start:end])
    return out + list(screen.close())


@settings(max_examples=300, deadline=None)
@given(value=VALUES, ascii_only=st.booleans(), data=st.data())
def test_a_sound_body_passes_unchanged_however_it_is_cut(
    value: Any, ascii_only: bool, data: st.DataObject
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    written = [json.dumps(s, ensure_ascii=ascii_only).encode() for s in _values(value)]
    if any(len(s) > 64 for s in written):
        return  # past the small limits used here: tested below
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    out = screened(body, cuts)
    assert b"".join(part for part in out if isinstance(part, bytes)) == body
    assert not [part for part in out if isinstance(part, Flaw)]


def _values(value: Any) -> list[Any]:
    """Every key and scalar in `value`."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_values(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _values(v)]
    return [value]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'"' + b"x" * 65 + b'"', "a string longer than 64 bytes"),
        (b'"' + b"\\\\" * 40 + b'"', "a string longer than 64 bytes"),
        (b"1" * 65, "a number written with more than 64 characters"),
        (b'"\\udc00"', "a lone surrogate (\\udc00) in a string"),
        (b'"a\\ud800b"', "a lone surrogate (\\ud800) in a string"),
        (b'"\xff"', "a string that is not UTF-8"),
    ],
)
def test_a_value_it_cannot_pass_is_a_flaw_and_a_stand_in(value: bytes, reason: str) -> None:
    body = b'[1,"ok",' + value + b',"\\ud83d\\ude00"]'
    for size in (1, 3, 7, len(body)):
        out = screened(body, list(range(size, len(body), size)))
        assert [p for p in out if isinstance(p, Flaw)] == [Flaw(reason)], size
        joined = b"".join(p for p in out if isinstance(p, bytes))
        assert joined == b'[1,"ok",' + STAND_IN + b',"\\ud83d\\ude00"]', size


def test_a_body_that_ends_inside_a_string_is_handed_on_as_it_is() -> None:
    assert b"".join(p for p in screened(b'["abc', [2]) if isinstance(p, bytes)) == b'["abc'


def test_loads_refuses_a_body_nested_too_deep_with_a_value_error() -> None:
    assert loads(b"[" * 64 + b"]" * 64) is not None
    for depth in (65, 2_000, 200_000):
        with pytest.raises(ValueError, match="nested more than 64 levels"):
            loads(b"[" * depth + b"]" * depth)


def test_loads_can_refuse_a_key_given_twice() -> None:
    body = b'{"a":{"b":1,"b":2}}'
    assert loads(body) == {"a": {"b": 2}}
    with pytest.raises(DuplicateKey, match="'b' given twice"):
        loads(body, unique_keys=True)
