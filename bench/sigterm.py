"""How long `syncengine run --once` takes to stop on SIGTERM in the middle of a huge answer.

    python -m bench.sigterm [--records 1000000] [--after 20000]

One Goose answer of `--records` deletions (Mongoose holds nothing any look-up
finds). Once `--after` records are journaled, the run gets SIGTERM; the figure
is the time from the signal to the process's exit, with what was journaled by
then and whether the call's in-flight marker stayed (the next run re-reads its
window). A figure, never a threshold.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.throughput import ROOT, Bench, child_env, emulators, syncengine_argv

POLL = 0.1


def journaled(db: Path) -> int:
    """Read-only, so polling never creates the store before syncengine does."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            count: int = conn.execute("SELECT count(*) FROM deletion").fetchone()[0]
            return count
    except sqlite3.Error:
        return 0  # not created yet


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--after", type=int, default=20_000)
    args = parser.parse_args(argv)
    with emulators() as urls, tempfile.TemporaryDirectory(prefix="bench-sigterm-") as tmp:
        bench = Bench(urls, Path(tmp), 100, 0.0, rows=False)
        try:
            bench.new_round(args.records)
            config = bench.write_config({})
        finally:
            bench.close()
        db = config.parent / "state.db"
        argv_ = [*syncengine_argv(), "run", "--once", "-c", str(config)]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        with subprocess.Popen(argv_, cwd=ROOT, env=child_env(), **quiet) as run:
            while journaled(db) < args.after and run.poll() is None:
                time.sleep(POLL)
            before = journaled(db)
            signalled = time.monotonic()
            run.send_signal(signal.SIGTERM)
            code = run.wait(timeout=600)
            seconds = time.monotonic() - signalled
        with sqlite3.connect(db) as conn:
            marked = conn.execute("SELECT count(*) FROM cursor WHERE in_flight IS NOT NULL")
            in_flight = marked.fetchone()[0]
        after = journaled(db)
    print(
        f"SIGTERM with {before:,} of {args.records:,} records journaled: exit code {code} "
        f"after {seconds:.2f} s; {after:,} journaled at exit; in-flight marker kept: "
        f"{'yes' if in_flight else 'no'}"
    )
    return {"seconds": seconds, "exit_code": code, "journaled": after, "in_flight": in_flight}


if __name__ == "__main__":
    main()
