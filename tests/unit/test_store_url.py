"""`state.url` as the store opens it: `postgres://`, the name most tools take, is
PostgreSQL through psycopg; a database the store does not run on is one line, and no
message quotes the URL (it may hold a password)."""

from __future__ import annotations

import pytest

from state.db import StoreError, make_engine

SECRET = "Zq9SuperSecret77"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u@127.0.0.1/db",
        "postgresql://u@127.0.0.1/db",
        "postgres+psycopg://u@127.0.0.1/db",
        "postgresql+psycopg://u@127.0.0.1/db",
    ],
)
def test_postgres_and_postgresql_open_through_psycopg(url: str) -> None:
    engine = make_engine(url)  # an engine connects only when first used
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.dialect.name == "postgresql"
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"mysql://u:{SECRET}@h/db", "state.url: 'mysql' is not supported"),
        (f"oracle+cx_oracle://u:{SECRET}@h/db", "state.url: 'oracle' is not supported"),
        (f"postgresql+psycopg2://u:{SECRET}@h/db", "the postgresql+psycopg2 driver is not"),
        (f"::{SECRET}::", "state.url is not a database URL (ArgumentError); write sqlite:///"),
    ],
)
def test_a_store_it_cannot_open_is_one_line_without_the_url(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as info:
        make_engine(url)
    assert expected in str(info.value)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)
