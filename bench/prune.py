"""The store's size per deletion, and a prune of a million done deliveries while claims go on.

    python -m bench.prune [--deletions 1000000] [--backends sqlite,postgresql]

Per backend: a new store is filled with DELETIONS deletions, each with one done delivery
finished two days ago (bulk inserts, not the journal: the size is what is measured), and
1,000 pending deliveries of a live pipeline. A thread claims and releases 10 of those
again and again, as a daemon's claims would, first alone (LATENCY seconds) and then
while `Retention.prune` (keep_done: 1d, batches of 1,000) removes the million. Printed:
bytes per deletion, size after the fill and after the prune, the prune's time, and the
median and p95 claim latency without and during the prune. PostgreSQL needs
127.0.0.1:5432 (trust); a database of its own is created and dropped.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

from state import NewRecord, Store
from state.retention import DELETION, DELIVERY, Retention, RetentionPolicy

FILL = 20_000
LATENCY = 10.0
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def fill(store: Store, count: int) -> None:
    old = datetime.now(UTC) - timedelta(days=2)
    for start in range(0, count, FILL):
        ids = range(start + 1, min(count, start + FILL) + 1)
        with store.engine.begin() as conn:
            conn.execute(
                insert(DELETION),
                [
                    {
                        "id": i,
                        "pipeline": "history",
                        "stream": "CON_TRO",
                        "record_key": f"0-{i}",
                        "fields": {"RECORD_ID": f"0-{i}", "SYKEY": f"u{i}"},
                        "seen_at": old,
                        "window_start": old - timedelta(minutes=1),
                        "window_end": old,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                insert(DELIVERY),
                [
                    {
                        "id": i,
                        "deletion_id": i,
                        "pipeline": "history",
                        "target": "erp",
                        "status": "done",
                        "attempts": 1,
                        "last_error": "",
                        "detail": "deleted",
                        "approved": False,
                        "created_at": old,
                        "updated_at": old,
                        "finished_at": old,
                    }
                    for i in ids
                ],
            )
    if store.dialect == "postgresql":
        with store.engine.begin() as conn:
            for table in ("deletion", "delivery"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    store.journal(
        "history", "CON_TRO", [], cursor={}, targets=["erp"], run_id=None
    )  # the cursor moved: the history's reads lie two days behind it
    store.journal(
        "live", "T", [NewRecord(f"l{i}", {}) for i in range(1000)], cursor={},
        targets=["erp"], run_id=None,
    )  # fmt: skip


class Claimer(threading.Thread):
    """Claims and releases 10 live deliveries in a loop, timing each claim."""

    def __init__(self, store: Store) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.latencies: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.perf_counter()
            claimed = self.store.claim("live", "erp", 10, "bench")
            self.latencies.append(time.perf_counter() - started)
            self.store.release([c.id for c in claimed])


def claims_for(store: Store, seconds: float) -> list[float]:
    claimer = Claimer(store)
    claimer.start()
    time.sleep(seconds)
    claimer.done.set()
    claimer.join()
    return claimer.latencies


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f} ms"


def size(retention: Retention) -> int:
    if retention.sqlite:
        retention._pragma("PRAGMA wal_checkpoint(TRUNCATE)")
    found = retention.size()
    assert found is not None
    return found


def bench(url: str, count: int) -> dict[str, str]:
    store = Store.open(url)
    try:
        retention = Retention(store.engine)
        empty = size(retention)
        started = time.perf_counter()
        fill(store, count)
        filled_in = time.perf_counter() - started
        if store.dialect == "postgresql":
            # What autovacuum does to a table that grew over months; right after a bulk
            # fill it has not yet, and without statistics the planner scans the journal
            # for each batch's links (a prune of a million then took 16 minutes, not 2).
            with store.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(text("ANALYZE"))
                conn.execute(text("CHECKPOINT"))
        full = size(retention)
        alone = claims_for(store, LATENCY)
        claimer = Claimer(store)
        claimer.start()
        rules = RetentionPolicy(keep_done=timedelta(days=1), keep_runs=None, setting="bench")
        report = retention.prune(rules)
        claimer.done.set()
        claimer.join()
        after = size(retention)
        during = claimer.latencies
        return {
            "deletions": f"{count:,} (filled in {filled_in:.0f} s)",
            "bytes per deletion (with its delivery)": f"{(full - empty) / count:,.0f}",
            f"size after {count:,}": f"{full / 1e6:,.1f} MB",
            "size after the prune": f"{after / 1e6:,.1f} MB",
            "pruned": f"{report.deletions:,} deletions, {report.deliveries:,} deliveries",
            "prune time": f"{report.seconds:.0f} s ({report.batches:,} batches)",
            "claim latency alone (p50 / p95)": f"{ms(alone, 0.5)} / {ms(alone, 0.95)}",
            "claim latency during the prune (p50 / p95)": f"{ms(during, 0.5)} / {ms(during, 0.95)}"
            + f" ({len(during):,} claims)",
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deletions", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                figures = bench(f"sqlite:///{Path(folder) / 'state.db'}", args.deletions)
        else:
            import psycopg

            name = f"syncengine_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
                figures = bench(url, args.deletions)
            finally:
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"{backend}:")
        for what, value in figures.items():
            print(f"  {what}: {value}")
        print(flush=True)
    print("(figures of one run on this machine, to compare within it; never thresholds)")


if __name__ == "__main__":
    main()
