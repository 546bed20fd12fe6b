"""The benchmark still runs end to end and delivers everything (no timing asserted)."""

from __future__ import annotations

from bench.throughput import main


def test_benchmark_smoke(capsys: object) -> None:
    results = main(["--records", "30", "--batch", "1", "--batch", "10"])
    assert [r.delivered for r in results] == [30, 30]
