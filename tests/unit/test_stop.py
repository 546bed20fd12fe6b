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


async def test_a_run_says_why_it_stopped_whoever_asked() -> None:
    daemon = StopToken()
    run = daemon.child()
    assert run.why() == ""
    daemon.request("SIGTERM received")
    assert run.why() == "SIGTERM received"
    lost = StopToken().child()
    lost.request("lease lost")
    assert lost.why() == "lease lost"
