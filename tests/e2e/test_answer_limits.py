"""An answer past its connection's byte cap is a lost answer: nothing of it moves the
cursor, and once the cap allows it, the engine recovers what it held."""

from __future__ import annotations

from tests.e2e.conftest import Env


def with_goose_setting(e2e: Env, line: str) -> None:
    """The e2e config with one more setting on the Goose connection."""
    lines = e2e.config.read_text().splitlines()
    at = next(i for i, text in enumerate(lines) if text.strip().startswith("calls_per_second:"))
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    lines.insert(at + 1, indent + line)
    e2e.config.write_text("\n".join(lines) + "\n")


def test_an_answer_past_the_cap_is_lost_then_recovered_once_the_cap_allows_it(e2e: Env) -> None:
    e2e.box.delete_in_goose("CON_TRO", ["0-1", "0-2"])
    with_goose_setting(e2e, "max_answer_bytes: 100")
    capped = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert capped.returncode == 1, capped.stderr
    assert "Traceback" not in capped.stderr
    assert "source_answer_lost" in capped.stderr
    assert "connections.goose.max_answer_bytes: the answer to POST /deleted/ passed 100 bytes" in (
        capped.stderr
    )
    stream = e2e.status()["pipelines"][0]["streams"][0]
    assert stream["in_flight_since"] is not None, "the call stays marked as lost"
    assert {"jrossi", "mbianchi"} <= e2e.users(), "nothing from the cut-off answer was sent"

    e2e.write_config()
    recovered = e2e.cli("run", "--once", "-c", str(e2e.config))
    assert recovered.returncode == 0, recovered.stderr
    assert {"jrossi", "mbianchi"}.isdisjoint(e2e.users())
    stream = e2e.status()["pipelines"][0]["streams"][0]
    assert stream["recoveries"] == 1 and stream["in_flight_since"] is None
