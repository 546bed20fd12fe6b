"""The Goose parsing microbenchmark runs and prints every figure (nothing here is timed)."""

from __future__ import annotations

import json

import pytest

from bench.goose_parse import answer_body, main


def test_the_body_is_what_the_emulator_writes() -> None:
    answer = json.loads(answer_body(3))
    assert answer["status"] == "OK"
    assert answer["result"]["total"] == 3
    assert answer["result"]["data"][2] == {"TABLE": "CON_TRO", "RECORD_ID": "0-2", "SYKEY": "u0-2"}


def test_every_contender_reads_every_row_and_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    figures = main(["--sizes", "300", "--rounds", "1", "--chunk", "100"])
    printed = capsys.readouterr().out
    assert set(figures) == {300}
    assert set(figures[300]) == {"stream", "stream parse", "json.loads", "json.loads parse"}
    for name, (per_row, peak) in figures[300].items():
        assert per_row >= 0 and peak > 0, name
        assert name in printed
