"""`report` holds one page, not the period: the peak memory (RSS) of the command in
a process of its own, over 200,000 deletions, is that over 20,000 within a ratio, for
CSV, JSON Lines and the summary. (RSS rather than tracemalloc: tracing every
allocation makes a report ten times slower, and the process's own peak is what an
operator's machine sees.)

Kept per row, a report would grow by hundreds of bytes a row (a row's dict alone),
some 100 MB more for the larger store, where the interpreter with its libraries
weighs about 70 MB; the bound allows a fifth more than the smaller peak.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from state import Store
from state.base import DELETION, DELIVERY
from state.evidence import Evidence, EvidenceFilter

SMALL = int(os.environ.get("SYNCENGINE_REPORT_ROWS", "10000"))
"""`make bench-memory` sets 20,000 (and so 200,000); the default run's tenth of that
still shows a per-row leak: 90,000 more rows of a few hundred bytes each."""
LARGE = 10 * SMALL
RATIO = 1.2
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def fill(url: str, count: int) -> None:
    """`count` deletions, each with a done delivery, written in bulk (the journal's own
    path would take minutes for the larger store; the rows are the same)."""
    store = Store.open(url)
    try:
        with store.engine.begin() as conn:
            for start in range(0, count, 5000):
                ids = range(start + 1, min(start + 5000, count) + 1)
                seen = [T0 + timedelta(seconds=i) for i in ids]
                conn.execute(
                    insert(DELETION),
                    [
                        {"id": i, "pipeline": "p", "stream": "S", "record_key": f"key-{i}",
                         "fields": {"id": i, "email": f"person{i}@example.com"},
                         "seen_at": s, "origin": f"src:{i}"}
                        for i, s in zip(ids, seen, strict=True)
                    ],
                )  # fmt: skip
                conn.execute(
                    insert(DELIVERY),
                    [
                        {"id": i, "deletion_id": i, "pipeline": "p", "target": "t",
                         "status": "done", "attempts": 1, "detail": "deleted", "effect": None,
                         "created_at": s, "updated_at": s,
                         "finished_at": s + timedelta(seconds=i % 997)}
                        for i, s in zip(ids, seen, strict=True)
                    ],
                )  # fmt: skip
    finally:
        store.close()


CHILD = textwrap.dedent(
    """
    import resource, sys
    from syncengine.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        assert not exc.code, exc.code
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
    """
)


def peak_kib(config: Path, output: str) -> int:
    """The report's peak RSS in KiB, its output thrown away as it is written."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "report", "-c", str(config), "-o", output],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.split()[-1])


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    where = tmp_path_factory.mktemp("evidence")
    found = {}
    for n in (SMALL, LARGE):
        url = f"sqlite:///{where / f'{n}.db'}"
        fill(url, n)
        found[n] = where / f"{n}.yaml"
        found[n].write_text(
            textwrap.dedent(
                f"""
                state: {{url: "{url}"}}
                connections:
                  goose: {{type: goose, url: "http://127.0.0.1:9/deleted/", code: C,
                           key: kkkkkkkk, timezone: UTC}}
                  erp: {{type: mongoose, config: DEMO, user: u, password: pppppppp,
                         url: "http://127.0.0.1:9/IDORequestService/MGRESTService.svc"}}
                pipelines:
                  p:
                    schedule: {{every: 60s}}
                    source: {{connection: goose, tables: [S], from: latest}}
                    targets:
                      t: {{connection: erp, ido: UserNames, key: "{{id}}"}}
                """
            ),
            encoding="utf-8",
        )
    return found


FORMATS = ["csv", "jsonl", "json"] if "SYNCENGINE_REPORT_ROWS" in os.environ else ["csv", "json"]
"""CSV and JSON Lines share the reader and differ only in the row writer: the default
run weighs one of them and the summary; `make bench-memory` weighs all three."""


@pytest.mark.parametrize("output", FORMATS)
def test_peak_memory_does_not_grow_with_the_rows(configs: dict[int, Path], output: str) -> None:
    small, large = peak_kib(configs[SMALL], output), peak_kib(configs[LARGE], output)
    assert large <= RATIO * small, f"{small:,} KiB for {SMALL:,} rows, {large:,} for {LARGE:,}"


def test_the_stores_hold_what_the_test_says(configs: dict[int, Path]) -> None:
    for n, config in configs.items():
        store = Store.open(f"sqlite:///{config.with_suffix('.db')}")
        try:
            evidence = Evidence(store.engine)
            since = T0 + timedelta(seconds=n - 1)
            assert [r.key for r in evidence.rows(EvidenceFilter(since=since))] == [
                f"key-{n - 1}",
                f"key-{n}",
            ]
            assert sum(1 for _ in evidence.rows(EvidenceFilter(), page=5000)) == n
        finally:
            store.close()
