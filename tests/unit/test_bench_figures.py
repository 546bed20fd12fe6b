"""The benchmark's own arithmetic: rotation, ratios within a round, budget, parsing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from bench.child import run_child
from bench.figures import (
    BARE,
    GROWTH,
    HEADERS,
    Measurement,
    Row,
    estimate_round,
    flatness,
    importtime_seconds,
    render_flatness,
    render_table,
    request_kind,
    rotate,
    summarize,
)
from bench.scenario import config_text, parse_setting


def test_each_contender_goes_first_in_turn() -> None:
    names = ["syncengine", "bare", "syncengine concurrency=4"]
    assert [rotate(names, turn)[0] for turn in range(4)] == [*names, names[0]]
    assert rotate([], 3) == []


def test_importtime_total_is_the_sum_of_every_module_own_time() -> None:
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       177 |        177 |   _io",
            '{"event": "run_started"}',
            "import time:      1823 |       2000 | syncengine.cli",
        ]
    )
    assert importtime_seconds(stderr) == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/deleted/", "goose"),
        ("/deleted", "goose"),
        ("/IDORequestService/MGRESTService.svc/json/token/DEMO", "token"),
        ("/IDORequestService/MGRESTService.svc/json/UserNames/adv", "load"),
        ("/IDORequestService/MGRESTService.svc/json/UserNames/deleteitems", "delete"),
        ("/operation/", "other"),
    ],
)
def test_requests_are_counted_by_kind(path: str, kind: str) -> None:
    assert request_kind(path) == kind


def _m(contender: str, turn: int, seconds: float, cpu: float, ok: bool = True) -> Measurement:
    return Measurement(
        contender=contender,
        size=1000,
        turn=turn,
        process_seconds=seconds,
        cpu_seconds=cpu,
        peak_rss_mb=50.0,
        requests={"goose": 1, "token": 1, "load": 10, "delete": 10},
        job_seconds=seconds / 2,
        ok=ok,
        note="" if ok else "timed out after 9 s, peak RSS so far 50 MB",
    )


def test_the_ratio_is_the_median_of_ratios_taken_within_each_round() -> None:
    # Round 1 ran on a machine four times as loaded, round 2's bare on a quiet moment:
    # within rounds 0 and 1 syncengine did half as well, and that is the median.
    measurements = [
        _m("syncengine", 0, 2.0, 4.0),
        _m(BARE, 0, 1.0, 1.0),
        _m("syncengine", 1, 8.0, 16.0),
        _m(BARE, 1, 4.0, 4.0),
        _m("syncengine", 2, 9.0, 18.0),
        _m(BARE, 2, 1.1, 1.0),
    ]
    row = summarize(measurements, "syncengine", 1000, planned=3)
    assert row.vs_bare_process == pytest.approx(0.5)
    assert row.vs_bare_job == pytest.approx(0.5)
    assert row.vs_bare_cpu == pytest.approx(4.0)
    assert row.process_rate == pytest.approx(1000 / 8.0)
    assert row.rounds == "3"


def test_a_timed_out_run_is_shown_with_its_peak_rss_not_counted() -> None:
    measurements = [_m("syncengine", 0, 9.0, 3.0, ok=False), _m(BARE, 0, 1.0, 1.0)]
    row = summarize(measurements, "syncengine", 1000, planned=2)
    assert row.rounds == "0 of 2"
    assert row.process_rate is None and row.vs_bare_process is None
    assert row.peak_rss_mb == 50.0
    assert row.note.startswith("timed out after 9 s")
    table = render_table([row])
    for header in HEADERS:
        assert header in table
    assert "timed out after 9 s" in table


def test_flatness_is_the_peak_at_the_largest_size_over_the_peak_at_the_smallest() -> None:
    rows = [
        Row("syncengine", 1_000_000, "0 of 1", peak_rss_mb=120.0, note="timed out after 1200 s"),
        Row("syncengine", 20_000, "1", peak_rss_mb=80.0),
        Row("syncengine", 200_000, "1", peak_rss_mb=90.0),
        Row(BARE, 20_000, "1", peak_rss_mb=40.0),
        Row("syncengine x=1", 20_000, "0", note="n/a (setting not supported)"),
    ]
    peaks, ratio = flatness(rows, "syncengine")
    assert peaks == [(20_000, 80.0), (200_000, 90.0), (1_000_000, 120.0)]
    assert ratio == pytest.approx(1.5)
    assert flatness(rows, BARE) == ([(20_000, 40.0)], None)
    lines = render_flatness(rows)
    assert lines[1] == (
        "  syncengine: 80 MB at 20,000, 90 MB at 200,000, 120 MB at 1,000,000 (so far); "
        "flat-ness 1.50x"
    )
    assert lines[2] == "  bare: 40 MB at 20,000; flat-ness -"
    assert len(lines) == 3  # nothing measured, nothing to say


def test_a_round_estimate_scales_the_nearest_smaller_size() -> None:
    assert estimate_round(2000, {}) is None
    assert estimate_round(2000, {2000: [3.0, 5.0]}) == 5.0
    assert estimate_round(100_000, {2000: [1.0], 20000: [10.0, 12.0]}) == pytest.approx(
        60.0 * GROWTH
    )


def test_a_setting_lands_in_the_target_block_of_a_valid_yaml() -> None:
    name, value = parse_setting("concurrency=4")
    assert (name, value) == ("concurrency", 4)
    assert parse_setting("mode=fast") == ("mode", "fast")
    with pytest.raises(ValueError, match="name=value"):
        parse_setting("concurrency")
    text = config_text("http://g", "http://m", Path("/tmp/s.db"), 100, {name: value})
    target = yaml.safe_load(text)["pipelines"]["bench"]["targets"]["erp"]
    assert target["concurrency"] == 4
    assert target["batch_size"] == 100


def test_a_child_past_its_timeout_is_killed_and_still_measured() -> None:
    result = run_child([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.3)
    assert result.timed_out
    assert result.returncode == -9
    assert result.peak_rss_mb > 0
