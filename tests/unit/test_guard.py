"""The guards' verdicts: keys compared the way each target compares them, limits that
cannot be weighed hold, and every registered target declares what its guards rely on."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from connectors import load_registry
from connectors.contract import (
    EXACT_KEYS,
    AsyncTarget,
    Cancellable,
    Countable,
    KeyMatch,
    Previewable,
    sql_server_keys,
)
from state import GuardCounts
from syncengine.config.models import GuardSettings, LegalHold
from syncengine.engine.guard import Population, legal_hold, mass_delete_reasons

HOLD = LegalHold(key="{SYKEY}", patterns=["sa", "admin*", "lverdi"])


@pytest.mark.parametrize(
    ("match", "key", "pattern", "expected"),
    [
        (sql_server_keys(), "SA", "sa", True),
        (sql_server_keys(), "Admin", "admin*", True),
        (sql_server_keys(), "ADMINISTRATOR  ", "admin*", True),
        (sql_server_keys(), "lverdi ", "lverdi", True),
        (sql_server_keys(), "lverdi", "LVERDI ", True),
        (sql_server_keys(), " lverdi", "lverdi", False),
        (sql_server_keys(), "lverdix", "lverdi", False),
        (sql_server_keys(case_sensitive=True), "lverdi ", "lverdi", True),
        (sql_server_keys(case_sensitive=True), "SA", "sa", False),
        (EXACT_KEYS, "SA", "sa", False),
        (EXACT_KEYS, "lverdi ", "lverdi", False),
        (EXACT_KEYS, "admin2", "admin*", True),
    ],
)
def test_a_pattern_matches_as_the_target_compares(
    match: KeyMatch, key: str, pattern: str, expected: bool
) -> None:
    assert match.matches(key, pattern) is expected


def test_the_fold_is_the_comparison() -> None:
    assert sql_server_keys().fold("Admin  ") == "admin"
    assert sql_server_keys(case_sensitive=True).fold("Admin  ") == "Admin"
    assert EXACT_KEYS.fold("Admin  ") == "Admin  "
    assert sql_server_keys().describe() == "case-insensitive, trailing spaces ignored"
    assert EXACT_KEYS.describe() == "exact"


def test_legal_hold_protects_every_key_a_case_insensitive_target_would_reach() -> None:
    match = sql_server_keys()
    verdicts = {key: legal_hold(HOLD, match, {"SYKEY": key}) for key in ("SA", "Admin", "lverdi ")}
    assert verdicts == {
        "SA": "key 'SA' matches 'sa' (case-insensitive, trailing spaces ignored, as the target "
        "compares)",
        "Admin": "key 'Admin' matches 'admin*' (case-insensitive, trailing spaces ignored, as "
        "the target compares)",
        "lverdi ": "key 'lverdi ' matches 'lverdi' (case-insensitive, trailing spaces ignored, "
        "as the target compares)",
    }
    assert legal_hold(HOLD, match, {"SYKEY": "lverdi"}) == "key 'lverdi' matches 'lverdi'"
    assert legal_hold(HOLD, match, {"SYKEY": "jrossi"}) is None


def test_legal_hold_on_an_exact_target_is_exact() -> None:
    assert [legal_hold(HOLD, EXACT_KEYS, {"SYKEY": k}) for k in ("SA", "Admin", "lverdi ")] == [
        None,
        None,
        None,
    ]
    assert legal_hold(None, EXACT_KEYS, {"SYKEY": "sa"}) is None


def counts(due: int, done: int = 0, in_flight: int = 0) -> GuardCounts:
    return GuardCounts(due=due, done_last_hour=done, in_flight=in_flight)


def test_max_fraction_holds_when_the_count_is_unknown() -> None:
    guard = GuardSettings(max_fraction=0.5)
    failed = Population(None, "counting the target's records failed: HTTP 500")
    assert mass_delete_reasons(guard, counts(1), 0, failed) == [
        "counting the target's records failed: HTTP 500, so max_fraction 50% cannot be checked"
    ]
    assert mass_delete_reasons(guard, counts(1), 0, Population(0)) == [
        "1 of the target's 0 records exceeds max_fraction 50%"
    ]
    assert mass_delete_reasons(guard, counts(5), 0, Population(10)) == []
    assert mass_delete_reasons(guard, counts(5), 1, Population(10)) == [
        "6 of the target's 10 records (60%) exceeds max_fraction 50%"
    ]


def test_limits_count_what_this_run_already_sent_and_what_is_in_flight() -> None:
    guard = GuardSettings(max_per_run=3, max_per_hour=5)
    assert mass_delete_reasons(guard, counts(2), 1, None) == []
    assert mass_delete_reasons(guard, counts(2, done=1, in_flight=3), 2, None) == [
        "2 sent in this run + 2 deletions due, max_per_run is 3",
        "4 done in the last hour or in flight + 2 due exceeds max_per_hour 5",
    ]


SAMPLES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "goose": (
        {"url": "http://127.0.0.1:9/deleted/", "code": "DEV001", "key": "k"},
        [{"table": "CON_TRO", "id": "{RECORD_ID}"}],
    ),
    "mongoose": (
        {"url": "http://127.0.0.1:9/x", "config": "DEMO", "user": "u", "password": "p"},
        [{"ido": "UserNames", "key": "{SYKEY}"}],
    ),
    "reltio": (
        {
            "tenant_url": "http://127.0.0.1:9/reltio/api/T",
            "auth_url": "http://127.0.0.1:9/oauth/token",
            "client_id": "c",
            "client_secret": "s",
        },
        [{"entity": "entities/{ID}"}],
    ),
    "adt": (
        {"url": "http://127.0.0.1:9", "token": "t"},
        [
            {"kind": "twins", "twin_id": "{RECORD_ID}"},
            {"kind": "purge", "confirm_purge": "127.0.0.1:9", "trigger_keys": ["SITE"]},
        ],
    ),
    "dmm": (
        {"url": "http://127.0.0.1:9/DMM_API/rest/DMMAPI", "token": "t", "otp": "o"},
        [{"entity": {"name": "Customer"}, "key_attribute": "Id", "key": "{ID}"}],
    ),
}


def test_every_target_type_is_sampled() -> None:
    registry = load_registry()
    assert sorted(SAMPLES) == sorted(n for n in registry.names() if registry.get(n).build_target)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
async def test_a_target_declares_what_it_is_registered_with(kind: str) -> None:
    """Capabilities are declared on the registry entry (the loader and the engine read
    them, nothing probes an object for a method) and implemented by the target (the
    engine calls them): the two must agree, for every target a type can build."""
    info = load_registry().get(kind)
    assert info.build_target is not None and info.target_settings is not None
    connection_block, target_blocks = SAMPLES[kind]
    connection: BaseModel = info.connection_settings.model_validate(
        {"type": kind, **connection_block}
    )
    for block in target_blocks:
        target = info.build_target("sample", connection, info.target_settings.model_validate(block))
        try:
            able = info.capabilities
            assert isinstance(target, Countable) is able.count, (kind, block)
            assert isinstance(target, Previewable) is able.preview, (kind, block)
            if isinstance(target, AsyncTarget):
                assert isinstance(target, Cancellable) is able.cancel, (kind, block)
                assert able.cancel or able.no_cancel, f"{kind}: say why its jobs cannot stop"
            assert isinstance(target.key_match, KeyMatch)
        finally:
            await target.aclose()


@pytest.mark.parametrize("kind", ["mongoose", "dmm"])
async def test_sql_server_targets_compare_as_their_collation_says(kind: str) -> None:
    info = load_registry().get(kind)
    assert info.build_target is not None and info.target_settings is not None
    connection_block, (block, *_) = SAMPLES[kind]
    matches = []
    for collation in ("case_insensitive", "case_sensitive"):
        connection = info.connection_settings.model_validate(
            {"type": kind, **connection_block, "collation": collation}
        )
        target = info.build_target("sample", connection, info.target_settings.model_validate(block))
        matches.append(target.key_match)
        await target.aclose()
    assert matches == [sql_server_keys(), sql_server_keys(case_sensitive=True)]
    default = info.connection_settings.model_validate({"type": kind, **connection_block})
    assert default.collation == "case_insensitive"


def test_a_deletion_whose_hold_key_cannot_be_read_is_protected() -> None:
    """Fail closed: a target keying on another field would delete a record the hold never saw."""
    reason = legal_hold(HOLD, EXACT_KEYS, {"RECORD_ID": "0-7"})
    assert reason is not None
    assert "cannot be cleared" in reason and "SYKEY" in reason
    assert legal_hold(HOLD, EXACT_KEYS, {"SYKEY": None}) is not None
