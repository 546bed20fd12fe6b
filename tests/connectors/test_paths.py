from __future__ import annotations

import httpx
import pytest

from connectors.kit.keys import UnmappedKey, UnsafeKey
from connectors.kit.paths import path_segment, segment_problem


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("0-1", "0-1"),
        ("jrossi", "jrossi"),
        ("a/b", "a%2Fb"),
        ("x?y#z", "x%3Fy%23z"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("Zoë", "Zo%C3%AB"),
        ("...", "..."),
        (".a", ".a"),
        ("a..", "a.."),
        ("%41", "%2541"),
    ],
)
def test_a_value_becomes_one_encoded_segment(value: str, encoded: str) -> None:
    assert segment_problem(value) is None
    assert path_segment(value) == encoded
    # The client sends it unchanged, inside its one segment.
    url = httpx.Client(base_url="http://h/api/t").build_request("GET", f"/x/{encoded}/y").url
    assert url.raw_path.decode() == f"/api/t/x/{encoded}/y"


@pytest.mark.parametrize(
    "value",
    [
        ".",
        "..",
        "a/../b",
        "../x",
        "x/..",
        "a/./b",
        "a\\..\\b",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "%2e",
        "%252e%252e",
        "a%2F..%2Fb",
        "..;x",
        "a/..;jsessionid=1/b",
    ],
)
def test_dot_segments_are_refused_in_every_reading(value: str) -> None:
    problem = segment_problem(value)
    assert problem == (
        f"{value!r} holds a dot segment ('.' or '..'), which would change the request's "
        "path to another resource"
    )
    with pytest.raises(UnsafeKey) as refused:
        path_segment(value)
    assert refused.value.verdict == f"unsafe key: {problem}"


def test_an_empty_value_is_refused() -> None:
    with pytest.raises(UnsafeKey, match="empty value would address the collection"):
        path_segment("")


def test_unsafe_is_unmapped_so_every_target_already_turns_it_dead() -> None:
    unsafe = UnsafeKey("why")
    assert isinstance(unsafe, UnmappedKey)
    assert (unsafe.verdict, UnmappedKey("why").verdict) == ("unsafe key: why", "no key: why")


def test_the_client_would_collapse_what_is_refused() -> None:
    """Why the refusal exists: httpx removes dot segments from a path it is given."""
    client = httpx.Client(base_url="http://h/api/t")
    assert client.build_request("GET", "/entities/_byCrosswalk/..").url.path == "/api/t/entities"
    twin = client.build_request("GET", "/digitaltwins/./relationships").url.path
    assert twin == "/api/t/digitaltwins/relationships"


def test_a_lone_surrogate_is_refused_not_a_crash_when_encoding() -> None:
    """A key read from JSON (`"\\ud800"`) that no URL can carry: refused as unsafe, so its
    record is dead, instead of UnicodeEncodeError stopping the whole stream."""
    assert segment_problem("a\ud800") == "'a\\ud800' holds a lone surrogate, which no URL can carry"
    with pytest.raises(UnsafeKey):
        path_segment("x\udc00")
    assert path_segment("é😀") == "%C3%A9%F0%9F%98%80"
