"""The benchmark runs end to end and prints every figure (nothing here is timed)."""

from __future__ import annotations

import pytest

from bench import sigterm, store
from bench.figures import BARE, HEADERS, KINDS
from bench.throughput import main


def test_every_contender_is_measured_and_every_column_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = main(
        ["--sizes", "200", "--rounds", "1", "--import-repeats", "1", "--set", "no_such_setting=1"]
    )
    printed = capsys.readouterr().out

    assert report.failures == []
    rows = {row.contender: row for row in report.rows}
    assert set(rows) == {"syncengine", BARE, "syncengine no_such_setting=1"}
    for name in ("syncengine", BARE):
        row = rows[name]
        assert row.rounds == "1"
        for figure in (row.job_rate, row.process_rate, row.cpu_seconds, row.peak_rss_mb):
            assert figure is not None and figure > 0
    # The same work for both: one Goose call, one token, every row deleted in two batches.
    assert rows[BARE].requests == {"goose": 1, "token": 1, "load": 2, "delete": 2}
    assert rows["syncengine"].requests["goose"] == 1
    assert rows["syncengine"].requests["delete"] == 2
    assert rows["syncengine"].vs_bare_process is not None
    assert rows["syncengine"].vs_bare_job is not None
    assert rows["syncengine"].vs_bare_cpu is not None
    assert rows["syncengine no_such_setting=1"].note == "n/a (setting not supported)"
    assert "unknown key 'no_such_setting'" in printed
    for header in HEADERS:
        assert header in printed
    assert [what for what, _ in report.imports] == [
        'import time, python -X importtime -c "import syncengine.cli"',
        "import time, every import of a real `syncengine run --once` (100 deletions)",
        "wall time, syncengine --help",
    ]
    assert all(seconds > 0 for _, seconds in report.imports)


def test_memory_mode_really_deletes_at_each_size_and_prints_the_flatness(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = main(["--memory", "--sizes", "300,600", "--import-repeats", "0"])
    printed = capsys.readouterr().out

    assert report.failures == []  # every row deleted, every run delivered them all
    rows = {(row.contender, row.size): row for row in report.rows}
    assert rows[(BARE, 600)].requests == {"goose": 1, "token": 1, "load": 6, "delete": 6}
    assert rows[("syncengine", 600)].requests["delete"] == 6
    for row in rows.values():
        assert row.peak_rss_mb is not None and row.peak_rss_mb > 0
        assert set(row.requests) == set(KINDS)
    assert "peak RSS per size" in printed
    for name in ("syncengine", BARE):
        assert f"  {name}: " in printed and "at 300" in printed and "at 600" in printed


def test_the_store_microbench_does_the_same_work_both_ways(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each contender must leave every delivery done (the bench checks it) and both are
    printed with their ratio."""
    figures = store.main(["--records", "300", "--batch", "50", "--rounds", "2"])
    printed = capsys.readouterr().out
    assert figures["store"] > 0 and figures["raw sqlite3"] > 0 and figures["ratio"] > 0
    assert "store / raw sqlite3:" in printed and "µs/record" in printed


def test_sigterm_mid_answer_stops_the_run_before_the_answer_is_journaled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The small version of `make bench-sigterm`: a signal once the first chunk of an
    answer of twelve chunks is journaled ends the run with the rest unread."""
    figures = sigterm.main(["--records", "60000", "--after", "1"])
    assert figures["exit_code"] == 0
    assert figures["in_flight"] == 1, "the call stays in flight for the next run to re-read"
    assert 0 < figures["journaled"] < 60000
    assert "in-flight marker kept: yes" in capsys.readouterr().out
