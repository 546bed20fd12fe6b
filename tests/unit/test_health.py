"""/healthz fails, with a reason, when the store cannot be written."""

from __future__ import annotations

import pytest

from state import Store
from state.models import utcnow
from syncengine.config import parse_config
from syncengine.observe import health
from tests.unit.test_config import ENV, VALID


def test_unwritable_store_is_unhealthy(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config(VALID + "metrics: {port: 9999}\n", "my.yaml", ENV)
    ok, body = health(sqlite_store, config, utcnow())
    assert ok, body

    def refuse() -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(sqlite_store, "check_writable", refuse)
    ok, body = health(sqlite_store, config, utcnow())
    assert not ok
    assert body["problems"] == ["store not writable: PermissionError"]
