"""A run's stop token: stopped by the daemon's, but never stops the daemon."""

from __future__ import annotations

from syncengine.engine.stop import StopToken


async def test_child_follows_parent_but_not_the_other_way() -> None:
    daemon = StopToken()
    run = daemon.child()
    run.request("lease lost")
    assert run.is_set() and not daemon.is_set()
    other = daemon.child()
    daemon.request("SIGTERM")
    assert other.is_set()
