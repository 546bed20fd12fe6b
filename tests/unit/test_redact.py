"""Every form a secret can come back in is scrubbed, and nothing else."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

import pytest

from connectors.kit.redact import scrub, secret_forms

SECRET = "clé/secrète+2024"
"""Non-ASCII letters, a slash and a plus: each encoding writes it differently."""

ECHOES = {
    "raw": SECRET,
    "json ascii": json.dumps(SECRET)[1:-1],
    "json ascii upper hex": json.dumps(SECRET)[1:-1].replace("00e", "00E"),
    "json utf-8": json.dumps(SECRET, ensure_ascii=False)[1:-1],
    "json escaped slash (PHP)": json.dumps(SECRET)[1:-1].replace("/", "\\/"),
    "url path": quote(SECRET),
    "url component": quote(SECRET, safe=""),
    "url lower hex": re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(SECRET, safe="")),
    "form": quote_plus(SECRET),
    "base64": base64.b64encode(SECRET.encode()).decode(),
    "base64 urlsafe unpadded": base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
}


@pytest.mark.parametrize("form", list(ECHOES), ids=list(ECHOES))
def test_each_form_of_the_secret_is_scrubbed(form: str) -> None:
    echoed = ECHOES[form]
    text = f"error 110: key {echoed} not authorized"
    assert scrub(text, [SECRET]) == "error 110: key *** not authorized"


@pytest.mark.parametrize("prefix", ["", "u", "us", "user:"])
@pytest.mark.parametrize("suffix", ["", "!", "!!", "!!!"])
def test_a_secret_inside_a_longer_base64_string_is_caught_at_every_alignment(
    prefix: str, suffix: str
) -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        token = encode(f"{prefix}{SECRET}{suffix}".encode()).decode()
        cleaned = scrub(f"Authorization: Basic {token}", [SECRET])
        assert "***" in cleaned
        left, right = cleaned.removeprefix("Authorization: Basic ").split("***")
        # Left: the prefix's characters, the last one mixing in the secret's first bits;
        # right: the one mixing in its last bits, then the suffix's and the padding.
        before, within = len(prefix) * 8, (len(prefix) + len(SECRET.encode())) * 8
        assert len(left) == -(-before // 6)
        assert len(right) == len(token) - within // 6


def test_text_without_the_secret_is_left_alone() -> None:
    text = 'HTTP 500: {"error": "Internal error", "trace": "abc/def+ghi"}'
    assert scrub(text, [SECRET, "another-secret-9"]) == text
    assert scrub(text, []) == text


def test_short_secrets_do_not_scrub_words_through_tiny_base64_pieces() -> None:
    forms = secret_forms("abc")
    assert all(len(f) >= 3 for f in forms)
    assert scrub("a quick brown fox", ["abc"]) == "a quick brown fox"


def test_the_longest_form_goes_whole() -> None:
    token = base64.b64encode(SECRET.encode()).decode()
    assert scrub(f"[{token}]", [SECRET]) == "[***]"
