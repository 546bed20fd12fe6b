"""The store's hot path against raw `sqlite3` doing the same work, in the same run.

    python -m bench.store [--records 20000] [--batch 100] [--rounds 5]

Both contenders journal the same records in chunks of 5,000 (look up the keys
already journaled, insert the new deletions and one delivery each, move the
cursor), then claim batches oldest first and record every one done: the same
rows, the same transactions and the same pragmas (WAL, synchronous=FULL), so
the ratio is what the store's code costs over the database's own work. The
raw contender writes its statements by hand with `executemany`; the store is
`state.Store` as the engine calls it, under a lease. Medians of the rounds,
contenders alternating; figures to compare within one run, never a threshold.
The journal and the claims are timed apart, elapsed and in CPU: on a busy machine
the waits for the disk vary from round to round, the CPU much less.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from state import NewRecord, OutcomeRecord, RetryRule, Store

CHUNK_RECORDS = 5000
PIPELINE, STREAM, TARGET = "bench", "T", "erp"


def records(count: int) -> list[NewRecord]:
    return [NewRecord(f"u0-{n}", {"SYKEY": f"u0-{n}", "TABLE": "CON_TRO"}) for n in range(count)]


Phases = tuple[float, float, float, float]
"""Seconds spent journaling, then claiming and recording outcomes; elapsed, then CPU of
this process (the CPU figure leaves out the waits on the disk, which other processes on
the machine can stretch)."""
PHASES = ("journal", "claim+outcome", "journal cpu", "claim+outcome cpu")


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _phases(started: tuple[float, float], journaled: tuple[float, float]) -> Phases:
    finished = _clock()
    return (
        journaled[0] - started[0],
        finished[0] - journaled[0],
        journaled[1] - started[1],
        finished[1] - journaled[1],
    )


def run_store(path: Path, rows: Sequence[NewRecord], batch: int) -> Phases:
    store = Store.open(f"sqlite:///{path}")
    try:
        lease = store.acquire_lock(PIPELINE, "bench", ttl=600)
        assert lease is not None
        started = _clock()
        for start in range(0, len(rows), CHUNK_RECORDS):
            store.journal(
                PIPELINE,
                STREAM,
                rows[start : start + CHUNK_RECORDS],
                cursor={"chunk": start},
                targets=[TARGET],
                run_id=None,
                lease=lease,
            )
        journaled = _clock()
        while claimed := store.claim(PIPELINE, TARGET, batch, "run-1", lease=lease):
            done = [OutcomeRecord(c.id, "done", detail="deleted") for c in claimed]
            store.record_outcomes(done, RetryRule(), lease=lease)
        return _phases(started, journaled)
    finally:
        store.close()


def _connect(path: Path) -> sqlite3.Connection:
    """A connection set up as the store sets up its own (state/db.py)."""
    Store.open(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute(
        "INSERT INTO pipeline_lock (pipeline, owner, expires_at, epoch) VALUES (?, ?, ?, 1)",
        (PIPELINE, "bench", "2999-01-01 00:00:00"),
    )
    return conn


def _check_lease(conn: sqlite3.Connection) -> None:
    row = conn.execute(
        "SELECT owner, epoch FROM pipeline_lock WHERE pipeline = ?", (PIPELINE,)
    ).fetchone()
    assert row == ("bench", 1)


def _journal_raw(conn: sqlite3.Connection, chunk: Sequence[NewRecord], now: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    _check_lease(conn)
    keys = [r.key for r in chunk]
    seen: set[str] = set()
    for start in range(0, len(keys), 500):
        part = keys[start : start + 500]
        marks = ",".join("?" * len(part))
        seen.update(
            k
            for (k,) in conn.execute(
                "SELECT record_key FROM deletion WHERE pipeline = ? AND stream = ? "
                f"AND record_key IN ({marks})",
                (PIPELINE, STREAM, *part),
            )
        )
    new = [r for r in chunk if r.key not in seen]
    conn.executemany(
        "INSERT INTO deletion (pipeline, stream, record_key, fields, seen_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(PIPELINE, STREAM, r.key, f'{{"SYKEY": "{r.key}"}}', now) for r in new],
    )
    first = conn.execute("SELECT max(id) FROM deletion").fetchone()[0] - len(new) + 1
    conn.executemany(
        "INSERT INTO delivery (deletion_id, pipeline, target, status, attempts, last_error, "
        "detail, approved, created_at, updated_at) VALUES (?, ?, ?, 'pending', 0, '', '', 0, ?, ?)",
        [(first + n, PIPELINE, TARGET, now, now) for n in range(len(new))],
    )
    conn.execute(
        "INSERT OR REPLACE INTO cursor (pipeline, stream, value, recoveries, "
        "consecutive_errors, last_error) VALUES (?, ?, ?, 0, 0, '')",
        (PIPELINE, STREAM, '{"chunk": 0}'),
    )
    conn.execute("COMMIT")


def _claim_raw(conn: sqlite3.Connection, batch: int, now: str) -> list[int]:
    conn.execute("BEGIN IMMEDIATE")
    _check_lease(conn)
    rows = conn.execute(
        "SELECT delivery.id, delivery.attempts, deletion.record_key, deletion.fields "
        "FROM delivery JOIN deletion ON deletion.id = delivery.deletion_id "
        "WHERE delivery.pipeline = ? AND delivery.target = ? AND delivery.status = 'pending' "
        "ORDER BY delivery.id LIMIT ?",
        (PIPELINE, TARGET, batch),
    ).fetchall()
    ids = [r[0] for r in rows]
    if ids:
        marks = ",".join("?" * len(ids))
        conn.execute(
            f"UPDATE delivery SET status = 'in_flight', claim = ?, claim_epoch = 1, "
            f"updated_at = ? WHERE id IN ({marks})",
            ("run-1", now, *ids),
        )
    conn.execute("COMMIT")
    return ids


def _done_raw(conn: sqlite3.Connection, ids: list[int], now: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    _check_lease(conn)
    marks = ",".join("?" * len(ids))
    conn.execute(f"SELECT id, attempts FROM delivery WHERE id IN ({marks})", ids).fetchall()
    conn.execute(
        "UPDATE delivery SET status = 'done', claim = NULL, attempts = attempts + 1, "
        f"detail = 'deleted', updated_at = ?, finished_at = ? WHERE id IN ({marks})",
        (now, now, *ids),
    )
    conn.execute("COMMIT")


def run_raw(path: Path, rows: Sequence[NewRecord], batch: int) -> Phases:
    conn = _connect(path)
    try:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        started = _clock()
        for start in range(0, len(rows), CHUNK_RECORDS):
            _journal_raw(conn, rows[start : start + CHUNK_RECORDS], now)
        journaled = _clock()
        while ids := _claim_raw(conn, batch, now):
            _done_raw(conn, ids, now)
        return _phases(started, journaled)
    finally:
        conn.close()


def done_count(path: Path) -> int:
    """Deliveries done in a contender's database: each must have done all the work."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT count(*) FROM delivery WHERE status = 'done'").fetchone()
    count: int = row[0]
    return count


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = records(args.records)
    contenders: dict[str, Callable[[Path, Sequence[NewRecord], int], Phases]] = {
        "store": run_store,
        "raw sqlite3": run_raw,
    }
    seconds: dict[str, list[Phases]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as workdir:
        for round_ in range(args.rounds):
            order = list(contenders)[round_ % 2 :] + list(contenders)[: round_ % 2]
            for name in order:
                path = Path(workdir) / f"{round_}-{name.replace(' ', '-')}.db"
                seconds[name].append(contenders[name](path, rows, args.batch))
                if done_count(path) != args.records:
                    raise SystemExit(f"{name}: {done_count(path)} of {args.records} done")
    medians = {
        name: statistics.median(v[0] + v[1] for v in values) for name, values in seconds.items()
    }
    phases = {
        f"{name} {phase}": statistics.median(v[n] for v in values)
        for name, values in seconds.items()
        for n, phase in enumerate(PHASES)
    }
    print(
        f"store hot path: journal + claim + outcome of {args.records:,} records, "
        f"batch {args.batch}, median of {args.rounds} rounds"
    )
    per_record = 1e6 / args.records
    for name, median in medians.items():
        journal, claim, journal_cpu, claim_cpu = (
            phases[f"{name} {p}"] * per_record for p in PHASES
        )
        print(
            f"  {name:<12} {median:7.2f} s  {median * per_record:6.1f} µs/record"
            f"  (journal {journal:5.1f}, claim + outcome {claim:5.1f};"
            f" CPU {journal_cpu:5.1f} + {claim_cpu:5.1f})"
        )
    ratio = medians["store"] / medians["raw sqlite3"]
    cpu = {
        name: phases[f"{name} journal cpu"] + phases[f"{name} claim+outcome cpu"]
        for name in contenders
    }
    cpu_ratio = cpu["store"] / cpu["raw sqlite3"]
    print(f"  store / raw sqlite3: {ratio:.2f}x ({cpu_ratio:.2f}x in CPU)")
    return medians | phases | {"ratio": ratio, "cpu ratio": cpu_ratio}


if __name__ == "__main__":
    main()
